"""Fixed-point helpers of kolm-int/1 against exact rational arithmetic (``fractions.Fraction``)."""

from __future__ import annotations

import ast
import inspect
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.compile import tables as tb
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime.tables import SIG_STEP_SHIFT, SIG_X0

I62 = st.integers(min_value=-(1 << 62) + 1, max_value=(1 << 62) - 1)
CDF = tb.gelu_cdf_table().astype(np.int64)          # built once (decimal arithmetic), outside any deadline
EXP = tb.exp_table()
RSQRT = fp.rsqrt_table()
I31 = st.integers(min_value=-(1 << 31) + 1, max_value=(1 << 31) - 1)


def rnd(r: Fraction) -> int:
    """The spec's one rounding rule: round half up, floor(r + 1/2)."""
    return math.floor(r + Fraction(1, 2))


@given(x=I62, s=st.integers(min_value=0, max_value=60))
def test_round_shift_is_round_half_up(x: int, s: int) -> None:
    assert int(fp.round_shift(np.int64(x), s)) == rnd(Fraction(x, 1 << s))


@given(a=st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
       b=st.integers(min_value=1, max_value=(1 << 62) - 1))
def test_rdiv_is_round_half_up(a: int, b: int) -> None:
    assert int(fp.rdiv(np.int64(a), np.int64(b))) == rnd(Fraction(a, b))


@settings(max_examples=500)
@given(x=I62, m=I31, s=st.integers(min_value=0, max_value=fp.MAX_SHIFT))
def test_requantize_single_rounding_exact(x: int, m: int, s: int) -> None:
    exact = rnd(Fraction(x * m, 1 << s))
    if abs(exact) >= 1 << 62:          # outside the precondition for small shifts
        return
    assert int(fp.requantize(np.int64(x), m, s)) == exact


@given(st.lists(st.tuples(st.integers(min_value=-(1 << 45), max_value=1 << 45), I31,
                          st.integers(min_value=31, max_value=fp.MAX_SHIFT)), min_size=1, max_size=30))
def test_requantize_broadcasts_elementwise(rows: list[tuple[int, int, int]]) -> None:
    x, m, s = (np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))
    got = fp.requantize(x, m, s).tolist()
    assert got == [rnd(Fraction(a * b, 1 << c)) for a, b, c in rows]


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_bit_length(v: int) -> None:
    assert int(fp.bit_length(np.int64(v))) == v.bit_length()


@given(st.lists(st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1), min_size=1, max_size=64))
def test_quantize_rows_matches_definition(row: list[int]) -> None:
    q, m, e = fp.quantize_rows(np.array([row], dtype=np.int64))
    amax = max(abs(v) for v in row)
    d0 = max(1, -(-amax // 127))
    ee = max(0, d0.bit_length() - 15)
    mm = -(-d0 // (1 << ee))
    assert (int(m[0, 0]), int(e[0, 0])) == (mm, ee)
    d = mm << ee
    assert d * 127 >= amax and mm <= 1 << 15
    assert q[0].tolist() == [rnd(Fraction(v, d)) for v in row]
    assert int(np.max(np.abs(q))) <= 127


def test_quantize_rows_uses_only_its_own_row() -> None:
    a = np.array([[1000, -5, 7]], dtype=np.int64)
    b = np.array([[1 << 30, 3, 3]], dtype=np.int64)
    alone = fp.quantize_rows(a)
    together = fp.quantize_rows(np.concatenate([a, b]))
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(alone, together, strict=True))


@given(x=st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1))
def test_lut_interp_matches_definition(x: int) -> None:
    table = CDF
    got = int(fp.lut_interp(np.int64(x), table, x0=SIG_X0, step_shift=SIG_STEP_SHIFT))
    pos = x - SIG_X0
    i = min(max(pos >> 9, 0), len(table) - 2)
    f = min(max(pos - (i << 9), 0), 1 << 9)
    assert got == int(table[i]) + rnd(Fraction((int(table[i + 1]) - int(table[i])) * f, 1 << 9))
    assert abs(got / 2**30 - 0.5 * (1 + math.erf(x / 65536 / math.sqrt(2)))) < 2e-5


@given(st.integers(min_value=1, max_value=(1 << 62) - 1))
def test_rsqrt_accuracy_and_range(v: int) -> None:
    r, p = fp.rsqrt(np.int64(v), RSQRT)
    assert (1 << 29) <= int(r) <= (1 << 30)
    assert abs(Fraction(int(r), 1 << int(p)) * Fraction(math.isqrt(v * 4**20), 1 << 20) - 1) < Fraction(1, 10**6)


def test_tables_match_their_functions() -> None:
    ex = tb.exp_table()
    assert int(ex[0]) == 1 << 30 and int(ex[-1]) == 0
    assert max(abs(int(ex[i]) - math.exp(-i / 128) * 2**30) for i in range(len(ex))) <= 0.5 + 1e-6
    th = tb.tanh_table()
    assert max(abs(int(th[i]) - math.tanh((i - 1024) / 128) * 2**30) for i in range(len(th))) <= 0.5 + 1e-6
    assert fp.rsqrt_table()[0] == 1 << 30 and fp.rsqrt_table()[-1] == 1 << 29


@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False))
def test_quantize_multiplier_normalised(real: float) -> None:
    m, s = fp.quantize_multiplier(real)
    assert (1 << 30) <= m < (1 << 31)
    assert abs(Fraction(m, 1 << s) / Fraction(real) - 1) <= Fraction(1, 1 << 30)


@given(st.lists(st.integers(min_value=-(1 << 24), max_value=1 << 24), min_size=2, max_size=12),
       st.integers(min_value=1, max_value=11))
def test_softmax_masked_entries_have_no_influence(scores: list[int], n_valid: int) -> None:
    n_valid = min(n_valid, len(scores))
    s = np.array([scores], dtype=np.int64)
    valid = np.array([[i < n_valid for i in range(len(scores))]])
    p = ref.softmax(s, valid, EXP)
    alone = ref.softmax(s[:, :n_valid], valid[:, :n_valid], EXP)
    assert p[0, :n_valid].tolist() == alone[0].tolist()
    assert not p[0, n_valid:].any()
    assert abs(int(p.sum()) - 65536) <= n_valid


def test_layer_norm_close_to_float() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, size=(4, 64))
    gamma, beta = rng.normal(1, 0.2, 64), rng.normal(0, 0.1, 64)
    got = ref.layer_norm(fp.to_fixed(x, 16), fp.to_fixed(gamma, 24), fp.to_fixed(beta, 16), eps_q32=0,
                         rsqrt_table=fp.rsqrt_table()) / 65536
    want = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True) * gamma + beta
    assert np.abs(got - want).max() < 1e-3


def test_int_matmul_int32_and_int64_paths_agree() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(-127, 128, size=(5, 96))
    w = rng.integers(-127, 128, size=(7, 96))
    small = ref.int_matmul(a, w, wmax=127)
    wide = ref.int_matmul(a, w * 40000, wmax=127 * 40000) // 40000
    assert np.array_equal(small, a @ w.T) and np.array_equal(wide, a @ w.T)


@pytest.mark.parametrize("module", [fp, ref])
def test_no_float_in_forward_code(module: object) -> None:
    """Forward-path functions contain no float literal and no float dtype (build-time helpers excluded)."""
    build_time = {"rnd_fraction", "quantize_multiplier", "to_fixed", "rsqrt_table"}
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name not in build_time):
        for node in ast.walk(fn):
            assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), fn.name
            assert not (isinstance(node, ast.Attribute) and node.attr.startswith("float")), fn.name


# ---- spec formulas in Python big integers (no overflow possible) vs the int64 reference at the extremes ----

def _spec_quantize_row(x: list[int]) -> tuple[list[int], int, int]:
    amax = max(abs(v) for v in x)
    d0 = max(1, -(-amax // 127))
    e = max(0, d0.bit_length() - 15)
    m = -(-d0 // (1 << e))
    return [rnd(Fraction(v, m << e)) for v in x], m, e


def _spec_linear(x: list[int], w: list[list[int]], mult: list[int], shift: list[int], bias: list[int]) -> list[int]:
    q, m, e = _spec_quantize_row(x)
    out = []
    for n, row in enumerate(w):
        acc = sum(a * b for a, b in zip(q, row, strict=True))
        y = rnd(Fraction(acc * m * mult[n], 1 << (shift[n] - e))) + bias[n]
        out.append(min(max(y, -(1 << 31)), (1 << 31) - 1))
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.sampled_from([127, 8 * 5504, 12 * 229376]))
def test_linear_matches_big_integer_spec_at_extremes(seed: int, wmax: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = 256, 6
    x = rng.integers(-(1 << 31), 1 << 31, size=k)
    x[rng.integers(0, k)] = -(1 << 31)                                   # the most negative activation
    w = rng.integers(-wmax, wmax + 1, size=(n, k))
    w[0, :] = wmax                                                       # a row at the bound
    shift = rng.integers(10, 81, size=n)
    # the largest multiplier the load-time check allows: |W·M/2^S| < 2^14
    mult = np.array([min((1 << 31) - 1, ((1 << (int(s) + 14)) - 1) // wmax) for s in shift])
    mult[1] = -mult[1]
    bias = rng.integers(-(1 << 31), 1 << 31, size=n)
    lin = ref.IntLinear(weight=w, wmax=wmax, mult=mult, shift=shift, bias=bias)
    got = ref.linear(x[None, :], lin)[0].tolist()
    assert got == _spec_linear(x.tolist(), w.tolist(), mult.tolist(), shift.tolist(), bias.tolist())


def _spec_layer_norm(x: list[int], gamma: list[int], beta: list[int], eps_q32: int) -> list[int]:
    h = len(x)
    mu = rnd(Fraction(sum(x), h))
    c = [v - mu for v in x]
    k = max(0, max(abs(v) for v in c).bit_length() - 24)
    c2 = [rnd(Fraction(v, 1 << k)) for v in c]
    var = rnd(Fraction(sum(v * v for v in c2), h))
    v = max(var + rnd(Fraction(eps_q32, 1 << (2 * k))), 1)
    j = (v.bit_length() - 29) // 2
    mant = v * 4 ** (-j) if j <= 0 else rnd(Fraction(v, 1 << (2 * j)))
    r = int(fp.lut_interp(np.int64(mant), RSQRT, x0=1 << 28, step_shift=18))
    p = 44 + j
    out = []
    for cv, g, b in zip(c, gamma, beta, strict=True):
        y = rnd(Fraction(cv * r * g, 1 << (p - (16 - k) + 24))) + b
        out.append(min(max(y, -(1 << 31)), (1 << 31) - 1))
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.sampled_from([1, 1 << 8, 1 << 20, 1 << 31]),
       st.sampled_from([0, 4295, 1 << 31]))
def test_layer_norm_matches_big_integer_spec_at_extremes(seed: int, spread: int, eps_q32: int) -> None:
    rng = np.random.default_rng(seed)
    h = 64
    x = np.clip(rng.integers(-spread, spread + 1, size=h) + int(rng.integers(-(1 << 30), 1 << 30)),
                -(1 << 31), (1 << 31) - 1)
    gamma = rng.integers(-(1 << 31) + 1, 1 << 31, size=h)
    beta = rng.integers(-(1 << 31), 1 << 31, size=h)
    got = ref.layer_norm(x[None, :], gamma, beta, eps_q32=eps_q32, rsqrt_table=RSQRT)[0].tolist()
    assert got == _spec_layer_norm(x.tolist(), gamma.tolist(), beta.tolist(), eps_q32)
