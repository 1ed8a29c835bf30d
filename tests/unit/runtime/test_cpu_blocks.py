"""The composite CPU kernels (``cpu_blocks``) and the operations built on them give exactly the reference's integers.

Each kernel is checked against the numpy reference (:mod:`kolm_audit.runtime.reference`, :mod:`fixedpoint`,
:class:`NumpyOps`) on rows of every kind (all zero, constant, ±2^31 spikes, the full int32 range, rounding ties):
the operation's output *and* the §3.3 quantization of each output row that it hands to the next linear layer.
Packed attention is checked with requests of one token, of very different lengths and a long one; the residual
linear with residuals at the int32 limits (saturation); the packed BERT forward against the padded one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _fused_fixtures import CDF, EXP, I32_MAX, I32_MIN, NPO, RSQRT, SIG, _norm_params, _rows, seeds
from test_cpu_kernels import _epilogue_case

from kolm_audit.compile import tables as tb
from kolm_audit.runtime import cpu_blocks as kb
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import llama_ops as lo
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime.cpu_fused import FusedCpuOps
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
    kb.gelu_quant(x.astype(np.int32), CDF, out, q, m, e)
    assert np.array_equal(out, ref.gelu(x, CDF))
    _assert_quantized(out, q, m, e)
    kb.swiglu_quant(x, up, SIG, out, q, m, e)
    assert np.array_equal(out, lo.swiglu(x, up, SIG))
    _assert_quantized(out, q, m, e)


def _packed_case(rng: np.random.Generator, lens: list[int], nh: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return _rows(rng, (int(bounds[-1]), 3 * nh * d)), bounds


def _packed_both(qkv: np.ndarray, bounds: np.ndarray, nh: int, d: int) -> None:
    sm, ss = (int(a) for a in tb.attn_scale(d))
    want = NPO.segment_attention(qkv, bounds, heads=nh, head_dim=d, scale_mult=sm, scale_shift=ss, exp_table=EXP)
    out, q, m, e = _q8_buffers(qkv.shape[0], nh * d)
    kb.packed_attention(qkv.astype(np.int32), bounds, nh, d, sm, ss, EXP, out, q, m, e)
    assert np.array_equal(out, want)
    _assert_quantized(out, q, m, e)
    for ops, dtype in ((FusedCpuOps(), torch.int32), (TorchOps(device="cpu"), torch.int64)):   # int32: fused outputs
        got = ops.segment_attention(ops.const(qkv).to(dtype), bounds, heads=nh, head_dim=d, scale_mult=sm,
                                    scale_shift=ss, exp_table=ops.const(EXP))
        assert np.array_equal(ops.numpy(got), want)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, lens=st.lists(st.integers(1, 12), min_size=1, max_size=5),
       heads=st.sampled_from([(1, 2), (3, 8), (2, 32), (1, 64)]))
def test_packed_attention_equals_per_request_reference(seed: int, lens: list[int], heads: tuple[int, int]) -> None:
    """Requests of one token and of different lengths side by side; every row kind in q, k and v."""
    rng = np.random.default_rng(seed)
    nh, d = heads
    _packed_both(*_packed_case(rng, lens, nh, d), nh, d)


def test_packed_attention_on_extreme_rows_and_a_long_request() -> None:
    """All-zero q/k/v, v saturated at ±2^31 (the context saturates), and one request of 300 tokens."""
    rng = np.random.default_rng(5)
    qkv, bounds = _packed_case(rng, [3, 300, 1], 2, 16)
    qkv[:3] = 0
    qkv[3:303, 64:] = I32_MAX
    qkv[3:303:2, 64:] = I32_MIN
    _packed_both(qkv, bounds, 2, 16)


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


def test_decoding_attention_hands_its_quantized_context_to_the_next_linear() -> None:
    """One query row (decoding): the attention block's memo of the merged context equals quantizing it anew."""
    rng = np.random.default_rng(9)
    q, k, v = _rows(rng, (2, 4, 1, 16)), _rows(rng, (2, 2, 9, 16)), _rows(rng, (2, 2, 9, 16))
    valid = rng.random((2, 1, 1, 9)) < 0.7
    valid[..., 0] = True
    sm, ss = (int(a) for a in tb.attn_scale(16))
    ops = FusedCpuOps()
    ctx = ops.merge_heads(ops.attention(ops.const(q), ops.const(k), ops.const(v), ops.mask(valid), scale_mult=sm,
                                        scale_shift=ss, exp_table=ops.const(EXP)))
    want = NPO.merge_heads(NPO.attention(q, k, v, valid, scale_mult=sm, scale_shift=ss, exp_table=EXP))
    assert np.array_equal(ops.numpy(ctx), want)
    qm, mm, em = ctx._kolm_q8
    _assert_quantized(want.reshape(-1, 64), qm.numpy(), mm, em)
