"""The AMX tile products (``cpu_amx``) give the exact integer products on ``cpu_gemv``'s packed panels.

Against exact int64 matrix products and the VNNI tiles of the same panels: every remainder of rows modulo 16 (the
tile's rows; padding rows never read), of ``N`` modulo the 64-column panel and 16-column tiles, ``K`` from one
block of 64 to 22 (odd and even block counts: two activation tiles in turn), weights at -128 and 127, activations
at ±127 and zero rows; sums at the int32 bound; and kernels compiled without AMX carry no tile instruction.
Skipped where the CPU has no AMX or Linux did not grant its state (``cpu_features.AMX``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _fused_fixtures import seeds

from kolm_audit.runtime import cpu_amx as ca
from kolm_audit.runtime import cpu_gemv as cg

needs_amx = pytest.mark.skipif(not (ca.AMX and cg.GEMM), reason="needs AMX-INT8 (granted by Linux) and the panels")


def _case(rng: np.random.Generator, rows: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = rng.integers(-127, 128, (rows, k)).astype(np.int8)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    q[0], w[0] = 127, -128
    if rows > 2:
        q[1], q[2] = -127, 0
    if n > 1:
        w[1] = 127
    return q, w


@needs_amx
@settings(max_examples=60, deadline=None)
@given(seed=seeds, rows=st.integers(1, 70), n=st.sampled_from([1, 15, 16, 17, 63, 64, 65, 130, 200]),
       blocks=st.sampled_from([1, 2, 3, 6, 11, 22]))
def test_amx_tiles_equal_the_exact_product_and_the_vnni_tiles(seed: int, rows: int, n: int, blocks: int) -> None:
    rng = np.random.default_rng(seed)
    q, w = _case(rng, rows, n, 64 * blocks)
    wp, psum = cg.pack_weights(w)
    acc = np.full((rows, n), 7, np.int32)
    ca.gemm_amx(q, wp, acc)
    assert np.array_equal(acc, q.astype(np.int64) @ w.astype(np.int64).T)
    vnni = np.full((rows, n), 7, np.int32)
    cg.gemm_vnni(q, wp, psum, vnni)
    assert np.array_equal(vnni, acc)


@needs_amx
def test_amx_tiles_at_the_largest_sums() -> None:
    """``K = 2^14`` columns of ±127·(-128) and 127·127 over 17 rows (a full tile and one row): ``|Σ| = 2^14·127·128``,
    the largest the spec's bound allows at this ``K``, exact in every int32 lane."""
    k = 1 << 14
    q, w = np.full((17, k), 127, np.int8), np.full((3, k), -128, np.int8)
    q[1::2] = -127
    w[2] = 127
    acc = np.empty((17, 3), np.int32)
    ca.gemm_amx(q, cg.pack_weights(w)[0], acc)
    assert np.array_equal(acc, q.astype(np.int64) @ w.astype(np.int64).T)
    assert np.abs(acc).max() == k * 127 * 128


def test_kernels_compiled_without_amx_carry_no_tile_instruction(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the flag off, a kernel that inlines the AMX path asks LLVM for no tile instruction (which would fail
    where the CPU or Linux has none); with it on (where granted) it does."""
    import numba
    from numba import njit

    def ir_of(amx: bool) -> str:
        monkeypatch.setattr(ca, "AMX", amx)

        @njit
        def uses_all(q: np.ndarray, wp: np.ndarray, acc: np.ndarray) -> None:
            ca._gemm_rows_amx(q, wp, acc)

        args = (np.zeros((2, 64), np.int8), np.zeros(4096, np.int8), np.zeros((2, 64), np.int32))
        uses_all.compile(tuple(numba.typeof(a) for a in args))
        return "\n".join(uses_all.inspect_llvm().values())

    assert "tdpbssd" not in ir_of(False) and "ldtilecfg" not in ir_of(False)
    if ca.AMX:
        assert "tdpbssd" in ir_of(True)
