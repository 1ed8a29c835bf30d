"""Generate the BERT conformance vectors of ``kolm-int/1`` (run ONCE; refuses to overwrite).

    python golden/conformance/generate_bert.py

Builds one tiny BERT (``transformers`` BertForSequenceClassification from a BertConfig, random weights from a
fixed seed, see ``tests/unit/runtime/_bert_fixtures.py``), quantizes it with each scheme (int8, int4,
nvfp4) and stores, under ``golden/conformance/bert/``:

* ``models/tiny-bert-<scheme>.safetensors`` — every integer tensor the runtime reads (weights, tables,
  tokenizer), and ``models/tiny-bert-<scheme>.json`` — architecture, task, quantization and each tensor's
  dtype, shape and sha256 (little-endian bytes). The model digest is ``sha256(JCS(that JSON))``.
* ``vectors/<scheme>-<task>-<nn>.json`` — one vector each: model digest, input (text or ids), input ids,
  expected output (embedding / label + scores) and the output digest (spec §8).

Vectors of a released spec version are never regenerated ("replay forever"): the script stops if any file
it would write already exists. ``tests/unit/runtime/test_conformance_bert.py`` checks that the reference
runtime reproduces every vector bit for bit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "runtime"))

from _bert_fixtures import tiny_config, tiny_model, write_checkpoint  # noqa: E402

from kolm_audit.canonical import digest, digest_of, jcs  # noqa: E402
from kolm_audit.compile import quantize_checkpoint  # noqa: E402
from kolm_audit.compile.hf import read_hf_checkpoint  # noqa: E402
from kolm_audit.model import Model, classification_digest, embedding_digest, input_digest  # noqa: E402
from kolm_audit.runtime import SPEC  # noqa: E402

OUT = Path(__file__).resolve().parent / "bert"
SEED = 20260101
SCHEMES = ("int8", "int4", "nvfp4")
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a signed receipt for every decision",
    "hello",
    "The bank will approve the loan, not deny it!",
    "every regulator replays the same bytes years later.",
]


def _id_inputs(vocab: int, max_pos: int) -> list[list[int]]:
    rng = np.random.default_rng(SEED)
    long = [2, *rng.integers(5, vocab, size=max_pos - 2).tolist(), 3]       # exactly the position limit
    return [[2], [2, 0, 0, 9, 3], [2, 7, 7, 7, 7, 7, 7, 3], long]


def model_doc(qm: object) -> dict[str, object]:
    tensors = qm.tensors  # type: ignore[attr-defined]
    return {"spec": SPEC, "architecture": qm.architecture, "task": qm.task,  # type: ignore[attr-defined]
            "quantization": qm.quantization,  # type: ignore[attr-defined]
            "tensors": {n: {"dtype": str(a.dtype), "shape": list(a.shape),
                            "sha256": digest(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())}
                        for n, a in sorted(tensors.items())}}


def main() -> int:
    config = tiny_config()
    model = tiny_model(config, seed=SEED)
    plan: dict[Path, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = read_hf_checkpoint(write_checkpoint(model, Path(tmp) / "hf"))
        for scheme in SCHEMES:
            qm = quantize_checkpoint(ckpt, scheme=scheme)
            doc = model_doc(qm)
            name = f"tiny-bert-{scheme}"
            mdigest = digest_of(doc)
            runner = Model(manifest={"runtime": SPEC, "architecture": qm.architecture, "task": qm.task,
                                     "quantization": qm.quantization}, digest=mdigest, tensors=qm.tensors)
            inputs: list[dict[str, object]] = [{"text": t} for t in TEXTS]
            inputs += [{"input_ids": ids} for ids in _id_inputs(config.vocab_size, config.max_position_embeddings)]
            st_path = OUT / "models" / f"{name}.safetensors"
            with tempfile.TemporaryDirectory() as t2:
                save_file({n: np.ascontiguousarray(a) for n, a in qm.tensors.items()}, f"{t2}/m.safetensors")
                plan[st_path] = Path(f"{t2}/m.safetensors").read_bytes()
            plan[OUT / "models" / f"{name}.json"] = jcs(doc) + b"\n"
            for task in ("embed", "classify"):
                for n, inp in enumerate(inputs):
                    ids = runner.tokenize([inp["text"]])[0] if "text" in inp else list(inp["input_ids"])  # type: ignore[arg-type]
                    if task == "embed":
                        emb = runner.embed([ids])[0].embedding
                        output: dict[str, object] = {"embedding": [int(v) for v in emb.tolist()]}
                        out_digest = embedding_digest(emb)
                    else:
                        r = runner.classify([ids])[0]
                        output = {"label": r.label, "label_index": r.label_index, "scores": list(r.scores)}
                        out_digest = classification_digest(r.label, r.scores)
                    vec = {"schema": "kolm.conformance-vector/1", "spec": SPEC, "id": f"bert-{scheme}-{task}-{n:02d}",
                           "model": {"name": name, "digest": mdigest}, "task": task, "input": inp,
                           "input_ids": ids, "input_digest": input_digest(ids), "output": output,
                           "output_digest": out_digest}
                    plan[OUT / "vectors" / f"{scheme}-{task}-{n:02d}.json"] = jcs(vec) + b"\n"
    existing = [p for p in plan if p.exists()]
    if existing:
        print(f"refusing to overwrite {len(existing)} existing conformance files (first: {existing[0]});"
              " vectors of a released spec are never regenerated", file=sys.stderr)
        return 1
    for path, data in plan.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(plan)} files under {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
