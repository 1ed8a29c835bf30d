"""Generate the conformance vectors of the mean-pooled BERT classifier head (run ONCE; refuses to overwrite).

    python golden/conformance/generate_bert_mean.py

The head of docs/runtime-spec.md §6.4 with ``task.pooling = "mean"``: a linear ``classifier`` on the mean-pooled
embedding of §6.3, no pooler (what ``kolm-audit compile`` builds). The tiny BERT is the one of
``generate_bert.py`` (``tests/unit/runtime/_bert_fixtures.py``, seeded random weights) with a different seed,
quantized with each scheme; its ``pooler.*`` tensors are dropped and the task says ``"pooling": "mean"``.
Files, under ``golden/conformance/bert-mean/``:

* ``models/tiny-bert-mean-<scheme>.safetensors`` + ``.json`` (architecture, task, quantization, each tensor's
  dtype, shape and sha256; the model digest is ``sha256(JCS(json))``);
* ``vectors/<scheme>-classify-<nn>.json`` — ``kolm.conformance-vector/1``: input, ids, label, Q.16 scores, digest.

Vectors of a released spec version are never regenerated: the script stops if any file it would write exists.
``tests/unit/runtime/test_conformance_bert_mean.py`` checks the numpy reference and the torch backends.
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
from kolm_audit.model import Model  # noqa: E402
from kolm_audit.runtime import SPEC  # noqa: E402
from kolm_audit.runtime.digests import classification_digest, input_digest  # noqa: E402

OUT = Path(__file__).resolve().parent / "bert-mean"
SEED = 20261201
SCHEMES = ("int8", "int4", "nvfp4")
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a signed receipt for every decision",
    "hello",
    "The bank will approve the loan, not deny it!",
    "every regulator replays the same bytes years later.",
    "loan loan loan loan loan loan loan loan",
]


def _id_inputs(vocab: int, max_pos: int) -> list[list[int]]:
    rng = np.random.default_rng(SEED)
    long = [2, *rng.integers(5, vocab, size=max_pos - 2).tolist(), 3]       # exactly the position limit
    return [[2], [2, 0, 0, 9, 3], [2, 7, 7, 7, 7, 7, 7, 3], long]


def _model_doc(architecture: dict, task: dict, quantization: dict, tensors: dict[str, np.ndarray]) -> dict:
    return {"spec": SPEC, "architecture": architecture, "task": task, "quantization": quantization,
            "tensors": {n: {"dtype": str(a.dtype), "shape": list(a.shape),
                            "sha256": digest(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())}
                        for n, a in sorted(tensors.items())}}


def main() -> int:
    config = tiny_config(labels=4)
    model = tiny_model(config, seed=SEED)
    plan: dict[Path, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = read_hf_checkpoint(write_checkpoint(model, Path(tmp) / "hf"))
        for scheme in SCHEMES:
            qm = quantize_checkpoint(ckpt, scheme=scheme)
            tensors = {n: a for n, a in qm.tensors.items() if not n.startswith("pooler.")}
            task = {**qm.task, "pooling": "mean"}
            doc = _model_doc(qm.architecture, task, qm.quantization, tensors)
            name = f"tiny-bert-mean-{scheme}"
            mdigest = digest_of(doc)
            runner = Model(manifest={"runtime": SPEC, "architecture": qm.architecture, "task": task,
                                     "quantization": qm.quantization}, digest=mdigest, tensors=tensors)
            inputs: list[dict[str, object]] = [{"text": t} for t in TEXTS]
            inputs += [{"input_ids": ids} for ids in _id_inputs(config.vocab_size, config.max_position_embeddings)]
            with tempfile.TemporaryDirectory() as t2:
                save_file({n: np.ascontiguousarray(a) for n, a in tensors.items()}, f"{t2}/m.safetensors")
                plan[OUT / "models" / f"{name}.safetensors"] = Path(f"{t2}/m.safetensors").read_bytes()
            plan[OUT / "models" / f"{name}.json"] = jcs(doc) + b"\n"
            for n, inp in enumerate(inputs):
                ids = runner.tokenize([inp["text"]])[0] if "text" in inp else list(inp["input_ids"])  # type: ignore[arg-type]
                r = runner.classify([ids])[0]
                vec = {"schema": "kolm.conformance-vector/1", "spec": SPEC,
                       "id": f"bert-mean-{scheme}-classify-{n:02d}", "model": {"name": name, "digest": mdigest},
                       "task": "classify", "input": inp,
                       "input_ids": ids, "input_digest": input_digest(ids),
                       "output": {"label": r.label, "label_index": r.label_index, "scores": list(r.scores)},
                       "output_digest": classification_digest(r.label, r.scores)}
                plan[OUT / "vectors" / f"{scheme}-classify-{n:02d}.json"] = jcs(vec) + b"\n"
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
