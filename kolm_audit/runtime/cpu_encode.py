"""The forward of a BERT encoder as one numba kernel (requests packed without padding, up to 64 rows).

One sentence is ~24 token rows: at that size each of the ~30 operations of the encoder costs less arithmetic than
its call from Python. :func:`encode_forward` runs ``BertRuntime._forward`` (``docs/runtime-spec.md`` §6.1) in one
call — the embedding rows and their LayerNorm, then every layer (:func:`_encoder_layer`; :func:`_split_layer` in
a split call) — with the same integers as the composed forward, each step the kernel the separate operations use
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
one thread each (:mod:`~kolm_audit.runtime.cpu_sync`; :func:`_split_layer`). The products of a sentence are bound
by reading their weights (~1.8 MB a MiniLM layer, from L3: ~45 ns a 1 KiB tile), so a part computes its share of
the *columns* of the large products for every row and reads only its share of the weights: its heads' columns of
q|k|v and their attention (no other part's values needed in between), its panels of ffn.up (with their GELU) and of
ffn.down; the steps that need whole rows — the §3.3 rows of the context and attn.o (a small product) with its
LayerNorm, the last LayerNorm — take a share of the rows. The §3.3 step of a GELU row needs the row's extremes,
which each part reports for its columns before any quantizes its own. Shared buffers (:func:`split_buffers`) carry
every value a part needs from another, six barriers a layer (after the attention, attn.o's LayerNorm, the GELU's
extremes, its §3.3 values, ffn.down's product, the last LayerNorm) and one after the embedding. Splitting every
step by rows instead made each part read every weight: one 24-token MiniLM sentence on 2 threads took 1367 µs a
forward that way, 1183 µs this way (``docs/benchmarks.md``, round 13).

The host runs part 0 (:func:`encode_forward`); the other parts are *partners* that wait for the next forward
inside one kernel call (:func:`encode_partner`, :class:`~kolm_audit.runtime.host_crew.EncodeCrew`): a pool thread
woken for each call started ~0.1 ms after the host on this VM, with one sentence's forward ~2 ms. A partner spins
(``pause``, and its core given away every few hundred rounds) and leaves after ``idle`` ns without work, or when
the host sends it away (:func:`dismiss`, before work the pool's threads do), so a crew costs a core only while
calls come close together.

Mailbox ``box`` (int64): ``box[STOP]`` nonzero ends every partner; ``box[ROWS]``, ``box[REQUESTS]`` the posted
forward's size; partner ``p``'s line ``p`` holds ``JOB`` — the number of the forward it is to run (forward ``s``
uses barriers ``(s - 1)·forward_barriers(L) + 1 …``), :data:`LEAVE` when the host sent it away or :data:`GONE`
once it left — and ``DONE``, the last forward it ran. The host posts and a leaving partner marks itself with one
compare-and-swap each, so a forward is never posted to a partner that has gone nor run by two.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.experimental import structref

from kolm_audit.runtime.cpu_attention import packed_heads
from kolm_audit.runtime.cpu_blocks import (
    embedding_rows,
    epilogue_gelu_quant,
    epilogue_gelu_span,
    epilogue_norm_quant,
    norm_quant,
    product_norm_quant,
)
from kolm_audit.runtime.cpu_gemv import PANEL, _matmul_cols, _matmul_rows
from kolm_audit.runtime.cpu_kernels import (
    _JIT,
    _epilogue_row,
    _kernel,
    _quantize_span,
    linear_epilogue,
    quantize_rows,
)
from kolm_audit.runtime.cpu_sync import (
    LINE,
    _backoff,
    _clock_ns,
    _load_acquire,
    _store_release,
    _swap_if,
    barrier,
    share,
    waited_ns,
)

STOP, ROWS, REQUESTS = 0, 1, 2     # mailbox slots of its first line (the host's) …
JOB, DONE = 0, 1                    # … and of partner p's line p: the forward it is to run, the last it ran
GONE, LEAVE = -1, -2                # a partner's JOB once it has left; once the host has sent it away
_NO_HI, _NO_LO = -(1 << 62), 1 << 62   # the largest and smallest of no value (a part without GELU columns)


@njit(**_JIT)
def _encoder_layer(x: np.ndarray, xq: np.ndarray, xm: np.ndarray, xe: np.ndarray, layer: tuple, bounds: np.ndarray,
                   nh: int, d: int, eps_q32: int, rsqrt: np.ndarray, scale_mult: int, scale_shift: int,
                   exp_pair: np.ndarray, cdf_pair: np.ndarray, qkv: np.ndarray, ctx: np.ndarray, x_out: np.ndarray,
                   q_out: np.ndarray, m_out: np.ndarray, e_out: np.ndarray) -> None:
    """Encoder layer of a forward in one part: the rows ``x`` [N, H] (int32 Q.16) with their §3.3 rows ``xq``
    [N, H] int8, ``xm``, ``xe`` [N] of requests ``bounds`` [B+1]; ``qkv`` [N, 3H] and ``ctx`` [N, H] int32 scratch.
    Writes the layer's output into ``x_out`` [N, H] and its §3.3 rows into ``q_out``, ``m_out``, ``e_out``."""
    lin_qkv, lin_o, lin_up, lin_down, g_attn, b_attn, g_ffn, b_ffn = layer
    w_qkv, s_qkv, mult_qkv, shift_qkv, bias_qkv, p_qkv, ps_qkv = lin_qkv
    w_up, s_up, mult_up, shift_up, bias_up, p_up, ps_up = lin_up
    rows, hid = x.shape
    inter = w_up.shape[0]
    # 1. qkv = linear(x)                                                      [N, 3H] int32 Q.16
    acc = np.empty((rows, w_qkv.shape[0]), np.int32)
    _matmul_rows(xq, w_qkv, s_qkv, p_qkv, ps_qkv, acc)
    linear_epilogue(acc, xm, xe, mult_qkv, shift_qkv, bias_qkv, qkv)
    # 2. attention of each request over its own rows                          ctx [N, H] int32 Q.16 + §3.3 rows
    packed_heads(qkv, bounds, nh, d, 0, nh, scale_mult, scale_shift, exp_pair, ctx)
    cq, cm, ce = np.empty((rows, hid), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    quantize_rows(ctx, cq, cm, ce)
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


@njit(inline="always")
def _panels(n: int, part: int, parts: int) -> tuple[int, int]:
    """Part ``part``'s share of ``n`` columns in whole weight panels (the last may be short)."""
    p0, p1 = share((n + PANEL - 1) // PANEL, part, parts)
    return p0 * PANEL, min(p1 * PANEL, n)


@njit(inline="always")
def _qkv_heads(xq: np.ndarray, xm: np.ndarray, xe: np.ndarray, lin: tuple, hid: int, c0: int, c1: int) -> np.ndarray:
    """Columns ``c0 … c1 - 1`` of q, of k and of v (a part's heads) of ``linear(x)`` for every row: [N, 3·(c1 - c0)]
    int32 Q.16, contiguous (an epilogue into a strided view of the whole q|k|v does not vectorize)."""
    w, ws, mult, shift, bias, wp, ps = lin
    rows, span = xq.shape[0], c1 - c0
    out = np.empty((rows, 3 * span), np.int32)
    if span == 0:                                                            # a part may have no head
        return out
    acc = np.empty((3, rows, span), np.int32)
    for i in range(3):
        _matmul_cols(xq, w, ws, wp, ps, i * hid + c0, i * hid + c1, acc[i])
    smin, smax = shift.min(), shift.max()
    for r in range(rows):
        for i in range(3):
            a = i * hid + c0
            _epilogue_row(acc[i, r], xm[r], xe[r], mult[a:a + span], shift[a:a + span], bias[a:a + span], smin, smax,
                          out[r, i * span:(i + 1) * span])
    return out


@njit(**_JIT)
def _split_layer(x: np.ndarray, layer: tuple, bounds: np.ndarray, nh: int, d: int, eps_q32: int, rsqrt: np.ndarray,
                 scale_mult: int, scale_shift: int, exp_pair: np.ndarray, cdf_pair: np.ndarray, split: tuple,
                 shared: tuple, x_out: np.ndarray) -> None:
    """Encoder layer of the part ``split = (part, parts, sync, k)`` of a split forward (barriers ``k … k + 5``):
    its rows ``r0 … r1 - 1`` of the layer's input ``x`` [n, H] (int32 Q.16), the §3.3 rows of every row in
    ``shared``'s ``xq``, ``xm``, ``xe`` (:func:`split_buffers`). Writes the part's rows of the output into ``x_out``
    [n, H] and their §3.3 rows into ``xq``, ``xm``, ``xe`` (the next layer's input), the others' once it returns.

    A part computes its heads' columns of q|k|v and their attention, its rows of attn.o and its LayerNorm, its panels
    of ffn.up's columns (their GELU, then their §3.3 values with the whole rows' steps) and of ffn.down's, and its
    rows of the last LayerNorm: each reads only its share of those weights (92% of a MiniLM layer's bytes)."""
    lin_qkv, lin_o, lin_up, lin_down, g_attn, b_attn, g_ffn, b_ffn = layer
    w_up, s_up, mult_up, shift_up, bias_up, p_up, ps_up = lin_up
    w_dn, s_dn, mult_dn, shift_dn, bias_dn, p_dn, ps_dn = lin_down
    _, ctx, xq, xm, xe, yq, ym, ye, fq, hilo, dn = shared
    part, parts, sync, k = split
    rows, hid = ctx.shape
    inter = w_up.shape[0]
    r0, r1 = share(rows, part, parts)
    h0, h1 = share(nh, part, parts)
    # 1. the part's heads of q|k|v = linear(x) for every row                 [N, 3·(h1-h0)·D] int32 Q.16
    qkv = _qkv_heads(xq, xm, xe, lin_qkv, hid, h0 * d, h1 * d)
    # 2. their attention                                                      ctx [N, (h1-h0)·D] int32 Q.16
    packed_heads(qkv, bounds, h1 - h0, d, 0, h1 - h0, scale_mult, scale_shift, exp_pair, ctx[:, h0 * d:h1 * d])
    barrier(sync, part, parts, k)                                            # every head of ctx is written
    n = r1 - r0
    cq, cm, ce = np.empty((n, hid), np.int8), np.empty(n, np.int64), np.empty(n, np.int64)
    quantize_rows(ctx[r0:r1], cq, cm, ce)                                    # [n, H] §3.3 rows of the context
    # 3. x1 = LN(sat(x + attn.o(ctx))) of the part's rows                     [n, H] int32 Q.16 + §3.3 rows
    s, x1 = np.empty((n, hid), np.int32), np.empty((n, hid), np.int32)
    product_norm_quant(cq, cm, ce, lin_o, x, g_attn, b_attn, True, eps_q32, rsqrt, s, x1, yq[r0:r1], ym[r0:r1],
                       ye[r0:r1])
    barrier(sync, part, parts, k + 1)                                        # every row of x1's §3.3 rows
    # 4. f = gelu(ffn.up(x1)) of the part's columns for every row             [N, u1-u0] int32 Q.16
    u0, u1 = _panels(inter, part, parts)
    acc = np.empty((rows, u1 - u0), np.int32)
    _matmul_cols(yq, w_up, s_up, p_up, ps_up, u0, u1, acc)
    f = np.empty((rows, u1 - u0), np.int32)
    if u1 > u0:
        epilogue_gelu_span(acc, ym, ye, mult_up[u0:u1], shift_up[u0:u1], bias_up[u0:u1], cdf_pair, f,
                           hilo[:, 2 * part], hilo[:, 2 * part + 1])
    else:                                                                    # no panel: extremes of no value
        hilo[:, 2 * part], hilo[:, 2 * part + 1] = _NO_HI, _NO_LO
    barrier(sync, part, parts, k + 2)                                        # every part's extremes of each row
    fm, fe = np.empty(rows, np.int64), np.empty(rows, np.int64)
    for r in range(rows):                                                    # §3.3 with the whole row's step
        hi, lo = hilo[r, 0], hilo[r, 1]
        for p in range(1, parts):
            hi, lo = max(hi, hilo[r, 2 * p]), min(lo, hilo[r, 2 * p + 1])
        fm[r], fe[r] = _quantize_span(f[r], hi, lo, fq[r, u0:u1])
    barrier(sync, part, parts, k + 3)                                        # every column of fq
    # 5. ffn.down(f) of the part's columns, then x_out = LN(sat(x1 + ·)) of its rows
    d0, d1 = _panels(hid, part, parts)
    _matmul_cols(fq, w_dn, s_dn, p_dn, ps_dn, d0, d1, dn[:, d0:d1])         # [N, d1-d0] exact Σ fq·W
    barrier(sync, part, parts, k + 4)                                        # every column of the product
    epilogue_norm_quant(dn[r0:r1], fm[r0:r1], fe[r0:r1], mult_dn, shift_dn, bias_dn, x1, g_ffn, b_ffn, True,
                        eps_q32, rsqrt, s, x_out, xq[r0:r1], xm[r0:r1], xe[r0:r1])
    barrier(sync, part, parts, k + 5)                                        # every row of the next input


SPLIT_BARRIERS = 6                   # barriers of a layer of a split forward


@njit
def forward_barriers(layers: int) -> int:
    """The barriers of one split forward of ``layers`` layers: :data:`SPLIT_BARRIERS` a layer and one after the
    embedding."""
    return SPLIT_BARRIERS * layers + 1


@njit(inline="always")
def _forward(ids: np.ndarray, pos: np.ndarray, bounds: np.ndarray, emb: tuple, add: np.ndarray, g_emb: np.ndarray,
             b_emb: np.ndarray, layers: tuple, nh: int, d: int, eps_q32: int, rsqrt: np.ndarray, scale_mult: int,
             scale_shift: int, exp_pair: np.ndarray, cdf_pair: np.ndarray, part: int, parts: int, sync: np.ndarray,
             k0: int, shared: tuple, out: np.ndarray) -> None:
    """The body of :func:`encode_forward` (its barriers ``k0 + 1 … k0 + forward_barriers(L)``)."""
    rows, hid = ids.shape[0], emb[0].shape[1]
    r0, r1 = share(rows, part, parts)
    n = r1 - r0
    x = np.empty((n, hid), np.int32)
    embedding_rows(ids[r0:r1], emb[0], emb[1], emb[2], add, pos[r0:r1], x)   # [n,H] sat(word + pos + type)
    xa = np.empty((n, hid), np.int32)
    if parts == 1:
        qa, ma, ea = np.empty((n, hid), np.int8), np.empty(n, np.int64), np.empty(n, np.int64)
        norm_quant(x, g_emb, b_emb, True, eps_q32, rsqrt, xa, qa, ma, ea)    # [n,H] LN + §3.3 rows
        qb, mb, eb = np.empty((n, hid), np.int8), np.empty(n, np.int64), np.empty(n, np.int64)
        for i in range(len(layers)):
            xb = out if i == len(layers) - 1 else np.empty((n, hid), np.int32)
            _encoder_layer(xa, qa, ma, ea, layers[i], bounds, nh, d, eps_q32, rsqrt, scale_mult, scale_shift,
                           exp_pair, cdf_pair, shared[0], shared[1], xb, qb, mb, eb)
            xa, qa, ma, ea, qb, mb, eb = xb, qb, mb, eb, qa, ma, ea
        return
    xq, xm, xe = shared[2], shared[3], shared[4]
    norm_quant(x, g_emb, b_emb, True, eps_q32, rsqrt, xa, xq[r0:r1], xm[r0:r1], xe[r0:r1])
    barrier(sync, part, parts, k0 + 1)                                       # every row's §3.3 rows
    for i in range(len(layers)):
        xb = out[r0:r1] if i == len(layers) - 1 else np.empty((n, hid), np.int32)
        _split_layer(xa, layers[i], bounds, nh, d, eps_q32, rsqrt, scale_mult, scale_shift, exp_pair, cdf_pair,
                     (part, parts, sync, k0 + 2 + SPLIT_BARRIERS * i), shared, xb)
        xa = xb


def split_buffers(rows: int, qkv_cols: int, hid: int, inter: int, parts: int) -> tuple:
    """The buffers of a forward of up to ``rows`` rows (:func:`encode_forward`): ``qkv`` [R, 3H] int32, the q|k|v
    of a forward in one part (zero rows where ``parts > 1``: each part keeps its heads' own); the context ``ctx``
    [R, H] int32; then, shared by the parts where ``parts > 1`` (zero rows otherwise), the §3.3 rows of a layer's
    input (``xq`` [R, H] int8, ``xm``, ``xe`` [R]) and of its attention block's output (``yq``, ``ym``, ``ye``), the
    §3.3 values of the GELU (``fq`` [R, I] int8) with each part's extremes of each row (``hilo`` [R, 2·parts]:
    largest, smallest), and ffn.down's exact product (``dn`` [R, H] int32)."""
    one, s = (rows, 0) if parts <= 1 else (0, rows)
    return (np.empty((one, qkv_cols), np.int32), np.empty((rows, hid), np.int32),
            np.empty((s, hid), np.int8), np.empty(s, np.int64), np.empty(s, np.int64),
            np.empty((s, hid), np.int8), np.empty(s, np.int64), np.empty(s, np.int64),
            np.empty((s, inter), np.int8), np.empty((s, 2 * max(parts, 1)), np.int64), np.empty((s, hid), np.int32))


@njit(inline="always")
def _first_rows(shared: tuple, n: int) -> tuple:
    """The buffers of :func:`split_buffers` for the first ``n`` rows."""
    return (shared[0][:n], shared[1][:n], shared[2][:n], shared[3][:n], shared[4][:n], shared[5][:n], shared[6][:n],
            shared[7][:n], shared[8][:n], shared[9][:n], shared[10][:n])


@structref.register
class ConstsType(types.StructRef):
    """numba's type of :class:`EncodeConsts`."""

    def preprocess_fields(self, fields: Any) -> tuple:
        return tuple((name, types.unliteral(typ)) for name, typ in fields)


class EncodeConsts(structref.StructRefProxy):
    """The constant operands of :func:`encode_forward` as one object (made by :func:`encode_consts`): a kernel call
    then unboxes one pointer instead of the ~200 arrays of the nested tuples (a 6-layer MiniLM: a no-op kernel
    with the tuples costs ~19 µs a call, ~40 µs right after a forward, whose weights have evicted the
    interpreter's memory; the host's part starts that much later and its partner waits for it)."""


structref.define_proxy(EncodeConsts, ConstsType, ["emb", "add", "g_emb", "b_emb", "layers", "nh", "d", "eps_q32",
                                                  "rsqrt", "scale_mult", "scale_shift", "exp_pair", "cdf_pair"])


@_kernel
def _new_consts(emb: tuple, add: np.ndarray, g_emb: np.ndarray, b_emb: np.ndarray, layers: tuple, nh: int, d: int,
                eps_q32: int, rsqrt: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray,
                cdf_pair: np.ndarray) -> EncodeConsts:
    return EncodeConsts(emb, add, g_emb, b_emb, layers, nh, d, eps_q32, rsqrt, scale_mult, scale_shift, exp_pair,
                        cdf_pair)


def encode_consts(operands: tuple, scalars: tuple[int, int, int, int, int]) -> EncodeConsts:
    """:class:`EncodeConsts` of ``operands`` (``host_operands.encode_operands``: ``(emb, add, g_emb, b_emb, layers,
    rsqrt, exp_pair, cdf_pair)``) and ``scalars`` (heads, head size, ε, scale multiplier and shift)."""
    emb, add, g_emb, b_emb, stack, rsqrt, exp_pair, cdf_pair = operands
    nh, d, eps_q32, scale_mult, scale_shift = scalars
    return _new_consts(emb, add, g_emb, b_emb, stack, nh, d, eps_q32, rsqrt, scale_mult, scale_shift, exp_pair,
                       cdf_pair)


@_kernel
def encode_forward(ids: np.ndarray, pos: np.ndarray, bounds: np.ndarray, consts: EncodeConsts, part: int, parts: int,
                   sync: np.ndarray, k0: int, shared: tuple, out: np.ndarray) -> None:
    """The packed rows of every request ``ids`` [N] (request ``s`` owns rows ``bounds[s]:bounds[s+1]``; ``pos``
    [N] each row's position in its request) through the embedding of ``consts`` (``emb`` = ``(w int8 [V, H],
    mult, shift)`` plus the rows ``add[pos]`` of position + token type 0, §3.1), its LayerNorm (``g_emb``,
    ``b_emb``) and every layer of ``layers`` (at least one); writes the final hidden states [N, H] int32 Q.16 into
    ``out``.

    The call computes part ``part`` of ``parts`` (:mod:`~kolm_audit.runtime.cpu_sync`: one thread each, all
    running at once, ``sync`` their flags, every one at most ``k0``): its share of every step (:func:`_split_layer`)
    into ``shared``, the buffers all parts share (:func:`split_buffers` of at least ``N`` rows: their first ``N``
    are used), and its rows of
    ``out``. It returns once every part has written its rows."""
    c = consts
    _forward(ids, pos, bounds, c.emb, c.add, c.g_emb, c.b_emb, c.layers, c.nh, c.d, c.eps_q32, c.rsqrt, c.scale_mult,
             c.scale_shift, c.exp_pair, c.cdf_pair, part, parts, sync, k0, _first_rows(shared, ids.shape[0]), out)


@_kernel
def mean_pool(x: np.ndarray, bounds: np.ndarray, out: np.ndarray) -> None:
    """§6.3 mean pooling of the packed rows ``x`` [N, H] (int32 Q.16) of requests ``bounds`` [B+1]: ``out[b]`` (int64
    [B, H] Q.16) is ``rdiv(Σ rows of request b, its rows)``, ``rdiv(a, n) = ⌊a/n⌋ + (2·(a mod n) >= n)`` (a sum of
    at most 2^16 rows of |x| <= 2^31 stays below 2^47)."""
    hid = x.shape[1]
    for b in range(bounds.size - 1):
        n = bounds[b + 1] - bounds[b]
        acc = out[b]
        acc[:] = 0
        for r in range(bounds[b], bounds[b + 1]):
            for j in range(hid):
                acc[j] += x[r, j]
        for j in range(hid):
            q = acc[j] // n                                                      # floor division
            acc[j] = q + (2 * (acc[j] - q * n) >= n)


def mailbox(parts: int) -> np.ndarray:
    """The mailbox of a crew of ``parts`` (:func:`encode_partner`): no forward posted, every partner gone."""
    box = np.zeros(parts * LINE, np.int64)
    box[LINE::LINE] = GONE
    return box


@njit(inline="always")
def _job(part: int) -> int:
    return part * LINE + JOB


def done(box: np.ndarray, part: int) -> int:
    """The last forward partner ``part`` ran (0: none yet)."""
    return int(box[part * LINE + DONE])


@_kernel
def post(box: np.ndarray, parts: int, rows: int, requests: int, seq: int, gone: np.ndarray) -> int:
    """Post forward ``seq`` (its ``rows`` rows of ``requests`` requests written to the crew's inputs before) to the
    partners 1 … ``parts - 1`` waiting for forward ``seq - 1``. ``gone[p]`` is set where partner ``p`` had left
    (its slot then holds ``seq`` for the thread that replaces it); returns how many had."""
    box[ROWS] = rows
    box[REQUESTS] = requests
    left = 0
    for p in range(1, parts):
        held = _swap_if(box, _job(p), seq - 1, seq)
        if held == LEAVE:                                    # sent away: kept if it has not left yet
            held = _swap_if(box, _job(p), LEAVE, seq)
        gone[p] = held == GONE
        if gone[p]:
            _store_release(box, _job(p), seq)
            left += 1
    return left


@_kernel
def dismiss(box: np.ndarray, parts: int, seq: int) -> None:
    """Send away the partners waiting for the forward after ``seq``: their JOB becomes :data:`LEAVE`, which a partner
    turns into :data:`GONE` as it leaves (one already gone is left as it is). A forward posted before it left keeps
    it (:func:`post` swaps ``LEAVE`` for the forward's number)."""
    for p in range(1, parts):
        _swap_if(box, _job(p), seq, LEAVE)


@_kernel
def encode_partner(ids: np.ndarray, pos: np.ndarray, bounds: np.ndarray, emb: tuple, add: np.ndarray,
                   g_emb: np.ndarray, b_emb: np.ndarray, layers: tuple, nh: int, d: int, eps_q32: int,
                   rsqrt: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray, cdf_pair: np.ndarray,
                   part: int, parts: int, sync: np.ndarray, box: np.ndarray, seen: int, idle: int, shared: tuple,
                   out: np.ndarray) -> int:
    """Part ``part`` (>= 1) of every forward posted in ``box`` after forward ``seen`` (:func:`post`; forward ``s``
    runs on the first ``box[ROWS]`` rows of the crew's inputs and buffers with barriers from ``(s - 1)·
    forward_barriers(L) + 1``), waiting for each in a spin loop, until ``box[STOP]``, until ``idle`` ns pass with no
    forward posted (looked at whenever the loop gives its core away) or until the host sends it away
    (:func:`dismiss`): the partner then leaves, its JOB set to :data:`GONE` unless a forward came in that instant,
    which it runs. Returns the forwards run."""
    per = forward_barriers(len(layers))
    runs = 0
    while True:
        spins, yields, since = 0, 0, _clock_ns()
        while _load_acquire(box, _job(part)) == seen and _load_acquire(box, STOP) == 0:
            spins = _backoff(spins)
            if spins == 0:                                   # it gave its core away: time to look at the clock
                yields += 1
                if waited_ns(since, yields) >= idle and _swap_if(box, _job(part), seen, GONE) == seen:
                    return runs
        seen = _load_acquire(box, _job(part))
        if _load_acquire(box, STOP) != 0:
            return runs
        if seen == LEAVE:                                    # sent away, unless a forward was posted since
            if _swap_if(box, _job(part), LEAVE, GONE) == LEAVE:
                return runs
            seen = _load_acquire(box, _job(part))
        n, b = box[ROWS], box[REQUESTS]
        _forward(ids[:n], pos[:n], bounds[:b + 1], emb, add, g_emb, b_emb, layers, nh, d, eps_q32, rsqrt, scale_mult,
                 scale_shift, exp_pair, cdf_pair, part, parts, sync, (seen - 1) * per, _first_rows(shared, n), out[:n])
        _store_release(box, part * LINE + DONE, seen)
        runs += 1
