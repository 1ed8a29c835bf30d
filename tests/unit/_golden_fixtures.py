"""Real evidence for the golden-suite tests: tiny int8 models built with ``transformers`` from a config (fixed seed,
via the replay helper's checkpoint builders), suites blessed from them, and artifacts with exactly one changed
int8 weight (manifest digests recomputed, re-signed when a key is given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from _replay_fixtures import CREATED, bert_checkpoint, llama_checkpoint

from kolm_audit.artifact import build_manifest, read_artifact, sign_artifact, write_artifact
from kolm_audit.compile.hf import import_checkpoint
from kolm_audit.golden.bless import plan_bless
from kolm_audit.golden.suite import Case, Suite
from kolm_audit.keys import PrivateKey
from kolm_audit.model import Model
from kolm_audit.receipts.document import Decoding

CLASSIFY_TEXTS = {"fox": "the quick brown fox jumps over the lazy dog", "loan": "the bank will approve the loan",
                  "river": "the river city house", "key": "trust the key", "audit": "audit the model file"}
PROMPTS = {"p1": "w5 w6 w7", "p2": "w10 w11", "p3": "w40 w41 w42 w43", "p4": "w100 w150 w151"}
SAMPLING = Decoding(max_new_tokens=6, temperature=900, seed=1234, top_k=40, top_p=950)
GREEDY = Decoding(max_new_tokens=6)


def quantize(hf_dir: Path, out: Path, *, name: str = "tiny", key: PrivateKey | None = None) -> Path:
    manifest, tensors = import_checkpoint(hf_dir, scheme="int8", name=name, version="1", created=CREATED)
    write_artifact(out, manifest=manifest, tensors=tensors)
    if key is not None:
        sign_artifact(out, key)
    return out


def bert_artifact(tmp: Path, *, head: bool = True, name: str = "tiny-bert") -> Path:
    return quantize(bert_checkpoint(tmp / f"hf-bert-{head}", head=head), tmp / f"{name}.kolm", name=name)


def llama_artifact(tmp: Path) -> Path:
    return quantize(llama_checkpoint(tmp / "hf-llama"), tmp / "tiny-llama.kolm", name="tiny-llama")


def model(path: Path) -> Model:
    return Model.from_artifact(read_artifact(path))


def input_cases(texts: dict[str, str], params: Decoding | None = None) -> tuple[Case, ...]:
    return tuple(Case(id=cid, text=text, params=params) for cid, text in texts.items())


def blessed_suite(m: Model, cases: tuple[Case, ...], *, name: str = "tiny", pinned: bool = True) -> Suite:
    """``cases`` with the expectations ``m`` gives them (what ``golden bless`` records)."""
    suite = Suite(name=name, task=m.task, artifact_name=str(m.manifest["name"]),
                  artifact_digest=m.digest if pinned else None,
                  cases=cases if pinned else tuple(Case(id=c.id, text=c.text, ids=c.ids, params=c.params,
                                                        expected_by_digest={}) for c in cases))
    plan = plan_bless(suite, m, accept=(), accept_all=False)
    assert plan.writable
    return plan.suite


def token_id(m: Model, word: str) -> int:
    [ids] = m.tokenize([word])
    assert len(ids) in (1, 3), ids                      # BERT adds [CLS] … [SEP]; the Llama word tokenizer does not
    return ids[1] if len(ids) == 3 else ids[0]


def changed_embedding(src: Path, out: Path, token: int, *, key: PrivateKey | None = None) -> tuple[Path, str]:
    """``src`` with one int8 weight changed: element 0 of ``token``'s embedding row, so only inputs containing that
    token can change. Manifest digests recomputed; re-signed by ``key`` when given. Returns (path, tensor name)."""
    art = read_artifact(src)
    tensors: dict[str, Any] = {n: np.array(a) for n, a in art.tensors.items()}
    name = next(n for n in ("embeddings.word.weight", "model.embed_tokens.weight") if n in tensors)
    row = tensors[name][token]
    row[0] = np.int8(-100 if row[0] > 0 else 100)
    m = art.manifest
    manifest = build_manifest(name=m["name"], version=m["version"], task=m["task"], architecture=m["architecture"],
                              quantization=m["quantization"], tensors=tensors, provenance=m["provenance"],
                              created=m["created"])
    write_artifact(out, manifest=manifest, tensors=tensors)
    if key is not None:
        sign_artifact(out, key)
    return out, name
