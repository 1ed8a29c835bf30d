"""Property tests of the exact trainer's integer arithmetic (docs/training-spec.md §2–§6) against Python integers.

Each property recomputes a step with unbounded Python ints (and exact fractions) and demands the same integers
from the int64 numpy implementation — at the format bounds, where an overflow would show.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.compile import exact_math as em
from kolm_audit.compile.tables import exp_table
from kolm_audit.errors import InputError, UnsupportedModel
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.reference import softmax
from kolm_audit.runtime.weights import load_linear

EXP = exp_table().astype(np.int64)
X = st.integers(-(em.X_LIMIT - 1), em.X_LIMIT - 1)
W = st.integers(-em.W_LIMIT, em.W_LIMIT)
V = st.integers(-em.V_LIMIT, em.V_LIMIT)


def _rnd(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    labels, k, b = draw(st.integers(2, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    x = np.array(draw(st.lists(st.lists(X, min_size=k, max_size=k), min_size=b, max_size=b)), dtype=np.int64)
    w = np.array(draw(st.lists(st.lists(W, min_size=k + 1, max_size=k + 1), min_size=labels, max_size=labels)),
                 dtype=np.int64)
    v = np.array(draw(st.lists(st.lists(V, min_size=k + 1, max_size=k + 1), min_size=labels, max_size=labels)),
                 dtype=np.int64)
    y = np.array(draw(st.lists(st.integers(0, labels - 1), min_size=b, max_size=b)), dtype=np.int64)
    return x, w, v, y


@settings(max_examples=60, deadline=None)
@given(problems())
def test_logits_and_gradient_equal_python_integers(p: tuple) -> None:
    x, w, _, y = p
    xa = em.augment(x)
    z = em.logits(w, xa)
    want_z = [[_rnd(sum(int(a) * int(c) for a, c in zip(row, wrow, strict=True)), 1 << 24) for wrow in w.tolist()]
              for row in xa.tolist()]
    assert z.tolist() == want_z
    probs = softmax(z, np.ones(z.shape, dtype=bool), EXP).tolist()
    b = len(y)
    g = [[probs[i][n] - (1 << 16) * (n == y[i]) for n in range(w.shape[0])] for i in range(b)]
    want_g = [[_rnd(sum(g[i][n] * int(xa[i, c]) for i in range(b)), b << 8) for c in range(xa.shape[1])]
              for n in range(w.shape[0])]
    assert em.gradient(w, xa, y, EXP).tolist() == want_g


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(0, em.MAX_LR), st.integers(0, (1 << 16) - 1), st.integers(0, (1 << 32) - 1))
def test_sgd_step_equals_python_integers_with_saturation(p: tuple, lr: int, mu: int, decay: int) -> None:
    x, w, v, y = p
    g = em.gradient(w, em.augment(x), y, EXP)
    w2, v2 = em.sgd_momentum(w, v, g, lr=lr, momentum=mu, decay=decay)
    k1 = w.shape[1]
    for n in range(w.shape[0]):
        for c in range(k1):
            gg = int(g[n, c]) + (_rnd(decay * int(w[n, c]), 1 << 32) if c < k1 - 1 else 0)
            vv = max(-em.V_LIMIT, min(em.V_LIMIT, _rnd(mu * int(v[n, c]), 1 << 16) + gg))
            ww = max(-em.W_LIMIT, min(em.W_LIMIT, int(w[n, c]) - _rnd(lr * vv, 1 << 16)))
            assert (int(v2[n, c]), int(w2[n, c])) == (vv, ww)


def test_widest_problem_stays_exact() -> None:
    """2^11 columns at the feature and weight limits: the largest sums of §4 are still exact in int64."""
    k = em.MAX_COLUMNS - 1
    x = np.full((2, k), em.X_LIMIT - 1, dtype=np.int64)
    x[1] = -(em.X_LIMIT - 1)
    w = np.full((3, k + 1), em.W_LIMIT, dtype=np.int64)
    w[2] = -em.W_LIMIT
    xa = em.augment(x)
    want = [[_rnd(sum(int(a) * int(c) for a, c in zip(row, wr, strict=True)), 1 << 24) for wr in w.tolist()]
            for row in xa.tolist()]
    assert em.logits(w, xa).tolist() == want
    g = em.gradient(w, xa, np.array([0, 2]), EXP)
    assert np.abs(g).max() < 1 << 31


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(W, min_size=4, max_size=4), min_size=2, max_size=5))
def test_int8_head_is_within_half_a_step_and_loads(rows: list) -> None:
    w = np.array(rows, dtype=np.int64)
    head = em.int8_head(w)
    lin = load_linear(head, "classifier", scheme="int8")                # the runtime accepts it
    for n, row in enumerate(rows):
        a = max(abs(c) for c in row[:-1])
        assert head["classifier.bias"][n] == _rnd(row[-1], 1 << 8)
        if a == 0:
            assert not np.any(head["classifier.weight"][n]) and lin.mult[n] == 0
            continue
        assert np.abs(head["classifier.weight"][n]).max() == 127
        step = Fraction(a, 127 << 24)
        eff = Fraction(int(lin.mult[n]), 1 << int(lin.shift[n]))
        assert abs(eff - step) <= step / (1 << 30)
        for q, real in zip(head["classifier.weight"][n].tolist(), row[:-1], strict=True):
            assert abs(q * eff - Fraction(real, 1 << 24)) <= step / 2 + 127 * step / (1 << 30)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**12), st.integers(0, 15), st.sampled_from([16, 24, 32]))
def test_decimal_fixed_is_the_exact_rounding(mantissa: int, exponent: int, bits: int) -> None:
    text = f"{mantissa}e-{exponent}"
    want = fp.rnd_fraction(Fraction(mantissa, 10**exponent) * (1 << bits))
    assert em.decimal_fixed(text, bits, field="f") == want
    plain = str(Fraction(mantissa, 10**exponent).numerator) if exponent == 0 else None
    if plain is not None:
        assert em.decimal_fixed(plain, bits, field="f") == want


@pytest.mark.parametrize("bad", ["", "1.5.2", "nan", "inf", "0x10", " 1", "-1", 0.5, 2])
def test_decimal_fixed_refuses_what_is_not_a_non_negative_decimal_string(bad: object) -> None:
    with pytest.raises(InputError) as err:
        em.decimal_fixed(bad, 16, field="trainer.learning_rate")    # type: ignore[arg-type]
    assert err.value.field == "trainer.learning_rate"


def test_decimal_fixed_range() -> None:
    assert em.decimal_fixed("16", 16, field="f", high=em.MAX_LR) == em.MAX_LR
    with pytest.raises(InputError, match="out of range"):
        em.decimal_fixed("16.00001", 16, field="f", high=em.MAX_LR)
    with pytest.raises(InputError, match="out of range"):
        em.decimal_fixed("0.000001", 16, field="f", low=1)         # rounds to 0: no learning rate


@settings(max_examples=30, deadline=None)
@given(st.integers(0, (1 << 53) - 1), st.integers(0, 50), st.integers(1, 60))
def test_epoch_order_is_a_seeded_permutation(seed: int, epoch: int, n: int) -> None:
    order = em.epoch_order(seed, epoch, n)
    assert sorted(order.tolist()) == list(range(n))
    assert order.tolist() == em.epoch_order(seed, epoch, n).tolist()
    keys = [em.draw_u64(seed, b"shuffle", epoch, i) for i in order.tolist()]
    assert keys == sorted(keys)


def test_epochs_and_seeds_give_different_orders() -> None:
    assert em.epoch_order(1, 0, 20).tolist() != em.epoch_order(1, 1, 20).tolist()
    assert em.epoch_order(1, 0, 20).tolist() != em.epoch_order(2, 0, 20).tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, em.MAX_LR), st.integers(1, 500))
def test_linear_schedule_decays_to_its_last_step(lr: int, total: int) -> None:
    rates = [em.learning_rate(lr, t, total, "linear") for t in range(total)]
    assert rates[0] == lr and rates[-1] == int(fp.rdiv(lr, total))
    assert all(a >= b >= 0 for a, b in itertools.pairwise(rates))
    assert em.learning_rate(lr, total - 1, total, "constant") == lr


def test_feature_bounds_are_enforced() -> None:
    with pytest.raises(UnsupportedModel, match="bound"):
        em.augment(np.array([[em.X_LIMIT]]))
    with pytest.raises(UnsupportedModel, match="too many features"):
        em.augment(np.zeros((1, em.MAX_COLUMNS), dtype=np.int64))
    with pytest.raises(UnsupportedModel, match="integer"):
        em.augment(np.zeros((1, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="optimizer constant"):
        em.sgd_momentum(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64),
                        lr=em.MAX_LR + 1, momentum=0, decay=0)
