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
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kolm_audit.runtime.cpu_attention import packed_attention
from kolm_audit.runtime.cpu_blocks import embedding_rows, epilogue_gelu_quant, norm_quant, product_norm_quant
from kolm_audit.runtime.cpu_gemv import _matmul_rows
from kolm_audit.runtime.cpu_kernels import _JIT, _kernel, linear_epilogue


@njit(**_JIT)
def _encoder_layer(x: np.ndarray, xq: np.ndarray, xm: np.ndarray, xe: np.ndarray, layer: tuple, bounds: np.ndarray,
                   nh: int, d: int, eps_q32: int, rsqrt: np.ndarray, scale_mult: int, scale_shift: int,
                   exp_pair: np.ndarray, cdf_pair: np.ndarray, x_out: np.ndarray, q_out: np.ndarray,
                   m_out: np.ndarray, e_out: np.ndarray) -> None:
    """Encoder layer on the packed rows ``x`` [N, H] (int32 Q.16) with their §3.3 rows ``xq`` [N, H] int8, ``xm``,
    ``xe`` [N]; requests ``bounds`` [B+1]. Writes the layer's output into ``x_out`` [N, H] and its §3.3 rows into
    ``q_out``, ``m_out``, ``e_out``."""
    lin_qkv, lin_o, lin_up, lin_down, g_attn, b_attn, g_ffn, b_ffn = layer
    w_qkv, s_qkv, mult_qkv, shift_qkv, bias_qkv, p_qkv, ps_qkv = lin_qkv
    w_up, s_up, mult_up, shift_up, bias_up, p_up, ps_up = lin_up
    rows, hid = x.shape
    inter = w_up.shape[0]
    # 1. qkv = linear(x)                                                      [N, 3H] int32 Q.16
    acc = np.empty((rows, w_qkv.shape[0]), np.int32)
    _matmul_rows(xq, w_qkv, s_qkv, p_qkv, ps_qkv, acc)
    qkv = np.empty((rows, w_qkv.shape[0]), np.int32)
    linear_epilogue(acc, xm, xe, mult_qkv, shift_qkv, bias_qkv, qkv)
    # 2. attention of each request over its own rows                          ctx [N, H] int32 Q.16 + §3.3 rows
    ctx, cq = np.empty((rows, hid), np.int32), np.empty((rows, hid), np.int8)
    cm, ce = np.empty(rows, np.int64), np.empty(rows, np.int64)
    packed_attention(qkv, bounds, nh, d, scale_mult, scale_shift, exp_pair, ctx, cq, cm, ce)
    # 3. x1 = LN(sat(x + attn.o(ctx)))                                        [N, H] int32 Q.16 + §3.3 rows
    s, x1 = np.empty((rows, hid), np.int32), np.empty((rows, hid), np.int32)
    x1q, x1m, x1e = np.empty((rows, hid), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    product_norm_quant(cq, cm, ce, lin_o, x, g_attn, b_attn, True, eps_q32, rsqrt, s, x1, x1q, x1m, x1e)
    # 4. f = gelu(ffn.up(x1))                                                 [N, I] int32 Q.16 + §3.3 rows
    acc = np.empty((rows, inter), np.int32)
    _matmul_rows(x1q, w_up, s_up, p_up, ps_up, acc)
    f, fq = np.empty((rows, inter), np.int32), np.empty((rows, inter), np.int8)
    fm, fe = np.empty(rows, np.int64), np.empty(rows, np.int64)
    epilogue_gelu_quant(acc, x1m, x1e, mult_up, shift_up, bias_up, cdf_pair, f, fq, fm, fe)
    # 5. x_out = LN(sat(x1 + ffn.down(f)))                                    [N, H] int32 Q.16 + §3.3 rows
    product_norm_quant(fq, fm, fe, lin_down, x1, g_ffn, b_ffn, True, eps_q32, rsqrt, s, x_out, q_out, m_out, e_out)


@_kernel
def encode_forward(ids: np.ndarray, pos: np.ndarray, bounds: np.ndarray, emb: tuple, add: np.ndarray,
                   g_emb: np.ndarray, b_emb: np.ndarray, layers: tuple, nh: int, d: int, eps_q32: int,
                   rsqrt: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray, cdf_pair: np.ndarray,
                   out: np.ndarray) -> None:
    """The packed rows of every request ``ids`` [N] (request ``s`` owns rows ``bounds[s]:bounds[s+1]``; ``pos``
    [N] each row's position in its request) through the embedding (``emb`` = ``(w int8 [V, H], mult, shift)``
    plus the rows ``add[pos]`` of position + token type 0, §3.1), its LayerNorm (``g_emb``, ``b_emb``) and every
    layer of ``layers`` (at least one); writes the final hidden states [N, H] int32 Q.16 into ``out``."""
    rows, hid = ids.shape[0], emb[0].shape[1]
    x = np.empty((rows, hid), np.int32)
    embedding_rows(ids, emb[0], emb[1], emb[2], add, pos, x)                 # [N,H] sat(word + pos + type)
    xa = np.empty((rows, hid), np.int32)
    qa, ma, ea = np.empty((rows, hid), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    norm_quant(x, g_emb, b_emb, True, eps_q32, rsqrt, xa, qa, ma, ea)        # [N,H] LN + §3.3 rows
    qb, mb, eb = np.empty((rows, hid), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    for i in range(len(layers)):
        xb = out if i == len(layers) - 1 else np.empty((rows, hid), np.int32)
        _encoder_layer(xa, qa, ma, ea, layers[i], bounds, nh, d, eps_q32, rsqrt, scale_mult, scale_shift, exp_pair,
                       cdf_pair, xb, qb, mb, eb)
        xa, qa, ma, ea, qb, mb, eb = xb, qb, mb, eb, qa, ma, ea
