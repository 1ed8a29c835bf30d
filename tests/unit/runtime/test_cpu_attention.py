"""The attention kernels of the fused CPU backend (``cpu_attention``) give exactly the reference's integers.

Packed requests (BERT) of one token, of different lengths and a long one; RoPE with the keys' §3.3 rows
(``rope_append``) on every row kind (zero rows, ±2^31 spikes that give step exponents ``e > 0`` and the general
requantization, rounding ties); the Llama block (``qkv_rope``, the key memo carried by the KV cache of
:mod:`~kolm_audit.runtime.decode`, growing and static, grouped-query causal attention over left-padded batches)
through a prefill and decoding steps against its definition on :class:`NumpyOps`, with a cache that outgrows its
capacity, an older cache reused (a fork), requests dropped from the cache, and tables outside the fast kernels' bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _fused_fixtures import EXP, I32_MAX, I32_MIN, NPO, _rows, seeds
from test_cpu_blocks import _assert_quantized, _q8_buffers

from kolm_audit.compile import tables as tb
from kolm_audit.runtime import cpu_attention as ka
from kolm_audit.runtime.cpu_fused import FusedCpuOps
from kolm_audit.runtime.cpu_kernels import pair_table
from kolm_audit.runtime.decode import KVCache
from kolm_audit.runtime.reference import IntLinear
from kolm_audit.runtime.torch_backend import TorchOps

# ---- packed requests (BERT) ---------------------------------------------------------------------------------------

def _packed_case(rng: np.random.Generator, lens: list[int], nh: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return _rows(rng, (int(bounds[-1]), 3 * nh * d)), bounds


def _packed_both(qkv: np.ndarray, bounds: np.ndarray, nh: int, d: int) -> None:
    sm, ss = (int(a) for a in tb.attn_scale(d))
    want = NPO.segment_attention(qkv, bounds, heads=nh, head_dim=d, scale_mult=sm, scale_shift=ss, exp_table=EXP)
    out, q, m, e = _q8_buffers(qkv.shape[0], nh * d)
    ka.packed_attention(qkv.astype(np.int32), bounds, nh, d, sm, ss, pair_table(EXP), out, q, m, e)
    assert np.array_equal(out, want)
    _assert_quantized(out, q, m, e)
    for ops, dtype in ((FusedCpuOps(), torch.int32), (TorchOps(device="cpu"), torch.int64)):   # int32: fused outputs
        got = ops.segment_attention(ops.const(qkv).to(dtype), bounds, heads=nh, head_dim=d, scale_mult=sm,
                                    scale_shift=ss, exp_table=ops.const(EXP))
        assert np.array_equal(ops.numpy(got), want)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, lens=st.lists(st.integers(1, 12), min_size=1, max_size=5),
       heads=st.sampled_from([(1, 2), (3, 8), (2, 32), (1, 64), (1, 256)]))
def test_packed_attention_equals_per_request_reference(seed: int, lens: list[int], heads: tuple[int, int]) -> None:
    """Requests of one token and of different lengths side by side; every row kind in q, k and v; head dimensions
    up to the spec's 256 (scores up to ``256·127²``)."""
    rng = np.random.default_rng(seed)
    nh, d = heads
    _packed_both(*_packed_case(rng, lens, nh, d), nh, d)


def test_packed_attention_on_extreme_rows_and_a_long_request() -> None:
    """All-zero q/k/v, v saturated at ±2^31 (the context saturates), q and k at ±127·2^15-scale maxima, and one
    request of 300 tokens."""
    rng = np.random.default_rng(5)
    qkv, bounds = _packed_case(rng, [3, 300, 1], 2, 16)
    qkv[:3] = 0
    qkv[3:303, 64:] = I32_MAX
    qkv[3:303:2, 64:] = I32_MIN
    qkv[303, :32] = I32_MAX
    qkv[303, 32:64] = I32_MIN
    _packed_both(qkv, bounds, 2, 16)


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


# ---- the Llama block over a KV cache ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=seeds, b=st.integers(1, 3), t=st.integers(1, 5), heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]),
       d=st.sampled_from([2, 8, 16, 64]))
def test_rope_append_equals_rope_and_quantizes_the_keys(seed: int, b: int, t: int, heads: tuple[int, int],
                                                          d: int) -> None:
    """q|k|v rows of every kind at random positions: the rotated q and k equal ``NumpyOps.rope``, v is copied, and
    the keys' int8 rows are their §3.3 quantization."""
    rng = np.random.default_rng(seed)
    nh, nkv = heads
    qkv = _rows(rng, (b, t, (nh + 2 * nkv) * d))
    pos = rng.integers(0, 512, (b, t))
    cos, sin = (rng.integers(-(1 << 30), (1 << 30) + 1, (512, d // 2)) for _ in range(2))
    qr = np.empty((b, nh, t, d), np.int32)
    kr, vr, kq = (np.empty((b, nkv, t, d), dt) for dt in (np.int32, np.int32, np.int8))
    mk, ek = np.empty((b, nkv, t), np.int64), np.empty((b, nkv, t), np.int64)
    ka.rope_append(qkv.astype(np.int32), pos, cos.astype(np.int32), sin.astype(np.int32), nh, nkv, 0, qr, kr, kq, mk,
                   ek, vr)
    nq, nk = nh * d, nkv * d
    assert np.array_equal(qr, NPO.rope(NPO.heads(qkv[..., :nq], nh, d), pos, cos, sin))
    assert np.array_equal(kr, NPO.rope(NPO.heads(qkv[..., nq:nq + nk], nkv, d), pos, cos, sin))
    assert np.array_equal(vr, NPO.heads(qkv[..., nq + nk:], nkv, d))
    _assert_quantized(kr.reshape(-1, d), kq.reshape(-1, d), mk.reshape(-1), ek.reshape(-1))


class _Decoder:
    """Feeds left-padded steps through the Llama attention block of several backends at once (``qkv_rope``, the
    cache's ``append``, ``attention``, ``merge_heads``; positions and the causal/padding mask built as
    ``LlamaRuntime._prepare`` does) and checks every step against :class:`NumpyOps`."""

    def __init__(self, rng: np.random.Generator, *, b: int, nh: int, nkv: int, d: int, exp: np.ndarray = EXP,
                 cos: np.ndarray | None = None, capacity: int | None = None) -> None:
        self.rng, self.nh, self.nkv, self.d = rng, nh, nkv, d
        p, n, k = 512, (nh + 2 * nkv) * d, 24
        self.cos = rng.integers(-(1 << 30), (1 << 30) + 1, (p, d // 2)) if cos is None else cos
        self.sin = rng.integers(-(1 << 30), (1 << 30) + 1, (p, d // 2))
        self.exp = exp
        self.sm, self.ss = (int(a) for a in tb.attn_scale(d))
        w = rng.integers(-127, 128, (n, k))
        self.lin = IntLinear(weight=w, wmax=int(np.abs(w).max()), mult=rng.integers(1 << 30, 1 << 31, n),
                             shift=rng.integers(16, 40, n), bias=rng.integers(-(1 << 20), 1 << 20, n))
        self.ops = [NPO, FusedCpuOps(), TorchOps(device="cpu")]
        self.lins = [ops.prepare_linear(self.lin) for ops in self.ops]
        self.caches = [KVCache(key_ok=np.zeros((b, 0), bool), pos=np.zeros(b, np.int64), capacity=capacity)
                       for _ in self.ops]

    def step(self, new_ok: np.ndarray) -> None:
        """One step of ``new_ok`` [B, T] real tokens (others left padding)."""
        b, t = new_ok.shape
        x = _rows(self.rng, (b, t, self.lin.weight.shape[1]))
        outs = []
        for ops, lin, cache in zip(self.ops, self.lins, self.caches, strict=True):
            pos = np.maximum(cache.pos[:, None] + np.cumsum(new_ok, axis=1) - 1, 0)
            slot = cache.length
            cache.key_ok = np.concatenate([cache.key_ok, new_ok], axis=1)
            cache.reserve(ops, slot)
            tk, width = cache.length, cache.width
            qi, kj = np.arange(tk - t, tk)[:, None], np.arange(width)[None, :]
            key_ok = np.zeros((b, width), bool)
            key_ok[:, :tk] = cache.key_ok
            mask = ((kj <= qi)[None] & (key_ok[:, None, :] | (kj == qi)[None]))[:, None]
            xt = ops.const(x).to(torch.int32) if isinstance(ops, FusedCpuOps) else ops.const(x)
            q, k, v = ops.qkv_rope(xt, lin, ops.const(pos), ops.const(self.cos), ops.const(self.sin), heads=self.nh,
                                   kv_heads=self.nkv, head_dim=self.d)
            keys, values = cache.append(0, k, v, ops.const(np.array([slot])), ops)
            ctx = ops.attention(q, keys, values, ops.mask(mask), scale_mult=self.sm, scale_shift=self.ss,
                                exp_table=ops.const(self.exp), key_len=ops.const(np.array([tk])))
            cache.pos = cache.pos + new_ok.sum(axis=1)
            outs.append((ops.numpy(ops.merge_heads(ctx)), ops.numpy(keys)[:, :, :tk], ops.numpy(values)[:, :, :tk]))
        for got in outs[1:]:
            for a, w in zip(got, outs[0], strict=True):
                assert np.array_equal(a, w)

    def select(self, rows: np.ndarray) -> None:
        self.caches = [cache.select(rows, ops) for ops, cache in zip(self.ops, self.caches, strict=True)]


def _left_padded(rng: np.random.Generator, b: int, t: int) -> np.ndarray:
    lens = rng.integers(1, t + 1, b)
    return np.arange(t)[None, :] >= (t - lens)[:, None]


@settings(max_examples=30, deadline=None)
@given(seed=seeds, b=st.integers(1, 3), heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3), (4, 1)]),
       d=st.sampled_from([2, 8, 16, 64]), t0=st.integers(1, 9), steps=st.integers(1, 4),
       capacity=st.sampled_from([None, 64]))
def test_llama_attention_block_equals_its_definition_through_prefill_and_decoding(
        seed: int, b: int, heads: tuple[int, int], d: int, t0: int, steps: int, capacity: int | None) -> None:
    """Left-padded prefill, then one-token steps and a three-token step (grouped-query heads), on a growing cache
    and on a static one."""
    rng = np.random.default_rng(seed)
    dec = _Decoder(rng, b=b, nh=heads[0], nkv=heads[1], d=d, capacity=capacity)
    dec.step(_left_padded(rng, b, t0))
    for _ in range(steps):
        dec.step(np.ones((b, 1), bool))
    dec.step(np.ones((b, 3), bool))


@pytest.mark.parametrize("capacity", [None, 64])
def test_llama_cache_outgrows_its_capacity_forks_and_drops_requests(capacity: int | None) -> None:
    """Steps past the cache's spare capacity (the growing cache reallocates, the static one moves to the next length
    bucket) with the key memo carried along; an older growing cache reused for a different continuation (a fork:
    rows written after it are not overwritten under the newer cache); requests dropped (``select``: the memo goes
    along)."""
    rng = np.random.default_rng(11)
    dec = _Decoder(rng, b=3, nh=4, nkv=2, d=16, capacity=capacity)
    dec.step(_left_padded(rng, 3, 5 if capacity is None else 60))
    for _ in range(14):
        dec.step(np.ones((3, 1), bool))
    if capacity is None:                                             # a static cache is one buffer: no fork
        fork_from = [KVCache(list(c.keys), list(c.values), c.key_ok.copy(), c.pos.copy()) for c in dec.caches]
        dec.step(np.ones((3, 1), bool))
        newer = dec.caches
        later = [(np.array(ops.numpy(c.keys[0])), np.array(ops.numpy(c.values[0])))
                 for ops, c in zip(dec.ops, newer, strict=True)]
        dec.caches = fork_from
        dec.step(np.ones((3, 2), bool))                              # the older cache continues differently
        for ops, c, (k, v) in zip(dec.ops, newer, later, strict=True):
            assert np.array_equal(ops.numpy(c.keys[0]), k) and np.array_equal(ops.numpy(c.values[0]), v)
    dec.select(np.array([2, 0]))
    for _ in range(2):
        dec.step(np.ones((2, 1), bool))


def test_llama_attention_block_with_tables_outside_the_fast_bounds() -> None:
    """An exp table with a negative entry or ``T[0] = 0``, RoPE tables beyond int32: the general path, same integers."""
    rng = np.random.default_rng(12)
    bad_exp = EXP.copy()
    bad_exp[3] = -5
    wide_cos = rng.integers(-(1 << 30), (1 << 30) + 1, (512, 4))
    wide_cos[:, 1] = (1 << 31) + 3
    for kw in ({"exp": bad_exp}, {"cos": wide_cos}):
        dec = _Decoder(rng, b=2, nh=2, nkv=1, d=8, **kw)
        dec.step(_left_padded(rng, 2, 5))
        dec.step(np.ones((2, 1), bool))
