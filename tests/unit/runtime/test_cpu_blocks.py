"""The composite CPU kernels (``cpu_blocks``) and the operations built on them give exactly the reference's integers.

Each kernel is checked against the numpy reference (:mod:`kolm_audit.runtime.reference`, :mod:`fixedpoint`,
:class:`NumpyOps`) on rows of every kind (all zero, constant, ±2^31 spikes, the full int32 range, rounding ties):
the operation's output *and* the §3.3 quantization of each output row that it hands to the next linear layer.
Linear epilogues run on int32 accumulators (one int8 product: the 32-bit fast path) and int64 ones (multi-digit
weights), with every requantization shift and residuals at the int32 limits (saturation); the composite operations
of :class:`FusedCpuOps` (``linear_norm``, ``linear_gelu``, ``linear_swiglu``, ``embedding``) against their
definition on :class:`NumpyOps`, also with tables outside the fast kernels' bounds (the general path). Attention is
in ``test_cpu_attention.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _fused_fixtures import CDF, I32_MAX, I32_MIN, NPO, RSQRT, SIG, _norm_params, _rows, seeds
from numba import njit
from test_cpu_fused_ops import _layer
from test_cpu_kernels import _epilogue_case

from kolm_audit.runtime import cpu_blocks as kb
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import llama_ops as lo
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime.cpu_fused import FusedCpuOps
from kolm_audit.runtime.cpu_kernels import _quantize_span, pair_table
from kolm_audit.runtime.torch_backend import TorchOps


def _q8_buffers(rows: int, n: int) -> tuple[np.ndarray, ...]:
    return (np.empty((rows, n), np.int32), np.empty((rows, n), np.int8), np.empty(rows, np.int64),
            np.empty(rows, np.int64))


def _assert_quantized(out: np.ndarray, q: np.ndarray, m: np.ndarray, e: np.ndarray) -> None:
    """``(q, m, e)`` are the §3.3 rows of ``out``."""
    wq, wm, we = fp.quantize_rows(out.astype(np.int64))
    assert np.array_equal(q.astype(np.int64), wq)
    assert np.array_equal(m, wm[:, 0]) and np.array_equal(e, we[:, 0])


@settings(max_examples=150, deadline=None)
@given(seed=seeds, rows=st.integers(1, 6), n=st.integers(1, 40),
       shifts=st.sampled_from([(0, 103), (42, 93), (32, 52), (0, 40), (31, 31)]),
       acc_bits=st.sampled_from([8, 22, 31, 40, 46]), res_kind=st.sampled_from(["rows", "max", "min"]))
def test_linear_epilogue_res_equals_reference(seed: int, rows: int, n: int, shifts: tuple[int, int], acc_bits: int,
                                              res_kind: str) -> None:
    """``sat(res + sat(requantize + bias))`` with residuals that saturate the sum at both int32 limits."""
    rng = np.random.default_rng(seed)
    acc, m, e, mult, shift, bias = _epilogue_case(rng, rows, n, *shifts, acc_bits=acc_bits)
    res = {"rows": _rows(rng, (rows, n)), "max": np.full((rows, n), I32_MAX),
           "min": np.full((rows, n), I32_MIN)}[res_kind]
    out = np.empty((rows, n), np.int32)
    kb.linear_epilogue_res(acc, m, e, mult, shift, bias, res.astype(np.int32), out)
    y = fp.saturate_int32(fp.requantize(acc * m[:, None], mult, np.clip(shift - e[:, None], 0, fp.MAX_SHIFT)) + bias)
    assert np.array_equal(out, fp.saturate_int32(res + y))


@settings(max_examples=100, deadline=None)
@given(seed=seeds, rows=st.integers(1, 7), h=st.integers(1, 80), center=st.booleans(), int32=st.booleans())
def test_norm_quant_equals_reference_norm_then_quantize(seed: int, rows: int, h: int, center: bool,
                                                        int32: bool) -> None:
    rng = np.random.default_rng(seed)
    x = _rows(rng, (rows, h))
    gamma, beta, eps = _norm_params(rng, h)
    out, q, m, e = _q8_buffers(rows, h)
    kb.norm_quant(x.astype(np.int32) if int32 else x, gamma, beta if center else np.zeros(0, np.int64), center, eps,
                  RSQRT, out, q, m, e)
    want = (ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT) if center
            else ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))
    assert np.array_equal(out, want)
    _assert_quantized(out, q, m, e)


@settings(max_examples=100, deadline=None)
@given(seed=seeds, rows=st.integers(1, 7), n=st.integers(1, 90))
def test_gelu_and_swiglu_quant_equal_reference(seed: int, rows: int, n: int) -> None:
    """Inputs across and beyond the tables (±2^31), zero rows; outputs saturate (x·Φ(x) at x = 2^31 - 1)."""
    rng = np.random.default_rng(seed)
    x, up = _rows(rng, (rows, n)), _rows(rng, (rows, n))
    out, q, m, e = _q8_buffers(rows, n)
    kb.gelu_quant(x.astype(np.int32), pair_table(CDF), out, q, m, e)
    assert np.array_equal(out, ref.gelu(x, CDF))
    _assert_quantized(out, q, m, e)
    kb.swiglu_quant(x, up, pair_table(SIG), out, q, m, e)
    assert np.array_equal(out, lo.swiglu(x, up, SIG))
    _assert_quantized(out, q, m, e)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, lead=st.sampled_from([(1,), (3,), (2, 4)]), k=st.integers(8, 70), n=st.integers(1, 30),
       res_kind=st.sampled_from(["rows", "max", "min"]), through=st.sampled_from(["plain", "norm", "gelu"]))
def test_residual_linear_equals_reference_on_both_cpu_variants(seed: int, lead: tuple[int, ...], k: int, n: int,
                                                               res_kind: str, through: str) -> None:
    """``linear(x, lin, residual=r) == saturate(r + linear(x, lin))``, with ``x`` straight from a norm or GELU (their
    memo of §3.3 rows feeds the product) or plain."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (n, k))
    lin = ref.IntLinear(weight=w, wmax=int(np.abs(w).max()), mult=rng.integers(1 << 30, 1 << 31, n),
                        shift=rng.integers(36, 50, n), bias=rng.integers(-(1 << 20), 1 << 20, n))
    x = _rows(rng, (*lead, k))
    res = {"rows": _rows(rng, (*lead, n)), "max": np.full((*lead, n), I32_MAX),
           "min": np.full((*lead, n), I32_MIN)}[res_kind]
    gamma, beta, eps = _norm_params(rng, k)
    want_x = {"plain": x, "norm": ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT),
              "gelu": ref.gelu(x, CDF)}[through]
    want = NPO.linear(want_x, lin, residual=res)
    assert np.array_equal(want, fp.saturate_int32(res + ref.linear(want_x, lin)))
    for ops in (FusedCpuOps(), TorchOps(device="cpu")):
        xt = ops.const(x)
        xt = {"plain": xt, "gelu": ops.gelu(xt, ops.const(CDF)),
              "norm": ops.layer_norm(xt, ops.const(gamma), ops.const(beta), eps_q32=eps,
                                     rsqrt_table=ops.const(RSQRT))}[through]
        got = ops.linear(xt, ops.prepare_linear(lin), residual=ops.const(res))
        assert np.array_equal(ops.numpy(got), want)


# ---- linear epilogues with a second operation -------------------------------------------------------------------

def _acc_case(rng: np.random.Generator, rows: int, n: int, shifts: tuple[int, int], acc_bits: int,
              int32: bool) -> tuple[np.ndarray, ...]:
    acc, m, e, mult, shift, bias = _epilogue_case(rng, rows, n, *shifts, acc_bits=min(acc_bits, 31) if int32
                                                  else acc_bits)
    if int32:
        acc = np.clip(acc, I32_MIN, I32_MAX).astype(np.int32)
    return acc, m, e, mult, shift, bias


def _epilogue_ref(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                  bias: np.ndarray) -> np.ndarray:
    return fp.saturate_int32(fp.requantize(acc.astype(np.int64) * m[:, None], mult,
                                           np.clip(shift - e[:, None], 0, fp.MAX_SHIFT)) + bias)


_SHIFTS = st.sampled_from([(0, 103), (42, 93), (32, 52), (0, 40), (31, 31), (36, 44)])


@settings(max_examples=120, deadline=None)
@given(seed=seeds, rows=st.integers(1, 6), h=st.integers(1, 48), shifts=_SHIFTS,
       acc_bits=st.sampled_from([8, 22, 31, 40, 46]), int32=st.booleans(), center=st.booleans(),
       res_kind=st.sampled_from(["rows", "max", "min", "zero"]))
def test_epilogue_norm_quant_equals_residual_then_norm(seed: int, rows: int, h: int, shifts: tuple[int, int],
                                                       acc_bits: int, int32: bool, center: bool,
                                                       res_kind: str) -> None:
    """``s = sat(res + epilogue)``, then LayerNorm/RMSNorm of ``s`` and its §3.3 rows; residuals that saturate ``s``
    at both limits and zero rows (a zero residual with a zero accumulator gives an all-zero norm input)."""
    rng = np.random.default_rng(seed)
    acc, m, e, mult, shift, bias = _acc_case(rng, rows, h, shifts, acc_bits, int32)
    res = {"rows": _rows(rng, (rows, h)), "max": np.full((rows, h), I32_MAX), "min": np.full((rows, h), I32_MIN),
           "zero": np.zeros((rows, h), np.int64)}[res_kind]
    if res_kind == "zero":
        acc[0] = 0
        bias[:] = 0
    gamma, beta, eps = _norm_params(rng, h)
    s, (y, q, qm, qe) = np.empty((rows, h), np.int32), _q8_buffers(rows, h)
    kb.epilogue_norm_quant(acc, m, e, mult, shift, bias, res.astype(np.int32), gamma,
                           beta if center else np.zeros(0, np.int64), center, eps, RSQRT, s, y, q, qm, qe)
    want_s = fp.saturate_int32(res + _epilogue_ref(acc, m, e, mult, shift, bias))
    want_y = (ref.layer_norm(want_s, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT) if center
              else ref.rms_norm(want_s, gamma, eps_q32=eps, rsqrt_table=RSQRT))
    assert np.array_equal(s, want_s) and np.array_equal(y, want_y)
    _assert_quantized(y, q, qm, qe)


@settings(max_examples=120, deadline=None)
@given(seed=seeds, rows=st.integers(1, 6), n=st.integers(1, 48), shifts=_SHIFTS,
       acc_bits=st.sampled_from([8, 22, 31, 40, 46]), int32=st.booleans())
def test_epilogue_gelu_and_swiglu_quant_equal_reference(seed: int, rows: int, n: int, shifts: tuple[int, int],
                                                        acc_bits: int, int32: bool) -> None:
    """GELU / SwiGLU of the saturated linear outputs (which reach ±2^31 - 1 here) and their §3.3 rows."""
    rng = np.random.default_rng(seed)
    acc, m, e, mult, shift, bias = _acc_case(rng, rows, 2 * n, shifts, acc_bits, int32)
    y = _epilogue_ref(acc, m, e, mult, shift, bias)
    out, q, qm, qe = _q8_buffers(rows, 2 * n)
    kb.epilogue_gelu_quant(acc, m, e, mult, shift, bias, pair_table(CDF), out, q, qm, qe)
    assert np.array_equal(out, ref.gelu(y, CDF))
    _assert_quantized(out, q, qm, qe)
    out, q, qm, qe = _q8_buffers(rows, n)
    kb.epilogue_swiglu_quant(acc, m, e, mult, shift, bias, pair_table(SIG), out, q, qm, qe)
    assert np.array_equal(out, lo.swiglu(y[:, :n], y[:, n:], SIG))
    _assert_quantized(out, q, qm, qe)


@njit
def _gelu_in_spans(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                   bias: np.ndarray, pair: np.ndarray, cuts: np.ndarray, out: np.ndarray, q: np.ndarray,
                   qm: np.ndarray, qe: np.ndarray) -> None:
    """A split forward's GELU step: each span of columns ``cuts[i] … cuts[i+1] - 1`` as one part computes it, then
    each span quantized with the whole row's extremes (the spans' own, combined)."""
    rows, spans = acc.shape[0], cuts.size - 1
    hilo = np.empty((rows, 2 * spans), np.int64)
    for i in range(spans):
        a, z = cuts[i], cuts[i + 1]
        kb.epilogue_gelu_span(acc[:, a:z], m, e, mult[a:z], shift[a:z], bias[a:z], pair, out[:, a:z],
                              hilo[:, 2 * i], hilo[:, 2 * i + 1])
    for r in range(rows):
        hi, lo = hilo[r, 0], hilo[r, 1]
        for i in range(1, spans):
            hi, lo = max(hi, hilo[r, 2 * i]), min(lo, hilo[r, 2 * i + 1])
        for i in range(spans):
            qm[r], qe[r] = _quantize_span(out[r, cuts[i]:cuts[i + 1]], hi, lo, q[r, cuts[i]:cuts[i + 1]])


@settings(max_examples=80, deadline=None)
@given(seed=seeds, rows=st.integers(1, 5), n=st.integers(1, 48), shifts=_SHIFTS,
       acc_bits=st.sampled_from([8, 22, 31, 40]), int32=st.booleans(), spans=st.integers(1, 4))
def test_gelu_in_spans_quantized_with_the_whole_rows_step_equals_the_whole_rows(
        seed: int, rows: int, n: int, shifts: tuple[int, int], acc_bits: int, int32: bool, spans: int) -> None:
    """``epilogue_gelu_span`` over spans of columns, then ``_quantize_span`` of each span with the whole row's
    extremes: the reference's GELU and §3.3 rows (a row's largest or smallest value in any one span)."""
    rng = np.random.default_rng(seed)
    acc, m, e, mult, shift, bias = _acc_case(rng, rows, n, shifts, acc_bits, int32)
    inner = np.sort(rng.choice(np.arange(1, n), min(spans - 1, n - 1), replace=False)) if n > 1 else []
    cuts = np.array([0, *inner, n], np.int64)
    out, q, qm, qe = _q8_buffers(rows, n)
    _gelu_in_spans(acc, m, e, mult, shift, bias, pair_table(CDF), cuts, out, q, qm, qe)
    assert np.array_equal(out, ref.gelu(_epilogue_ref(acc, m, e, mult, shift, bias), CDF))
    _assert_quantized(out, q, qm, qe)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n=st.integers(1, 40), h=st.integers(1, 40), with_add=st.booleans())
def test_embedding_rows_equal_reference(seed: int, n: int, h: int, with_add: bool) -> None:
    """Word rows with every stored shift kind (mult 0 with shift 0, 10..62, beyond 62) plus position rows that
    saturate the sum both ways."""
    rng = np.random.default_rng(seed)
    vocab = 12
    w = rng.integers(-127, 128, (vocab, h)).astype(np.int8)
    mult = rng.integers(1 << 30, 1 << 31, vocab)
    shift = rng.choice([10, 20, 33, 40, 62, 63, 80], vocab)
    mult[0], shift[0] = 0, 0
    mult[1], shift[1] = (1 << 31) - 1, 10
    ids = rng.integers(0, vocab, n)
    add = np.concatenate([_rows(rng, (3, h)), np.full((1, h), I32_MAX), np.full((1, h), I32_MIN)])
    rows = rng.integers(0, add.shape[0], n)
    tensors = {"e.weight": w, "e.mult": mult.astype(np.int32), "e.shift": shift.astype(np.int32)}
    want = NPO.embedding(NPO.prepare_embedding(tensors, "e"), ids, add=add if with_add else None,
                         add_rows=rows if with_add else None)
    for ops in (FusedCpuOps(), TorchOps(device="cpu")):
        got = ops.embedding(ops.prepare_embedding(tensors, "e"), ids, add=ops.const(add) if with_add else None,
                            add_rows=rows if with_add else None)
        assert np.array_equal(ops.numpy(got), want)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, lead=st.sampled_from([(1,), (3,), (2, 4)]), wmax=st.sampled_from([127, 2000]),
       k=st.integers(8, 60), n=st.integers(1, 24), center=st.booleans(), through=st.sampled_from(["plain", "norm"]))
def test_composite_ops_equal_their_definition_on_both_cpu_variants(seed: int, lead: tuple[int, ...], wmax: int,
                                                                     k: int, n: int, center: bool,
                                                                     through: str) -> None:
    """``linear_norm``, ``linear_gelu``, ``linear_swiglu`` of :class:`FusedCpuOps` and :class:`TorchOps` equal the
    composition of primitives on :class:`NumpyOps` (int8 weights: one int32 product; wider: several digits), with
    the input straight from a norm (its §3.3 memo feeds the product) or plain; the outputs' memos feed a next linear."""
    rng = np.random.default_rng(seed)
    lin, lin2 = _layer(rng, n, k, wmax, 16, 61), _layer(rng, 2 * n, k, wmax, 16, 61)
    nxt = _layer(rng, 5, n, 127, 30, 50)
    x, res = _rows(rng, (*lead, k)), _rows(rng, (*lead, n))
    gamma, beta, eps = _norm_params(rng, n)
    g0, b0, _ = _norm_params(rng, k)
    want_x = x if through == "plain" else ref.layer_norm(x, g0, b0, eps_q32=eps, rsqrt_table=RSQRT)
    bt = beta if center else None
    want_s, want_y = NPO.linear_norm(want_x, lin, residual=res, gamma=gamma, beta=bt, eps_q32=eps, rsqrt_table=RSQRT)
    want_g = NPO.linear_gelu(want_x, lin, cdf_table=CDF)
    want_w = NPO.linear_swiglu(want_x, lin2, sigmoid_table=SIG)
    for ops in (FusedCpuOps(), TorchOps(device="cpu")):
        xt = ops.const(x)
        if through == "norm":
            xt = ops.layer_norm(xt, ops.const(g0), ops.const(b0), eps_q32=eps, rsqrt_table=ops.const(RSQRT))
        p, p2, pn = ops.prepare_linear(lin), ops.prepare_linear(lin2), ops.prepare_linear(nxt)
        s, y = ops.linear_norm(xt, p, residual=ops.const(res), gamma=ops.const(gamma),
                               beta=None if bt is None else ops.const(bt), eps_q32=eps, rsqrt_table=ops.const(RSQRT))
        assert np.array_equal(ops.numpy(s), want_s) and np.array_equal(ops.numpy(y), want_y)
        g = ops.linear_gelu(xt, p, cdf_table=ops.const(CDF))
        w = ops.linear_swiglu(xt, p2, sigmoid_table=ops.const(SIG))
        assert np.array_equal(ops.numpy(g), want_g) and np.array_equal(ops.numpy(w), want_w)
        for out, want in ((y, want_y), (g, want_g), (w, want_w)):
            assert np.array_equal(ops.numpy(ops.linear(out, pn)), NPO.linear(want, nxt))


def test_tables_outside_the_fast_kernels_bounds_take_the_general_path() -> None:
    """A table with an entry or a step beyond int32 has no pair table; the operations then compose the general
    kernels and still give the reference's integers."""
    rng = np.random.default_rng(3)
    wide_cdf, wide_sig = CDF.copy(), SIG.copy()
    wide_cdf[5:9] = [1 << 31, -(1 << 31) - 7, 1 << 33, 3]
    wide_sig[2000] = -(1 << 32)
    assert pair_table(wide_cdf) is None and pair_table(wide_sig) is None
    lin = _layer(rng, 12, 16, 127, 30, 50)
    x = _rows(rng, (4, 16))
    x[:, 0] = np.array([-(8 << 16) + 5 * 512, -(8 << 16) + 7 * 512, 1000, 0])    # on the odd entries
    ops = FusedCpuOps()
    got = ops.linear_gelu(ops.const(x), ops.prepare_linear(lin), cdf_table=ops.const(wide_cdf))
    assert np.array_equal(ops.numpy(got), NPO.linear_gelu(x, lin, cdf_table=wide_cdf))
    got = ops.linear_swiglu(ops.const(x), ops.prepare_linear(lin), sigmoid_table=ops.const(wide_sig))
    assert np.array_equal(ops.numpy(got), NPO.linear_swiglu(x, lin, sigmoid_table=wide_sig))
    xi = torch.from_numpy(x.astype(np.int32))
    assert np.array_equal(ops.numpy(ops.gelu(xi, ops.const(wide_cdf))), ref.gelu(x, wide_cdf))
    assert np.array_equal(ops.numpy(ops.swiglu(xi, xi, ops.const(wide_sig))), lo.swiglu(x, x, wide_sig))
