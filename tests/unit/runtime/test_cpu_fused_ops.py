"""The operations of :class:`FusedCpuOps` give exactly the integers of the numpy reference (:class:`NumpyOps`).

Linear layers (one to three weight digits), norms, grouped-query attention, RoPE, SwiGLU and GELU, on extreme rows,
strided (non-contiguous) views and, with ``threads=2``, row counts large enough that the work is split between
threads; and the backend selection of ``get_ops``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _fused_fixtures import (
    CDF,
    EXP,
    I32_MAX,
    I32_MIN,
    NPO,
    RSQRT,
    SIG,
    FusedCpuOps,
    _fused,
    _norm_params,
    _np,
    _rows,
    _t,
    _torch_threads,
    seeds,
)

from kolm_audit.compile import tables as tb
from kolm_audit.runtime import cpu_fused as cf
from kolm_audit.runtime import cpu_gemv as kg
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import host_threads as ht
from kolm_audit.runtime import llama_ops as lo
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime.ops import get_ops
from kolm_audit.runtime.torch_backend import TorchOps

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
    """An odd row count whose work is at least 1.5 · PAR_MIN elements, so two threads each get rows."""
    return (3 * ht.PAR_MIN // (2 * per_row)) | 1


def _one_and_two_threads(run: Callable[[cf.FusedCpuOps], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with _torch_threads():
        one = run(_fused(threads=1))
        two_ops = _fused(threads=2)
        two = run(two_ops)
    assert two_ops._workers.pool is not None                                          # the work really was split
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
    t = max(16, int(np.ceil(np.sqrt(1.5 * ht.PAR_MIN / (b * hq)))))         # scores: b·hq·t² >= 1.5·PAR_MIN
    assert b * hq * t * min(t, d) >= ht.PAR_MIN
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



def test_two_threads_split_the_packed_tiles() -> None:
    """33 rows (the packed tiles of cpu_gemv where the CPU has them) split between two threads: the one-thread
    integers, the reference's."""
    rng = np.random.default_rng(34)
    n, k, rows = 96, 48, 33                                             # 33·96·48 elements of work > PAR_MIN
    x = _rows(rng, (rows, k))
    lin = _layer(rng, n, k, 127, 0, 93)                                  # int8 weights: one digit
    paths: list[str] = []

    def run(ops: cf.FusedCpuOps) -> np.ndarray:
        out = _np(ops, ops.linear(ops.const(x), ops.prepare_linear(lin)))
        paths.extend(ops.gemm_paths)
        return out

    one, two = _one_and_two_threads(run)
    assert np.array_equal(one, two) and np.array_equal(one, ref.linear(x, lin))
    assert all(p.startswith("cpu_gemv tiles" if kg.GEMM else "int_mm") for p in paths) and paths


def test_a_forked_child_gets_its_own_thread_pool() -> None:
    """After ``fork`` the parent's worker threads do not exist in the child: the child must not wait on them."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ops = cf.FusedCpuOps(threads=2)
    x = _rows(np.random.default_rng(5), (_split_rows(64), 64))

    def norm() -> np.ndarray:
        return _np(ops, ops.rms_norm(ops.const(x), ops.const(np.full(64, 1 << 24)), eps_q32=1,
                                     rsqrt_table=ops.const(RSQRT)))

    want = norm()
    assert ops._workers.pool is not None                                       # the parent split the rows
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=lambda: send.send(norm()))              # fork: the closure is not pickled
    child.start()
    assert recv.poll(120), "the forked child did not finish (waiting on its parent's threads?)"
    got = recv.recv()
    child.join(30)
    assert np.array_equal(got, want)
