"""Fixed-point arithmetic of ``kolm-int/1``: the ONLY place where the runtime rounds.

Spec: ``docs/runtime-spec.md`` §2–§4. Every function here is exact integer arithmetic on numpy ``int64``
arrays (or Python ints, which numpy treats the same way); none of them touches a float.

* The one rounding rule is **round half up**: ``rnd(r) = floor(r + 1/2)`` for the exact rational ``r``
  (``-2.5 → -2``, ``2.5 → 3``). :func:`round_shift`, :func:`rdiv`, :func:`requantize` and :func:`lut_interp`
  all apply it exactly once to an exact rational.
* Activations are Q.16 (``ACT_FRAC_BITS``): the integer ``a`` stands for the real ``a / 2**16``; values that
  leave a layer are saturated to int32 (:func:`saturate_int32`).
* Requantization multiplies by an integer multiplier ``M`` (``|M| < 2**31``) and divides by ``2**s``
  (``0 <= s <= 93``) with a single rounding, exact for ``|x| < 2**62`` (two-limb product, no int128 needed).
* Per-token int8 activation quantization (:func:`quantize_rows`) uses only that row's own max-abs.

Example::

    >>> import numpy as np
    >>> round_shift(np.array([5, -5, 6, -6]), 1).tolist()          # 2.5→3, -2.5→-2, 3, -3
    [3, -2, 3, -3]
    >>> rdiv(np.array([7, -7]), 2).tolist()
    [4, -3]
    >>> int(requantize(np.int64(3 << 40), 1 << 30, 71))            # 3·2^40 · 2^30 / 2^71 = 1.5 → 2
    2
    >>> q, m, e = quantize_rows(np.array([[65536, -32768, 0]]))     # [1.0, -0.5, 0.0] in Q.16
    >>> q.tolist(), m.tolist(), e.tolist()
    ([[127, -63, 0]], [[517]], [[0]])
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

ACT_FRAC_BITS = 16                 # activations are Q.16: integer a means a / 2^16
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
MULT_BITS = 31                     # requantization multipliers are normalised to [2^30, 2^31)
MAX_SHIFT = 93                     # largest shift requantize() accepts
MAX_STEP_EXP = 10                  # per-token step exponent e <= 10 for |x| <= 2^31 (spec §3.3)
QMAX = 127                         # int8 activations/weights use the symmetric range [-127, 127]
STEP_MANTISSA_BITS = 15            # per-token quantization step d = m * 2^e with m <= 2^15

_LIMB = 31
_LIMB_MASK = (1 << _LIMB) - 1

IntArray = np.ndarray


def _i64(x: Any) -> IntArray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"fixed-point helpers take integer arrays, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def round_shift(x: Any, s: Any) -> IntArray:
    """``rnd(x / 2**s)`` for ``s >= 0`` (array or int, broadcast); needs ``|x| < 2**62``.

    ``s == 0`` returns ``x`` unchanged. Computed as ``(x + 2**(s-1)) >> s`` (arithmetic shift = floor).
    """
    x = _i64(x)
    s = _i64(s)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.right_shift(x + half, s)


def rdiv(a: Any, b: Any) -> IntArray:
    """``rnd(a / b)`` for ``0 < b < 2**62`` (broadcast), any int64 ``a``.

    ``q, r = divmod(a, b)`` (floor division, ``0 <= r < b``, exact on int64), then ``q + (2r >= b)``.
    """
    a = _i64(a)
    b = _i64(b)
    q, r = np.divmod(a, b)
    return q + (2 * r >= b)


def requantize(x: Any, multiplier: Any, shift: Any) -> IntArray:
    """``rnd(x * multiplier / 2**shift)`` exactly, with ONE rounding (broadcast over all three).

    Preconditions (spec §3.2): ``|x| < 2**62``, ``|multiplier| < 2**31``, ``0 <= shift <= 93``, and for
    ``shift < 31`` the result must fit in int64 (callers guarantee ``|result| < 2**62``).

    The product is formed as two limbs, ``x = xh·2^31 + xl`` with ``0 <= xl < 2^31``:
    ``x·M = A·2^31 + B`` where ``A = xh·M`` and ``B = xl·M`` both fit int64. Then, with ``h = 2^(s-1)``,
    ``floor((A·2^31 + B + h) / 2^s)`` equals ``(A + 2^(s-32) + (B >> 31)) >> (s - 31)`` for ``s >= 32``,
    ``A + ((B + 2^30) >> 31)`` for ``s == 31`` and ``(A << (31 - s)) + ((B + h) >> s)`` for ``s < 31``
    (nested floors of a division by a power of two).
    """
    x = _i64(x)
    m = _i64(multiplier)
    s = _i64(shift)
    xh = np.right_shift(x, _LIMB)
    xl = np.bitwise_and(x, _LIMB_MASK)
    a = xh * m
    b = xl * m
    one = np.int64(1)
    hi_s = np.clip(s, 32, MAX_SHIFT)
    high = np.right_shift(a + np.left_shift(one, hi_s - 32) + np.right_shift(b, _LIMB), hi_s - 31)
    if np.min(s) >= 32:                       # the usual case: only the first branch is needed
        return high
    mid = a + np.right_shift(b + (one << 30), _LIMB)
    lo_s = np.clip(s, 0, 30)
    low_half = np.where(lo_s > 0, np.left_shift(one, np.maximum(lo_s - 1, 0)), 0)
    low = np.left_shift(a, _LIMB - lo_s) + np.right_shift(b + low_half, lo_s)
    return np.where(s >= 32, high, np.where(s == 31, mid, low))


def saturate_int32(x: Any) -> IntArray:
    """Clamp to ``[-2**31, 2**31 - 1]``: the range of every activation that leaves an operation."""
    return np.clip(_i64(x), INT32_MIN, INT32_MAX)


def bit_length(x: Any) -> IntArray:
    """Number of bits of ``x >= 0`` (``0 → 0``, ``1 → 1``, ``255 → 8``), element-wise, integer-only."""
    y = _i64(x).copy()
    if np.any(y < 0):
        raise ValueError("bit_length takes non-negative integers")
    n = np.zeros_like(y)
    for s in (32, 16, 8, 4, 2, 1):
        big = y >= (1 << s)
        n += np.where(big, s, 0)
        y = np.where(big, np.right_shift(y, s), y)
    return n + (y > 0)


def quantize_rows(x: Any) -> tuple[IntArray, IntArray, IntArray]:
    """Per-token (per-row, last axis) symmetric int8 quantization of a Q.16 tensor; integer-only.

    For each row with ``amax = max|x|`` (spec §3.3):
    ``d0 = max(1, ceil(amax / 127))``, ``e = max(0, bit_length(d0) - 15)``, ``m = ceil(d0 / 2**e)``,
    step ``d = m * 2**e`` (so ``m <= 2**15`` and ``d >= amax/127``), ``q = rdiv(x, d)`` in ``[-127, 127]``.
    The row's real values are ``x/2^16 ≈ q · m · 2^e / 2^16``.

    Returns ``(q, m, e)``: ``q`` int64 with the shape of ``x``; ``m`` and ``e`` int64 with shape
    ``x.shape[:-1] + (1,)``. Needs ``|x| < 2**31`` (saturated activations).
    """
    x = _i64(x)
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    d0 = np.maximum(np.floor_divide(amax + (QMAX - 1), QMAX), 1)
    e = np.maximum(bit_length(d0) - STEP_MANTISSA_BITS, 0)
    m = np.floor_divide(d0 + np.left_shift(np.int64(1), e) - 1, np.left_shift(np.int64(1), e))
    q = rdiv(x, np.left_shift(m, e))
    return q, m, e


def lut_interp(x: Any, table: Any, *, x0: int, step_shift: int) -> IntArray:
    """Piecewise-linear table lookup (spec §5.1), integer-only, one rounding.

    ``table[i]`` is the function value at ``x0 + i * 2**step_shift`` (same units as ``x``). With
    ``pos = x - x0``, ``i = clip(pos >> step_shift, 0, n - 2)`` and ``f = clip(pos - i·2^step_shift, 0,
    2^step_shift)``: result ``table[i] + rnd((table[i+1] - table[i]) · f / 2^step_shift)``. Inputs left of the
    table give ``table[0]``, right of it ``table[-1]``. Needs ``0 <= step_shift <= 30`` and table entries in
    int32 range.
    """
    x = _i64(x)
    t = _i64(table)
    n = t.shape[0]
    pos = x - np.int64(x0)
    i = np.clip(np.right_shift(pos, step_shift), 0, n - 2)
    f = np.clip(pos - np.left_shift(i, step_shift), 0, 1 << step_shift)
    lo = t[i]
    return lo + round_shift((t[i + 1] - lo) * f, step_shift)


# rsqrt table (spec §5.3): R[i] = rnd(2^30 / sqrt(1 + i/1024)), i = 0..3072, i.e. 1/sqrt(t) for t in [1, 4].
RSQRT_TABLE_LEN = 3073
RSQRT_STEP_SHIFT = 18              # table step in units of the normalised mantissa m (m = 2^28 ... 2^30)


def rsqrt(v: Any, table: Any) -> tuple[IntArray, IntArray]:
    """``1/sqrt(v)`` for integers ``v >= 1`` as ``(r, p)`` with ``1/sqrt(v) ≈ r / 2**p`` (spec §5.3).

    ``j = floor((bit_length(v) - 29) / 2)``; ``m = v · 4^(-j)`` (exact when ``j <= 0``, else ``round_shift(v,
    2j)``) lies in ``[2^28, 2^30]``; ``r = lut_interp(m, table, x0=2^28, step_shift=18)`` (Q.30 value of
    ``1/sqrt(m / 2^28)``, so ``2^29 <= r <= 2^30``); ``p = 44 + j``. Needs ``v < 2**62``.
    """
    v = _i64(v)
    if np.any(v < 1):
        raise ValueError("rsqrt takes integers >= 1")
    j = np.floor_divide(bit_length(v) - 29, 2)
    m = np.where(j <= 0, np.left_shift(v, np.maximum(-2 * j, 0)), round_shift(v, np.maximum(2 * j, 0)))
    r = lut_interp(m, table, x0=1 << 28, step_shift=RSQRT_STEP_SHIFT)
    return r, 44 + j


# ---- build time only: exact rationals -> integers (floats allowed here, never in a forward pass) ----------

def rnd_fraction(value: Fraction) -> int:
    """``rnd`` of an exact rational (build time)."""
    return (value.numerator * 2 + value.denominator) // (2 * value.denominator)


def quantize_multiplier(real: Fraction | float | int) -> tuple[int, int]:
    """Integer ``(M, s)`` with ``M / 2**s ≈ real``, ``2^30 <= |M| < 2^31`` (spec §3.2); ``(0, 0)`` for 0.

    ``s`` is the unique shift with ``2^30 <= |real|·2^s < 2^31`` and ``M = rnd(real · 2^s)`` (if rounding
    reaches ``2^31`` then ``M = 2^30`` and ``s - 1``). Build time: the multiplier of a weight scale.
    """
    r = Fraction(real)
    if r == 0:
        return 0, 0
    sign = 1 if r > 0 else -1
    r = abs(r)
    s = 30 - (r.numerator.bit_length() - r.denominator.bit_length())
    while r * (Fraction(2) ** s) >= (1 << 31):
        s -= 1
    while r * (Fraction(2) ** s) < (1 << 30):
        s += 1
    m = rnd_fraction(r * Fraction(2) ** s)
    if m == 1 << 31:
        m, s = 1 << 30, s - 1
    return sign * m, s


def to_fixed(values: Any, frac_bits: int) -> IntArray:
    """``rnd(v · 2**frac_bits)`` element-wise for float arrays (build time; float64 scaling by 2^k is exact)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("non-finite value")
    return np.floor(v * float(1 << frac_bits) + 0.5).astype(np.int64)


def rsqrt_table() -> IntArray:
    """The rsqrt table of spec §5.3, computed with exact integer square roots (build time)."""
    from math import isqrt

    out = np.empty(RSQRT_TABLE_LEN, dtype=np.int64)
    for i in range(RSQRT_TABLE_LEN):
        # rnd(sqrt(N/D)) = (isqrt(floor(4N/D)) + 1) // 2 with N/D = 2^60 · 1024 / (1024 + i)
        out[i] = (isqrt((4 * (1 << 60) * 1024) // (1024 + i)) + 1) // 2
    return out


def eps_q32(eps: float | int | str) -> int:
    """rnd(eps · 2^32) from the decimal text of ``eps`` (exact, build time)."""
    return rnd_fraction(Fraction(str(eps)) * (1 << 32))
