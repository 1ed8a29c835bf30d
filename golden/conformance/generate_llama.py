"""Generate the Llama-family conformance vectors of ``kolm-int/1`` (run ONCE; refuses to overwrite).

    python golden/conformance/generate_llama.py

Builds two tiny decoders with ``transformers`` from a fixed seed (see ``tests/unit/runtime/_llama_fixtures.py``):
``tiny-llama`` (LlamaConfig, GQA 4/2 heads, hidden 64, 2 layers) and ``tiny-qwen2`` (Qwen2Config, q/k/v bias,
tied embeddings, GQA 6/2 heads, hidden 96, 2 layers), quantizes each with every scheme (int8, int4, nvfp4) and
stores, under ``golden/conformance/llama/``:

* ``models/<model>-<scheme>.safetensors`` — every integer tensor the runtime reads (weights, tables,
  tokenizer), and ``models/<model>-<scheme>.json`` — architecture, task, quantization and each tensor's dtype,
  shape and sha256 (little-endian bytes). The model digest is ``sha256(JCS(that JSON))``.
* ``vectors/<model>-<scheme>-<params>-<nn>.json`` — one request each: model digest, input (text or ids), input
  ids and digest, decoding parameters (greedy or seeded sampling, integers), the expected output ids, finish
  reason and output digest ``sha256(JCS({"finish_reason": ..., "output_ids": [...]}))``.

Vectors of a released spec version are never regenerated ("replay forever"): the script stops if any file it
would write already exists. ``tests/unit/runtime/test_conformance_llama.py`` checks the reference runtime
reproduces every vector bit for bit, alone and all in one batch.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "runtime"))

from _llama_fixtures import tiny_config, tiny_model, write_checkpoint  # noqa: E402

from kolm_audit.canonical import digest, digest_of, jcs  # noqa: E402
from kolm_audit.compile import quantize_checkpoint  # noqa: E402
from kolm_audit.compile.hf import read_hf_checkpoint  # noqa: E402
from kolm_audit.model import Model, input_digest  # noqa: E402
from kolm_audit.runtime import SPEC  # noqa: E402

OUT = Path(__file__).resolve().parent / "llama"
SEED = 20260102
SCHEMES = ("int8", "int4", "nvfp4")
VOCAB, MAX_POS, MAX_NEW = 256, 64, 10
MODELS: dict[str, dict[str, Any]] = {
    "tiny-llama": {"family": "llama", "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 160},
    "tiny-qwen2": {"family": "qwen2", "hidden": 96, "heads": 6, "kv_heads": 2, "intermediate": 192,
                   "tie_word_embeddings": True},
}
PARAMS: dict[str, dict[str, int | None]] = {
    "greedy": {"seed": None, "temperature": None, "top_k": None, "top_p": None},
    "sample-a": {"seed": 42, "temperature": 800, "top_k": 40, "top_p": 900},
    "sample-b": {"seed": 2**53 - 1, "temperature": 1500, "top_k": None, "top_p": None},
}


def inputs() -> list[dict[str, Any]]:
    rng = np.random.default_rng(SEED)
    near_limit = [1, *rng.integers(3, VOCAB, size=MAX_POS - 4).tolist()]        # 3 tokens short of the limit
    return [{"input_ids": [1]}, {"input_ids": [1, 5, 9, 200]}, {"input_ids": [1, 7, 7, 7, 7, 7, 7]},
            {"input_ids": near_limit}, {"text": "w5 w9 w17 w3 w250"}]


def model_doc(qm: Any) -> dict[str, Any]:
    return {"spec": SPEC, "architecture": qm.architecture, "task": qm.task, "quantization": qm.quantization,
            "tensors": {n: {"dtype": str(a.dtype), "shape": list(a.shape),
                            "sha256": digest(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())}
                        for n, a in sorted(qm.tensors.items())}}


def main() -> int:
    plan: dict[Path, bytes] = {}
    for k, (model_name, spec) in enumerate(MODELS.items()):
        spec = dict(spec)
        config = tiny_config(family=spec.pop("family"), vocab=VOCAB, layers=2, max_pos=MAX_POS, **spec)
        hf_model = tiny_model(config, seed=SEED + k)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = read_hf_checkpoint(write_checkpoint(hf_model, Path(tmp) / "hf"))
            for scheme in SCHEMES:
                qm = quantize_checkpoint(ckpt, scheme=scheme)
                doc, name = model_doc(qm), f"{model_name}-{scheme}"
                mdigest = digest_of(doc)
                runner = Model(manifest={"runtime": SPEC, "architecture": qm.architecture, "task": qm.task,
                                         "quantization": qm.quantization}, digest=mdigest, tensors=qm.tensors)
                save_file({n: np.ascontiguousarray(a) for n, a in qm.tensors.items()}, f"{tmp}/m.safetensors")
                plan[OUT / "models" / f"{name}.safetensors"] = Path(f"{tmp}/m.safetensors").read_bytes()
                plan[OUT / "models" / f"{name}.json"] = jcs(doc) + b"\n"
                for pname, params in PARAMS.items():
                    for n, inp in enumerate(inputs()):
                        ids = runner.tokenize([inp["text"]])[0] if "text" in inp else list(inp["input_ids"])
                        res = runner.generate([ids], max_new_tokens=MAX_NEW, **params)[0]
                        vec = {"schema": "kolm.conformance-vector/1", "spec": SPEC,
                               "id": f"{name}-{pname}-{n:02d}", "model": {"name": name, "digest": mdigest},
                               "task": "generate", "input": inp, "input_ids": ids, "input_digest": input_digest(ids),
                               "params": {"max_new_tokens": MAX_NEW, **params},
                               "output": {"output_ids": list(res.output_ids), "finish_reason": res.finish_reason},
                               "output_digest": res.output_digest}
                        plan[OUT / "vectors" / f"{name}-{pname}-{n:02d}.json"] = jcs(vec) + b"\n"
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
