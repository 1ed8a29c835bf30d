"""The forward of a Llama decoding step as one numba kernel (up to a batch of token rows).

At one token per request a decoder layer is ~1 M multiply-adds: less time than the ~20 calls from Python it takes
as separate operations (four matrix products and the kernels between them, the KV cache's appends).
:func:`decode_forward` runs the whole step of ``docs/runtime-spec-llama.md`` §3–§6 in one call — the token
embedding, the first input norm, every decoder layer, the final norm and the LM head — with the same integers as
``LlamaRuntime._forward`` composes them from the backend's operations. Each layer (:func:`_decoder_layer`) is these
steps, in this order:

1. ``qkv = linear(h)`` (§4.2: the exact int8 product of :func:`~kolm_audit.runtime.cpu_gemv._matmul_rows`, epilogue);
2. RoPE of q and k; k (with its §3.3 rows) and v written into the layer's KV cache buffers at rows ``t0 …``;
3. grouped-query causal attention over the cache (§5.2), the context's §3.3 rows;
4. ``x1 = sat(x + linear(ctx; o_proj))``, its RMSNorm (post-attention) and §3.3 rows;
5. ``m = swiglu(linear(h1; gate_up))`` and its §3.3 rows;
6. ``x2 = sat(x1 + linear(m; down_proj))``, its RMSNorm with ``g_next`` (the next layer's input norm; after the
   last layer the final norm, ``model.norm``) and §3.3 rows.

The same kernel runs a prefill of at most 64 rows split between threads (the caches start empty; with ``last``
only each request's last position goes through the LM head): each thread calls it with its own part
(:mod:`~kolm_audit.runtime.cpu_sync`), computing its rows of every step but the attention (after the RoPE, every
part's new keys must be in the cache: a barrier) and its query heads of the attention (a barrier after it).

Each step calls the kernel that the separate operations use (:mod:`~kolm_audit.runtime.cpu_blocks`,
:mod:`~kolm_audit.runtime.cpu_attention`, :mod:`~kolm_audit.runtime.cpu_kernels`, each tested against the
reference), so only the chaining is new here. A linear layer is a tuple ``(w int8 [N, K], wsum int32 [N], mult,
shift, bias int64 [N], wp, psum)`` (``wsum``: :func:`~kolm_audit.runtime.cpu_gemv.weight_sums`; ``wp``, ``psum``:
:func:`~kolm_audit.runtime.cpu_gemv.pack_weights`); the cache is the tuple
``(k int32, kq int8 [B, Hk, C, D], mk, ek int64 [B, Hk, C], v int32 [B, Hk, C, D])`` of buffers with room for
``C >= t0 + T`` rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kolm_audit.runtime.cpu_attention import cached_heads, rope_rows
from kolm_audit.runtime.cpu_blocks import embedding_rows, epilogue_swiglu_quant, norm_quant, product_norm_quant
from kolm_audit.runtime.cpu_gemv import _matmul_rows
from kolm_audit.runtime.cpu_kernels import _JIT, _kernel, linear_epilogue, quantize_rows
from kolm_audit.runtime.cpu_sync import barrier, share

_EMPTY = np.zeros(0, np.int64)
_EMPTY2 = np.zeros((0, 0), np.int64)


@njit(**_JIT)
def _decoder_layer(x: np.ndarray, hq: np.ndarray, hm: np.ndarray, he: np.ndarray, layer: tuple, eps_q32: int,
                   rsqrt: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, nh: int, t0: int,
                   cache: tuple, valid: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray,
                   sig_pair: np.ndarray, split: tuple, shared: tuple, x_out: np.ndarray, h_out: np.ndarray,
                   hq_out: np.ndarray, hm_out: np.ndarray, he_out: np.ndarray) -> None:
    """One decoder layer ``layer = (lin_qkv, lin_o, lin_gu, lin_d, g_post, g_next)`` for the part ``split = (part,
    parts, sync, k)`` (barriers ``k``, ``k + 1``) of the ``B·T`` rows: its rows ``r0 … r1 - 1`` are ``x`` [n, H]
    (int32 Q.16, the residual stream) whose input RMSNorm has the §3.3 rows ``hq`` [n, H] int8, ``hm``, ``he`` [n];
    positions ``pos`` [B, T]; the cache holds ``t0`` rows; ``valid`` [B, 1, T, t0 + T] (causal and padding mask).
    ``shared = (qkv [B·T, (nh+2nkv)·D], q [B, nh, T, D], ctx [B, T, nh·D])`` int32 are written by every part. Writes
    the part's rows of the layer's output into ``x_out`` [n, H], of its RMSNorm with ``g_next`` into ``h_out`` and
    that norm's §3.3 rows into ``hq_out``, ``hm_out``, ``he_out``."""
    b, t = pos.shape
    rows, hid = x.shape
    lin_qkv, lin_o, lin_gu, lin_d, g_post, g_next = layer
    w_qkv, s_qkv, mult_qkv, shift_qkv, bias_qkv, p_qkv, ps_qkv = lin_qkv
    w_gu, s_gu, mult_gu, shift_gu, bias_gu, p_gu, ps_gu = lin_gu
    kbuf, kq, mk, ek, vbuf = cache
    part, parts, sync, k = split
    qkv, qr, ctx = shared
    nkv, d = kbuf.shape[1], kbuf.shape[3]
    n_qkv, inter = w_qkv.shape[0], w_gu.shape[0] // 2
    r0, r1 = share(b * t, part, parts)
    h0, h1 = share(nh, part, parts)
    # 1. qkv = linear(h)                                                      [n, (nh+2nkv)·D] int32 Q.16
    acc = np.empty((rows, n_qkv), np.int32)
    _matmul_rows(hq, w_qkv, s_qkv, p_qkv, ps_qkv, acc)
    linear_epilogue(acc, hm, he, mult_qkv, shift_qkv, bias_qkv, qkv[r0:r1])
    # 2. RoPE; keys (+ §3.3 rows) and values into cache rows t0 …           q [B, nh, T, D] int32 Q.16
    rope_rows(qkv.reshape(b, t, n_qkv), pos, cos, sin, nh, nkv, t0, r0, r1, qr, kbuf, kq, mk, ek, vbuf)
    barrier(sync, part, parts, k)                                            # every new key and query is written
    # 3. attention over the t0 + T keys (valid's last axis)                   ctx [B, T, nh·D] (the part's heads)
    #    the whole buffers, not their first t0 + T rows: a slice along time is a strided array to numba, and the
    #    loops over a key's values no longer vectorize (8×512 step: 46 → 16 µs a layer)
    cached_heads(qr, kq, mk, ek, vbuf, valid, scale_mult, scale_shift, exp_pair, h0, h1, ctx)
    barrier(sync, part, parts, k + 1)                                        # every head of ctx is written
    cq, cm, ce = np.empty((rows, nh * d), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    quantize_rows(ctx.reshape(b * t, nh * d)[r0:r1], cq, cm, ce)             # [n, nh·D] §3.3 rows of the context
    # 4. x1 = sat(x + o_proj(ctx)); h1 = RMSNorm(x1; post)                    [n, H] int32 Q.16 + §3.3 rows
    x1, h1 = np.empty((rows, hid), np.int32), np.empty((rows, hid), np.int32)
    h1q, h1m, h1e = np.empty((rows, hid), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    product_norm_quant(cq, cm, ce, lin_o, x, g_post, _EMPTY, False, eps_q32, rsqrt, x1, h1, h1q, h1m, h1e)
    # 5. m = swiglu(gate_up(h1))                                              [n, I] int32 Q.16 + §3.3 rows
    acc = np.empty((rows, 2 * inter), np.int32)
    _matmul_rows(h1q, w_gu, s_gu, p_gu, ps_gu, acc)
    mo, mq8 = np.empty((rows, inter), np.int32), np.empty((rows, inter), np.int8)
    mm, me = np.empty(rows, np.int64), np.empty(rows, np.int64)
    epilogue_swiglu_quant(acc, h1m, h1e, mult_gu, shift_gu, bias_gu, sig_pair, mo, mq8, mm, me)
    # 6. x_out = sat(x1 + down_proj(m)); h_out = RMSNorm(x_out; next)         [n, H] int32 Q.16
    product_norm_quant(mq8, mm, me, lin_d, x1, g_next, _EMPTY, False, eps_q32, rsqrt, x_out, h_out, hq_out, hm_out,
                       he_out)


@_kernel
def decode_forward(ids: np.ndarray, emb: tuple, g_first: np.ndarray, layers: tuple, caches: tuple, lm_head: tuple,
                   eps_q32: int, rsqrt: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, nh: int,
                   t0: int, valid: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray,
                   sig_pair: np.ndarray, last: bool, part: int, parts: int, sync: np.ndarray, shared: tuple,
                   logits: np.ndarray) -> None:
    """A decoding step's forward: the new tokens ``ids`` [R] (``R = B·T``, request-major) at positions ``pos``
    [B, T] over caches of ``t0`` rows; ``emb`` = ``(w int8 [V, H], mult, shift)`` (§3.1), ``g_first`` the first
    input norm, ``layers[i]`` = ``(lin_qkv, lin_o, lin_gu, lin_d, g_post, g_next)`` (``g_next`` of the last layer:
    the final norm) and ``caches[i]`` its KV cache buffers, ``lm_head`` a linear tuple. Writes the logits int32
    Q.16 — [R, V], or with ``last`` [B, V] of each request's last new token only — and each layer's new keys and
    values into its cache.

    The call computes part ``part`` of ``parts`` (:mod:`~kolm_audit.runtime.cpu_sync`: one thread each, all running
    at once, ``sync`` their zeroed flags): its rows of every product and element-wise step, its query heads of every
    attention; ``shared`` = ``(qkv, q, ctx)`` are the buffers all parts write (:func:`_decoder_layer`)."""
    rows, hid = ids.shape[0], emb[0].shape[1]
    b, t = pos.shape
    r0, r1 = share(rows, part, parts)
    n = r1 - r0
    x = np.empty((n, hid), np.int32)
    embedding_rows(ids[r0:r1], emb[0], emb[1], emb[2], _EMPTY2, _EMPTY, x)  # [n,H] int32 Q.16 §3.1
    h = np.empty((n, hid), np.int32)
    qa, ma, ea = np.empty((n, hid), np.int8), np.empty(n, np.int64), np.empty(n, np.int64)
    norm_quant(x, g_first, _EMPTY, False, eps_q32, rsqrt, h, qa, ma, ea)     # [n,H] RMSNorm + §3.3 rows
    xb = np.empty((n, hid), np.int32)
    qb, mb, eb = np.empty((n, hid), np.int8), np.empty(n, np.int64), np.empty(n, np.int64)
    for i in range(len(layers)):                                             # x: residual stream; q, m, e: norm rows
        _decoder_layer(x, qa, ma, ea, layers[i], eps_q32, rsqrt, pos, cos, sin, nh, t0, caches[i], valid, scale_mult,
                       scale_shift, exp_pair, sig_pair, (part, parts, sync, 2 * i + 1), shared, xb, h, qb, mb, eb)
        x, xb = xb, x
        qa, ma, ea, qb, mb, eb = qb, mb, eb, qa, ma, ea
    w, wsum, mult, shift, bias, wp, psum = lm_head
    gather = last and t > 1                  # only each request's last row (with one row each, every row is one)
    if gather:                                                               # the part's rows among the last ones
        keep = np.array([bi * t + t - 1 for bi in range(b) if r0 <= bi * t + t - 1 < r1], np.int64)
        out = logits[keep // t]
        if keep.shape[0] == 0:
            return
        sq, sm, se = qa[keep - r0], ma[keep - r0], ea[keep - r0]
    else:
        keep = np.arange(r0, r1)
        out = logits[r0:r1]
        sq, sm, se = qa, ma, ea
    acc = np.empty((keep.shape[0], w.shape[0]), np.int32)
    _matmul_rows(sq, w, wsum, wp, psum, acc)                                 # [k,V] exact Σ q·W
    linear_epilogue(acc, sm, se, mult, shift, bias, out)                     # [k,V] int32 Q.16
    if gather:
        for j in range(keep.shape[0]):
            logits[keep[j] // t] = out[j]
