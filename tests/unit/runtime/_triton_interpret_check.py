"""Run as a script under ``TRITON_INTERPRET=1``: the Triton kernels (on CPU tensors) against the numpy reference.

    TRITON_INTERPRET=1 python tests/unit/runtime/_triton_interpret_check.py SEED

Prints one JSON object ``{"check": true|false, ...}`` per line and exits 1 if any is false. The environment
variable must be set before Triton is imported, hence a separate process (see ``test_triton_interpret.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from kolm_audit.canonical import digest_of, loads_strict
from kolm_audit.compile import tables as tb
from kolm_audit.compile.tables import sigmoid_table
from kolm_audit.model import Model
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.ops import NumpyOps
from kolm_audit.runtime.reference import IntLinear
from kolm_audit.runtime.triton_fused import FusedTritonOps

ROOT = Path(__file__).resolve().parents[3] / "golden" / "conformance"
VECTORS = ("bert", "tiny-bert-int8", "embed"), ("bert", "tiny-bert-nvfp4", "classify"), \
    ("llama", "tiny-qwen2-int4", "generate")
I32 = (-(1 << 31), (1 << 31) - 1)


def _acts(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Q.16 activations of mixed magnitudes per row (tiny, typical, saturated), int64."""
    scale = rng.choice([1, 1 << 8, 1 << 16, 1 << 20, 1 << 31], size=(*shape[:-1], 1))
    return np.clip(rng.integers(-(1 << 31), 1 << 31, size=shape) % scale - scale // 2, *I32).astype(np.int64)


def _ops_checks(seed: int) -> dict[str, bool]:
    rng = np.random.default_rng(seed)
    ops, ref = FusedTritonOps(device="cpu"), NumpyOps()
    out: dict[str, bool] = {}
    for name, wmax in (("linear int8", 127), ("linear int4 digits", 40000)):
        n, k = 24, 40
        w = rng.integers(-wmax, wmax + 1, (n, k))
        shift = rng.integers(20, 70, n)
        mult = np.where(rng.random(n) < 0.1, 0, rng.integers(1 << 30, 1 << 31, n))
        lin = IntLinear(weight=w, wmax=int(np.abs(w).max()), mult=mult, shift=shift,
                        bias=rng.integers(-(1 << 20), 1 << 20, n))
        x = _acts(rng, (2, 5, k))
        out[name] = bool(np.array_equal(ops.numpy(ops.linear(ops.const(x), ops.prepare_linear(lin))),
                                        ref.linear(x, lin)))
    x = _acts(rng, (3, 4, 48))
    gamma, beta = rng.integers(-(1 << 26), 1 << 26, 48), rng.integers(-(1 << 20), 1 << 20, 48)
    rs = fp.rsqrt_table()
    got = ops.layer_norm(ops.const(x), ops.const(gamma), ops.const(beta), eps_q32=4295, rsqrt_table=ops.const(rs))
    out["layer_norm"] = bool(np.array_equal(ops.numpy(got), ref.layer_norm(x, gamma, beta, eps_q32=4295,
                                                                           rsqrt_table=rs)))
    out["rms_norm"] = bool(np.array_equal(
        ops.numpy(ops.rms_norm(ops.const(x), ops.const(gamma), eps_q32=1 << 20, rsqrt_table=ops.const(rs))),
        ref.rms_norm(x, gamma, eps_q32=1 << 20, rsqrt_table=rs)))
    b, hq, hk, tq, tk, d = 2, 4, 2, 3, 7, 16
    q, k, v = _acts(rng, (b, hq, tq, d)), _acts(rng, (b, hk, tk, d)), _acts(rng, (b, hk, tk, d))
    valid = rng.random((b, 1, tq, tk)) < 0.7
    valid[..., 0] = True
    exp = tb.exp_table().astype(np.int64)
    got = ops.attention(ops.const(q), ops.const(k), ops.const(v), ops.mask(valid), scale_mult=1 << 30,
                        scale_shift=32, exp_table=ops.const(exp))
    out["attention gqa"] = bool(np.array_equal(ops.numpy(got), ref.attention(
        q, k, v, valid, scale_mult=1 << 30, scale_shift=32, exp_table=exp)))
    cos, sin = rng.integers(-(1 << 30), 1 << 30, (32, d // 2)), rng.integers(-(1 << 30), 1 << 30, (32, d // 2))
    pos = rng.integers(0, 32, (b, tq))
    out["rope"] = bool(np.array_equal(ops.numpy(ops.rope(ops.const(q), pos, ops.const(cos), ops.const(sin))),
                                      ref.rope(q, pos, cos, sin)))
    gu = _acts(rng, (2, 3, 64))
    sig = sigmoid_table().astype(np.int64)
    t = ops.const(gu)
    out["swiglu"] = bool(np.array_equal(ops.numpy(ops.swiglu(t[..., :32], t[..., 32:], ops.const(sig))),
                                        ref.swiglu(gu[..., :32], gu[..., 32:], sig)))
    cdf = tb.gelu_cdf_table().astype(np.int64)
    out["gelu"] = bool(np.array_equal(ops.numpy(ops.gelu(ops.const(gu), ops.const(cdf))), ref.gelu(gu, cdf)))
    return out


def _vector_checks() -> dict[str, bool]:
    out: dict[str, bool] = {}
    for family, name, task in VECTORS:
        vecs = [v for v in (loads_strict(p.read_bytes()) for p in sorted((ROOT / family / "vectors").glob("*.json")))
                if v["model"]["name"] == name and v["task"] == task][:3]
        doc = json.loads((ROOT / family / "models" / f"{name}.json").read_text())
        manifest = {"runtime": doc["spec"], "architecture": doc["architecture"], "task": doc["task"],
                    "quantization": doc["quantization"]}
        model = Model(manifest=manifest, digest=digest_of(doc), ops=FusedTritonOps(device="cpu"),
                      tensors=load_file(str(ROOT / family / "models" / f"{name}.safetensors")))
        ids = [v["input_ids"] for v in vecs]
        if task == "generate":
            p = vecs[0]["params"]
            kw = {key: p[key] for key in ("seed", "temperature", "top_k", "top_p")}
            vecs = [v for v in vecs if v["params"] == p]
            got = [r.output_digest for r in model.generate([v["input_ids"] for v in vecs],
                                                           max_new_tokens=p["max_new_tokens"], **kw)]
        else:
            got = [r.output_digest for r in getattr(model, task)(ids)]
        out[f"{name} {task} batch of {len(vecs)}"] = got == [v["output_digest"] for v in vecs]
    return out


def main(argv: list[str]) -> int:
    results = {**_ops_checks(int(argv[0]) if argv else 0), **_vector_checks()}
    for name, ok in results.items():
        print(json.dumps({"check": name, "ok": ok}))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
