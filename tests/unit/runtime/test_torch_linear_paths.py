"""Every path of the torch exact linear layer equals the numpy reference, including the rare ones.

Random layers cover: weights from int8 range to 4-bit-scaled magnitudes (wmax up to 40,000), shifts 0..93,
zero multipliers, rows at -2^31 (forcing the per-row extra scaling ``e > 0``), and both the short (16-bit split)
and the general requantization.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.runtime.reference import IntLinear, linear

torch_backend = pytest.importorskip("kolm_audit.runtime.torch_backend")


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), wmax=st.sampled_from([7, 127, 2000, 40000]),
       scale=st.sampled_from([1, 1 << 10, 1 << 20, 1 << 31]), general_shift=st.booleans(), edge_row=st.booleans())
def test_torch_linear_equals_reference(seed: int, wmax: int, scale: int, general_shift: bool, edge_row: bool) -> None:
    rng = np.random.default_rng(seed)
    k, n, m = int(rng.integers(1, 300)), int(rng.integers(1, 40)), int(rng.integers(1, 9))
    w = rng.integers(-wmax, wmax + 1, (n, k))
    mult = rng.integers(1 << 30, 1 << 31, n)
    mult[rng.random(n) < 0.1] = 0
    shift = rng.integers(0, 94, n) if general_shift else rng.integers(16, 62, n)
    lin = IntLinear(weight=w, wmax=int(abs(w).max()), mult=mult, shift=shift,
                    bias=rng.integers(-(1 << 31), 1 << 31, n))
    x = rng.integers(-scale, scale, (m, k))
    if edge_row:
        x[:, 0] = -(1 << 31)
    ops = torch_backend.TorchOps(device="cpu")
    got = ops.numpy(ops.linear(ops.const(x), ops.prepare_linear(lin)))
    assert np.array_equal(got, linear(x, lin))
