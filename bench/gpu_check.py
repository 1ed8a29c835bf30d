"""Device check: every conformance vector on the torch backend, then the runtime benchmark, one line per check.

    python bench/gpu_check.py                     # CUDA (the GPU machine)
    python bench/gpu_check.py --device cpu        # the same checks on torch CPU (to test this script)
    python bench/gpu_check.py --skip-bench        # conformance only
    python bench/gpu_check.py --unfused           # plain torch ops instead of the fused (Triton / numba) kernels
    python bench/gpu_check.py --gemm int_mm,bf16_fp32 --decode static   # another GEMM path / KV-cache mode

Each conformance vector (``golden/conformance/{bert,llama}/vectors``) is run alone and then every vector of a
model and setting in one batch; the output digest is compared with the stored reference digest. Exit status 1
if any vector differs. On CUDA with the fused kernels, generation decodes from CUDA graphs over static KV buffers
(``--decode``); the GEMM paths the linear layers ran are printed (``--gemm`` chooses them). The benchmark
(``bench/bench_runtime.py``) then runs on the same device; its flags can be passed after ``--``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.numpy import load_file

from kolm_audit.canonical import digest_of, loads_strict
from kolm_audit.model import Model
from kolm_audit.runtime.ops import get_ops

ROOT = Path(__file__).resolve().parents[1] / "golden" / "conformance"
PARAM_KEYS = ("seed", "temperature", "top_k", "top_p")


def _model(family: str, name: str, backend: str, fused: bool, gemm: str, decode: str) -> Model:
    doc = json.loads((ROOT / family / "models" / f"{name}.json").read_text())
    manifest = {"runtime": doc["spec"], "architecture": doc["architecture"], "task": doc["task"],
                "quantization": doc["quantization"]}
    model = Model(manifest=manifest, digest=digest_of(doc), ops=get_ops(backend, fused=fused, gemm=gemm),
                  tensors=load_file(str(ROOT / family / "models" / f"{name}.safetensors")))
    if family == "llama" and decode != "auto":
        model._rt.decode = decode
    return model


def _run(model: Model, vecs: list[dict[str, Any]]) -> list[str]:
    ids = [v["input_ids"] for v in vecs]
    task = vecs[0]["task"]
    if task == "embed":
        return [r.output_digest for r in model.embed(ids)]
    if task == "classify":
        return [r.output_digest for r in model.classify(ids)]
    p = vecs[0]["params"]
    return [r.output_digest for r in model.generate(ids, max_new_tokens=p["max_new_tokens"],
                                                    **{k: p[k] for k in PARAM_KEYS})]


def check_conformance(backend: str, *, fused: bool = True, gemm: str = "auto", decode: str = "auto") -> bool:
    ok_all = True
    for family in ("bert", "llama"):
        vecs = [loads_strict(p.read_bytes()) for p in sorted((ROOT / family / "vectors").glob("*.json"))]
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for v in vecs:
            mode = json.dumps(v.get("params"), sort_keys=True)
            groups[(v["model"]["name"], v["task"], mode)].append(v)
        models: dict[str, Model] = {}
        t0 = time.perf_counter()
        alone_bad, batch_bad = [], []
        for (name, _task, _mode), group in sorted(groups.items()):
            model = models.setdefault(name, _model(family, name, backend, fused, gemm, decode))
            for v in group:
                if _run(model, [v]) != [v["output_digest"]]:
                    alone_bad.append(v["id"])
            if _run(model, group) != [v["output_digest"] for v in group]:
                batch_bad.append(f"{name}/{group[0]['task']}")
        ok = not alone_bad and not batch_bad
        ok_all &= ok
        rts = [m._rt for m in models.values()]
        kind = type(rts[0].ops).__name__ + (f", decode {rts[0].decode}" if family == "llama" else "")
        paths = sorted({desc.split(" K=")[0] for rt in rts for desc in getattr(rt.ops, "gemm_paths", {})})
        graphs = sum(getattr(rt, "graphs", None).captured for rt in rts if hasattr(rt, "graphs"))
        print(f"{'PASS' if ok else 'FAIL'} conformance {family} on {backend} ({kind}, gemm {'+'.join(paths)}"
              + (f", {graphs} CUDA graphs" if family == "llama" else "") + f"): {len(vecs) - len(alone_bad)}/"
              f"{len(vecs)} vectors alone, {len(groups) - len(batch_bad)}/{len(groups)} batches match the "
              f"reference digests ({time.perf_counter() - t0:.1f} s)"
              + (f"; differ: {alone_bad[:5] + batch_bad[:5]}" if not ok else ""))
    return ok_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--unfused", action="store_true", help="plain torch ops instead of the fused kernels")
    ap.add_argument("--gemm", default="auto", help="linear GEMM preference (kolm_audit.runtime.gemm_plan)")
    ap.add_argument("--decode", choices=("auto", "dynamic", "static", "graphs"), default="auto")
    args, bench_args = ap.parse_known_args(argv)
    bench_args = [a for a in bench_args if a != "--"]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("FAIL no CUDA device visible (use --device cpu to test this script)")
        return 1
    print(f"# device {args.device}: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}")
    ok = check_conformance(args.device, fused=not args.unfused, gemm=args.gemm, decode=args.decode)
    if not args.skip_bench:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_runtime import main as bench_main

        bench_main(["--device", args.device, *(["--unfused"] if args.unfused else []), *bench_args])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
