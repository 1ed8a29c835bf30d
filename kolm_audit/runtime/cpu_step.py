"""A decoding step of a few token rows split between threads by output columns, and the loop a partner thread runs.

A one-token step reads every weight of the model once (8×512 Llama: 28 MB) for ~1 M multiply-adds a layer: its time
is the bytes one core reads. Two cores read more (this module's products: 1.4–1.6× on two threads, one step after
the other), so a split step (:func:`step_loop`) gives each part its output columns of every linear layer (the weight
rows it reads), its query heads of the attention, and part 0 the RoPE and the KV cache rows; the norms and §3.3 rows
of whole rows (a few thousand elements) every part computes for itself. Each step of ``docs/runtime-spec-llama.md``
§3–§6 is the kernel of :mod:`~kolm_audit.runtime.cpu_decode` (the same integers: which part computes a column never
changes it), with six barriers a layer (:mod:`~kolm_audit.runtime.cpu_sync`):

1. ``qkv = linear(h)``, the part's columns → barrier;
2. RoPE, new keys and values into the cache (part 0) → barrier;
3. attention, the part's query heads → barrier; the context's §3.3 rows;
4. ``x1 = sat(x + linear(ctx; o_proj))``, the part's columns → barrier; RMSNorm (post) and §3.3 rows;
5. ``m = swiglu(gate, up)``, the part's columns of both → barrier; §3.3 rows of ``m``;
6. ``x2 = sat(x1 + linear(m; down_proj))``, the part's columns → barrier; RMSNorm (next) and §3.3 rows.

The LM head's columns end the step, then a last barrier. A thread woken for every step would start ~0.1 ms late
(this VM), more than a small model's step: so a partner runs :func:`step_loop` for a whole generation — it waits
for the host to post a step in a mailbox (``box``), runs its part and waits again, until it is told to stop. The
host runs part 0 of each step itself, through the same kernel told how many steps to run (one kernel to compile:
~50 s on this VM): one, or in greedy decoding several, each row's next token chosen in the kernel and the next
step posted from there — a call from Python costs ~25 µs of argument handling (4×256 Llama; ~50 µs at 8×512)
and the host's work around a step as much again, against a ~150 µs step. The barrier flags only grow: step ``s``
(counted from 1) uses barriers ``(s - 1)·step_barriers(L) + 1 …``.

Mailbox ``box`` (int64, one cache line a slot, :data:`~kolm_audit.runtime.cpu_sync.LINE`): ``box[SEQ]`` the
number of the latest posted step (stored last, with release ordering), ``box[T0]`` its cache length, ``box[STOP]``
nonzero to end the loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kolm_audit.runtime.cpu_attention import cached_heads, rope_rows
from kolm_audit.runtime.cpu_blocks import _swiglu_row, embedding_rows, norm_quant
from kolm_audit.runtime.cpu_gemv import _gemv_rows
from kolm_audit.runtime.cpu_kernels import _JIT, _epilogue_row, _kernel, _sat, quantize_rows
from kolm_audit.runtime.cpu_sync import LINE, _backoff, _load_acquire, _store_release, barrier, share

SEQ, T0, STOP = 0, LINE, 2 * LINE       # mailbox slots
_EMPTY = np.zeros(0, np.int64)
_EMPTY2 = np.zeros((0, 0), np.int64)
_COLS = 16                              # columns split in multiples of 16 (one 64-byte line of int32 outputs)


def mailbox() -> np.ndarray:
    """A fresh mailbox (no step posted)."""
    return np.zeros(3 * LINE, np.int64)


@njit(inline="always")
def _post(box: np.ndarray, t0: int, seq: int) -> None:
    box[T0] = t0
    _store_release(box, SEQ, seq)


@_kernel
def post(box: np.ndarray, t0: int, seq: int) -> None:
    """Post step ``seq`` over a cache of ``t0`` rows (its inputs written before; the number stored last, with
    release ordering)."""
    _post(box, t0, seq)


@njit(inline="always")
def _greedy(row: np.ndarray) -> int:
    """The index of the largest value of ``row`` [V], ties to the lowest (``docs/runtime-spec-llama.md`` §8: greedy
    decoding): the maximum in one vectorized pass, then its first index."""
    best = row[0]
    for j in range(row.shape[0]):
        best = max(best, row[j])
    for j in range(row.shape[0]):
        if row[j] == best:
            return j
    return 0


@njit(inline="always")
def step_barriers(layers: int) -> int:
    """Barriers of one step of ``layers`` layers: six a layer and the last one."""
    return 6 * layers + 1


@njit(inline="always")
def _cols(n: int, part: int, parts: int) -> tuple[int, int]:
    """The part's output columns of ``n``: consecutive ranges in multiples of :data:`_COLS`."""
    a, b = share((n + _COLS - 1) // _COLS, part, parts)
    return min(a * _COLS, n), min(b * _COLS, n)


@njit(**_JIT)
def _product(q: np.ndarray, qm: np.ndarray, qe: np.ndarray, lin: tuple, c0: int, c1: int, u: np.ndarray,
             y: np.ndarray) -> None:
    """``y[r, j] = sat(requantize(Σ_k q[r, k]·W[c0 + j, k]) + bias)`` (§4.2) for the columns ``c0 … c1 - 1`` of
    ``lin = (w, wsum, mult, shift, bias, wp, psum)``; ``y`` int64 [R, >= c1 - c0]."""
    w, wsum, mult, shift, bias = lin[0], lin[1], lin[2], lin[3], lin[4]
    rows, n = q.shape[0], c1 - c0
    if n <= 0:
        return
    acc = np.empty((rows, n), np.int32)
    _gemv_rows(q, w[c0:c1], wsum[c0:c1], u, acc)                             # [R,n] exact Σ q·W
    sm, ss, sb = mult[c0:c1], shift[c0:c1], bias[c0:c1]
    smin, smax = ss.min(), ss.max()
    for r in range(rows):
        _epilogue_row(acc[r], qm[r], qe[r], sm, ss, sb, smin, smax, y[r])


@njit(inline="always")
def _residual_cols(res: np.ndarray, y: np.ndarray, c0: int, c1: int, out: np.ndarray) -> None:
    """``out[r, c] = sat(res[r, c] + y[r, c - c0])`` for the columns ``c0 … c1 - 1`` of every row (a residual add,
    §4.2 then Llama §3: the product's columns of this part)."""
    for r in range(out.shape[0]):
        for j in range(c1 - c0):
            out[r, c0 + j] = _sat(np.int64(res[r, c0 + j]) + y[r, j])


@njit(**_JIT)
def _layer(x: np.ndarray, hq: np.ndarray, hm: np.ndarray, he: np.ndarray, layer: tuple, cache: tuple,
           eps_q32: int, rsqrt: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, nh: int, t0: int,
           valid: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray, sig_pair: np.ndarray,
           part: int, parts: int, sync: np.ndarray, k: int, shared: tuple, x_out: np.ndarray) -> None:
    """Part ``part`` of one decoder layer (barriers ``k + 1 … k + 6``) of the ``R`` rows ``x`` [R, H] int32 Q.16
    whose input norm has the §3.3 rows ``hq`` [R, H], ``hm``, ``he`` [R]; writes the part's columns of the layer's
    output into ``x_out`` [R, H] (shared) and every row's output norm (``layer``'s ``g_next``) into ``hq``, ``hm``,
    ``he``. Shared: ``(qkv, q, ctx, x1, m, …)`` of :func:`_step`."""
    rows, hid = x.shape
    lin_qkv, lin_o, lin_gu, lin_d, g_post, g_next = layer
    kbuf, kq, mk, ek, vbuf = cache
    qkv, qr, ctx, x1, m = shared[0], shared[1], shared[2], shared[3], shared[4]
    inter = m.shape[1]
    u = np.empty(rows * max(hid, inter), np.uint8)                           # scratch of the products
    y = np.empty((rows, max(qkv.shape[1], hid, inter)), np.int64)
    y2 = np.empty((rows, inter), np.int64)
    idx, fr, val = np.empty(inter, np.int64), np.empty(inter, np.int64), np.empty(inter, np.int64)
    h = np.empty((rows, hid), np.int32)
    cq, cm, ce = np.empty((rows, ctx.shape[2]), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    mq, mm, me = np.empty((rows, inter), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    # 1. qkv = linear(h), the part's columns                                  [R, (nh+2nkv)·D] int32 Q.16 (shared)
    c0, c1 = _cols(qkv.shape[1], part, parts)
    _product(hq, hm, he, lin_qkv, c0, c1, u, y)
    for r in range(rows):
        for j in range(c1 - c0):
            qkv[r, c0 + j] = y[r, j]
    barrier(sync, part, parts, k + 1)
    # 2. RoPE; keys (+ §3.3 rows) and values into cache rows t0 (part 0)      q [B, nh, 1, D] int32 Q.16 (shared)
    if part == 0:
        rope_rows(qkv.reshape(rows, 1, qkv.shape[1]), pos, cos, sin, nh, kbuf.shape[1], t0, 0, rows, qr, kbuf, kq,
                  mk, ek, vbuf)
    barrier(sync, part, parts, k + 2)
    # 3. attention over the t0 + 1 keys, the part's query heads               ctx [B, 1, nh·D] int32 Q.16 (shared)
    h0, h1 = share(nh, part, parts)
    cached_heads(qr, kq, mk, ek, vbuf, valid, scale_mult, scale_shift, exp_pair, h0, h1, ctx)
    barrier(sync, part, parts, k + 3)
    quantize_rows(ctx.reshape(rows, ctx.shape[2]), cq, cm, ce)               # [R, nh·D] §3.3 rows (every part)
    # 4. x1 = sat(x + o_proj(ctx)), the part's columns; RMSNorm(x1; post)      [R, H] int32 Q.16
    c0, c1 = _cols(hid, part, parts)
    _product(cq, cm, ce, lin_o, c0, c1, u, y)
    _residual_cols(x, y, c0, c1, x1)
    barrier(sync, part, parts, k + 4)
    norm_quant(x1, g_post, _EMPTY, False, eps_q32, rsqrt, h, hq, hm, he)      # [R,H] + §3.3 rows (every part)
    # 5. m = swiglu(gate, up), the part's columns of both                      [R, I] int32 Q.16 (shared)
    c0, c1 = _cols(inter, part, parts)
    _product(hq, hm, he, lin_gu, c0, c1, u, y)                               # gate columns
    _product(hq, hm, he, lin_gu, inter + c0, inter + c1, u, y2)              # up columns
    if c1 > c0:
        for r in range(rows):
            _swiglu_row(y[r, :c1 - c0], y2[r, :c1 - c0], sig_pair, idx, fr, val, m[r, c0:c1])
    barrier(sync, part, parts, k + 5)
    quantize_rows(m, mq, mm, me)                                             # [R, I] §3.3 rows (every part)
    # 6. x_out = sat(x1 + down_proj(m)), the part's columns; RMSNorm(·; next)  [R, H] int32 Q.16
    c0, c1 = _cols(hid, part, parts)
    _product(mq, mm, me, lin_d, c0, c1, u, y)
    _residual_cols(x1, y, c0, c1, x_out)
    barrier(sync, part, parts, k + 6)
    norm_quant(x_out, g_next, _EMPTY, False, eps_q32, rsqrt, h, hq, hm, he)


@njit(**_JIT)
def _step(ids: np.ndarray, emb: tuple, g_first: np.ndarray, layers: tuple, caches: tuple, lm_head: tuple,
          eps_q32: int, rsqrt: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, nh: int, t0: int,
          valid: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray, sig_pair: np.ndarray,
          part: int, parts: int, sync: np.ndarray, k: int, shared: tuple, logits: np.ndarray) -> None:
    """Part ``part`` of one step of ``R = B`` new tokens (one per request; barriers ``k + 1 …``). ``shared`` =
    ``(qkv [R, (nh+2nkv)·D], q [B, nh, 1, D], ctx [B, 1, nh·D], x1 [R, H], m [R, I], xa [R, H], xb [R, H])`` int32,
    written by every part; the other operands as for :func:`~kolm_audit.runtime.cpu_decode.decode_forward`."""
    rows, hid = ids.shape[0], emb[0].shape[1]
    xa, xb = shared[5], shared[6]
    x = np.empty((rows, hid), np.int32)
    embedding_rows(ids, emb[0], emb[1], emb[2], _EMPTY2, _EMPTY, x)         # [R,H] int32 Q.16 §3.1 (every part)
    h = np.empty((rows, hid), np.int32)
    hq, hm, he = np.empty((rows, hid), np.int8), np.empty(rows, np.int64), np.empty(rows, np.int64)
    norm_quant(x, g_first, _EMPTY, False, eps_q32, rsqrt, h, hq, hm, he)     # [R,H] RMSNorm + §3.3 rows
    for i in range(len(layers)):                                             # x: the residual stream (shared)
        x_out = xa if i % 2 == 0 else xb
        _layer(x, hq, hm, he, layers[i], caches[i], eps_q32, rsqrt, pos, cos, sin, nh, t0, valid, scale_mult,
               scale_shift, exp_pair, sig_pair, part, parts, sync, k + 6 * i, shared, x_out)
        x = x_out
    c0, c1 = _cols(logits.shape[1], part, parts)                             # the LM head, the part's columns
    y = np.empty((rows, c1 - c0), np.int64)
    _product(hq, hm, he, lm_head, c0, c1, np.empty(rows * hid, np.uint8), y)  # [R, V] int32 Q.16
    for r in range(rows):
        for j in range(c1 - c0):
            logits[r, c0 + j] = y[r, j]
    barrier(sync, part, parts, k + step_barriers(len(layers)))


@_kernel
def step_loop(ids: np.ndarray, emb: tuple, g_first: np.ndarray, layers: tuple, caches: tuple, lm_head: tuple,
              eps_q32: int, rsqrt: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, nh: int,
              key_ok: np.ndarray, scale_mult: int, scale_shift: int, exp_pair: np.ndarray, sig_pair: np.ndarray,
              part: int, parts: int, sync: np.ndarray, box: np.ndarray, seen: int, steps: int, eos: np.ndarray,
              shared: tuple, logits: np.ndarray, chosen: np.ndarray) -> int:
    """Part ``part`` of the steps posted in ``box`` after step ``seen`` (module docstring). ``steps`` 0: every step
    until ``box[STOP]`` (the partner). ``steps >= 1``: the host's part of the step it posted and, greedy
    (``docs/runtime-spec-llama.md`` §8: a row's next token is its largest logit, ties to the lowest id), of up to
    ``steps - 1`` more that it posts itself: after each step every row's token goes into ``chosen[s]`` [B] and, unless
    that was step ``steps`` or a token is one of ``eos``, is the row's next input — one position on, one more real
    key. A step's tokens are ``ids`` [B], positions ``pos`` [B, 1] and real keys ``key_ok`` [B, 1, 1, C] (its first
    ``t0 + 1`` columns), written before the step is posted. Writes the part's columns of the logits [B, V] and
    (part 0) each layer's new cache row; a step returns once every part has finished it. Returns the steps run
    (the host's)."""
    per = step_barriers(len(layers))
    rows = ids.shape[0]
    done = 0
    while True:
        spins = 0
        while _load_acquire(box, SEQ) == seen and _load_acquire(box, STOP) == 0:
            spins = _backoff(spins)
        if _load_acquire(box, STOP) != 0:
            return done
        seen = _load_acquire(box, SEQ)
        t0 = _load_acquire(box, T0)
        _step(ids, emb, g_first, layers, caches, lm_head, eps_q32, rsqrt, pos, cos, sin, nh, t0,
              key_ok[:, :, :, :t0 + 1], scale_mult, scale_shift, exp_pair, sig_pair, part, parts, sync,
              (seen - 1) * per, shared, logits)
        if steps == 0:
            continue
        stop = done + 1 == steps
        for r in range(rows):
            tok = _greedy(logits[r])
            chosen[done, r] = tok
            for e in eos:
                stop = stop or tok == e
        done += 1
        if stop:
            return done
        for r in range(rows):                                                # the next step's inputs, then post it
            ids[r] = chosen[done - 1, r]
            pos[r, 0] += 1
            key_ok[r, 0, 0, t0 + 1] = True
        _post(box, t0 + 1, seen + 1)
