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
and after step 2; a last one ends the forward.

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
from kolm_audit.runtime.cpu_blocks import embedding_rows, epilogue_gelu_quant, norm_quant, product_norm_quant
from kolm_audit.runtime.cpu_gemv import _matmul_rows
from kolm_audit.runtime.cpu_kernels import _JIT, _kernel, linear_epilogue, quantize_rows
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


@njit
def forward_barriers(layers: int) -> int:
    """The barriers of one split forward of ``layers`` layers: two a layer and one at its end."""
    return 2 * layers + 1


@njit(inline="always")
def _forward(ids: np.ndarray, pos: np.ndarray, bounds: np.ndarray, emb: tuple, add: np.ndarray, g_emb: np.ndarray,
             b_emb: np.ndarray, layers: tuple, nh: int, d: int, eps_q32: int, rsqrt: np.ndarray, scale_mult: int,
             scale_shift: int, exp_pair: np.ndarray, cdf_pair: np.ndarray, part: int, parts: int, sync: np.ndarray,
             k0: int, qkv: np.ndarray, ctx: np.ndarray, out: np.ndarray) -> None:
    """The body of :func:`encode_forward` (its barriers ``k0 + 1 … k0 + forward_barriers(L)``)."""
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
                       cdf_pair, (part, parts, sync, k0 + 2 * i + 1), qkv, ctx, xb, qb, mb, eb)
        xa, qa, ma, ea, qb, mb, eb = xb, qb, mb, eb, qa, ma, ea
    barrier(sync, part, parts, k0 + forward_barriers(len(layers)))         # every part's rows of out are written


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
                   sync: np.ndarray, k0: int, qkv: np.ndarray, ctx: np.ndarray, out: np.ndarray) -> None:
    """The packed rows of every request ``ids`` [N] (request ``s`` owns rows ``bounds[s]:bounds[s+1]``; ``pos``
    [N] each row's position in its request) through the embedding of ``consts`` (``emb`` = ``(w int8 [V, H],
    mult, shift)`` plus the rows ``add[pos]`` of position + token type 0, §3.1), its LayerNorm (``g_emb``,
    ``b_emb``) and every layer of ``layers`` (at least one); writes the final hidden states [N, H] int32 Q.16 into
    ``out``.

    The call computes part ``part`` of ``parts`` (:mod:`~kolm_audit.runtime.cpu_sync`: one thread each, all
    running at once, ``sync`` their flags, every one at most ``k0``): its rows of every product and element-wise
    step, its heads of every attention; ``qkv`` [N, 3H] and ``ctx`` [N, H] int32 are the buffers all parts share,
    ``out`` its rows. It returns once every part has written its rows."""
    c = consts
    _forward(ids, pos, bounds, c.emb, c.add, c.g_emb, c.b_emb, c.layers, c.nh, c.d, c.eps_q32, c.rsqrt, c.scale_mult,
             c.scale_shift, c.exp_pair, c.cdf_pair, part, parts, sync, k0, qkv, ctx, out)


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
                   part: int, parts: int, sync: np.ndarray, box: np.ndarray, seen: int, idle: int, qkv: np.ndarray,
                   ctx: np.ndarray, out: np.ndarray) -> int:
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
                 scale_shift, exp_pair, cdf_pair, part, parts, sync, (seen - 1) * per, qkv[:n], ctx[:n], out[:n])
        _store_release(box, part * LINE + DONE, seen)
        runs += 1
