"""Output digests (``kolm_audit.runtime.digests``): the numpy fast path writes exactly RFC 8785's bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kolm_audit.canonical import MAX_SAFE_INT, jcs
from kolm_audit.errors import InputError
from kolm_audit.runtime.digests import embedding_digest, int_array_jcs


@settings(max_examples=200, deadline=None)
@given(arr=st.one_of(hnp.arrays(st.sampled_from([np.int8, np.int16, np.int32, np.uint8, np.uint32]),
                                st.integers(0, 40)),
                     hnp.arrays(np.int64, st.integers(0, 40), elements=st.integers(-MAX_SAFE_INT, MAX_SAFE_INT))))
def test_numpy_arrays_give_the_canonical_bytes_of_their_list(arr: np.ndarray) -> None:
    assert int_array_jcs(arr) == jcs([int(v) for v in arr.tolist()]) == int_array_jcs(arr.tolist())


@pytest.mark.parametrize("value", [MAX_SAFE_INT, -MAX_SAFE_INT])
def test_safe_integer_limits_pass_and_one_beyond_is_refused(value: int) -> None:
    assert int_array_jcs(np.array([0, value], np.int64)) == jcs([0, value])
    with pytest.raises(InputError):
        int_array_jcs(np.array([0, value + (1 if value > 0 else -1)], np.int64))


def test_embedding_digest_is_the_same_for_an_array_and_a_list() -> None:
    emb = np.arange(-5, 5, dtype=np.int32) * 65536
    assert embedding_digest(emb) == embedding_digest(emb.tolist())
