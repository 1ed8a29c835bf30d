"""The fixed-point helpers of :mod:`kolm_audit.runtime.fixedpoint`, on torch ``int64`` tensors (CPU or CUDA).

Same functions, same arguments, same integers: every helper here is the line-for-line torch transcription of
its numpy twin (spec ``docs/runtime-spec.md`` §2–§5.1) and uses only exact ``int64`` operations (add, multiply,
floor division, arithmetic shifts, comparisons, indexing). The one float use, :func:`bit_length`, reads the
binary exponent of an exactly converted integer and then corrects it with integer shifts, so it is exact for
every ``int64``. Unit tests compare every helper with the numpy reference on random inputs (hypothesis).

Example::

    >>> import torch
    >>> round_shift(torch.tensor([5, -5, 6, -6]), 1).tolist()
    [3, -2, 3, -3]
    >>> q, m, e = quantize_rows(torch.tensor([[65536, -32768, 0]]))
    >>> q.tolist(), m.tolist(), e.tolist()
    ([[127, -63, 0]], [[517]], [[0]])
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache

import torch

from kolm_audit.runtime.fixedpoint import INT32_MAX, INT32_MIN, QMAX, STEP_MANTISSA_BITS

Tensor = torch.Tensor
_LIMB = 31
_LIMB_MASK = (1 << _LIMB) - 1
_MAX_SHIFT = 93


def _one(like: Tensor) -> Tensor:
    return torch.ones((), dtype=torch.int64, device=like.device)


def pow2(s: Tensor | int, like: Tensor) -> Tensor:
    """``2**s`` as int64 (``0 <= s <= 62``)."""
    if isinstance(s, int):
        return torch.tensor(1 << s, dtype=torch.int64, device=like.device)
    return torch.bitwise_left_shift(_one(like), s)


def round_shift(x: Tensor, s: Tensor | int) -> Tensor:
    """``rnd(x / 2**s)`` for ``s >= 0`` (round half up); ``s == 0`` returns ``x``."""
    if isinstance(s, int):
        return x if s == 0 else torch.bitwise_right_shift(x + (1 << (s - 1)), s)
    half = torch.where(s > 0, pow2(torch.clamp(s - 1, min=0), x), 0)
    return torch.bitwise_right_shift(x + half, s)


def rdiv(a: Tensor, b: Tensor | int) -> Tensor:
    """``rnd(a / b)`` for ``0 < b``: ``floor((a + ⌊b/2⌋) / b)``; needs ``|a| + b/2 < 2^63``.

    For even ``b`` this is ``floor(a/b + 1/2)``. For odd ``b`` the numerators ``a + (b-1)/2`` and ``a + b/2``
    differ by 1/2 and no multiple of ``b`` lies in ``(a + (b-1)/2, a + b/2]`` (it would be an integer strictly
    between two consecutive half-integers' neighbours), so both floors agree.
    """
    half = (b >> 1) if isinstance(b, int) else torch.bitwise_right_shift(b, 1)
    return torch.div(a + half, b, rounding_mode="floor")


def requantize(x: Tensor, multiplier: Tensor | int, shift: Tensor | int) -> Tensor:
    """``rnd(x · multiplier / 2**shift)`` with one rounding (two-limb product, spec §3.2)."""
    xh = torch.bitwise_right_shift(x, _LIMB)
    xl = torch.bitwise_and(x, _LIMB_MASK)
    a = xh * multiplier
    b = xl * multiplier
    s = shift if isinstance(shift, Tensor) else torch.tensor(shift, dtype=torch.int64, device=x.device)
    hi_s = torch.clamp(s, 32, _MAX_SHIFT)
    high = torch.bitwise_right_shift(a + pow2(hi_s - 32, x) + torch.bitwise_right_shift(b, _LIMB), hi_s - 31)
    if bool((s >= 32).all()):                    # the usual case: only the first branch is needed
        return high
    mid = a + torch.bitwise_right_shift(b + (1 << 30), _LIMB)
    lo_s = torch.clamp(s, 0, 30)
    low_half = torch.where(lo_s > 0, pow2(torch.clamp(lo_s - 1, min=0), x), 0)
    low = torch.bitwise_left_shift(a, _LIMB - lo_s) + torch.bitwise_right_shift(b + low_half, lo_s)
    return torch.where(s >= 32, high, torch.where(s == 31, mid, low))


def saturate_int32(x: Tensor) -> Tensor:
    """Clamp to ``[-2**31, 2**31 - 1]``."""
    return torch.clamp(x, INT32_MIN, INT32_MAX)


def bit_length(x: Tensor) -> Tensor:
    """Bits of ``x >= 0`` element-wise (``0 → 0``), exact for every int64.

    ``frexp`` of the (possibly rounded) float64 gives a candidate ``n`` within one of the answer; two integer
    shift tests then fix it: ``n`` is right iff ``x >> n == 0`` and ``x >> (n - 1) != 0`` (or ``x == 0``).
    """
    n = torch.frexp(x.to(torch.float64)).exponent.to(torch.int64)
    n = n + (torch.bitwise_right_shift(x, torch.clamp(n, 0, 63)) != 0).to(torch.int64)
    n = n - ((x > 0) & (torch.bitwise_right_shift(x, torch.clamp(n - 1, 0, 63)) == 0)).to(torch.int64)
    return n


@lru_cache(maxsize=16)
def _powers(device: torch.device, lo: int, hi: int) -> Tensor:
    return torch.tensor([1 << j for j in range(lo, hi)], dtype=torch.int64, device=device)


def bits_above(x: Tensor, lo: int, hi: int) -> Tensor:
    """``clip(bit_length(x) - lo, 0, hi - lo)`` for ``x >= 0`` [..., 1] by counting thresholds ``2^lo … 2^(hi-1)``.

    Equals ``max(0, bit_length(x) - lo)`` whenever ``x < 2^hi``.
    """
    return (x >= _powers(x.device, lo, hi)).sum(dim=-1, keepdim=True)


def requantize_high(x: Tensor, multiplier: Tensor | int, shift: Tensor) -> Tensor:
    """:func:`requantize` for shifts known to be ``>= 32`` (no branch): the ``s >= 32`` case of spec §3.2."""
    a = torch.bitwise_right_shift(x, _LIMB) * multiplier
    b = torch.bitwise_and(x, _LIMB_MASK) * multiplier
    return torch.bitwise_right_shift(a + pow2(shift - 32, x) + torch.bitwise_right_shift(b, _LIMB), shift - 31)


def absmax_rows(x: Tensor) -> Tensor:
    """``max_k |x[..., k]|`` [..., 1] in one pass over ``x`` (min and max, then ``max(-min, max)``)."""
    mn, mx = torch.aminmax(x, dim=-1, keepdim=True)
    return torch.maximum(-mn, mx)


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row int8 quantization (spec §3.3): ``(q, m, e)`` with ``m``, ``e`` of shape ``x.shape[:-1] + (1,)``.

    ``|x| <= 2^31`` gives ``d0 < 2^25``, so ``e = max(0, bit_length(d0) - 15)`` counts the thresholds
    ``2^15 … 2^24``; ``m = ceil(d0 / 2^e) = -((-d0) >> e)``; ``q = rdiv(x, d)``.
    """
    q, m, e = quantize_rows_f64(x)
    return q.to(torch.int64), m, e


def quantize_rows_f64(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`quantize_rows` with ``q`` as float64 (integer values in [-127, 127]): ``q = rdiv_f64(x, d)``,
    exact because ``|x| + d < 2^53`` (``|x| <= 2^31``, ``d < 2^26``)."""
    q, m, e, _ = quantize_rows_flag(x)
    return q, m, e


E0_AMAX = QMAX * ((1 << STEP_MANTISSA_BITS) - 1)   # amax <= this ⟺ d0 = ⌈amax/127⌉ < 2^15 ⟺ e = 0


def quantize_rows_flag(x: Tensor, *, reuse: bool = False) -> tuple[Tensor, Tensor, Tensor, bool]:
    """:func:`quantize_rows_f64` plus whether every row has ``e = 0``. When every ``amax <= 127·(2^15 - 1)``,
    ``d0 < 2^15`` so ``e = 0`` and ``m = d = d0`` (the general steps are skipped; same integers). ``reuse``: ``q``
    lives in a per-thread scratch buffer (only for a caller that consumes it before any other call)."""
    amax = absmax_rows(x)
    d0 = torch.clamp(torch.div(amax + (QMAX - 1), QMAX, rounding_mode="floor"), min=1)
    out = scratch(x.shape, torch.float64, x.device) if reuse else None
    if amax.numel() and int(amax.max()) <= E0_AMAX:
        return rdiv_f64(x, d0, out=out), d0, torch.zeros_like(d0), True
    e = bits_above(d0, STEP_MANTISSA_BITS, 25)
    m = -torch.bitwise_right_shift(-d0, e)
    d = torch.bitwise_left_shift(m, e)
    return rdiv_f64(x, d, out=out), m, e, False


def rdiv_f64(a: Tensor, b: Tensor, *, out: Tensor | None = None) -> Tensor:
    """``rdiv(a, b)`` as float64 integer values, for int64 ``a`` and ``b >= 1`` with ``|a| + b < 2^53``:
    ``floor(fl64((a + ⌊b/2⌋) / b))`` (docs/runtime-spec.md "Fast backends": a correctly rounded quotient of
    integers ``|n| < 2^53`` never rounds across an integer)."""
    bf = b.double()                                     # the sum below is of integers < 2^53: exact in fp64
    af = a.double() if out is None else out.copy_(a)    # out: float64 of a's shape (fully overwritten)
    return af.add_(torch.bitwise_right_shift(b, 1).double()).div_(bf).floor_()


def lut_interp(x: Tensor, table: Tensor, *, x0: int, step_shift: int, diff: Tensor | None = None) -> Tensor:
    """Piecewise-linear table lookup (spec §5.1), one rounding; ``table`` int64 on the same device.

    ``pos`` is first clamped to ``[0, (n-1)·2^h]``: left of the table that gives ``i = 0, f = 0`` (``T[0]``),
    right of it ``i = n-2, f = 2^h`` (``T[n-1]``), inside it the same ``i, f`` as spec §5.1. ``diff`` may hold
    the precomputed ``T[i+1] - T[i]``.
    """
    n = table.shape[0]
    pos = torch.clamp(x - x0, 0, (n - 1) << step_shift)
    i = torch.clamp(torch.bitwise_right_shift(pos, step_shift), max=n - 2)
    f = pos - torch.bitwise_left_shift(i, step_shift)
    d = (table[1:] - table[:-1]) if diff is None else diff
    return table[i] + round_shift(d[i] * f, step_shift)


def rsqrt(v: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """``1/sqrt(v) ≈ r / 2**p`` for ``v >= 1`` (spec §5.3); same integers as ``fixedpoint.rsqrt``."""
    j = torch.div(bit_length(v) - 29, 2, rounding_mode="floor")              # v < 2^62
    m = torch.where(j <= 0, torch.bitwise_left_shift(v, torch.clamp(-2 * j, min=0)),
                    round_shift(v, torch.clamp(2 * j, min=0)))
    r = lut_interp(m, table, x0=1 << 28, step_shift=18)
    return r, 44 + j


# ---- helpers of the torch backend (same integers, fewer passes; docs/runtime-spec.md "Fast backends") ----

def requantize_high_(x: Tensor, mult: Tensor, half: Tensor | int, shift_hi: Tensor | int) -> Tensor:
    """In place on the temporary ``x``: ``requantize(x, mult, s)`` for ``s >= 32`` given ``half = 2^(s-32)`` and
    ``shift_hi = s - 31`` (the ``s >= 32`` case of spec §3.2, same integers as ``fixedpoint.requantize``)."""
    xh = torch.bitwise_right_shift(x, 31)
    b = x.sub_(xh, alpha=1 << 31).mul_(mult).bitwise_right_shift_(31)     # x & (2^31 - 1) = x - (x >> 31)·2^31
    return xh.mul_(mult).add_(half).add_(b).bitwise_right_shift_(shift_hi)


_LOCAL = threading.local()
_SCRATCH_MAX = 16


def scratch(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A reused per-thread buffer for a temporary that never leaves the calling function (no integer depends on
    it: it is fully overwritten before use); avoids a fresh large allocation (page faults) on every call."""
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = {}
    key = (tuple(shape), dtype, str(device))
    buf = bufs.get(key)
    if buf is None:
        if len(bufs) >= _SCRATCH_MAX:
            bufs.clear()
        buf = bufs[key] = torch.empty(tuple(shape), dtype=dtype, device=device)
    return buf


FULL_LUT_MAX = 1 << 22          # tables with at most this many interpolated points are expanded at first use


def full_lut(table: Tensor, step_shift: int) -> Tensor:
    """Every value of ``lut_interp`` on ``pos = 0 … (n-1)·2^h`` (Q.30; stored as int32 when every value fits,
    else int64), computed once per table tensor with :func:`lut_interp` itself: a lookup is a clamp and a gather."""
    full = getattr(table, "_kolm_full", None)
    if full is None:
        pos = torch.arange(((table.shape[0] - 1) << step_shift) + 1, dtype=torch.int64, device=table.device)
        full = lut_interp(pos, table, x0=0, step_shift=step_shift)
        if full.numel() and int(full.min()) >= INT32_MIN and int(full.max()) <= INT32_MAX:
            full = full.to(torch.int32)     # half the bytes to gather from; widened back exactly in lut_
        table._kolm_full = full         # type: ignore[attr-defined]
    return full


def lut_(x: Tensor, table: Tensor, *, x0: int, step_shift: int) -> Tensor:
    """``torch_fixedpoint.lut_interp(x, table, x0, h)`` as ``full[clamp(x - x0, 0, (n-1)·2^h)]`` (spec §5.1: left
    of the table ``T[0]``, right of it ``T[n-1]``, inside the interpolated value), int64 result."""
    n = table.shape[0]
    if ((n - 1) << step_shift) >= FULL_LUT_MAX:
        return lut_interp(x, table, x0=x0, step_shift=step_shift, diff=table_diff(table))
    pos = torch.sub(x, x0, out=scratch(x.shape, x.dtype, x.device)).clamp_(0, (n - 1) << step_shift)
    full = full_lut(table, step_shift)
    if full.dtype == torch.int64:
        return full.index_select(0, pos.reshape(-1)).view(pos.shape)                    # = full[pos]
    out = torch.index_select(full, 0, pos.reshape(-1), out=scratch((pos.numel(),), full.dtype, full.device))
    return out.view(pos.shape).to(torch.int64)                                          # widened: exact


MEMOS = ("_kolm_rows", "_kolm_f64")


def memo(x: Tensor, attr: str) -> tuple[Tensor, ...]:
    """Per-row derived tensors of a (cached) key or value tensor, computed once and kept on it:
    ``_kolm_rows`` = ``quantize_rows(x)``, ``_kolm_f64`` = ``(x as float64,)`` (exact: |x| < 2^31)."""
    found = getattr(x, attr, None)
    if found is None:
        found = quantize_rows(x) if attr == "_kolm_rows" else (x.double(),)
        setattr(x, attr, found)
    return found


def table_diff(table: Tensor) -> Tensor:
    """``T[i+1] - T[i]`` of a table tensor, computed once and kept on the tensor."""
    d = getattr(table, "_kolm_diff", None)
    if d is None:
        d = table[1:] - table[:-1]
        table._kolm_diff = d            # type: ignore[attr-defined]
    return d
