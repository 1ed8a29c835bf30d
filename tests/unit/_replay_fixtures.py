"""Real evidence for the replay and diff tests: tiny int8 models built with ``transformers`` from a config (fixed
seed), signed artifacts, a trust file, and receipt logs recorded by the receipts helper's :class:`Recorder`.

Reuses the runtime helper's checkpoint builders (``tests/unit/runtime/_bert_fixtures.py``,
``_llama_fixtures.py``) by import.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kolm_audit.artifact import build_manifest, read_artifact, sign_artifact, write_artifact
from kolm_audit.compile.hf import import_checkpoint
from kolm_audit.keys import PrivateKey, generate_key, write_keypair
from kolm_audit.log import ReceiptLog
from kolm_audit.model import Model
from kolm_audit.receipts.recorder import Recorder
from kolm_audit.trust import TrustPolicy, write_trust_file

_RUNTIME_TESTS = str(Path(__file__).resolve().parent / "runtime")
if _RUNTIME_TESTS not in sys.path:
    sys.path.insert(0, _RUNTIME_TESTS)

bert_fx: Any = importlib.import_module("_bert_fixtures")
llama_fx: Any = importlib.import_module("_llama_fixtures")

CREATED = "2026-01-01T00:00:00Z"
TEXTS = ["the quick brown fox jumps over the lazy dog", "hello", "a signed receipt for every decision",
         "the bank will approve the loan, not deny it!", "red car", "every year later the same bytes",
         "audit the model file", "good bad quick", "trust the key", "the river city house"]


@dataclass(frozen=True)
class Keys:
    vendor: PrivateKey
    receipt: PrivateKey
    log: PrivateKey
    rogue: PrivateKey
    trust: Path
    dir: Path

    @property
    def policy(self) -> TrustPolicy:
        return TrustPolicy.load(self.trust)


def make_keys(out: Path) -> Keys:
    out.mkdir(parents=True, exist_ok=True)
    keys = {"vendor": generate_key(key_type="ecdsa-p256"), "receipt": generate_key(key_type="ed25519"),
            "log": generate_key(key_type="ed25519"), "rogue": generate_key(key_type="ed25519")}
    for name, key in keys.items():
        write_keypair(key, out, name=name)
    trust = write_trust_file(out / "trust.toml", [
        {"name": "vendor", "public_key": "vendor.pub", "roles": ["artifact"]},
        {"name": "operator", "public_key": "receipt.pub", "roles": ["receipt"], "tenants": ["*"]},
        {"name": "log", "public_key": "log.pub", "roles": ["checkpoint"]}])
    return Keys(trust=trust, dir=out, **keys)


def bert_checkpoint(out: Path, *, seed: int = 11, head: bool = True) -> Path:
    model = bert_fx.tiny_model(bert_fx.tiny_config(), seed=seed, head=head)
    return bert_fx.write_checkpoint(model, out)


def llama_checkpoint(out: Path, *, seed: int = 3) -> Path:
    model = llama_fx.tiny_model(llama_fx.tiny_config(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64,
                                                     vocab=128), seed=seed)
    return llama_fx.write_checkpoint(model, out)


def quantize_signed(hf_dir: Path, out: Path, key: PrivateKey, *, name: str = "tiny") -> Path:
    """What ``kolm-audit quantize --scheme int8`` + ``kolm-audit sign`` make."""
    manifest, tensors = import_checkpoint(hf_dir, scheme="int8", name=name, version="1", created=CREATED)
    write_artifact(out, manifest=manifest, tensors=tensors)
    sign_artifact(out, key)
    return out


def changed_weight(src: Path, out: Path, key: PrivateKey, *, tensor: str | None = None) -> tuple[Path, str, int]:
    """Rebuild ``src`` with one int8 weight changed (negated and pushed away from zero), re-signed by ``key``.

    Returns (path, tensor name, flat index)."""
    art = read_artifact(src)
    tensors = {n: np.array(a) for n, a in art.tensors.items()}
    name = tensor or sorted(n for n, a in tensors.items() if a.dtype == np.int8 and n.startswith("layers.0."))[0]
    flat = tensors[name].reshape(-1)
    pos = int(np.argmax(np.abs(flat.astype(np.int64))))
    flat[pos] = np.int8(-100 if flat[pos] > 0 else 100)
    m = art.manifest
    manifest = build_manifest(name=m["name"], version=m["version"], task=m["task"], architecture=m["architecture"],
                              quantization=m["quantization"], tensors=tensors, provenance=m["provenance"],
                              created=m["created"])
    write_artifact(out, manifest=manifest, tensors=tensors)
    sign_artifact(out, key)
    return out, name, pos


def record(artifact: Path, log_path: Path, keys: Keys, *, texts: list[str] | None = None, tenant: str = "acme",
           generate: dict[str, Any] | None = None, batch: int = 4) -> Path:
    """Record one receipt per text with the receipts helper's Recorder; checkpoint at the end."""
    model = Model.from_artifact(read_artifact(artifact))
    texts = TEXTS if texts is None else texts
    with ReceiptLog.open(log_path, create=True, origin="example.org/replay-test") as log, \
            Recorder(model, log, keys.receipt, tenant=tenant, operator="svc", checkpoint_key=keys.log) as rec:
        for i in range(0, len(texts), batch):
            part = texts[i:i + batch]
            if model.task == "classify":
                rec.record_classify(part)
            elif model.task == "embed":
                rec.record_embed(part)
            else:
                rec.record_generate(part, **(generate or {"max_new_tokens": 6}))
    return log_path
