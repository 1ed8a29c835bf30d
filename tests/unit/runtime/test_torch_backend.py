"""Every torch primitive equals the numpy reference on random inputs (hypothesis), on CPU (and CUDA if present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.compile import tables as tb
from kolm_audit.compile.tables import sigmoid_table
from kolm_audit.errors import InputError
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import llama_ops as lo
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime import torch_fixedpoint as tfp
from kolm_audit.runtime.ops import NumpyOps, get_ops, resolve_backend
from kolm_audit.runtime.torch_backend import TorchOps, weight_digits

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])]
I32 = (-(1 << 31), (1 << 31) - 1)
seeds = st.integers(0, 2**32 - 1)
EXP, CDF, TANH, RSQRT, SIG = (tb.exp_table().astype(np.int64), tb.gelu_cdf_table().astype(np.int64),
                              tb.tanh_table().astype(np.int64), fp.rsqrt_table(), sigmoid_table().astype(np.int64))


@pytest.fixture(scope="module", params=DEVICES)
def ops(request: pytest.FixtureRequest) -> TorchOps:
    return TorchOps(device=request.param)


def _acts(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Q.16 activations of mixed magnitudes (tiny, typical and saturated rows), int64."""
    scale = rng.choice([1, 1 << 8, 1 << 16, 1 << 20, 1 << 31], size=(*shape[:-1], 1))
    x = rng.integers(-(1 << 31), 1 << 31, size=shape) % scale - scale // 2
    return np.clip(x, *I32).astype(np.int64)


def _eq(ops: TorchOps, got: torch.Tensor, want: np.ndarray) -> None:
    assert np.array_equal(ops.numpy(got), want)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, s=st.integers(0, 62))
def test_fixedpoint_helpers_match(ops: TorchOps, seed: int, s: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << 62), 1 << 62, 64) >> rng.integers(0, 62, 64)
    t = ops.const(x)
    _eq(ops, tfp.round_shift(t, s), fp.round_shift(x, s))
    _eq(ops, tfp.round_shift(t, ops.const(np.full(64, s))), fp.round_shift(x, s))
    b = rng.integers(1, 1 << 40, 64) >> rng.integers(0, 40, 64) | 1
    _eq(ops, tfp.rdiv(t, ops.const(b)), fp.rdiv(x, b))
    _eq(ops, tfp.bit_length(ops.const(np.abs(x))), fp.bit_length(np.abs(x)))
    _eq(ops, tfp.saturate_int32(t), fp.saturate_int32(x))
    xq = rng.integers(-(1 << 61), 1 << 61, 64) >> rng.integers(0, 61, 64)
    m = rng.integers(-(1 << 31) + 1, 1 << 31, 64)
    sh = rng.integers(0, 94, 64)
    big = np.abs(xq.astype(object) * m.astype(object)) >> sh.astype(object) < (1 << 61)
    xq, m, sh = xq[big], m[big], sh[big]
    _eq(ops, tfp.requantize(ops.const(xq), ops.const(m), ops.const(sh)), fp.requantize(xq, m, sh))


@settings(max_examples=20, deadline=None)
@given(seed=seeds)
def test_rows_tables_and_rsqrt_match(ops: TorchOps, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _acts(rng, (3, 5, 24))
    for got, want in zip(tfp.quantize_rows(ops.const(x)), fp.quantize_rows(x), strict=True):
        _eq(ops, got, want)
    xs = rng.integers(-(40 << 16), 40 << 16, 200)
    _eq(ops, tfp.lut_interp(ops.const(xs), ops.const(EXP), x0=0, step_shift=9),
        fp.lut_interp(xs, EXP, x0=0, step_shift=9))
    v = rng.integers(1, 1 << 62, 200) >> rng.integers(0, 62, 200) | 1
    for got, want in zip(tfp.rsqrt(ops.const(v), ops.const(RSQRT)), fp.rsqrt(v, RSQRT), strict=True):
        _eq(ops, got, want)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, wbits=st.sampled_from([7, 10, 18, 22]), k=st.integers(1, 80), n=st.integers(1, 40),
       lead=st.sampled_from([(1,), (3,), (2, 5)]))
def test_linear_matches_for_int8_int4_and_nvfp4_weight_ranges(ops: TorchOps, seed: int, wbits: int, k: int, n: int,
                                                              lead: tuple[int, ...]) -> None:
    rng = np.random.default_rng(seed)
    w = rng.integers(-(1 << wbits) + 1, 1 << wbits, (n, k))
    mult = rng.integers(1 << 30, 1 << 31, n)
    shift = rng.integers(10 + max(0, wbits - 10), 60, n)
    lin = ref.IntLinear(weight=w, wmax=int(np.abs(w).max()), mult=mult, shift=shift,
                        bias=rng.integers(-(1 << 20), 1 << 20, n))
    x = _acts(rng, (*lead, k))
    _eq(ops, ops.linear(ops.const(x), ops.prepare_linear(lin)), ref.linear(x, lin))


@settings(max_examples=20, deadline=None)
@given(seed=seeds, h=st.integers(1, 64))
def test_norms_and_pointwise_functions_match(ops: TorchOps, seed: int, h: int) -> None:
    rng = np.random.default_rng(seed)
    x = _acts(rng, (2, 3, h))
    gamma = rng.integers(-(1 << 27), 1 << 27, h)
    beta = rng.integers(-(1 << 20), 1 << 20, h)
    eps = int(rng.integers(0, 1 << 20))
    t = ops.const(x)
    _eq(ops, ops.layer_norm(t, ops.const(gamma), ops.const(beta), eps_q32=eps, rsqrt_table=ops.const(RSQRT)),
        ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT))
    _eq(ops, ops.rms_norm(t, ops.const(gamma), eps_q32=eps, rsqrt_table=ops.const(RSQRT)),
        ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))
    _eq(ops, ops.gelu(t, ops.const(CDF)), ref.gelu(x, CDF))
    _eq(ops, ops.tanh(t, ops.const(TANH)), ref.tanh(x, TANH))
    up = _acts(rng, (2, 3, h))
    _eq(ops, ops.swiglu(t, ops.const(up), ops.const(SIG)), lo.swiglu(x, up, SIG))


@settings(max_examples=20, deadline=None)
@given(seed=seeds, d=st.sampled_from([2, 8, 16, 64]), tq=st.integers(1, 6), tk=st.integers(1, 9))
def test_attention_softmax_and_rope_match(ops: TorchOps, seed: int, d: int, tq: int, tk: int) -> None:
    rng = np.random.default_rng(seed)
    q, k, v = _acts(rng, (2, 3, tq, d)), _acts(rng, (2, 3, tk, d)), _acts(rng, (2, 3, tk, d))
    valid = rng.random((2, 1, tq, tk)) < 0.6
    valid[..., 0] = True
    scale_m, scale_s = (int(a) for a in tb.attn_scale(d))
    _eq(ops, ops.attention(ops.const(q), ops.const(k), ops.const(v), ops.mask(valid), scale_mult=scale_m,
                           scale_shift=scale_s, exp_table=ops.const(EXP)),
        ref.attention(q, k, v, valid, scale_mult=scale_m, scale_shift=scale_s, exp_table=EXP))
    qs, ks = q >> 13, k >> 13                                                 # |x| < 2^18: every e = 0
    _eq(ops, ops.attention(ops.const(qs), ops.const(ks), ops.const(v), ops.mask(valid), scale_mult=scale_m,
                           scale_shift=scale_s, exp_table=ops.const(EXP)),
        ref.attention(qs, ks, v, valid, scale_mult=scale_m, scale_shift=scale_s, exp_table=EXP))
    k1, v1 = k[:, :1], v[:, :1]                                               # grouped-query: 3 heads share 1
    _eq(ops, ops.attention(ops.const(q), ops.const(k1), ops.const(v1), ops.mask(valid), scale_mult=scale_m,
                           scale_shift=scale_s, exp_table=ops.const(EXP)),
        NumpyOps().attention(q, k1, v1, valid, scale_mult=scale_m, scale_shift=scale_s, exp_table=EXP))
    scores = rng.integers(-(1 << 40), 1 << 40, (2, 3, tq, tk))
    _eq(ops, ops.softmax(ops.const(scores), ops.mask(valid), ops.const(EXP)), ref.softmax(scores, valid, EXP))
    cos = rng.integers(-(1 << 30), (1 << 30) + 1, (16, d // 2))
    sin = rng.integers(-(1 << 30), (1 << 30) + 1, (16, d // 2))
    pos = rng.integers(0, 16, (2, tq))
    _eq(ops, ops.rope(ops.const(q), pos, ops.const(cos), ops.const(sin)), lo.rope(q, pos, cos, sin))


def test_embedding_and_array_helpers_match(ops: TorchOps) -> None:
    rng = np.random.default_rng(5)
    tensors = {"e.weight": rng.integers(-127, 128, (20, 8)).astype(np.int8),
               "e.mult": rng.integers(1 << 30, 1 << 31, 20).astype(np.int32),
               "e.shift": rng.integers(20, 50, 20).astype(np.int32)}
    ids = rng.integers(0, 20, (3, 4))
    npo = NumpyOps()
    _eq(ops, ops.embedding(ops.prepare_embedding(tensors, "e"), ids),
        npo.embedding(npo.prepare_embedding(tensors, "e"), ids))
    x = rng.integers(-100, 100, (2, 5, 12))
    _eq(ops, ops.merge_heads(ops.heads(ops.const(x), 3, 4)), x)
    _eq(ops, ops.heads(ops.const(x), 3, 4), npo.heads(x, 3, 4))
    y = npo.heads(x, 3, 4)
    _eq(ops, ops.repeat(ops.const(y), 2, axis=1), npo.repeat(y, 2, axis=1))
    _eq(ops, ops.take(ops.cat([ops.const(y), ops.const(y)], axis=2), np.array([1])), npo.cat([y, y], axis=2)[[1]])


@settings(max_examples=30, deadline=None)
@given(w=st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=20))
def test_weight_digits_are_exact_and_in_int8(w: list[int]) -> None:
    digits = weight_digits(np.array([w]))
    assert all(d.dtype == np.int8 for d in digits)
    assert sum(d.astype(np.int64) << (8 * i) for i, d in enumerate(digits)).tolist() == [w]
    assert len(digits) == 1 or digits[-1].any()


def test_thread_count_does_not_change_outputs() -> None:
    rng = np.random.default_rng(9)
    w = rng.integers(-127, 128, (300, 700))
    lin = ref.IntLinear(weight=w, wmax=127, mult=np.full(300, 1 << 30), shift=np.full(300, 40),
                        bias=np.zeros(300, dtype=np.int64))
    x = _acts(rng, (64, 700))
    before = torch.get_num_threads()
    try:
        outs = [TorchOps(device="cpu", threads=n).linear(torch.from_numpy(x), TorchOps(device="cpu").prepare_linear(
            lin)).numpy() for n in (1, 2)]
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], ref.linear(x, lin))


def test_backend_names_resolve_and_refuse() -> None:
    assert resolve_backend("numpy") == "numpy"
    assert resolve_backend("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert get_ops("cpu", threads=torch.get_num_threads()).name == "cpu"
    with pytest.raises(InputError) as err:
        resolve_backend("tpu")
    assert err.value.field == "backend"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            get_ops("cuda")
    with pytest.raises(InputError):
        get_ops("cpu", threads=0)


@pytest.mark.parametrize("k", [1, 2, 7, 8, 9, 33])
def test_linear_is_exact_for_tiny_inner_dimensions(ops: TorchOps, k: int) -> None:
    """torch._int_mm (torch 2.13 CPU) returns wrong sums for K = 1; the backend must not depend on it there."""
    rng = np.random.default_rng(k)
    w = rng.integers(-127, 128, (16, k))
    lin = ref.IntLinear(weight=w, wmax=int(np.abs(w).max()), mult=np.full(16, 1 << 30), shift=np.full(16, 36),
                        bias=np.zeros(16, dtype=np.int64))
    x = _acts(rng, (5, k))
    _eq(ops, ops.linear(ops.const(x), ops.prepare_linear(lin)), ref.linear(x, lin))


@pytest.mark.parametrize(("rows", "bits"), [(1, 20), (3, 23), (16, 16), (17, 20), (40, 23), (2, 30), (40, 30)])
def test_norms_match_on_the_few_rows_and_the_tensor_paths(ops: TorchOps, rows: int, bits: int) -> None:
    """Decoding (few rows, |c| < 2^24) computes the per-row scalars in Python; other shapes use tensors."""
    rng = np.random.default_rng(rows * 100 + bits)
    x = rng.integers(-(1 << bits), 1 << bits, (rows, 48))
    gamma, beta = rng.integers(-(1 << 26), 1 << 26, 48), rng.integers(-(1 << 20), 1 << 20, 48)
    for eps in (0, 42950, 1 << 20):
        _eq(ops, ops.rms_norm(ops.const(x), ops.const(gamma), eps_q32=eps, rsqrt_table=ops.const(RSQRT)),
            ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))
        _eq(ops, ops.layer_norm(ops.const(x), ops.const(gamma), ops.const(beta), eps_q32=eps,
                                rsqrt_table=ops.const(RSQRT)),
            ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT))
