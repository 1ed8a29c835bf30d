"""The attention kernels of the fused CPU backend (``cpu_attention``, ``cpu_kv``) give exactly the reference's integers.

Packed requests (BERT) of one token, of different lengths and a long one; the Llama block (``rope_attention``:
RoPE, the KV cache with spare capacity, grouped-query causal attention over left-padded batches) through a prefill
and decoding steps against its definition on :class:`NumpyOps`, with every row kind (zero rows, ±2^31 spikes that
give step exponents ``e > 0`` and the general requantization, rounding ties), a cache that outgrows its capacity,
an older cache view reused (a fork), requests dropped from the cache, and tables outside the fast kernels' bounds.
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
from kolm_audit.runtime.cpu_kv import STORE
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

class _Decoder:
    """Feeds left-padded steps through ``rope_attention`` of several backends at once, building the positions and
    the causal/padding mask as ``LlamaRuntime._step`` does, and checks every step against :class:`NumpyOps`."""

    def __init__(self, rng: np.random.Generator, *, b: int, nh: int, nkv: int, d: int, exp: np.ndarray = EXP,
                 cos: np.ndarray | None = None) -> None:
        self.rng, self.b, self.nh, self.nkv, self.d = rng, b, nh, nkv, d
        p = 512
        self.cos = rng.integers(-(1 << 30), (1 << 30) + 1, (p, d // 2)) if cos is None else cos
        self.sin = rng.integers(-(1 << 30), (1 << 30) + 1, (p, d // 2))
        self.exp = exp
        self.sm, self.ss = (int(a) for a in tb.attn_scale(d))
        self.key_ok = np.zeros((b, 0), bool)
        self.pos = np.zeros(b, np.int64)
        self.ops = [NPO, FusedCpuOps(), TorchOps(device="cpu")]
        self.past: list[tuple | None] = [None] * len(self.ops)

    def step(self, new_ok: np.ndarray, *, past: list[tuple | None] | None = None) -> list[tuple]:
        """One step of ``new_ok`` [B, T] real tokens (others left padding); returns every backend's new cache."""
        b, t = new_ok.shape
        qkv = _rows(self.rng, (b, t, (self.nh + 2 * self.nkv) * self.d))
        pos = np.maximum(self.pos[:, None] + np.cumsum(new_ok, axis=1) - 1, 0)
        key_ok = np.concatenate([self.key_ok, new_ok], axis=1)
        tk = key_ok.shape[1]
        qi, kj = np.arange(tk - t, tk)[:, None], np.arange(tk)[None, :]
        mask = ((kj <= qi)[None] & (key_ok[:, None, :] | (kj == qi)[None]))[:, None]
        outs = []
        for i, ops in enumerate(self.ops):
            ctx, kv = ops.rope_attention(
                ops.const(qkv).to(torch.int32) if isinstance(ops, FusedCpuOps) else ops.const(qkv),
                ops.const(pos), (past or self.past)[i], ops.mask(mask), heads=self.nh, kv_heads=self.nkv,
                head_dim=self.d, cos_table=ops.const(self.cos), sin_table=ops.const(self.sin), scale_mult=self.sm,
                scale_shift=self.ss, exp_table=ops.const(self.exp))
            outs.append((ops.numpy(ctx), ops.numpy(kv[0]), ops.numpy(kv[1])))
            self.past[i] = kv
        for got in outs[1:]:
            for a, w in zip(got, outs[0], strict=True):
                assert np.array_equal(a, w)
        self.key_ok, self.pos = key_ok, self.pos + new_ok.sum(axis=1)
        return list(self.past)


def _left_padded(rng: np.random.Generator, b: int, t: int) -> np.ndarray:
    lens = rng.integers(1, t + 1, b)
    return np.arange(t)[None, :] >= (t - lens)[:, None]


@settings(max_examples=40, deadline=None)
@given(seed=seeds, b=st.integers(1, 3), heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3), (4, 1)]),
       d=st.sampled_from([2, 8, 16, 64]), t0=st.integers(1, 9), steps=st.integers(1, 4))
def test_rope_attention_equals_its_definition_through_prefill_and_decoding(seed: int, b: int, heads: tuple[int, int],
                                                                            d: int, t0: int, steps: int) -> None:
    """Left-padded prefill, then one-token steps and a three-token step (grouped-query heads, every row kind)."""
    rng = np.random.default_rng(seed)
    dec = _Decoder(rng, b=b, nh=heads[0], nkv=heads[1], d=d)
    dec.step(_left_padded(rng, b, t0))
    for _ in range(steps):
        dec.step(np.ones((b, 1), bool))
    dec.step(np.ones((b, 3), bool))


def test_rope_attention_cache_outgrows_its_capacity_forks_and_drops_requests() -> None:
    """A long prefill (the kernels' longest keys here) and steps past the store's capacity; an older cache view
    reused for a different continuation (a fork: the newer rows are not overwritten under the newer view); and
    requests dropped through ``take`` (the key memo goes along)."""
    rng = np.random.default_rng(11)
    dec = _Decoder(rng, b=3, nh=4, nkv=2, d=16)
    dec.step(_left_padded(rng, 3, 60))
    fused = dec.ops[1]
    for _ in range(3):
        dec.step(np.ones((3, 1), bool))
    store = getattr(dec.past[1][0], STORE)
    start_cap = store.capacity
    while getattr(dec.past[1][0], STORE).capacity == start_cap:       # until the fused store reallocates
        dec.step(np.ones((3, 1), bool))
    fork_from = list(dec.past)
    state = (dec.key_ok.copy(), dec.pos.copy())
    later = dec.step(np.ones((3, 1), bool))
    kept = [np.array(k.numpy() if isinstance(k, torch.Tensor) else k) for k, _ in later]
    dec.key_ok, dec.pos = state
    dec.step(np.ones((3, 2), bool), past=fork_from)                  # the older view continues differently
    for (k, _), was in zip(later, kept, strict=True):
        assert np.array_equal(np.asarray(k.numpy() if isinstance(k, torch.Tensor) else k), was)
    rows = np.array([2, 0])
    dec.past = [None if kv is None else (ops.take(kv[0], rows), ops.take(kv[1], rows))
                for ops, kv in zip(dec.ops, dec.past, strict=True)]
    dec.key_ok, dec.pos, dec.b = dec.key_ok[rows], dec.pos[rows], 2
    for _ in range(2):
        dec.step(np.ones((2, 1), bool))
    assert isinstance(fused, FusedCpuOps)


def test_rope_attention_with_tables_outside_the_fast_bounds() -> None:
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
