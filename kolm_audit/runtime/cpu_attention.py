"""Attention kernels of the fused CPU backend (numba): a whole §5.2 block per call, the reference's integers.

Spec: ``docs/runtime-spec.md`` §5.2 (and ``docs/runtime-spec-llama.md`` §3, §5 for RoPE, the causal mask and the KV
cache). One query row at a time, vectorized across keys:

* key rows are kept quantized (§3.3: int8 ``kq`` with their ``m``, ``e``); the score's ``Σ_d qq·kq`` is an integer
  dot product (``|Σ| <= D·127² < 2^22``), ``mq·mk <= 2^30`` and the product of both ``< 2^52``, so the §3.2
  requantization takes its ``s >= 32`` form with 32-bit limb products whenever ``S + 16 - eq - ek >= 32`` (every row
  with ``e = 0``, i.e. every real one), else the general form;
* the score dot products use ``vpdpbusd`` on VNNI CPUs (:mod:`kolm_audit.runtime.cpu_gemv`'s offset identity), for
  more than 4 query rows in its packed tiles (the block's keys packed as the weights of a product);
* the exponentials come from the pair table of ``tables.exp`` (:func:`kolm_audit.runtime.cpu_kernels.pair_table`),
  masked keys get ``p = 0``; the division ``rdiv(p·2^16, Σp)`` is the float64 identity of the spec's "Fast backends"
  (exact while the table lies in ``[0, 2^30]`` with ``T[0] >= 1`` — callers check it — and ``Tk <= 2^16``);
* ``Σ_j P·V`` accumulates in int64 (``P <= 2^16`` and ``|V| < 2^31`` are 32-bit factors; ``|Σ| < 2^48``).

:func:`packed_attention` runs requests packed without padding (BERT), :func:`rope_append` and
:func:`cached_attention` the Llama block over a KV cache (RoPE of the new rows with each new key quantized once —
the cache of :mod:`kolm_audit.runtime.decode` carries those rows along — then attention with a causal/padding mask
and grouped-query heads).

Example::

    >>> import numpy as np
    >>> from kolm_audit.compile.tables import attn_scale, exp_table
    >>> from kolm_audit.runtime.cpu_kernels import pair_table
    >>> from kolm_audit.runtime.ops import NumpyOps
    >>> rng = np.random.default_rng(0)
    >>> qkv, bounds = rng.integers(-(1 << 20), 1 << 20, (5, 24)), np.array([0, 2, 5])
    >>> sm, ss = (int(v) for v in attn_scale(4))
    >>> out, q8 = np.empty((5, 8), np.int32), np.empty((5, 8), np.int8)
    >>> m, e = np.empty(5, np.int64), np.empty(5, np.int64)
    >>> packed_attention(qkv, bounds, 2, 4, sm, ss, pair_table(exp_table()), out, q8, m, e)
    >>> want = NumpyOps().segment_attention(qkv, bounds, heads=2, head_dim=4, scale_mult=sm, scale_shift=ss,
    ...                                     exp_table=exp_table().astype(np.int64))
    >>> out.tolist() == want.tolist()
    True
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kolm_audit.runtime.cpu_gemv import FEW_ROWS, GEMM, VNNI, _dot_vnni, _gemm_fresh
from kolm_audit.runtime.cpu_kernels import (
    _kernel,
    _mul32,
    _pair_lut_row,
    _quantize_row,
    _quantize_seg,
    _requantize,
    _requantize_hi,
    _sat,
    quantize_rows,
)

_NEG = -(1 << 62)


_BLOCK = 1 << 14                # scores per block of query rows (scratch size); rows are processed in such blocks


@njit(inline="always")
def _attend_block(qq: np.ndarray, mq: np.ndarray, eq: np.ndarray, nr: int, kq: np.ndarray, mk: np.ndarray,
                  ek: np.ndarray, ekmax: int, v: np.ndarray, ok: np.ndarray, kend: np.ndarray, scale_mult: int,
                  scale_shift: int, pair: np.ndarray, dots: np.ndarray, sc: np.ndarray, idx: np.ndarray,
                  fr: np.ndarray, val: np.ndarray, pf: np.ndarray, res: np.ndarray) -> None:
    """§5.2 for ``nr`` query rows against one set of keys, into ``res[:nr]`` [nr, D] (``sat(round_shift(Σ P·V,
    16))``). Queries: their int8 rows ``qq`` [>= nr, D] with ``mq``, ``eq``; keys: their int8 rows ``kq`` [>= keys, D]
    with ``mk``, ``ek`` (``ekmax`` the largest ``e``); values ``v`` [>= keys, D] (int32 range). ``ok`` [>= nr, tp]:
    the valid keys of each row (at least one); ``kend`` [>= nr]: how many keys a row visits (past its last valid
    key, at most ``tp``). ``dots`` … ``pf``: scratch of ``nr·tp``.

    The dot products are integer sums of 16-bit products (``|qq·kq| <= 127²``, ``|Σ| <= D·127² < 2^22``); the other
    loops run over whole rows of the block, and one exponential lookup serves the whole block."""
    d, tp = kq.shape[1], ok.shape[1]
    d32 = d - d % 32 if VNNI else 0
    if GEMM and nr > FEW_ROWS:                               # Σ_d qq·kq of every row and key in packed tiles
        _gemm_fresh(qq[:nr], kq[:tp], dots[:nr * tp].reshape(nr, tp))
    elif d32:                                                # Σ_d qq·kq as u·kq - 128·Σ kq (cpu_gemv's identity)
        kmax = 0
        for r in range(nr):
            kmax = max(kmax, kend[r])
        ks = np.empty(kmax, np.int32)                        # 128·Σ_{c < d32} kq[j, c], |.| <= d·2^14 < 2^31
        for j in range(kmax):
            t = np.int32(0)
            for c in range(d32):
                t += np.int32(kq[j, c])
            ks[j] = t * 128
        u = np.empty(d, np.uint8)
        for r in range(nr):
            base = r * tp
            for c in range(d):
                u[c] = np.uint8(np.int16(qq[r, c]) + 128)
            for j in range(kend[r]):
                acc = _dot_vnni(u, kq[j], 0, d32) - ks[j]
                for c in range(d32, d):
                    acc += np.int32(np.int16(qq[r, c]) * np.int16(kq[j, c]))
                dots[base + j] = acc
    else:
        for r in range(nr):
            base = r * tp
            for j in range(kend[r]):
                acc = np.int32(0)
                for c in range(d):
                    acc += np.int32(np.int16(qq[r, c]) * np.int16(kq[j, c]))
                dots[base + j] = acc
    for r in range(nr):                                      # scores (§3.2), row maximum, t = max - score
        base, ke = r * tp, kend[r]
        s0, mqr = scale_shift + 16 - eq[r], mq[r]
        mx = np.int64(_NEG)
        if s0 - ekmax >= 32:                                 # every key's shift in [32, 56]: 32-bit limb products
            for j in range(ke):
                s = _requantize_hi(_mul32(dots[base + j], _mul32(mqr, mk[j])), scale_mult, s0 - ek[j])
                s = s if ok[r, j] else _NEG
                sc[base + j] = s
                mx = max(mx, s)
        else:
            for j in range(ke):
                s = _requantize(np.int64(dots[base + j]) * (mqr * mk[j]), scale_mult, s0 - ek[j])
                s = s if ok[r, j] else _NEG
                sc[base + j] = s
                mx = max(mx, s)
        for j in range(ke):
            sc[base + j] = mx - sc[base + j]                 # >= 0; masked keys >= 2^61 (their p is set to 0)
    visited = 0
    for r in range(nr):
        visited += kend[r]
    if 2 * visited >= nr * tp:                               # exp(-t) Q.30: one pass over the block (unvisited
        _pair_lut_row(sc, nr * tp, pair, 0, 9, idx, fr, val)  # entries: clamped, unused) when most are visited,
    else:                                                    # else row by row (a causal prefill)
        for r in range(nr):
            base = r * tp
            _pair_lut_row(sc[base:], kend[r], pair, 0, 9, idx[base:], fr[base:], val[base:])
    for r in range(nr):                                      # P = rdiv(p·2^16, Σp), exact in float64
        base, ke = r * tp, kend[r]
        total = np.int64(0)
        for j in range(ke):
            p = val[base + j] if ok[r, j] else 0
            val[base + j] = p
            total += p
        half, tf = np.float64(total >> 1), np.float64(total)
        for j in range(ke):
            pf[base + j] = np.floor((np.float64(val[base + j] << 16) + half) / tf)
    for r in range(nr):                                      # Σ_j P·V: P <= 2^16, |V| < 2^31, |Σ| < 2^48
        base, ke = r * tp, kend[r]
        for c in range(d):
            res[r, c] = 0
        k4 = ke - ke % 4                                     # four keys a pass: res read and written once for
        for j in range(0, k4, 4):                            # four products (BERT, 24 tokens: 66-77 → 49-53 µs)
            p0, p1 = np.int64(pf[base + j]), np.int64(pf[base + j + 1])
            p2, p3 = np.int64(pf[base + j + 2]), np.int64(pf[base + j + 3])
            for c in range(d):
                res[r, c] += (_mul32(p0, v[j, c]) + _mul32(p1, v[j + 1, c])) + (_mul32(p2, v[j + 2, c]) +
                                                                                _mul32(p3, v[j + 3, c]))
        for j in range(k4, ke):
            pj = np.int64(pf[base + j])
            for c in range(d):
                res[r, c] += _mul32(pj, v[j, c])
        for c in range(d):
            res[r, c] = _sat((res[r, c] + (1 << 15)) >> 16)


@njit(inline="always")
def _scratch(rows: int, tp: int, d: int) -> tuple:
    """The scratch of :func:`_attend_block` for ``rows`` query rows and ``tp`` keys, plus its ``res``."""
    n = rows * tp
    return (np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(n, np.int64), np.empty(n, np.float64), np.empty((rows, d), np.int64))


@njit(inline="always")
def packed_heads(qkv: np.ndarray, bounds: np.ndarray, nh: int, d: int, h0: int, h1: int, scale_mult: int,
                 scale_shift: int, pair: np.ndarray, out: np.ndarray) -> None:
    """§5.2 of the heads ``h0 … h1 - 1`` for packed requests: ``qkv`` [N, 3·nh·d] (int32 range) holds q|k|v of
    every token, request ``s`` owns rows ``bounds[s]:bounds[s+1]`` (``bounds`` [S+1], absolute row numbers) and
    attends to all of its own keys. Writes those heads' columns of the context [N, nh·d] into ``out``."""
    hid = nh * d
    tmax = 1
    for s in range(bounds.shape[0] - 1):
        tmax = max(tmax, bounds[s + 1] - bounds[s])
    rows = max(1, min(tmax, _BLOCK // tmax))
    qq, kq, vt = np.empty((tmax, d), np.int8), np.empty((tmax, d), np.int8), np.empty((tmax, d), np.int32)
    mq, eq, mk, ek = np.empty(tmax, np.int64), np.empty(tmax, np.int64), np.empty(tmax, np.int64), \
        np.empty(tmax, np.int64)
    ok, kend = np.empty((rows, tmax), np.bool_), np.empty(rows, np.int64)
    dots, sc, idx, fr, val, pf, res = _scratch(rows, tmax, d)
    for s in range(bounds.shape[0] - 1):
        a, t = bounds[s], bounds[s + 1] - bounds[s]
        for r in range(rows):                                # every key of the request, none past it
            kend[r] = t
            for j in range(tmax):
                ok[r, j] = j < t
        for h in range(h0, h1):
            c0 = h * d
            ekmax = np.int64(0)
            for i in range(t):
                mq[i], eq[i] = _quantize_seg(qkv, a + i, c0, d, qq, i)
                mk[i], ek[i] = _quantize_seg(qkv, a + i, hid + c0, d, kq, i)
                ekmax = max(ekmax, ek[i])
                for c in range(d):
                    vt[i, c] = qkv[a + i, 2 * hid + c0 + c]
            for r0 in range(0, t, rows):
                nr = min(rows, t - r0)
                _attend_block(qq[r0:], mq[r0:], eq[r0:], nr, kq, mk, ek, ekmax, vt, ok, kend, scale_mult, scale_shift,
                              pair, dots, sc, idx, fr, val, pf, res)
                for r in range(nr):
                    for c in range(d):
                        out[a + r0 + r, c0 + c] = res[r, c]


@_kernel
def packed_attention(qkv: np.ndarray, bounds: np.ndarray, nh: int, d: int, scale_mult: int, scale_shift: int,
                     pair: np.ndarray, out: np.ndarray, q8: np.ndarray, qm: np.ndarray, qe: np.ndarray) -> None:
    """§5.2 for packed requests (:func:`packed_heads` of every head): the context [N, nh·d] into ``out`` and its
    §3.3 rows into ``q8``, ``qm``, ``qe``."""
    packed_heads(qkv, bounds, nh, d, 0, nh, scale_mult, scale_shift, pair, out)
    a, z = bounds[0], bounds[bounds.shape[0] - 1]
    quantize_rows(out[a:z], q8[a:z], qm[a:z], qe[a:z])


@njit(inline="always")
def rope_rows(qkv: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, nh: int, nkv: int, t0: int,
              r0: int, r1: int, q_out: np.ndarray, k_out: np.ndarray, kq: np.ndarray, mk: np.ndarray, ek: np.ndarray,
              v_out: np.ndarray) -> None:
    """:func:`rope_append` of the rows ``r0 … r1 - 1`` of ``qkv`` [B, T, (nh + 2·nkv)·D] (row ``r`` is request
    ``r // T``, new token ``r % T``)."""
    t = qkv.shape[1]
    d = q_out.shape[3]
    half = d // 2
    nq, nk = nh * d, nkv * d
    o = np.empty((1, d), np.int32)
    q1 = np.empty((1, d), np.int8)
    for r in range(r0, r1):
        bi, ti = r // t, r % t
        p = pos[bi, ti]
        for h in range(nh + nkv):
            c0 = h * d
            for j in range(half):
                xa, xb = qkv[bi, ti, c0 + j], qkv[bi, ti, c0 + j + half]
                o[0, j] = _sat((_mul32(xa, cos[p, j]) - _mul32(xb, sin[p, j]) + (1 << 29)) >> 30)
                o[0, j + half] = _sat((_mul32(xb, cos[p, j]) + _mul32(xa, sin[p, j]) + (1 << 29)) >> 30)
            if h < nh:
                for c in range(d):
                    q_out[bi, h, ti, c] = o[0, c]
            else:
                kh, tt = h - nh, t0 + ti
                for c in range(d):
                    k_out[bi, kh, tt, c] = o[0, c]
                mk[bi, kh, tt], ek[bi, kh, tt] = _quantize_seg(o, 0, 0, d, q1, 0)
                for c in range(d):
                    kq[bi, kh, tt, c] = q1[0, c]
        for kh in range(nkv):
            for c in range(d):
                v_out[bi, kh, t0 + ti, c] = qkv[bi, ti, nq + nk + kh * d + c]


@_kernel
def rope_append(qkv: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, nh: int, nkv: int, t0: int,
                q_out: np.ndarray, k_out: np.ndarray, kq: np.ndarray, mk: np.ndarray, ek: np.ndarray,
                v_out: np.ndarray) -> None:
    """Llama spec §3 RoPE of the new rows and their entry into a KV cache: ``qkv`` [B, T, (nh + 2·nkv)·D] (q|k|v,
    int32 range) at positions ``pos`` [B, T]; writes the rotated queries into ``q_out`` [B, nh, T, D], the rotated
    keys into ``k_out[:, :, t0 + t]`` with their §3.3 rows into ``kq``/``mk``/``ek`` (same index), the values into
    ``v_out[:, :, t0 + t]``. ``sat(rnd((x_a·cos - x_b·sin) / 2^30))``: 32-bit factors, ``|Σ| < 2^62``."""
    rope_rows(qkv, pos, cos, sin, nh, nkv, t0, 0, qkv.shape[0] * qkv.shape[1], q_out, k_out, kq, mk, ek, v_out)


@njit(inline="always")
def cached_heads(q: np.ndarray, kq: np.ndarray, mk: np.ndarray, ek: np.ndarray, v: np.ndarray, valid: np.ndarray,
                 scale_mult: int, scale_shift: int, pair: np.ndarray, h0: int, h1: int, out: np.ndarray) -> None:
    """:func:`cached_attention` of the query heads ``h0 … h1 - 1`` into their columns of ``out`` [B, Tq, Hq·D]
    (no §3.3 rows)."""
    b, hq, tq, d = q.shape
    hk, tk = kq.shape[1], valid.shape[3]
    group = hq // hk
    hv, tv = valid.shape[1], valid.shape[2]
    nrows = group * tq
    rows = max(1, min(nrows, _BLOCK // tk))
    qq, mq, eq = np.empty((nrows, d), np.int8), np.empty(nrows, np.int64), np.empty(nrows, np.int64)
    ok, kend = np.empty((nrows, tk), np.bool_), np.empty(nrows, np.int64)
    dots, sc, idx, fr, val, pf, res = _scratch(rows, tk, d)
    for bi in range(b):
        ob = out[bi]
        for kh in range(hk):
            g0, g1 = max(h0 - kh * group, 0), min(h1 - kh * group, group)    # this KV head's query heads in range
            if g0 >= g1:
                continue
            ekmax = np.int64(0)
            for j in range(tk):
                ekmax = max(ekmax, ek[bi, kh, j])
            for g in range(g0, g1):                          # block row r = (g - g0)·Tq + t: query head kh·group + g
                h = kh * group + g
                for t in range(tq):
                    r = (g - g0) * tq + t
                    mq[r], eq[r] = _quantize_seg(q[bi, h], t, 0, d, qq, r)
                    last = 0
                    for j in range(tk):
                        okj = valid[bi, h if hv > 1 else 0, t if tv > 1 else 0, j]
                        ok[r, j] = okj
                        if okj:
                            last = j + 1
                    kend[r] = last                           # keys past the last valid one are not visited
            kqh, mkh, ekh, vh = kq[bi, kh], mk[bi, kh], ek[bi, kh], v[bi, kh]
            brows = (g1 - g0) * tq
            for r0 in range(0, brows, rows):
                nr = min(rows, brows - r0)
                _attend_block(qq[r0:], mq[r0:], eq[r0:], nr, kqh, mkh, ekh, ekmax, vh, ok[r0:], kend[r0:],
                              scale_mult, scale_shift, pair, dots, sc, idx, fr, val, pf, res)
                for r in range(nr):
                    g, t = divmod(r0 + r, tq)
                    for c in range(d):
                        ob[t, (kh * group + g0 + g) * d + c] = res[r, c]


@_kernel
def cached_attention(q: np.ndarray, kq: np.ndarray, mk: np.ndarray, ek: np.ndarray, v: np.ndarray, valid: np.ndarray,
                     scale_mult: int, scale_shift: int, pair: np.ndarray, out: np.ndarray, q8: np.ndarray,
                     qm: np.ndarray, qe: np.ndarray) -> None:
    """§5.2 with grouped-query heads over a KV cache: ``q`` [B, Hq, Tq, D] (int32 range), keys as their quantized
    rows ``kq`` [B, Hk, >= Tk, D] int8 with ``mk``/``ek`` [B, Hk, >= Tk], values ``v`` [B, Hk, >= Tk, D], ``valid``
    [B, 1|Hq, 1|Tq, Tk] (``Tk`` = its last dimension; every query row has a valid key). Query head ``h`` reads KV
    head ``h // (Hq / Hk)``: the ``(Hq / Hk)·Tq`` query rows of a KV head form one block. Writes the context
    [B, Tq, Hq·D] into ``out`` and its §3.3 rows (row ``b·Tq + t``) into ``q8``, ``qm``, ``qe``."""
    b, hq, tq, _ = q.shape
    cached_heads(q, kq, mk, ek, v, valid, scale_mult, scale_shift, pair, 0, hq, out)
    for bi in range(b):
        for t in range(tq):
            row = bi * tq + t
            qm[row], qe[row] = _quantize_row(out[bi, t], q8[row])
