"""Triton kernels of ``kolm-int/1`` for CUDA: one launch per operation, the same integers as the reference.

The Triton twins of :mod:`kolm_audit.runtime.cpu_kernels` (same operations, same bounds; spec
``docs/runtime-spec.md`` §3–§5 and "Fast backends"): ``int64`` arithmetic whose every intermediate stays inside
the proven bounds, arithmetic right shifts with amounts kept in ``[0, 62]``, and integer divisions only of
non-negative operands (where truncating and flooring division agree; a possibly negative numerator goes through
:func:`_floordiv`). Powers of two are formed from an ``int64`` one (a bare literal would be 32-bit). Every kernel
handles one row per program; rows are independent, so the launch grid never changes an output.

They also run, slowly, on CPU tensors under ``TRITON_INTERPRET=1``: the unit tests compare them with the
numpy reference there.
"""

from __future__ import annotations

import triton
import triton.language as tl

I32_MIN, I32_MAX = tl.constexpr(-(1 << 31)), tl.constexpr((1 << 31) - 1)   # globals in kernels: constexpr


@triton.jit
def _pow2(s):
    return (s * 0 + 1).to(tl.int64) << s                       # 2^s as int64, 0 <= s <= 62


@triton.jit
def _sat(y):
    return tl.minimum(tl.maximum(y, I32_MIN), I32_MAX)


@triton.jit
def _floordiv(n, d):
    """``floor(n / d)`` for ``d > 0`` with only non-negative operands divided."""
    return tl.where(n >= 0, n // d, -((d - 1 - n) // d))


@triton.jit
def _requant(x, m, s):
    """``rnd(x·m / 2^s)``, one rounding, two-limb product (spec §3.2; ``s`` clipped to [0, 93] as there)."""
    s = tl.minimum(tl.maximum(s, 0), 93)
    xh = x >> 31
    a = xh * m
    b = (x - (xh << 31)) * m
    sh = tl.maximum(s, 32)
    high = (a + _pow2(sh - 32) + (b >> 31)) >> (sh - 31)
    mid = a + ((b + (1 << 30)) >> 31)
    sl = tl.minimum(s, 30)
    low = (a << (31 - sl)) + ((b + tl.where(sl > 0, _pow2(tl.maximum(sl - 1, 0)), 0)) >> sl)
    return tl.where(s >= 32, high, tl.where(s == 31, mid, low))


@triton.jit
def _lut(x, t_ptr, n, x0, h: tl.constexpr):
    """Spec §5.1: ``T[i] + rnd((T[i+1] - T[i])·f / 2^h)`` with ``i``, ``f`` clamped (``h >= 1``)."""
    pos = x - x0
    i = tl.minimum(tl.maximum(pos >> h, 0), n - 2)
    f = tl.minimum(tl.maximum(pos - (i << h), 0), 1 << h)
    lo = tl.load(t_ptr + i).to(tl.int64)
    hi = tl.load(t_ptr + i + 1).to(tl.int64)
    return lo + (((hi - lo) * f + (1 << (h - 1))) >> h)


@triton.jit
def _count_at_least(v, lo: tl.constexpr, hi: tl.constexpr):
    """How many of ``2^lo … 2^(hi-1)`` the non-negative ``v`` reaches (= ``max(0, bits(v) - lo)`` for v < 2^hi)."""
    n = (v * 0).to(tl.int64)
    for kk in tl.static_range(lo, hi):
        n += (v >= (1 << kk)).to(tl.int64)
    return n


@triton.jit
def _gqa_row(row, hk, tq, group):
    """Row ``row`` of a [B, Hk, g·Tq, ...] grouped-query layout → (batch, KV head, query head ``kh·g + i``, time)."""
    gtq = group * tq
    kh = (row // gtq) % hk
    rr = row % gtq
    return row // (hk * gtq), kh, kh * group + rr // tq, rr % tq


@triton.jit
def _quant_params(amax):
    """Spec §3.3 step of a row whose largest magnitude is ``amax`` (< 2^32): ``(m, e)``, step ``d = m·2^e``."""
    d0 = tl.maximum((amax + 126) // 127, 1)                       # ceil(amax / 127), non-negative operands
    e = _count_at_least(d0, 15, 26)                               # max(0, bits(d0) - 15), d0 < 2^25
    m = (d0 + _pow2(e) - 1) >> e
    return m, e


@triton.jit
def _quant_apply(x, m, e):
    """Spec §3.3 ``q = rdiv(x, m·2^e)`` (in [-127, 127] for the row ``(m, e)`` was made from)."""
    d = m << e
    return _floordiv(x + (d >> 1), d)


@triton.jit
def quantize_rows(x_ptr, sx, q_ptr, m_ptr, e_ptr, k, BLOCK: tl.constexpr):
    """Spec §3.3 for row ``program_id``: ``q`` (dtype of ``q_ptr``, values in [-127, 127]), ``m``, ``e``."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < k
    x = tl.load(x_ptr + r * sx + offs, mask=ok, other=0).to(tl.int64)
    m, e = _quant_params(tl.max(tl.abs(x), axis=0))
    q = _quant_apply(x, m, e)
    tl.store(q_ptr + r * k + offs, q.to(tl.float32).to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(m_ptr + r, m)
    tl.store(e_ptr + r, e)


@triton.jit
def _norm_scale(total_sq, h, k, eps_q32, table_ptr, nt):
    """Spec §5.3 from ``Σ c'²`` of a row (pre-shift ``k``): ``(r, sh)`` with ``y = requantize(c·r, γ, sh)``."""
    var = (total_sq + (h >> 1)) // h                              # rdiv(Σc'², H), non-negative operands
    ek = tl.where(k > 0, (eps_q32 + _pow2(tl.maximum(2 * k - 1, 0))) >> (2 * k), eps_q32)
    v = tl.maximum(var + ek, 1)
    j = (_count_at_least(v, 0, 62) - 29) >> 1                     # floor((bits(v) - 29) / 2)
    up = tl.maximum(-2 * j, 0)
    dn = tl.maximum(2 * j, 0)
    mant = tl.where(j <= 0, v << up, (v + tl.where(dn > 0, _pow2(tl.maximum(dn - 1, 0)), 0)) >> dn)
    rr = _lut(mant, table_ptr, nt, 1 << 28, 18)                   # 1/sqrt ≈ rr / 2^(44 + j)
    return rr, 44 + j - (16 - k) + 24


@triton.jit
def _round_shift(c, k):
    """``round_shift(c, k)`` for a scalar or per-row ``0 <= k <= 62``."""
    return (c + tl.where(k > 0, _pow2(tl.maximum(k - 1, 0)), 0)) >> k


@triton.jit
def _norm_row(x, ok, h, gamma_ptr, beta_ptr, offs, eps_q32, table_ptr, nt, CENTER: tl.constexpr):
    """Spec §5.3 LayerNorm (``CENTER``) or RMSNorm of one row held in registers (``x`` int64, ``ok`` its columns)."""
    if CENTER:
        mu = _floordiv(tl.sum(x, axis=0) + (h >> 1), h)          # rdiv(Σx, H)
        c = tl.where(ok, x - mu, 0)
    else:
        c = x
    k = _count_at_least(tl.max(tl.abs(c), axis=0), 24, 40)        # max(0, bits(cmax) - 24)
    c2 = _round_shift(c, k)
    rr, sh = _norm_scale(tl.sum(c2 * c2, axis=0), h, k, eps_q32, table_ptr, nt)
    y = _requant(c * rr, tl.load(gamma_ptr + offs, mask=ok, other=0).to(tl.int64), sh)
    if CENTER:
        y += tl.load(beta_ptr + offs, mask=ok, other=0).to(tl.int64)
    return _sat(y)


@triton.jit
def attention_probs(acc_ptr, mq_ptr, eq_ptr, mk_ptr, ek_ptr, valid_ptr, sv0, sv1, sv2, probs_ptr, hk, tq, tk,
                    group, scale_mult, scale_shift, table_ptr, nt, BLOCK: tl.constexpr):
    """Spec §5.2 scores + softmax for row ``program_id`` of ``acc`` [B, Hk, g·Tq, Tk] → float64 probabilities
    (Q.16 integer values). ``mq``/``eq`` [B, Hq, Tq]; ``mk``/``ek`` [B, Hk, Tk]; ``valid`` [B, Hq, Tq, Tk] with
    element strides ``sv0``, ``sv1``, ``sv2`` (0 for broadcast axes) and a unit last stride."""
    row = tl.program_id(0).to(tl.int64)
    bi, kh, hq, t = _gqa_row(row, hk, tq, group)
    offs = tl.arange(0, BLOCK)
    ok = offs < tk
    valid = tl.load(valid_ptr + bi * sv0 + hq * sv1 + t * sv2 + offs, mask=ok, other=0) != 0
    acc = tl.load(acc_ptr + row * tk + offs, mask=ok, other=0).to(tl.int64)
    qi = (bi * hk * group + hq) * tq + t
    mq = tl.load(mq_ptr + qi)
    eq = tl.load(eq_ptr + qi)
    mk = tl.load(mk_ptr + (bi * hk + kh) * tk + offs, mask=ok, other=0)
    ek = tl.load(ek_ptr + (bi * hk + kh) * tk + offs, mask=ok, other=0)
    scores = _requant(acc * (mq * mk), scale_mult, scale_shift + 16 - (eq + ek))
    scores = tl.where(valid, scores, -(1 << 62))
    mx = tl.max(scores, axis=0)
    ex = tl.where(valid, _lut(tl.where(valid, mx - scores, 0), table_ptr, nt, 0, 9), 0)
    total = tl.sum(ex, axis=0)
    p = ((ex << 16) + (total >> 1)) // total                      # non-negative operands
    tl.store(probs_ptr + row * tk + offs, p.to(tl.float64), mask=ok)


@triton.jit
def context_out(ctx_ptr, out_ptr, hk, tq, d, group, BLOCK: tl.constexpr):
    """``sat(round_shift(ctx, 16))`` of row ``program_id`` of ``ctx`` float64 [B, Hk, g·Tq, D] into the merged-heads
    layout ``out`` int32 [B, Tq, Hq·D]."""
    row = tl.program_id(0).to(tl.int64)
    bi, _kh, hq, t = _gqa_row(row, hk, tq, group)
    offs = tl.arange(0, BLOCK)
    ok = offs < d
    c = tl.load(ctx_ptr + row * d + offs, mask=ok, other=0).to(tl.int64)
    y = _sat((c + (1 << 15)) >> 16)
    tl.store(out_ptr + ((bi * tq + t) * hk * group + hq) * d + offs, y.to(tl.int32), mask=ok)


@triton.jit
def _rope_pair(xa, xb, c, s):
    """Llama spec §4: the rotated halves ``(sat(rnd((a·c - b·s) / 2^30)), sat(rnd((b·c + a·s) / 2^30)))``."""
    return _sat((xa * c - xb * s + (1 << 29)) >> 30), _sat((xb * c + xa * s + (1 << 29)) >> 30)


@triton.jit
def _swiglu(g, u, table_ptr, nt):
    """Llama spec §5 ``sat(rnd(silu(g)·u / 2^16))`` with ``silu(g) = sat(rnd(g·σ(g) / 2^30))``."""
    sv = _sat((g * _lut(g, table_ptr, nt, -(16 << 16), 9) + (1 << 29)) >> 30)
    return _sat((sv * u + (1 << 15)) >> 16)


@triton.jit
def _gelu(x, table_ptr, nt):
    """Spec §5.4 ``sat(rnd(x·Φ(x) / 2^30))``."""
    return _sat((x * _lut(x, table_ptr, nt, -(8 << 16), 9) + (1 << 29)) >> 30)


@triton.jit
def rope(x_ptr, s0, s1, s2, pos_ptr, cos_ptr, sin_ptr, out_ptr, nh, t, half, BLOCK: tl.constexpr):
    """Llama spec §4 RoPE of row ``program_id`` of ``x`` [B, n, T, D] (element strides ``s0..s2``, unit last)."""
    row = tl.program_id(0).to(tl.int64)
    bi = row // (nh * t)
    hi = (row // t) % nh
    ti = row % t
    offs = tl.arange(0, BLOCK)
    ok = offs < half
    base = x_ptr + bi * s0 + hi * s1 + ti * s2
    xa = tl.load(base + offs, mask=ok, other=0).to(tl.int64)
    xb = tl.load(base + half + offs, mask=ok, other=0).to(tl.int64)
    p = tl.load(pos_ptr + bi * t + ti)
    c = tl.load(cos_ptr + p * half + offs, mask=ok, other=0).to(tl.int64)
    s = tl.load(sin_ptr + p * half + offs, mask=ok, other=0).to(tl.int64)
    ya, yb = _rope_pair(xa, xb, c, s)
    o = out_ptr + row * 2 * half
    tl.store(o + offs, ya.to(tl.int32), mask=ok)
    tl.store(o + half + offs, yb.to(tl.int32), mask=ok)


@triton.jit
def swiglu(g_ptr, sg, u_ptr, su, out_ptr, n, table_ptr, nt, BLOCK: tl.constexpr):
    """Llama spec §5 SwiGLU for row ``program_id(0)``, column block ``program_id(1)``."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(g_ptr + r * sg + offs, mask=ok, other=0).to(tl.int64)
    u = tl.load(u_ptr + r * su + offs, mask=ok, other=0).to(tl.int64)
    tl.store(out_ptr + r * n + offs, _swiglu(g, u, table_ptr, nt).to(tl.int32), mask=ok)


@triton.jit
def gelu(x_ptr, sx, out_ptr, n, table_ptr, nt, BLOCK: tl.constexpr):
    """Spec §5.4 GELU for row ``program_id(0)``, column block ``program_id(1)``."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + r * sx + offs, mask=ok, other=0).to(tl.int64)
    tl.store(out_ptr + r * n + offs, _gelu(x, table_ptr, nt).to(tl.int32), mask=ok)
