"""Build-time construction of the ``tables.*`` tensors of ``kolm-int/1`` (spec: docs/runtime-spec.md §5).

The forward pass never evaluates a transcendental function: it reads integer tables from the artifact. They are
computed here once, at build time, from exact or correctly rounded arithmetic (``decimal`` at 60 digits,
``math.isqrt``, Python integers) so that every build on every machine writes identical bytes. Their layouts
(lengths, steps, formats), which the runtime checks, are tabled in :mod:`kolm_audit.runtime.tables`.

Example::

    >>> t = exp_table()
    >>> int(t[0]) == 1 << 30, int(t[-1])
    (True, 0)
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from functools import lru_cache

import numpy as np

from kolm_audit.runtime.fixedpoint import rsqrt_table
from kolm_audit.runtime.tables import EXP_LEN, SIG_LEN, SIGMOID_LEN, TABLE_FRAC_BITS

_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459230781640628620899")
_PREC = 60


def _q30(value: Decimal) -> int:
    """rnd(value · 2^30) with round half up."""
    scaled = value * (1 << TABLE_FRAC_BITS)
    return int((scaled + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))


def _erf(z: Decimal) -> Decimal:
    """erf(z) = 2/√π · e^{-z²} · Σ_n 2^n z^{2n+1} / (1·3·…·(2n+1)) (all terms positive for z >= 0)."""
    sign = -1 if z < 0 else 1
    z = abs(z)
    term = z
    total = term
    n = 0
    eps = Decimal(10) ** -(_PREC - 5)
    while term > eps * total or n < 3:
        n += 1
        term = term * 2 * z * z / (2 * n + 1)
        total += term
    return sign * 2 / _PI.sqrt() * (-(z * z)).exp() * total


@lru_cache(maxsize=1)
def _exp() -> tuple[int, ...]:
    with localcontext() as ctx:
        ctx.prec = _PREC
        return tuple(_q30((-Decimal(i) / 128).exp()) for i in range(EXP_LEN))


@lru_cache(maxsize=1)
def _gelu_cdf() -> tuple[int, ...]:
    with localcontext() as ctx:
        ctx.prec = _PREC
        root2 = Decimal(2).sqrt()
        return tuple(_q30((1 + _erf((Decimal(i - 1024) / 128) / root2)) / 2) for i in range(SIG_LEN))


@lru_cache(maxsize=1)
def _tanh() -> tuple[int, ...]:
    with localcontext() as ctx:
        ctx.prec = _PREC
        out = []
        for i in range(SIG_LEN):
            e2x = (Decimal(i - 1024) / 64).exp()          # e^{2x}, x = (i - 1024) / 128
            out.append(_q30((e2x - 1) / (e2x + 1)))
        return tuple(out)


def exp_table() -> np.ndarray:
    """``tables.exp``: rnd(2^30 · exp(-i/128)), i = 0..4096 (int32)."""
    return np.asarray(_exp(), dtype=np.int32)


def gelu_cdf_table() -> np.ndarray:
    """``tables.gelu_cdf``: rnd(2^30 · Φ(-8 + i/128)), i = 0..2048 (int32)."""
    return np.asarray(_gelu_cdf(), dtype=np.int32)


def tanh_table() -> np.ndarray:
    """``tables.tanh``: rnd(2^30 · tanh(-8 + i/128)), i = 0..2048 (int32)."""
    return np.asarray(_tanh(), dtype=np.int32)


def common_tables() -> dict[str, np.ndarray]:
    """The tables every ``kolm-int/1`` artifact carries (exp for softmax, rsqrt for the norms)."""
    return {"tables.exp": exp_table(), "tables.rsqrt": rsqrt_table().astype(np.int32)}


def bert_tables() -> dict[str, np.ndarray]:
    """Tables of the BERT family: common + GELU's Φ + tanh (pooler)."""
    return {**common_tables(), "tables.gelu_cdf": gelu_cdf_table(), "tables.tanh": tanh_table()}


def attn_scale(head_dim: int) -> np.ndarray:
    """``tables.attn_scale``: int64 [2] = (M, S) with M / 2^S = rnd-nearest 1/sqrt(head_dim), 2^30 <= M < 2^31."""
    from math import isqrt

    s = 30
    while True:
        # M = rnd(2^s / sqrt(D)) = (isqrt(floor(4 · 2^(2s) / D)) + 1) // 2
        m = (isqrt((4 << (2 * s)) // head_dim) + 1) // 2
        if m >= 1 << 31:
            s -= 1
        elif m < 1 << 30:
            s += 1
        else:
            return np.array([m, s], dtype=np.int64)


# ---- the Llama family's tables (docs/runtime-spec-llama.md §2) ----------------------------------------------

_ROPE_FRAC = 120                                # working precision of the RoPE recurrence (Python ints)


def _rnd_dec(value: Decimal, frac_bits: int) -> int:
    """rnd(value · 2^frac_bits) with round half up (the one rounding rule)."""
    return int((value * (1 << frac_bits) + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))


def sigmoid_table() -> np.ndarray:
    """``tables.sigmoid``: rnd(2^30 / (1 + exp(16 - i/128))), i = 0..4096 (int32): σ(x), x = -16 + i/128."""
    with localcontext() as ctx:
        ctx.prec = _PREC
        vals = [_rnd_dec(1 / (1 + (-(Decimal(i) / 128 - 16)).exp()), 30) for i in range(SIGMOID_LEN)]
    return np.asarray(vals, dtype=np.int32)


def _cos_sin(x: Decimal) -> tuple[Decimal, Decimal]:
    """Taylor series of cos and sin for |x| <= 1 at the current decimal precision."""
    c, s, term, n = Decimal(0), Decimal(0), Decimal(1), 0
    eps = Decimal(10) ** -(_PREC + 2)
    while abs(term) > eps or n < 4:
        if n % 2 == 0:
            c += term if n % 4 == 0 else -term
        else:
            s += term if n % 4 == 1 else -term
        n += 1
        term = term * x / n
    return c, s


def rope_tables(*, head_dim: int, max_positions: int, theta: str) -> tuple[np.ndarray, np.ndarray]:
    """``tables.rope_cos`` / ``tables.rope_sin``: int32 [max_positions, head_dim/2], Q.30 cos/sin(p · ω_i).

    ``ω_i = theta^(-2i/head_dim)`` at 60 significant digits; rotation by ``ω_i`` in Q.120 Python integers
    (``c_{p+1} = rnd((c_p·C - s_p·S) / 2^120)``, ``s_{p+1} = rnd((s_p·C + c_p·S) / 2^120)``), each entry then
    ``rnd(c_p / 2^90)``. Deterministic on every machine (integers only after ω).
    """
    half = head_dim // 2
    one = 1 << _ROPE_FRAC
    cos = np.empty((max_positions, half), dtype=np.int64)
    sin = np.empty((max_positions, half), dtype=np.int64)
    with localcontext() as ctx:
        ctx.prec = _PREC
        base = Decimal(theta)
        for i in range(half):
            c1, s1 = _cos_sin(base ** (Decimal(-2 * i) / Decimal(head_dim)))
            big_c, big_s = _rnd_dec(c1, _ROPE_FRAC), _rnd_dec(s1, _ROPE_FRAC)
            c, s = one, 0
            col_c, col_s = [], []
            for _ in range(max_positions):
                col_c.append((c + (1 << 89)) >> 90)
                col_s.append((s + (1 << 89)) >> 90)
                c, s = ((c * big_c - s * big_s + (one >> 1)) >> _ROPE_FRAC,
                        (s * big_c + c * big_s + (one >> 1)) >> _ROPE_FRAC)
            cos[:, i], sin[:, i] = col_c, col_s
    return cos.astype(np.int32), sin.astype(np.int32)
