"""The fused CPU backend (numba kernels + :class:`FusedCpuOps`) gives exactly the integers of the numpy reference.

Kernels are called directly where their signature is stable (``quantize_rows``, ``linear_epilogue``, ``norm``) and
through :class:`FusedCpuOps` otherwise; every result is compared with :mod:`kolm_audit.runtime.fixedpoint`,
:mod:`~kolm_audit.runtime.reference`, :mod:`~kolm_audit.runtime.llama_ops` or :class:`NumpyOps` on the same input.
Inputs mix extreme rows (all zero, constant, one value at ±2^31 among small ones, the full int32 range), strided
(non-contiguous) views and, with ``threads=2``, row counts large enough that the work is split between threads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from kolm_audit.runtime import cpu_fused as cf
from kolm_audit.runtime import cpu_kernels as kn
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import llama_ops as lo
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime import tables as tb
from kolm_audit.runtime.models.llama_build import sigmoid_table
from kolm_audit.runtime.ops import NumpyOps, get_ops
from kolm_audit.runtime.torch_backend import TorchOps

FusedCpuOps = cf.FusedCpuOps
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
EXP, CDF, RSQRT, SIG = (tb.exp_table().astype(np.int64), tb.gelu_cdf_table().astype(np.int64), fp.rsqrt_table(),
                        sigmoid_table().astype(np.int64))
seeds = st.integers(0, 2**32 - 1)
ROW_KINDS = ("zero", "const", "spike", "full", "small", "mixed", "min", "tie")
NPO = NumpyOps()


def _rows(rng: np.random.Generator, shape: tuple[int, ...], *, hi: int = I32_MAX) -> np.ndarray:
    """Q.16 activations int64 in ``[-2^31, hi]``, each row (last axis) of a random kind: all zero, constant, one
    spike at ±2^31 among small values, the full int32 range, small, mixed magnitudes, holding ``-2^31``, or "tie":
    max-abs an exact multiple 127·c and the other values at half-steps ``j·c ± c/2`` (rounding ties)."""
    lead, n = shape[:-1], shape[-1]
    flat = np.empty((int(np.prod(lead, dtype=np.int64)), n), dtype=np.int64)
    for r in range(flat.shape[0]):
        kind = ROW_KINDS[int(rng.integers(len(ROW_KINDS)))]
        if kind == "zero":
            row = np.zeros(n, dtype=np.int64)
        elif kind == "const":
            row = np.full(n, int(rng.integers(I32_MIN, hi, endpoint=True)))
        elif kind == "spike":
            row = rng.integers(-(1 << 8), 1 << 8, n)
            row[int(rng.integers(n))] = int(rng.choice([I32_MIN, hi]))
        elif kind == "full":
            row = rng.integers(I32_MIN, hi, n, endpoint=True)
        elif kind == "small":
            row = rng.integers(-3, 4, n)
        elif kind == "mixed":
            row = rng.integers(I32_MIN, hi, n, endpoint=True) >> rng.integers(0, 32, n)
        elif kind == "min":
            row = rng.integers(-(1 << 20), 1 << 20, n)
            row[int(rng.integers(n))] = I32_MIN
        else:
            c = int(rng.integers(1, (1 << 31) // 127)) >> int(rng.integers(0, 24))
            row = rng.integers(-126, 127, n) * c + rng.choice([0, c // 2, -(c // 2), (c + 1) // 2], n)
            row[int(rng.integers(n))] = int(rng.choice([127, -127])) * c
        flat[r] = row
    return flat.reshape(shape)


@contextmanager
def _torch_threads() -> Iterator[None]:
    """Restore torch's global thread count (TorchOps(threads=n) sets it)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fused(threads: int | None = None) -> cf.FusedCpuOps:
    return FusedCpuOps(threads=threads)


def _np(ops: TorchOps, x: torch.Tensor) -> np.ndarray:
    return ops.numpy(x)


def _t(ops: TorchOps, x: np.ndarray, int32: bool) -> torch.Tensor:
    """``x`` as the backend's int64 tensor, or as int32 (what fused kernels hand to the next operation)."""
    t = ops.const(x)
    return t.to(torch.int32) if int32 else t


# ---- kernels, called directly ----------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(seed=seeds, rows=st.integers(1, 9), k=st.integers(1, 70), int32=st.booleans(),
       qtype=st.sampled_from([np.int8, np.float32]))
def test_quantize_rows_kernel_equals_reference(seed: int, rows: int, k: int, int32: bool, qtype: type) -> None:
    """``q`` as int8 (linear operands) or float32 (attention keys, exact); x int64 (may hold +2^31) or int32."""
    rng = np.random.default_rng(seed)
    x = _rows(rng, (rows, k), hi=I32_MAX if int32 else 1 << 31)
    xin = x.astype(np.int32) if int32 else x
    q, m, e = np.empty((rows, k), qtype), np.empty(rows, np.int64), np.empty(rows, np.int64)
    kn.quantize_rows(xin, q, m, e)
    wq, wm, we = fp.quantize_rows(x)
    assert np.array_equal(q.astype(np.int64), wq)
    assert np.array_equal(m, wm[:, 0]) and np.array_equal(e, we[:, 0])


def _epilogue_case(rng: np.random.Generator, rows: int, n: int, shift_lo: int, shift_hi: int,
                   acc_bits: int) -> tuple[np.ndarray, ...]:
    """Random (acc, m, e, mult, shift, bias) inside the reference's bounds: |acc·m| < 2^62 and, where the
    effective shift is below 31, |acc·m·mult / 2^s| < 2^61 (requantize's precondition); offending acc entries
    are shrunk until they comply."""
    e = rng.integers(0, fp.MAX_STEP_EXP + 1, rows)
    m = rng.integers(1, (1 << fp.STEP_MANTISSA_BITS) + 1, rows)
    m[rng.random(rows) < 0.2] = 1 << fp.STEP_MANTISSA_BITS
    acc = rng.integers(-(1 << acc_bits), 1 << acc_bits, (rows, n), endpoint=True)
    mult = rng.integers(1 << 30, 1 << 31, n)
    pick = rng.random(n)
    mult[pick < 0.15] = 0
    neg = (pick >= 0.15) & (pick < 0.3)
    mult[neg] = -rng.integers(1, 1 << 31, int(neg.sum()))               # |mult| < 2^31, negative
    mult[(pick >= 0.3) & (pick < 0.35)] = (1 << 31) - 1
    shift = rng.integers(shift_lo, shift_hi + 1, n)
    bias = rng.integers(I32_MIN, I32_MAX, n, endpoint=True) >> rng.integers(0, 32, n)
    for r in range(rows):
        for j in range(n):
            s = min(max(int(shift[j]) - int(e[r]), 0), fp.MAX_SHIFT)
            while abs(int(acc[r, j]) * int(m[r])) >= 1 << 62 or (
                    s < 31 and abs(int(acc[r, j]) * int(m[r]) * int(mult[j])) >> s >= 1 << 61):
                acc[r, j] //= 2
    return acc, m, e, mult, shift, bias


@settings(max_examples=300, deadline=None)
@given(seed=seeds, rows=st.integers(1, 6), n=st.integers(1, 40),
       shifts=st.sampled_from([(0, 103), (42, 93), (32, 52), (0, 40), (25, 35), (94, 103), (31, 31)]),
       acc_bits=st.sampled_from([8, 22, 31, 40, 46]), int32=st.booleans(), out32=st.booleans())
def test_linear_epilogue_kernel_equals_reference(seed: int, rows: int, n: int, shifts: tuple[int, int],
                                                 acc_bits: int, int32: bool, out32: bool) -> None:
    """Every shift - e: negative, < 31, == 31, >= 32, > 93 (clipped); mult 0, negative, up to 2^31 - 1; acc and
    out int32 or int64."""
    rng = np.random.default_rng(seed)
    acc, m, e, mult, shift, bias = _epilogue_case(rng, rows, n, *shifts, acc_bits=min(acc_bits, 31) if int32
                                                  else acc_bits)
    if int32:
        acc = np.clip(acc, I32_MIN, I32_MAX)
    out = np.empty((rows, n), np.int32 if out32 else np.int64)
    kn.linear_epilogue(acc.astype(np.int32) if int32 else acc, m, e, mult, shift, bias, out)
    want = fp.saturate_int32(fp.requantize(acc * m[:, None], mult, shift - e[:, None]) + bias)
    assert np.array_equal(out, want)


def test_linear_epilogue_kernel_extremes() -> None:
    """Hand-picked corners: |acc·m| just below 2^62, the rounding tie of every branch, saturation both ways."""
    top = (1 << 62) - 1
    acc = np.array([[top >> 15, -(top >> 15), 1, -1, 0, (1 << 31) - 1],
                    [3, -3, 5, -5, 1 << 20, -(1 << 20)]], dtype=np.int64)
    m = np.array([1 << 15, 1], dtype=np.int64)
    mult = np.array([(1 << 31) - 1, -((1 << 31) - 1), 1 << 30, 1 << 30, 0, 1 << 30], dtype=np.int64)
    bias = np.array([0, 0, I32_MAX, I32_MIN, -7, 1], dtype=np.int64)
    for shift_row in ([93, 93, 31, 31, 0, 40], [103, 62, 30, 1, 5, 32], [0, 0, 0, 0, 0, 0], [32] * 6, [31] * 6):
        for e in ([0, 0], [10, 3]):
            shift, ee = np.array(shift_row, dtype=np.int64), np.array(e, dtype=np.int64)
            bound = [[abs(int(a) * int(mm) * int(mu)) >> max(int(s) - int(x), 0) < 1 << 61
                      or int(s) - int(x) >= 31 for a, mu, s in zip(row, mult, shift, strict=True)]
                     for row, mm, x in zip(acc, m, ee, strict=True)]
            a2 = np.where(bound, acc, 0)
            out = np.empty(a2.shape, np.int64)
            kn.linear_epilogue(a2, m, ee, mult, shift, bias, out)
            want = fp.saturate_int32(fp.requantize(a2 * m[:, None], mult, shift - ee[:, None]) + bias)
            assert np.array_equal(out, want), (shift_row, e)


def _norm_params(rng: np.random.Generator, h: int) -> tuple[np.ndarray, np.ndarray, int]:
    gamma = rng.integers(-(1 << 27), 1 << 27, h) >> rng.integers(0, 20, h)
    gamma[rng.random(h) < 0.1] = 0
    beta = rng.integers(I32_MIN, I32_MAX, h) >> rng.integers(0, 32, h)
    eps = int(rng.choice([0, 1, 42950, 1 << 20, (1 << 32) - 1, int(rng.integers(0, 1 << 32))]))
    return gamma, beta, eps


@settings(max_examples=200, deadline=None)
@given(seed=seeds, rows=st.integers(1, 8), h=st.integers(1, 96), gamma32=st.booleans())
def test_norm_kernel_equals_layer_norm_and_rms_norm(seed: int, rows: int, h: int, gamma32: bool) -> None:
    rng = np.random.default_rng(seed)
    x = _rows(rng, (rows, h))
    gamma, beta, eps = _norm_params(rng, h)
    g_in = gamma.astype(np.int32) if gamma32 else gamma
    out = np.empty((rows, h), np.int64)
    kn.norm(x, g_in, beta, True, eps, RSQRT, out)
    assert np.array_equal(out, ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT))
    kn.norm(x, g_in, np.zeros(0, np.int64), False, eps, RSQRT, out)
    assert np.array_equal(out, ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))


def test_norm_kernel_on_the_widest_rows() -> None:
    """H = 2^14 (the spec's maximum) with rows of full-range values: the largest Σc² the kernel accumulates."""
    rng = np.random.default_rng(3)
    h = ref.MAX_NORM_DIM
    x = np.stack([rng.integers(I32_MIN, I32_MAX, h, endpoint=True), np.full(h, I32_MIN),
                  np.where(np.arange(h) % 2 == 0, I32_MIN, I32_MAX), np.zeros(h, np.int64)])
    gamma, beta, eps = _norm_params(rng, h)
    out = np.empty(x.shape, np.int64)
    kn.norm(x, gamma, beta, True, eps, RSQRT, out)
    assert np.array_equal(out, ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT))
    kn.norm(x, gamma, np.zeros(0, np.int64), False, eps, RSQRT, out)
    assert np.array_equal(out, ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))


def test_norm_kernel_at_every_rsqrt_table_knot() -> None:
    """Variances whose normalised mantissa lands on, just below and just above knots of the rsqrt table
    (2^28 + i·2^18: every 7th one and the first and last three, 2^30 included), for the exact (j = 0) and the
    rounded (j = 1) mantissa."""
    c = 1 << 12                                                       # rows [c, -c, ...]: mean 0, variance c²
    x = np.tile(np.array([[c, -c, c, -c]]), (2, 1)) * np.array([[1], [-1]])
    gamma = np.array([(1 << 27) - 1, 1 << 26, -(1 << 27), 12345679])
    beta = np.array([0, 1, -1, 1 << 20])
    out = np.empty(x.shape, np.int64)
    last = fp.RSQRT_TABLE_LEN - 1
    for i in sorted({*range(0, last, 7), 1, 2, last - 2, last - 1, last}):
        knot = (1 << 28) + (i << fp.RSQRT_STEP_SHIFT)
        for v in {knot - 1, knot, knot + 1, 4 * knot - 2, 4 * knot + 1}:
            eps = v - c * c
            if not 0 <= eps < 1 << 32:
                continue
            kn.norm(x, gamma, beta, True, eps, RSQRT, out)
            assert np.array_equal(out, ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT)), v
            kn.norm(x, gamma, np.zeros(0, np.int64), False, eps, RSQRT, out)
            assert np.array_equal(out, ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT)), v


# ---- FusedCpuOps methods vs the numpy reference ----------------------------------------------------------------

def _layer(rng: np.random.Generator, n: int, k: int, wmax: int, shift_lo: int, shift_hi: int) -> ref.IntLinear:
    w = rng.integers(-wmax, wmax + 1, (n, k))
    w[rng.integers(n), rng.integers(k)] = -wmax                          # the largest digit count is present
    mult = rng.integers(1 << 30, 1 << 31, n)
    mult[rng.random(n) < 0.1] = 0
    return ref.IntLinear(weight=w, wmax=int(np.abs(w).max()), mult=mult, shift=rng.integers(shift_lo, shift_hi + 1, n),
                         bias=rng.integers(I32_MIN, I32_MAX, n, endpoint=True) >> rng.integers(0, 32, n))


@settings(max_examples=150, deadline=None)
@given(seed=seeds, wmax=st.sampled_from([1, 7, 127, 128, 2000, 40000, 1 << 20]), k=st.integers(1, 200),
       n=st.integers(1, 40), lead=st.sampled_from([(1,), (4,), (2, 3)]),
       shifts=st.sampled_from([(16, 61), (42, 93), (0, 93), (31, 33)]), int32=st.booleans())
def test_fused_linear_equals_reference_for_int8_and_multi_digit_weights(
        seed: int, wmax: int, k: int, n: int, lead: tuple[int, ...], shifts: tuple[int, int], int32: bool) -> None:
    """wmax 127 is one base-256 digit; 128 and 2000 two; 40000 (int4/NVFP4 scaled) and 2^20 three."""
    rng = np.random.default_rng(seed)
    if wmax * fp.QMAX * k * (1 << fp.STEP_MANTISSA_BITS) >= 1 << 62:
        k = ((1 << 62) - 1) // (wmax * fp.QMAX * (1 << fp.STEP_MANTISSA_BITS))
    lin = _layer(rng, n, k, wmax, *shifts)
    x = _rows(rng, (*lead, k))
    ops = _fused()
    assert np.array_equal(_np(ops, ops.linear(_t(ops, x, int32), ops.prepare_linear(lin))), ref.linear(x, lin))


@settings(max_examples=100, deadline=None)
@given(seed=seeds, lead=st.sampled_from([(1, 1), (2, 3), (3, 5), (1, 17)]), h=st.integers(1, 80), int32=st.booleans())
def test_fused_norms_equal_reference(seed: int, lead: tuple[int, int], h: int, int32: bool) -> None:
    rng = np.random.default_rng(seed)
    x = _rows(rng, (*lead, h))
    gamma, beta, eps = _norm_params(rng, h)
    ops = _fused()
    t, rs = _t(ops, x, int32), ops.const(RSQRT)
    assert np.array_equal(_np(ops, ops.layer_norm(t, ops.const(gamma), ops.const(beta), eps_q32=eps, rsqrt_table=rs)),
                          ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT))
    assert np.array_equal(_np(ops, ops.rms_norm(t, ops.const(gamma), eps_q32=eps, rsqrt_table=rs)),
                          ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))


def _attn_inputs(rng: np.random.Generator, b: int, hq: int, hk: int, tq: int, tk: int, d: int,
                 mask: str) -> tuple[np.ndarray, ...]:
    q, k, v = _rows(rng, (b, hq, tq, d)), _rows(rng, (b, hk, tk, d)), _rows(rng, (b, hk, tk, d))
    shape = {"causal": (b, 1, tq, tk), "padding": (b, 1, 1, tk), "per_head": (b, hq, tq, tk)}[mask]
    valid = rng.random(shape) < 0.6
    valid[..., int(rng.integers(tk))] = True                             # every row has >= 1 valid key
    return q, k, v, valid


def _attention_both(ops: TorchOps, q: np.ndarray, k: np.ndarray, v: np.ndarray, valid: np.ndarray,
                    int32: bool = False) -> None:
    d = q.shape[-1]
    sm, ss = (int(a) for a in tb.attn_scale(d))
    kw = {"scale_mult": sm, "scale_shift": ss}
    got = ops.attention(_t(ops, q, int32), _t(ops, k, int32), _t(ops, v, int32), ops.mask(valid),
                        exp_table=ops.const(EXP), **kw)
    assert np.array_equal(_np(ops, got), NPO.attention(q, k, v, valid, exp_table=EXP, **kw))


@settings(max_examples=150, deadline=None)
@given(seed=seeds, b=st.integers(1, 3), heads=st.sampled_from([(1, 1), (3, 3), (4, 2), (6, 2), (4, 1)]),
       tq=st.integers(1, 7), tk=st.integers(1, 11), d=st.sampled_from([2, 8, 16, 64, 128]),
       mask=st.sampled_from(["causal", "padding", "per_head"]), int32=st.booleans())
def test_fused_attention_equals_reference_with_grouped_query_heads(seed: int, b: int, heads: tuple[int, int], tq: int,
                                                                   tk: int, d: int, mask: str, int32: bool) -> None:
    rng = np.random.default_rng(seed)
    _attention_both(_fused(), *_attn_inputs(rng, b, heads[0], heads[1], tq, tk, d, mask), int32=int32)


def test_fused_attention_on_extreme_and_one_key_rows() -> None:
    """All-zero queries/keys, saturated ±2^31 keys, a single valid key per row, and one key in all."""
    rng = np.random.default_rng(11)
    q = np.zeros((2, 4, 3, 16), np.int64)
    q[1] = I32_MAX
    k = np.full((2, 2, 5, 16), I32_MIN)
    k[0, 0] = 0
    v = np.full((2, 2, 5, 16), I32_MAX)
    v[:, 1] = I32_MIN
    valid = np.zeros((2, 1, 3, 5), bool)
    valid[..., 2] = True
    ops = _fused()
    _attention_both(ops, q, k, v, valid)
    _attention_both(ops, _rows(rng, (1, 2, 4, 8)), _rows(rng, (1, 1, 1, 8)), _rows(rng, (1, 1, 1, 8)),
                    np.ones((1, 1, 1, 1), bool))


@settings(max_examples=100, deadline=None)
@given(seed=seeds, b=st.integers(1, 3), nh=st.integers(1, 4), t=st.integers(1, 9), d=st.sampled_from([2, 8, 64]),
       n=st.integers(1, 70), int32=st.booleans())
def test_fused_rope_swiglu_gelu_equal_reference(seed: int, b: int, nh: int, t: int, d: int, n: int,
                                                int32: bool) -> None:
    rng = np.random.default_rng(seed)
    ops = _fused()
    x = _rows(rng, (b, nh, t, d))
    cos = rng.integers(-(1 << 30), (1 << 30) + 1, (20, d // 2))
    sin = rng.integers(-(1 << 30), (1 << 30) + 1, (20, d // 2))
    cos[0], sin[0] = 1 << 30, 0
    pos = rng.integers(0, 20, (b, t))
    assert np.array_equal(_np(ops, ops.rope(_t(ops, x, int32), pos, ops.const(cos), ops.const(sin))),
                          lo.rope(x, pos, cos, sin))
    gate, up = _rows(rng, (b, t, n)), _rows(rng, (b, t, n))
    assert np.array_equal(_np(ops, ops.swiglu(_t(ops, gate, int32), _t(ops, up, int32), ops.const(SIG))),
                          lo.swiglu(gate, up, SIG))
    assert np.array_equal(_np(ops, ops.gelu(_t(ops, gate, int32), ops.const(CDF))), ref.gelu(gate, CDF))


def test_fused_pointwise_over_the_whole_interpolated_range() -> None:
    """Every Q.16 input across the interpolated parts of the sigmoid (±16) and Φ (±8) tables, where each lookup
    rounds ``(T[i+1] - T[i])·f / 2^9``: GELU exhaustively, SwiGLU times full-range ``up`` values so that a sigmoid
    lookup off by one always shows; then GELU of values spread up to ±2^31."""
    rng = np.random.default_rng(8)
    gate = np.arange(-(17 << 16), 17 << 16, dtype=np.int64).reshape(-1, 1024)
    up = rng.integers(I32_MIN, I32_MAX, gate.shape, endpoint=True)
    ops = _fused()
    assert np.array_equal(_np(ops, ops.swiglu(ops.const(gate), ops.const(up), ops.const(SIG))),
                          lo.swiglu(gate, up, SIG))
    assert np.array_equal(_np(ops, ops.gelu(ops.const(gate), ops.const(CDF))), ref.gelu(gate, CDF))
    big = np.clip(gate[::4] * 1024 + rng.integers(0, 1024, gate[::4].shape), I32_MIN, I32_MAX)
    assert np.array_equal(_np(ops, ops.gelu(ops.const(big), ops.const(CDF))), ref.gelu(big, CDF))


def test_fused_ops_accept_int32_tables() -> None:
    """Models may keep their tables as int32 tensors: same integers as the int64 ones."""
    rng = np.random.default_rng(4)
    ops = _fused()
    x = _rows(rng, (3, 40))
    for table, fn in ((SIG, lambda t: ops.swiglu(ops.const(x), ops.const(x[::-1]), t)),
                      (CDF, lambda t: ops.gelu(ops.const(x), t))):
        assert np.array_equal(_np(ops, fn(torch.from_numpy(table.astype(np.int32)))),
                              _np(ops, fn(ops.const(table))))
    gamma, _, eps = _norm_params(rng, 40)
    assert np.array_equal(
        _np(ops, ops.rms_norm(ops.const(x), ops.const(gamma), eps_q32=eps,
                              rsqrt_table=torch.from_numpy(RSQRT.astype(np.int32)))),
        ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))


# ---- strided inputs and thread splits ----------------------------------------------------------------------------

def test_fused_ops_on_non_contiguous_inputs() -> None:
    """Slices of bigger tensors (``x[..., :n]``, ``x[:, -1:, :]``) and head views give the contiguous results."""
    rng = np.random.default_rng(21)
    ops = _fused()
    big = _rows(rng, (2, 5, 72))
    tb_ = ops.const(big)
    lin = _layer(rng, 24, 64, 40000, 16, 61)
    plin = ops.prepare_linear(lin)
    gamma, beta, eps = _norm_params(rng, 64)
    g, bt, rs = ops.const(gamma), ops.const(beta), ops.const(RSQRT)
    views = ((tb_[..., :64], big[..., :64]), (tb_[:, -1:, 4:68], big[:, -1:, 4:68]), (tb_[:, ::2, 8:], big[:, ::2, 8:]),
             (tb_.transpose(0, 1)[..., :64], big.swapaxes(0, 1)[..., :64]))
    for view, arr in views:
        assert not view.is_contiguous()
        assert np.array_equal(_np(ops, ops.linear(view, plin)), ref.linear(arr, lin))
        assert np.array_equal(_np(ops, ops.layer_norm(view, g, bt, eps_q32=eps, rsqrt_table=rs)),
                              ref.layer_norm(arr, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT))
        assert np.array_equal(_np(ops, ops.rms_norm(view, g, eps_q32=eps, rsqrt_table=rs)),
                              ref.rms_norm(arr, gamma, eps_q32=eps, rsqrt_table=RSQRT))
        assert np.array_equal(_np(ops, ops.gelu(view, ops.const(CDF))), ref.gelu(arr, CDF))
        assert np.array_equal(_np(ops, ops.swiglu(view, view.flip(-1), ops.const(SIG))),
                              lo.swiglu(arr, arr[..., ::-1], SIG))
    heads = ops.heads(tb_, 3, 24)                                              # [2, 3, 5, 24], permuted view
    arr = NPO.heads(big, 3, 24)
    cos = rng.integers(-(1 << 30), (1 << 30) + 1, (8, 12))
    sin = rng.integers(-(1 << 30), (1 << 30) + 1, (8, 12))
    pos = rng.integers(0, 8, (2, 5))
    assert np.array_equal(_np(ops, ops.rope(heads, pos, ops.const(cos), ops.const(sin))), lo.rope(arr, pos, cos, sin))
    valid = np.ones((2, 1, 1, 5), bool)
    sm, ss = (int(a) for a in tb.attn_scale(24))
    kw = {"scale_mult": sm, "scale_shift": ss}
    got = ops.attention(heads, heads[:, :1], heads[:, 1:2], ops.mask(valid), exp_table=ops.const(EXP), **kw)
    assert np.array_equal(_np(ops, got), NPO.attention(arr, arr[:, :1], arr[:, 1:2], valid, exp_table=EXP, **kw))


def _split_rows(per_row: int) -> int:
    """An odd row count whose work is at least 1.5 · _PAR_MIN elements, so two threads each get rows."""
    return (3 * cf._PAR_MIN // (2 * per_row)) | 1


def _one_and_two_threads(run: Callable[[cf.FusedCpuOps], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with _torch_threads():
        one = run(_fused(threads=1))
        two_ops = _fused(threads=2)
        two = run(two_ops)
    assert two_ops._pool is not None                                          # the work really was split
    return one, two


def test_two_threads_give_the_one_thread_integers() -> None:
    rng = np.random.default_rng(33)
    n, k = 96, 48
    rows = _split_rows(n)
    x = _rows(rng, (rows, k))
    lin = _layer(rng, n, k, 2000, 0, 93)
    one, two = _one_and_two_threads(lambda ops: _np(ops, ops.linear(ops.const(x), ops.prepare_linear(lin))))
    assert np.array_equal(one, two) and np.array_equal(one, ref.linear(x, lin))

    h = 64
    xn = _rows(rng, (_split_rows(h), h))
    gamma, beta, eps = _norm_params(rng, h)
    for center in (True, False):
        def norm(ops: cf.FusedCpuOps, center: bool = center) -> np.ndarray:
            t, g, rs = ops.const(xn), ops.const(gamma), ops.const(RSQRT)
            out = ops.layer_norm(t, g, ops.const(beta), eps_q32=eps, rsqrt_table=rs) if center else \
                ops.rms_norm(t, g, eps_q32=eps, rsqrt_table=rs)
            return _np(ops, out)
        one, two = _one_and_two_threads(norm)
        want = ref.layer_norm(xn, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT) if center else \
            ref.rms_norm(xn, gamma, eps_q32=eps, rsqrt_table=RSQRT)
        assert np.array_equal(one, two) and np.array_equal(one, want)

    gate, up = _rows(rng, (xn.shape[0], h)), _rows(rng, (xn.shape[0], h))
    one, two = _one_and_two_threads(lambda ops: _np(ops, ops.swiglu(ops.const(gate), ops.const(up), ops.const(SIG))))
    assert np.array_equal(one, two) and np.array_equal(one, lo.swiglu(gate, up, SIG))
    one, two = _one_and_two_threads(lambda ops: _np(ops, ops.gelu(ops.const(gate), ops.const(CDF))))
    assert np.array_equal(one, two) and np.array_equal(one, ref.gelu(gate, CDF))


def test_two_threads_give_the_one_thread_attention_and_rope() -> None:
    rng = np.random.default_rng(34)
    b, hq, hk, d = 3, 4, 2, 64                                                # split over the batch axis
    t = max(16, int(np.ceil(np.sqrt(1.5 * cf._PAR_MIN / (b * hq)))))         # scores: b·hq·t² >= 1.5·_PAR_MIN
    assert b * hq * t * min(t, d) >= cf._PAR_MIN
    q, k, v, valid = _attn_inputs(rng, b, hq, hk, t, t, d, "causal")
    sm, ss = (int(a) for a in tb.attn_scale(d))
    kw = {"scale_mult": sm, "scale_shift": ss}
    one, two = _one_and_two_threads(lambda ops: _np(ops, ops.attention(
        ops.const(q), ops.const(k), ops.const(v), ops.mask(valid), exp_table=ops.const(EXP), **kw)))
    assert np.array_equal(one, two) and np.array_equal(one, NPO.attention(q, k, v, valid, exp_table=EXP, **kw))
    cos = rng.integers(-(1 << 30), (1 << 30) + 1, (t, d // 2))
    sin = rng.integers(-(1 << 30), (1 << 30) + 1, (t, d // 2))
    pos = np.tile(np.arange(t), (b, 1))
    one, two = _one_and_two_threads(lambda ops: _np(ops, ops.rope(ops.const(q), pos, ops.const(cos), ops.const(sin))))
    assert np.array_equal(one, two) and np.array_equal(one, lo.rope(q, pos, cos, sin))


# ---- backend selection -------------------------------------------------------------------------------------------

def test_get_ops_cpu_is_fused_when_numba_is_importable_and_plain_when_asked() -> None:
    assert importlib.util.find_spec("numba") is not None
    fused, plain = get_ops("cpu"), get_ops("cpu", fused=False)
    assert type(fused) is FusedCpuOps
    assert type(plain) is TorchOps
    assert fused.name == plain.name == "cpu"
