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
import torch
from safetensors.numpy import load_file

from kolm_audit.canonical import digest_of, loads_strict
from kolm_audit.compile import tables as tb
from kolm_audit.compile.tables import sigmoid_table
from kolm_audit.model import Model
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.decode import open_session
from kolm_audit.runtime.fused_ops import FusedOps
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


def _lin(rng: np.random.Generator, n: int, k: int, wmax: int) -> IntLinear:
    w = rng.integers(-wmax, wmax + 1, (n, k))
    mult = np.where(rng.random(n) < 0.1, 0, rng.integers(1 << 30, 1 << 31, n))
    return IntLinear(weight=w, wmax=int(np.abs(w).max()), mult=mult, shift=rng.integers(30, 60, n),
                     bias=rng.integers(-(1 << 20), 1 << 20, n))


def _same(got: object, want: np.ndarray, ops: FusedTritonOps) -> bool:
    return bool(np.array_equal(ops.numpy(got), want))


def _memo_ok(t: object, ops: FusedTritonOps) -> bool:
    """The §3.3 memo a kernel attached to its output equals quantize_rows of that output."""
    q, m, e = t._kolm_qx                                                     # type: ignore[attr-defined]
    x = ops.numpy(t).reshape(-1, ops.numpy(t).shape[-1])
    wq, wm, we = fp.quantize_rows(x)
    rows = x.shape[0]
    return bool(np.array_equal(ops.numpy(q.to(torch.int64))[:rows], wq) and np.array_equal(ops.numpy(m), wm[:, 0])
                and np.array_equal(ops.numpy(e), we[:, 0]))


def _composite_checks(seed: int) -> dict[str, bool]:
    """The composite kernels (fewer launches) against the reference's sequence of operations."""
    rng = np.random.default_rng(seed + 1)
    ops, ref = FusedTritonOps(device="cpu"), NumpyOps()
    out: dict[str, bool] = {}
    rs, sig, cdf = fp.rsqrt_table(), sigmoid_table().astype(np.int64), tb.gelu_cdf_table().astype(np.int64)
    h, n = 24, 40
    lin = _lin(rng, h, n, 127)
    x, res = _acts(rng, (2, 3, n)), _acts(rng, (2, 3, h))
    gamma, beta = rng.integers(-(1 << 26), 1 << 26, h), rng.integers(-(1 << 20), 1 << 20, h)
    for name, bt in (("layer", beta), ("rms", None)):
        got = ops.linear_norm(ops.const(x), ops.prepare_linear(lin), residual=ops.const(res), gamma=ops.const(gamma),
                              beta=None if bt is None else ops.const(bt), eps_q32=4295, rsqrt_table=ops.const(rs))
        want = ref.linear_norm(x, lin, residual=res, gamma=gamma, beta=bt, eps_q32=4295, rsqrt_table=rs)
        out[f"linear_norm {name} + residual"] = _same(got[0], want[0], ops) and _same(got[1], want[1], ops)
        out[f"linear_norm {name}: memo = quantize_rows"] = _memo_ok(got[1], ops)
    gu = _lin(rng, 2 * h, n, 127)
    got = ops.linear_swiglu(ops.const(x), ops.prepare_linear(gu), ops.const(sig))
    out["linear_swiglu"] = _same(got, ref.linear_swiglu(x, gu, sig), ops) and _memo_ok(got, ops)
    got = ops.linear_gelu(ops.const(x), ops.prepare_linear(lin), ops.const(cdf))
    out["linear_gelu"] = _same(got, ref.linear_gelu(x, lin, cdf), ops) and _memo_ok(got, ops)
    chunked = FusedTritonOps(device="cpu", gemm="fp32", max_chunk=16)        # 40 = 4 chunks of 10
    wide = _lin(rng, h, n, 40000)                                            # 3 weight digits
    plin = chunked.prepare_linear(wide)
    out["linear fp32 plan, 4 chunks x 3 digits"] = (plin.plan.chunks, plin.plan.digits) == (4, 3) and _same(
        chunked.linear(chunked.const(x), plin), ref.linear(x, wide), chunked)
    # q|k|v + RoPE, KV cache write at a device slot, attention over the static buffer up to key_len
    b, t, nh, nkv, d, cap = 2, 3, 4, 2, 8, 8
    qkv = _lin(rng, (nh + 2 * nkv) * d, n, 127)
    cos, sin = rng.integers(-(1 << 30), 1 << 30, (16, d // 2)), rng.integers(-(1 << 30), 1 << 30, (16, d // 2))
    pos = rng.integers(0, 16, (b, t))
    got = ops.qkv_rope(ops.const(x), ops.prepare_linear(qkv), pos, ops.const(cos), ops.const(sin), heads=nh,
                       kv_heads=nkv, head_dim=d)
    want = ref.qkv_rope(x, qkv, pos, cos, sin, heads=nh, kv_heads=nkv, head_dim=d)
    out["qkv_rope"] = all(_same(g, w, ops) for g, w in zip(got, want, strict=True))
    kbuf, vbuf = ops.kv_buffer(got[1], cap), ops.kv_buffer(got[2], cap)
    rk, rv = ref.kv_buffer(want[1], cap), ref.kv_buffer(want[2], cap)
    slot = np.array([2])
    ops.kv_write(kbuf, vbuf, got[1], got[2], ops.const(slot))
    ref.kv_write(rk, rv, want[1], want[2], slot)
    out["kv_write at a device slot"] = _same(kbuf, rk, ops) and _same(vbuf, rv, ops)
    valid = np.zeros((b, 1, t, cap), dtype=bool)
    valid[..., :2 + t] = rng.random((b, 1, t, 2 + t)) < 0.6
    for i in range(t):
        valid[:, :, i, 2 + i] = True                                          # every query sees itself
    kw = {"scale_mult": 1 << 30, "scale_shift": 32}
    got_ctx = ops.attention(got[0], kbuf, vbuf, ops.mask(valid), exp_table=ops.const(tb.exp_table().astype(np.int64)),
                            key_len=ops.const(np.array([2 + t])), **kw)
    want_ctx = ref.attention(want[0], rk, rv, valid, exp_table=tb.exp_table().astype(np.int64), **kw)
    out["attention over a static buffer (key_len)"] = _same(got_ctx, want_ctx, ops)
    bounds = np.array([0, 3, 4, 9])
    packed = _acts(rng, (9, 3 * nh * d))
    got = ops.segment_attention(ops.const(packed).to(torch.int32), bounds, heads=nh, head_dim=d,
                                exp_table=ops.const(tb.exp_table().astype(np.int64)), **kw)
    out["segment_attention"] = _same(got, ref.segment_attention(packed, bounds, heads=nh, head_dim=d,
                                                                exp_table=tb.exp_table().astype(np.int64), **kw), ops)
    vocab = 11
    emb = {"e.weight": rng.integers(-127, 128, (vocab, h)).astype(np.int8),
           "e.mult": rng.integers(1 << 30, 1 << 31, vocab).astype(np.int32),
           "e.shift": rng.integers(30, 50, vocab).astype(np.int32)}
    ids = rng.integers(0, vocab, (2, 5))
    out["embedding"] = _same(ops.embedding(ops.prepare_embedding(emb, "e"), ids),
                             ref.embedding(ref.prepare_embedding(emb, "e"), ids), ops)
    # FusedOps' generic paths on these kernels (GEMM attention with the probs/context kernels, plain epilogue, norm)
    q, k, v = _acts(rng, (b, nh, t, d)), _acts(rng, (b, nkv, 5, d)), _acts(rng, (b, nkv, 5, d))
    mask = rng.random((b, 1, t, 5)) < 0.7
    mask[..., 0] = True
    exp = tb.exp_table().astype(np.int64)
    out["FusedOps.attention (GEMM path) hooks"] = _same(FusedOps.attention(
        ops, ops.const(q), ops.const(k), ops.const(v), ops.mask(mask), exp_table=ops.const(exp), **kw),
        ref.attention(q, k, v, mask, exp_table=exp, **kw), ops)
    out["FusedOps.linear / layer_norm hooks"] = _same(FusedOps.linear(ops, ops.const(x), ops.prepare_linear(lin)),
                                                      ref.linear(x, lin), ops) and _same(
        FusedOps._norm_fused(ops, ops.const(res), ops.const(gamma), ops.const(beta), 4295, ops.const(rs)),
        ref.layer_norm(res, gamma, beta, eps_q32=4295, rsqrt_table=rs), ops)
    return out


def _launch_counts() -> dict[str, bool]:
    """Launches per decoder layer (one decode step, and prefill) and per encoder layer, printed; no host sync."""
    from kolm_audit.runtime.launches import LaunchCounter, launch_summary

    out: dict[str, bool] = {}
    model = _conformance("llama", "tiny-llama-int8")
    rt = model._rt
    session = open_session(rt, batch=2, max_len=12)
    with LaunchCounter() as c, c.section(rt, "_block"):
        logits = session.prefill([[5, 6, 7, 8, 9], [11, 12]])
    prefill = c.per_call("_block")
    active = np.arange(2)
    session.step(active, np.argmax(logits, axis=1))
    with LaunchCounter() as c, c.section(rt, "_block"), c.section(rt, "_forward"):
        session.step(active, np.argmax(logits, axis=1))
    decode, fwd = c.per_call("_block"), c.sections.get("_forward", {})
    bert = _conformance("bert", "tiny-bert-int8")._rt
    with LaunchCounter() as c, c.section(bert, "_layer"):
        bert.embed([[101, 5, 6, 7, 102], [101, 9, 102]])
    enc = c.per_call("_layer")
    for name, counts in (("llama decode", decode), ("llama prefill", prefill), ("bert", enc)):
        print(json.dumps({"launches": name, "per_layer": launch_summary(counts), "counts": counts}))
    gemms = sum(n for key, n in decode.items() if key in ("torch:_int_mm", "torch:mm", "torch:bmm"))
    out["llama decode layer: 11 launches, 4 of them GEMMs"] = (sum(decode.values()), gemms) == (11, 4)
    out["bert layer: 11 launches"] = sum(enc.values()) == 11
    out["decode step issues no host synchronization"] = fwd.get("sync", 0) == 0 and decode.get("sync", 0) == 0
    return out


def _conformance(family: str, name: str) -> Model:
    doc = json.loads((ROOT / family / "models" / f"{name}.json").read_text())
    manifest = {"runtime": doc["spec"], "architecture": doc["architecture"], "task": doc["task"],
                "quantization": doc["quantization"]}
    return Model(manifest=manifest, digest=digest_of(doc), ops=FusedTritonOps(device="cpu"),
                 tensors=load_file(str(ROOT / family / "models" / f"{name}.safetensors")))


def _vector_checks() -> dict[str, bool]:
    out: dict[str, bool] = {}
    for family, name, task in VECTORS:
        vecs = [v for v in (loads_strict(p.read_bytes()) for p in sorted((ROOT / family / "vectors").glob("*.json")))
                if v["model"]["name"] == name and v["task"] == task][:3]
        model = _conformance(family, name)
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
    seed = int(argv[0]) if argv else 0
    results = {**_ops_checks(seed), **_composite_checks(seed), **_vector_checks(), **_launch_counts()}
    for name, ok in results.items():
        print(json.dumps({"check": name, "ok": ok}))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
