"""Sampling: greedy tie-break, the counter-based RNG, integer temperature/top-k/top-p."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.canonical import jcs
from kolm_audit.compile.tables import exp_table
from kolm_audit.errors import RuntimeInputError
from kolm_audit.runtime.sampling import (
    RNG_DOMAIN,
    DecodingParams,
    candidate_order,
    greedy_token,
    random_u64,
    request_key,
    sampling_weights,
    select_token,
)

FRAC = 16
EXP = exp_table()
logit_arrays = st.lists(st.integers(-(40 << FRAC), 40 << FRAC), min_size=1, max_size=64).map(
    lambda xs: np.array(xs, dtype=np.int64))
small_logits = st.lists(st.integers(-8, 8), min_size=1, max_size=40).map(
    lambda xs: np.array(xs, dtype=np.int64) << FRAC)          # many ties
params_st = st.builds(DecodingParams, seed=st.integers(0, 2**53 - 1),
                      temperature=st.none() | st.integers(1, 100_000), top_k=st.none() | st.integers(1, 80),
                      top_p=st.none() | st.integers(1, 1000))


def test_rng_is_sha256_of_the_documented_key() -> None:
    key = request_key([1, 2, 3])
    assert key == hashlib.sha256(b"[1,2,3]").digest() == hashlib.sha256(jcs([1, 2, 3])).digest()
    block = RNG_DOMAIN + (7).to_bytes(8, "big") + key + (5).to_bytes(8, "big")
    assert random_u64(seed=7, key=key, step=5) == int.from_bytes(hashlib.sha256(block).digest()[:8], "big")


@settings(deadline=None)
@given(logits=small_logits)
def test_greedy_takes_the_lowest_index_among_ties(logits: np.ndarray) -> None:
    t = greedy_token(logits)
    assert logits[t] == logits.max()
    assert all(logits[i] < logits[t] for i in range(t))


@settings(deadline=None)
@given(logits=small_logits)
def test_candidate_order_is_descending_with_index_tiebreak(logits: np.ndarray) -> None:
    order = candidate_order(logits).tolist()
    assert sorted(order) == list(range(len(logits)))
    keys = [(-int(logits[i]), i) for i in order]
    assert keys == sorted(keys)


@settings(max_examples=200, deadline=None)
@given(logits=logit_arrays, params=params_st, step=st.integers(0, 10_000))
def test_sampling_is_deterministic_and_respects_top_k_top_p(logits: np.ndarray, params: DecodingParams,
                                                            step: int) -> None:
    key = request_key([3, 1, 4])
    a = select_token(logits, params=params, key=key, step=step, exp_table=EXP)
    b = select_token(logits.copy(), params=params, key=key, step=step, exp_table=EXP)
    assert a == b
    ids, w = sampling_weights(logits, params=params, exp_table=EXP)
    assert a in ids.tolist()
    assert w[0] == 1 << 30 and (w >= 0).all() and (np.diff(w) <= 0).all()
    assert ids[0] == greedy_token(logits)                          # the top token is never dropped
    if params.top_k is not None:
        assert len(ids) <= params.top_k
        # every kept token beats (or ties with a lower index than) every dropped one
        order = candidate_order(logits).tolist()
        assert ids.tolist() == order[: len(ids)]
    if params.top_p is not None and params.top_p < 1000 and len(ids) > 1:
        _, w_all = sampling_weights(logits, exp_table=EXP,
                                    params=DecodingParams(seed=params.seed, temperature=params.temperature,
                                                          top_k=params.top_k))
        total = int(w_all.sum())
        assert 1000 * int(w.sum()) >= params.top_p * total          # enough mass kept
        assert 1000 * int(w[:-1].sum()) < params.top_p * total      # and the prefix is minimal


@settings(deadline=None)
@given(seed=st.integers(0, 2**64 - 1), step=st.integers(0, 2**32))
def test_rng_key_components_are_independent(seed: int, step: int) -> None:
    k1, k2 = request_key([1]), request_key([2])
    base = random_u64(seed=seed, key=k1, step=step)
    assert base != random_u64(seed=seed ^ 1, key=k1, step=step)
    assert base != random_u64(seed=seed, key=k2, step=step)
    assert base != random_u64(seed=seed, key=k1, step=step + 1)


def test_sampled_frequencies_follow_the_integer_distribution() -> None:
    logits = np.array([0, 1 << FRAC, 2 << FRAC, -(30 << FRAC)], dtype=np.int64)
    params = DecodingParams(seed=123, temperature=1000)
    ids, w = sampling_weights(logits, params=params, exp_table=EXP)
    probs = dict(zip(ids.tolist(), (w / w.sum()).tolist(), strict=True))
    key = request_key([9])
    n = 4000
    draws = [select_token(logits, params=params, key=key, step=s, exp_table=EXP) for s in range(n)]
    for token in (0, 1, 2):
        assert abs(draws.count(token) / n - probs[token]) < 0.03
    assert abs(probs[2] / probs[1] - np.e) < 0.01                 # exp table really is exp
    assert draws.count(3) == 0


def test_temperature_sharpens_and_flattens() -> None:
    logits = np.array([0, 1 << FRAC], dtype=np.int64)
    cold = sampling_weights(logits, params=DecodingParams(seed=1, temperature=100), exp_table=EXP)[1]
    hot = sampling_weights(logits, params=DecodingParams(seed=1, temperature=10_000), exp_table=EXP)[1]
    assert cold[1] < hot[1] < cold[0] == hot[0]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"temperature": 700}, "temperature"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**53}, "seed"),
    ({"seed": 1, "temperature": 0}, "temperature"),
    ({"seed": 1, "temperature": 100_001}, "temperature"),
    ({"seed": 1, "top_k": 0}, "top_k"),
    ({"seed": 1, "top_p": 0}, "top_p"),
    ({"seed": 1, "top_p": 1001}, "top_p"),
    ({"seed": 1, "top_p": 0.9}, "top_p"),
    ({"seed": True}, "seed"),
])
def test_bad_decoding_params_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(RuntimeInputError) as err:
        DecodingParams(**kwargs)
    assert err.value.field == field
