"""The forward of a BERT encoder as one numba kernel (requests packed without padding, up to 64 rows).

One sentence is ~24 token rows: at that size each of the ~30 operations of the encoder costs less arithmetic than
its call from Python. :func:`encode_forward` runs ``BertRuntime._forward`` (``docs/runtime-spec.md`` §6.1) in one
call — the embedding rows and their LayerNorm, then every layer (:func:`_encoder_layer`) — with the same integers
as the composed forward, each step the kernel the separate operations use
(:mod:`~kolm_audit.runtime.cpu_blocks`, :mod:`~kolm_audit.runtime.cpu_attention`,
:mod:`~kolm_audit.runtime.cpu_kernels`, :mod:`~kolm_audit.runtime.cpu_gemv`, each tested against the reference), so
only the chaining is new. A layer, in the order of ``BertRuntime._layer``:

1. ``qkv = linear(x)`` (§4.2: the exact int8 product, its epilogue);
2. ``ctx = attention`` of each request over its own rows (§5.2) and the context's §3.3 rows;
3. ``x1 = LN(sat(x + linear(ctx; attn.o)))`` and its §3.3 rows;
4. ``f = gelu(linear(x1; ffn.up))`` and its §3.3 rows;
5. ``x2 = LN(sat(x1 + linear(f; ffn.down)))`` and its §3.3 rows (the next layer's input).

A linear layer is the tuple of :mod:`~kolm_audit.runtime.cpu_decode` (``(w int8 [N, K], wsum, mult, shift, bias,
wp, psum)``); a layer is ``(qkv, attn.o, ffn.up, ffn.down, g_attn, b_attn, g_ffn, b_ffn)``.

One sentence is also too little work to split between threads by requests, so a call can be split into parts,
one thread each (:mod:`~kolm_audit.runtime.cpu_sync`): a part computes its share of the rows of every step but the
attention, where it computes its share of the heads over every row. Only the attention reads other parts' rows
(q|k|v) and only the steps after it other parts' heads (the context), so a layer has two barriers: after step 1
and after step 2.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kolm_audit.runtime.cpu_attention import packed_heads
from kolm_audit.runtime.cpu_blocks import embedding_rows, epilogue_gelu_quant, norm_quant, product_norm_quant
from kolm_audit.runtime.cpu_gemv import _matmul_rows
from kolm_audit.runtime.cpu_kernels import _JIT, _kernel, linear_epilogue, quantize_rows
from kolm_audit.runtime.cpu_sync import barrier, share


@njit(**_JIT)
def _encoder_layer(x: np.ndarray, xq: np.ndarray, xm: np.ndarray, xe: np.ndarray, layer: tuple, bounds: np.ndarray,
                   nh: int, d: int, eps_q32: int, rsqrt: np.ndarray, scale_mult: int, scale_shift: int,
                   exp_pair: np.ndarray, cdf_pair: np.ndarray, split: tuple, qkv: np.ndarray, ctx: np.ndarray,
                   x_out: np.ndarray, q_out: np.ndarray, m_out: np.ndarray, e_out: np.ndarray) -> None:
    """Encoder layer of the part ``split = (part, parts, sync, k)`` (barriers ``k``, ``k + 1``): its packed rows
    ``r0 … r1 - 1`` are ``x`` [n, H] (int32 Q.16) with their §3.3 rows ``xq`` [n, H] int8, ``xm``, ``xe`` [n];
    requests ``bounds`` [B+1] of all rows. ``qkv`` [N, 3H] and ``ctx`` [N, H] int32 are shared by every part. Writes
    the part's rows of the layer's output into ``x_out`` [n, H] and their §3.3 rows into ``q_out``, ``m_out``,
    ``e_out``."""
    lin_qkv, lin_o, lin_up, lin_down, g_attn, b_attn, g_ffn, b_ffn = layer
    w_qkv, s_qkv, mult_qkv, shift_qkv, bias_qkv, p_qkv, ps_qkv = lin_qkv
    w_up, s_up, mult_up, shift_up, bias_up, p_up, ps_up = lin_up
    part, parts, sync, k = split
    rows, hid = x.shape
    r0, r1 = share(qkv.shape[0], part, parts)
    h0, h1 = share(nh, part, parts)
    inter = w_up.shape[0]
    # 1. qkv = linear(x)                                                      [n, 3H] int32 Q.16 (the part's rows)
    acc = np.empty((rows, w_qkv.shape[0]), np.int32)
    _matmul_rows(xq, w_qkv, s_qkv, p_qkv, ps_qkv, acc)
    linear_epilogue(acc, xm, xe, mult_qkv, shift_qkv, bias_qkv, qkv[r0:r1])
    barrier(sync, part, parts, k)                                            # every row's q|k|v is written
    # 2. attention of each request over its own rows                          ctx [N, H] int32 Q.16 (the part's heads)
    packed_heads(qkv, bounds, nh, d, h0, h1, scale_mult, scale_shift, exp_pair, ctx)
    barrier(sync, part, parts, k + 1)                                        # every head of ctx is written
    cq, cm, ce = np.empty((rows, hid), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    quantize_rows(ctx[r0:r1], cq, cm, ce)                                    # [n, H] §3.3 rows of the context
    # 3. x1 = LN(sat(x + attn.o(ctx)))                                        [n, H] int32 Q.16 + §3.3 rows
    s, x1 = np.empty((rows, hid), np.int32), np.empty((rows, hid), np.int32)
    x1q, x1m, x1e = np.empty((rows, hid), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    product_norm_quant(cq, cm, ce, lin_o, x, g_attn, b_attn, True, eps_q32, rsqrt, s, x1, x1q, x1m, x1e)
    # 4. f = gelu(ffn.up(x1))                                                 [n, I] int32 Q.16 + §3.3 rows
    acc = np.empty((rows, inter), np.int32)
    _matmul_rows(x1q, w_up, s_up, p_up, ps_up, acc)
    f, fq = np.empty((rows, inter), np.int32), np.empty((rows, inter), np.int8)
    fm, fe = np.empty(rows, np.int64), np.empty(rows, np.int64)
    epilogue_gelu_quant(acc, x1m, x1e, mult_up, shift_up, bias_up, cdf_pair, f, fq, fm, fe)
    # 5. x_out = LN(sat(x1 + ffn.down(f)))                                    [n, H] int32 Q.16 + §3.3 rows
    product_norm_quant(fq, fm, fe, lin_down, x1, g_ffn, b_ffn, True, eps_q32, rsqrt, s, x_out, q_out, m_out, e_out)


@_kernel
def encode_forward(ids: np.ndarray, pos: np.ndarray, bounds: np.ndarray, emb: tuple, add: np.ndarray,
                   g_emb: np.ndarray, b_emb: np.ndarray, layers: tuple, nh: int, d: int, eps_q32: int,
                   rsqrt: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray, cdf_pair: np.ndarray,
                   part: int, parts: int, sync: np.ndarray, qkv: np.ndarray, ctx: np.ndarray,
                   out: np.ndarray) -> None:
    """The packed rows of every request ``ids`` [N] (request ``s`` owns rows ``bounds[s]:bounds[s+1]``; ``pos``
    [N] each row's position in its request) through the embedding (``emb`` = ``(w int8 [V, H], mult, shift)``
    plus the rows ``add[pos]`` of position + token type 0, §3.1), its LayerNorm (``g_emb``, ``b_emb``) and every
    layer of ``layers`` (at least one); writes the final hidden states [N, H] int32 Q.16 into ``out``.

    The call computes part ``part`` of ``parts`` (:mod:`~kolm_audit.runtime.cpu_sync`: one thread each, all
    running at once, ``sync`` their zeroed flags): its rows of every product and element-wise step, its heads of
    every attention; ``qkv`` [N, 3H] and ``ctx`` [N, H] int32 are the buffers all parts share, ``out`` its rows."""
    rows, hid = ids.shape[0], emb[0].shape[1]
    r0, r1 = share(rows, part, parts)
    n = r1 - r0
    x = np.empty((n, hid), np.int32)
    embedding_rows(ids[r0:r1], emb[0], emb[1], emb[2], add, pos[r0:r1], x)   # [n,H] sat(word + pos + type)
    xa = np.empty((n, hid), np.int32)
    qa, ma, ea = np.empty((n, hid), np.int8), np.empty(n, np.int64), np.empty(n, np.int64)
    norm_quant(x, g_emb, b_emb, True, eps_q32, rsqrt, xa, qa, ma, ea)        # [n,H] LN + §3.3 rows
    qb, mb, eb = np.empty((n, hid), np.int8), np.empty(n, np.int64), np.empty(n, np.int64)
    for i in range(len(layers)):
        xb = out[r0:r1] if i == len(layers) - 1 else np.empty((n, hid), np.int32)
        _encoder_layer(xa, qa, ma, ea, layers[i], bounds, nh, d, eps_q32, rsqrt, scale_mult, scale_shift, exp_pair,
                       cdf_pair, (part, parts, sync, 2 * i + 1), qkv, ctx, xb, qb, mb, eb)
        xa, qa, ma, ea, qb, mb, eb = xb, qb, mb, eb, qa, ma, ea
