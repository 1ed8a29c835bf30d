"""Fused CPU kernels of ``kolm-int/1`` (numba): one pass per operation, the same integers as the reference.

Each kernel is the scalar, per-element (or per-row) transcription of :mod:`kolm_audit.runtime.fixedpoint` and
:mod:`kolm_audit.runtime.reference` (spec ``docs/runtime-spec.md`` §3–§5, ``docs/runtime-spec-llama.md`` §3–§4):
``int64`` arithmetic whose every intermediate stays inside the bounds the spec proves (so nothing wraps), shift
amounts kept in ``[0, 62]``, integer floor division with Python semantics. The one float use is the division
of :func:`quantize_rows` and of the softmax, taken in float64 where the spec's "Fast backends" section proves it
exact (integer operands below ``2^53``: a correctly rounded quotient never rounds across an integer).

Kernels write into caller-allocated outputs and work on independent rows, so a caller may split the rows
between threads (``nogil``) without changing a single output. Compiled on first use and cached on disk.

Example::

    >>> import numpy as np
    >>> x = np.array([[65536, -32768, 0]])
    >>> q, m, e = np.empty((1, 3), np.int8), np.empty(1, np.int64), np.empty(1, np.int64)
    >>> quantize_rows(x, q, m, e)
    >>> q.tolist(), m.tolist(), e.tolist()
    ([[127, -63, 0]], [517], [0])
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from kolm_audit.runtime.cpu_features import AMX

_JIT = {"nogil": True, "error_model": "numpy"}   # divisors are >= 1 by construction


def _sources_digest() -> str:
    """sha256 of the source of every CPU kernel module (``runtime/cpu_*.py``)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("cpu_*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


_SOURCES = _sources_digest()


def _kernel(fn: Callable[..., None]) -> Callable[..., None]:
    """``njit`` with the compiled code cached on disk; where numba finds no writable cache location (it raises
    at decoration), the kernel is compiled in memory once per process instead.

    A kernel inlines helpers of other modules (``cpu_gemv``, ``cpu_attention``, ``cpu_blocks`` and this one), but
    numba checks a cached kernel only against its own file's time stamp: a cache written before a helper changed
    would still load. So the cache entry is also keyed on :data:`_SOURCES`, the digest of every kernel module, and
    on whether AMX was granted (numba keys on the CPU's features only; a kernel with tile instructions must not load
    where Linux refused the tile state); where numba's cache object does not have the field this relies on, the
    kernel is compiled in memory instead."""
    try:
        disp = njit(cache=True, **_JIT)(fn)
    except RuntimeError:
        return njit(cache=False, **_JIT)(fn)
    cache_file = getattr(getattr(disp, "_cache", None), "_cache_file", None)
    if cache_file is None or not hasattr(cache_file, "_source_stamp"):
        return njit(cache=False, **_JIT)(fn)
    cache_file._source_stamp = (cache_file._source_stamp, _SOURCES, AMX)
    return disp


I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


# ---- scalar and row helpers (inlined) -------------------------------------------------------------------------
#
# Written so that LLVM vectorizes the loops over a row: min/max instead of branches, products of two values that
# each fit in int32 spelled as such (one ``vpmuldq`` instead of a 64-bit multiply), loop-invariant shifts where
# the spec's bounds allow them. Each bound is stated where it is used.

@njit(inline="always")
def _clamp(y: int, lo: int, hi: int) -> int:
    """``min(max(y, lo), hi)``."""
    return min(max(y, lo), hi)


@njit(inline="always")
def _sat(y: int) -> int:
    """Clamp to int32 (spec §2)."""
    return min(max(y, I32_MIN), I32_MAX)


@njit(inline="always")
def _mul32(a: int, b: int) -> int:
    """``a·b`` as int64 for integers ``a`` and ``b`` that each lie in the int32 range (the caller proves it): the
    product of two sign-extended 32-bit values, which LLVM emits as one ``vpmuldq``."""
    return np.int64(np.int32(a)) * np.int64(np.int32(b))


def _times_m(a: int, m: int) -> int:
    """``a·m`` as int64 for an accumulator ``a`` and a §3.3 step mantissa ``1 <= m <= 2^15`` (compiled through the
    overload below: an int32 accumulator takes :func:`_mul32`)."""
    return int(a) * int(m)


@overload(_times_m, inline="always")
def _times_m_numba(a: Any, m: Any) -> Callable[[Any, Any], int]:
    """numba sees the argument types (parameters annotated alike: numba compares the implementation's)."""
    if isinstance(a, types.Integer) and a.bitwidth <= 32:
        def narrow(a: Any, m: Any) -> int:
            return _mul32(a, m)
        return narrow

    def wide(a: Any, m: Any) -> int:
        return np.int64(a) * m
    return wide


@intrinsic
def _leading_zeros(typingctx: Any, v: Any) -> Any:
    """The leading zero bits of the int64 ``v`` (64 for 0): LLVM's ``ctlz`` (one ``lzcnt``)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.ctlz.i64")
        return builder.call(fn, [context.cast(builder, args[0], signature.args[0], types.int64),
                                 ir.Constant(ir.IntType(1), 0)])
    return types.int64(v), codegen


@njit(inline="always")
def _bitlen(v: int) -> int:
    """``bits(v)`` for ``0 <= v < 2^63`` (``bits(0) = 0``): 64 less the leading zeros (a float64's exponent, as
    ``math.frexp`` gives it, costs a library call)."""
    return 64 - _leading_zeros(v)


@njit(inline="always")
def _requantize(x: int, m: int, s: int) -> int:
    """``rnd(x·m / 2^s)``, one rounding, two-limb product (spec §3.2; ``s`` clipped to [0, 93] as there)."""
    if s < 0:
        s = 0
    if s > 93:
        s = 93
    xh = x >> 31
    a = xh * m
    b = (x - (xh << 31)) * m                 # x & (2^31 - 1) = x - (x >> 31)·2^31
    if s >= 32:
        return (a + (np.int64(1) << (s - 32)) + (b >> 31)) >> (s - 31)
    if s == 31:
        return a + ((b + (np.int64(1) << 30)) >> 31)
    half = (np.int64(1) << (s - 1)) if s > 0 else np.int64(0)
    return (a << (31 - s)) + ((b + half) >> s)


@njit(inline="always")
def _requantize_hi(x: int, m: int, s: int) -> int:
    """``rnd(x·m / 2^s)`` for ``|x| < 2^62``, ``|m| < 2^31`` and ``32 <= s <= 93``: the ``s >= 32`` branch of §3.2
    alone, its two limb products as :func:`_mul32` (``|x >> 31| <= 2^31``, ``0 <= x & (2^31 - 1) < 2^31``)."""
    return (_mul32(x >> 31, m) + (np.int64(1) << (s - 32)) + (_mul32(x & 0x7FFFFFFF, m) >> 31)) >> (s - 31)


@njit(inline="always")
def _lut(x: int, t: np.ndarray, x0: int, h: int) -> int:
    """Spec §5.1 piecewise-linear lookup (``1 <= h <= 30``): ``T[i] + rnd((T[i+1] - T[i])·f / 2^h)``."""
    n = t.shape[0]
    pos = x - x0
    i = _clamp(pos >> h, 0, n - 2)
    f = _clamp(pos - (i << h), 0, np.int64(1) << h)
    lo = np.int64(t[i])
    return lo + (((np.int64(t[i + 1]) - lo) * f + (np.int64(1) << (h - 1))) >> h)


@njit(inline="always")
def _round_shift(x: int, s: int) -> int:
    return x if s == 0 else (x + (np.int64(1) << (s - 1))) >> s


@njit(inline="always")
def _row_scale(amax: int) -> tuple[int, int, float, float, float]:
    """The §3.3 scale of a row whose largest magnitude is ``amax``: ``(m, e, ⌊d/2⌋, d, 1/d)`` with ``d = m·2^e``
    the smallest such step ``>= amax / 127`` (``m < 2^15``), the last three as float64."""
    d0 = max((amax + 126) // 127, 1)                              # ceil(amax / 127), at least 1
    ee = max(_bitlen(d0) - 15, 0)
    mm = (d0 + (np.int64(1) << ee) - 1) >> ee                     # ceil(d0 / 2^e)
    d = mm << ee
    df = np.float64(d)
    return mm, ee, np.float64(d >> 1), df, 1.0 / df


@njit(inline="always")
def _rdiv_q(v: int, half: float, df: float, inv: float) -> float:
    """``⌊(v + half) / d⌋`` as float64: the product with ``1/d`` and one exact correction (see
    :func:`_quantize_row`)."""
    a = np.float64(v) + half
    q0 = np.floor(a * inv)
    r = a - q0 * df
    if r >= df:
        q0 += 1.0
    if r < 0:
        q0 -= 1.0
    return q0


@njit(inline="always")
def _quantize_row(x: np.ndarray, q: np.ndarray) -> tuple[int, int]:
    """Spec §3.3 of one row ``x`` [K] (|x| <= 2^31) into ``q`` [K] (int8 or an exact float type); returns (m, e).

    ``q = rdiv(x, d) = ⌊a / d⌋`` with ``a = x + ⌊d/2⌋`` (``|a| < 2^32``, ``1 <= d < 2^26``), by a float64 product with
    ``1/d`` and one exact correction: the product is within ``2^32 · 2^-51`` of ``a/d``, so its floor ``q0`` is
    ``⌊a/d⌋`` or one off, and ``r = a - q0·d`` (exact in float64: integers below 2^34) says which."""
    k = x.shape[0]
    if k == 0:
        return 1, 0
    hi = lo = x[0]
    for j in range(k):                                   # max and min in the row's own type: twice the lanes of
        hi, lo = max(hi, x[j]), min(lo, x[j])            # an int64 |x|
    return _quantize_span(x, hi, lo, q)


@njit(inline="always")
def _quantize_span(x: np.ndarray, hi: int, lo: int, q: np.ndarray) -> tuple[int, int]:
    """The second half of :func:`_quantize_row`: ``x`` [K] (a row, or a span of one) into ``q`` [K] with the step of
    a row whose largest and smallest values are ``hi`` and ``lo`` (the span's own, or the whole row's when the span
    is part of it); returns (m, e)."""
    mm, ee, half, df, inv = _row_scale(max(np.int64(hi), -np.int64(lo), 0))
    for j in range(x.shape[0]):
        q[j] = _rdiv_q(x[j], half, df, inv)
    return mm, ee


@njit(inline="always")
def _quantize_seg(x: np.ndarray, r: int, c0: int, k: int, q: np.ndarray, qr: int) -> tuple[int, int]:
    """:func:`_quantize_row` of ``x[r, c0:c0+k]`` into ``q[qr, :k]`` (2-D arrays indexed in place: no array view is
    made, which in a hot loop would cost reference-count updates). Head sizes 32 and 64 take a copy whose length is
    a constant, so the short loops carry no runtime remainder handling (BERT attention at 24 tokens, alternated in
    one process: 149 → 137 µs; Llama's at 64: 995 → 939 µs)."""
    if k == 32:
        return _quantize_seg_n(x, r, c0, 32, q, qr)
    if k == 64:
        return _quantize_seg_n(x, r, c0, 64, q, qr)
    return _quantize_seg_n(x, r, c0, k, q, qr)


@njit(inline="always")
def _quantize_seg_n(x: np.ndarray, r: int, c0: int, k: int, q: np.ndarray, qr: int) -> tuple[int, int]:
    """The body of :func:`_quantize_seg`."""
    if k == 0:
        return 1, 0
    hi = lo = x[r, c0]
    for j in range(k):
        hi, lo = max(hi, x[r, c0 + j]), min(lo, x[r, c0 + j])
    mm, ee, half, df, inv = _row_scale(max(np.int64(hi), -np.int64(lo), 0))
    for j in range(k):
        q[qr, j] = _rdiv_q(x[r, c0 + j], half, df, inv)
    return mm, ee


@njit(inline="always")
def _epilogue_row(ar: np.ndarray, mr: int, er: int, mult: np.ndarray, shift: np.ndarray, bias: np.ndarray,
                  smin: int, smax: int, orow: np.ndarray) -> None:
    """§4.2 after the product for one row: ``orow[j] = sat(requantize(ar[j]·m_r, M_j, S_j - e_r) + bias_j)``
    (``|ar·m| < 2^62``, ``|M| < 2^31``). When every ``S_j - e_r`` of the row lies in [32, 93]
    (``smin``/``smax``: extremes of ``shift``) the vectorizable :func:`_requantize_hi`, else the general form."""
    n = ar.shape[0]
    if smin - er >= 32 and smax - er <= 93:
        for j in range(n):
            orow[j] = _sat(_requantize_hi(_times_m(ar[j], mr), mult[j], shift[j] - er) + bias[j])
    else:
        for j in range(n):
            orow[j] = _sat(_requantize(np.int64(ar[j]) * mr, mult[j], shift[j] - er) + bias[j])


@njit(inline="always")
def _norm_row(xr: np.ndarray, gamma: np.ndarray, beta: np.ndarray, center: bool, eps_q32: int, table: np.ndarray,
              orow: np.ndarray) -> None:
    """Spec §5.3 of one row ``xr`` [H] (|x| <= 2^31) into ``orow``: LayerNorm (``center``: subtract the mean, add
    ``beta``) or RMSNorm. ``c = x - μ`` has ``|c| <= 2^32``; rows with ``max|c| < 2^24`` (``k = 0``) square ``c`` as a
    32-bit product, rows with ``max|c| < 2^31`` multiply it by ``r <= 2^30`` as one, and the final requantization's
    shift lies in [38, 70]."""
    h = xr.shape[0]
    mu = np.int64(0)
    if center:
        s = np.int64(0)
        for j in range(h):
            s += xr[j]
        mu = (s + (h >> 1)) // h                                   # rdiv(Σx, H)
    cmax = np.int64(0)
    for j in range(h):
        cmax = max(cmax, abs(np.int64(xr[j]) - mu))
    k = max(_bitlen(cmax) - 24, 0)
    ss = np.int64(0)
    if k == 0:                                                     # c' = c, c² < 2^48
        for j in range(h):
            c = np.int64(xr[j]) - mu
            ss += _mul32(c, c)
    else:
        for j in range(h):
            c2 = _round_shift(np.int64(xr[j]) - mu, k)
            ss += c2 * c2
    var = (ss + (h >> 1)) // h
    v = max(var + _round_shift(np.int64(eps_q32), 2 * k), 1)
    jj = (_bitlen(v) - 29) >> 1                                    # floor((bits - 29) / 2)
    mant = (v << (-2 * jj)) if jj <= 0 else _round_shift(v, 2 * jj)
    rr = _lut(mant, table, np.int64(1) << 28, 18)                  # 1/sqrt ≈ rr / 2^(44 + jj), rr <= 2^30
    sh = 44 + jj - (16 - k) + 24                                   # in [38, 70]
    if cmax < 1 << 31:
        for j in range(h):
            y = _requantize_hi(_mul32(np.int64(xr[j]) - mu, rr), gamma[j], sh)
            if center:
                y += beta[j]
            orow[j] = _sat(y)
    else:
        for j in range(h):
            y = _requantize((np.int64(xr[j]) - mu) * rr, gamma[j], sh)
            if center:
                y += beta[j]
            orow[j] = _sat(y)


@njit(inline="always")
def _lut_row(xr: np.ndarray, t: np.ndarray, x0: int, h: int, idx: np.ndarray, fr: np.ndarray, lo: np.ndarray,
             df: np.ndarray) -> None:
    """:func:`_lut` for a whole row, split in two loops so that the index arithmetic vectorizes: ``lo[j] = T[i]``,
    ``df[j] = T[i+1] - T[i]``, ``fr[j] = f``; the value is ``lo + rnd(df·fr / 2^h)``."""
    nt = t.shape[0]
    for j in range(xr.shape[0]):
        pos = np.int64(xr[j]) - x0
        i = _clamp(pos >> h, 0, nt - 2)
        idx[j] = i
        fr[j] = _clamp(pos - (i << h), 0, np.int64(1) << h)
    for j in range(xr.shape[0]):
        a = np.int64(t[idx[j]])
        lo[j] = a
        df[j] = np.int64(t[idx[j] + 1]) - a


@njit(inline="always")
def _pair_lut_row(xr: np.ndarray, n: int, pair: np.ndarray, x0: int, h: int, idx: np.ndarray, fr: np.ndarray,
                  val: np.ndarray) -> None:
    """:func:`_lut` of ``xr[:n]`` from a *pair table* (:func:`pair_table`: entry ``i`` holds ``T[i]`` in its low and
    ``T[i+1] - T[i]`` in its high 32 bits, both in the int32 range) into ``val``: index and fraction (vectorized),
    one 64-bit read per element, then ``T[i] + rnd((T[i+1] - T[i])·f / 2^h)`` with a 32-bit product
    (``0 <= f <= 2^h``)."""
    nt = pair.shape[0]                                             # = table length - 1
    for j in range(n):
        pos = np.int64(xr[j]) - x0
        i = _clamp(pos >> h, 0, nt - 1)
        idx[j] = i
        fr[j] = _clamp(pos - (i << h), 0, np.int64(1) << h)
    for j in range(n):
        val[j] = pair[idx[j]]
    for j in range(n):
        p = val[j]
        val[j] = np.int64(np.int32(p)) + ((_mul32(p >> 32, fr[j]) + (np.int64(1) << (h - 1))) >> h)


def pair_table(table: np.ndarray) -> np.ndarray | None:
    """The pair table of a §5.1 table for :func:`_pair_lut_row` (``T[i]`` in the low, ``T[i+1] - T[i]`` in the high
    32 bits; int64 ``[n - 1]``), or ``None`` when an entry or a difference leaves the int32 range (then the general
    kernels run).

    >>> pair_table(np.array([5, 7, 4])).tolist() == [5 + (2 << 32), 7 + (-3 << 32)]
    True
    """
    t = np.asarray(table, dtype=np.int64)
    if t.size < 2:
        return None
    lo, diff = t[:-1], t[1:] - t[:-1]
    if np.abs(t).max() > I32_MAX or diff.min() < I32_MIN or diff.max() > I32_MAX:
        return None
    return (lo & 0xFFFFFFFF) | (diff << 32)


# ---- kernels ------------------------------------------------------------------------------------------------

@_kernel
def quantize_rows(x: np.ndarray, q: np.ndarray, m: np.ndarray, e: np.ndarray) -> None:
    """Spec §3.3 per-row int8 quantization of ``x`` [R, K] (|x| <= 2^31) into ``q`` int8 [R, K], ``m``, ``e`` [R]."""
    for r in range(x.shape[0]):
        m[r], e[r] = _quantize_row(x[r], q[r])


@_kernel
def linear_epilogue(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                    bias: np.ndarray, out: np.ndarray) -> None:
    """Spec §4.2 after the product: ``out = sat(requantize(acc·m_r, M_n, S_n - e_r) + bias_n)``, ``acc`` [R, N]
    (:func:`_epilogue_row`)."""
    smin, smax = shift.min(), shift.max()
    for r in range(acc.shape[0]):
        _epilogue_row(acc[r], m[r], e[r], mult, shift, bias, smin, smax, out[r])


@_kernel
def norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, center: bool, eps_q32: int, table: np.ndarray,
         out: np.ndarray) -> None:
    """Spec §5.3 LayerNorm (``center``: subtract the mean, add ``beta``) or RMSNorm of ``x`` [R, H] → ``out``."""
    for r in range(x.shape[0]):
        _norm_row(x[r], gamma, beta, center, eps_q32, table, out[r])


@_kernel
def attention_probs(acc: np.ndarray, mq: np.ndarray, eq: np.ndarray, mk: np.ndarray, ek: np.ndarray,
                    valid: np.ndarray, group: int, scale_mult: int, scale_shift: int, table: np.ndarray,
                    probs: np.ndarray) -> None:
    """Spec §5.2 scores and softmax. ``acc`` [B, Hk, g·Tq, Tk] exact ``Σ qq·kq`` (any real dtype holding integers);
    ``mq``/``eq`` [B, Hq, Tq]; ``mk``/``ek`` [B, Hk, Tk]; ``valid`` [B, 1|Hq, 1|Tq, Tk]; ``probs`` float64 like ``acc``
    (Q.16 integer values: ``rdiv(e·2^16, Σe)`` exact in float64, every operand below 2^47)."""
    b, hk, gtq, tk = acc.shape
    tq = gtq // group
    hv, tv = valid.shape[1], valid.shape[2]
    scores = np.empty(tk, dtype=np.int64)
    ex = np.empty(tk, dtype=np.int64)
    for bi in range(b):
        for kh in range(hk):
            for row in range(gtq):
                hq = kh * group + row // tq
                t = row % tq
                vh = hq if hv > 1 else 0
                vt = t if tv > 1 else 0
                m_q, e_q = mq[bi, hq, t], eq[bi, hq, t]
                mx = -(np.int64(1) << 62)
                for j in range(tk):
                    if valid[bi, vh, vt, j]:
                        a = np.int64(acc[bi, kh, row, j]) * (m_q * mk[bi, kh, j])
                        sc = _requantize(a, scale_mult, scale_shift + 16 - (e_q + ek[bi, kh, j]))
                        scores[j] = sc
                        if sc > mx:
                            mx = sc
                total = np.int64(0)
                for j in range(tk):
                    if valid[bi, vh, vt, j]:
                        ev = _lut(mx - scores[j], table, 0, 9)
                        ex[j] = ev
                        total += ev
                    else:
                        ex[j] = 0
                half, tf = np.float64(total >> 1), np.float64(total)
                for j in range(tk):
                    probs[bi, kh, row, j] = np.floor((np.float64(ex[j] << 16) + half) / tf)


@_kernel
def context_out(ctx: np.ndarray, group: int, out: np.ndarray) -> None:
    """``sat(round_shift(ctx, 16))`` of ``ctx`` float64 [B, Hk, g·Tq, D] (integers < 2^48) into ``out`` int64
    [B, Tq, Hq·D] (heads merged: query head ``kh·g + row // Tq``)."""
    b, hk, gtq, d = ctx.shape
    tq = gtq // group
    for bi in range(b):
        for kh in range(hk):
            for row in range(gtq):
                hq = kh * group + row // tq
                t = row % tq
                for j in range(d):
                    out[bi, t, hq * d + j] = _sat((np.int64(ctx[bi, kh, row, j]) + (1 << 15)) >> 16)


@_kernel
def rope(x: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, out: np.ndarray) -> None:
    """Llama spec §3 RoPE of ``x`` [B, n, T, D] (any strides; rotate-half pairs) at ``pos`` [B, T] → ``out``."""
    b, nh, t, d = x.shape
    half = d // 2
    for bi in range(b):
        for hi in range(nh):
            for ti in range(t):
                p = pos[bi, ti]
                for j in range(half):
                    xa, xb = np.int64(x[bi, hi, ti, j]), np.int64(x[bi, hi, ti, j + half])
                    c, s = np.int64(cos[p, j]), np.int64(sin[p, j])
                    out[bi, hi, ti, j] = _sat((xa * c - xb * s + (1 << 29)) >> 30)
                    out[bi, hi, ti, j + half] = _sat((xb * c + xa * s + (1 << 29)) >> 30)


@_kernel
def swiglu(gate: np.ndarray, up: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """Llama spec §4 ``sat(rnd(silu(g)·u / 2^16))`` with ``silu(g) = sat(rnd(g·σ(g) / 2^30))``, [R, I] each."""
    rows, n = gate.shape
    idx, fr = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    lo, df = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    gr, ur = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for r in range(rows):
        for j in range(n):                  # gate/up are column slices of one [R, 2I] tensor: contiguous copies
            gr[j] = gate[r, j]
            ur[j] = up[r, j]
        _lut_row(gr, table, -(16 << 16), 9, idx, fr, lo, df)
        orow = out[r]
        for j in range(n):
            sig = lo[j] + ((df[j] * fr[j] + (1 << 8)) >> 9)                       # σ(g) Q.30
            sv = _sat((gr[j] * sig + (1 << 29)) >> 30)                            # silu(g) Q.16
            orow[j] = _sat((sv * ur[j] + (1 << 15)) >> 16)


@_kernel
def gelu(x: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """Spec §5.4 ``sat(rnd(x·Φ(x) / 2^30))`` of ``x`` [R, N]."""
    rows, n = x.shape
    idx, fr = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    lo, df = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for r in range(rows):
        xr, orow = x[r], out[r]
        _lut_row(xr, table, -(8 << 16), 9, idx, fr, lo, df)
        for j in range(n):
            phi = lo[j] + ((df[j] * fr[j] + (1 << 8)) >> 9)                       # Φ(x) Q.30
            orow[j] = _sat((np.int64(xr[j]) * phi + (1 << 29)) >> 30)
