"""The fused CPU kernels (numba), called directly, give exactly the integers of the numpy reference.

``quantize_rows``, ``linear_epilogue`` and ``norm`` against :mod:`kolm_audit.runtime.fixedpoint` and
:mod:`~kolm_audit.runtime.reference` on rows of every kind (all zero, constant, one value at ±2^31 among small ones,
the full int32 range, rounding ties), every requantization branch and every rsqrt-table knot. The operations of
:class:`FusedCpuOps` are tested in ``test_cpu_fused_ops.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _fused_fixtures import I32_MAX, I32_MIN, RSQRT, _norm_params, _rows, seeds

from kolm_audit.runtime import cpu_kernels as kn
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import reference as ref

# ---- kernels, called directly ----------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(seed=seeds, rows=st.integers(1, 9), k=st.integers(1, 70), int32=st.booleans(),
       qtype=st.sampled_from([np.int8, np.float32]))
def test_quantize_rows_kernel_equals_reference(seed: int, rows: int, k: int, int32: bool, qtype: type) -> None:
    """``q`` as int8 (linear operands) or float32 (attention keys, exact); x int64 (may hold +2^31) or int32."""
    rng = np.random.default_rng(seed)
    x = _rows(rng, (rows, k), hi=I32_MAX if int32 else 1 << 31)
    xin = x.astype(np.int32) if int32 else x
    q, m, e = np.empty((rows, k), qtype), np.empty(rows, np.int64), np.empty(rows, np.int64)
    kn.quantize_rows(xin, q, m, e)
    wq, wm, we = fp.quantize_rows(x)
    assert np.array_equal(q.astype(np.int64), wq)
    assert np.array_equal(m, wm[:, 0]) and np.array_equal(e, we[:, 0])


def _epilogue_case(rng: np.random.Generator, rows: int, n: int, shift_lo: int, shift_hi: int,
                   acc_bits: int) -> tuple[np.ndarray, ...]:
    """Random (acc, m, e, mult, shift, bias) inside the reference's bounds: |acc·m| < 2^62 and, where the
    effective shift is below 31, |acc·m·mult / 2^s| < 2^61 (requantize's precondition); offending acc entries
    are shrunk until they comply."""
    e = rng.integers(0, fp.MAX_STEP_EXP + 1, rows)
    m = rng.integers(1, (1 << fp.STEP_MANTISSA_BITS) + 1, rows)
    m[rng.random(rows) < 0.2] = 1 << fp.STEP_MANTISSA_BITS
    acc = rng.integers(-(1 << acc_bits), 1 << acc_bits, (rows, n), endpoint=True)
    mult = rng.integers(1 << 30, 1 << 31, n)
    pick = rng.random(n)
    mult[pick < 0.15] = 0
    neg = (pick >= 0.15) & (pick < 0.3)
    mult[neg] = -rng.integers(1, 1 << 31, int(neg.sum()))               # |mult| < 2^31, negative
    mult[(pick >= 0.3) & (pick < 0.35)] = (1 << 31) - 1
    shift = rng.integers(shift_lo, shift_hi + 1, n)
    bias = rng.integers(I32_MIN, I32_MAX, n, endpoint=True) >> rng.integers(0, 32, n)
    for r in range(rows):
        for j in range(n):
            s = min(max(int(shift[j]) - int(e[r]), 0), fp.MAX_SHIFT)
            while abs(int(acc[r, j]) * int(m[r])) >= 1 << 62 or (
                    s < 31 and abs(int(acc[r, j]) * int(m[r]) * int(mult[j])) >> s >= 1 << 61):
                acc[r, j] //= 2
    return acc, m, e, mult, shift, bias


@settings(max_examples=300, deadline=None)
@given(seed=seeds, rows=st.integers(1, 6), n=st.integers(1, 40),
       shifts=st.sampled_from([(0, 103), (42, 93), (32, 52), (0, 40), (25, 35), (94, 103), (31, 31)]),
       acc_bits=st.sampled_from([8, 22, 31, 40, 46]), int32=st.booleans(), out32=st.booleans())
def test_linear_epilogue_kernel_equals_reference(seed: int, rows: int, n: int, shifts: tuple[int, int],
                                                 acc_bits: int, int32: bool, out32: bool) -> None:
    """Every shift - e: negative, < 31, == 31, >= 32, > 93 (clipped); mult 0, negative, up to 2^31 - 1; acc and
    out int32 or int64."""
    rng = np.random.default_rng(seed)
    acc, m, e, mult, shift, bias = _epilogue_case(rng, rows, n, *shifts, acc_bits=min(acc_bits, 31) if int32
                                                  else acc_bits)
    if int32:
        acc = np.clip(acc, I32_MIN, I32_MAX)
    out = np.empty((rows, n), np.int32 if out32 else np.int64)
    kn.linear_epilogue(acc.astype(np.int32) if int32 else acc, m, e, mult, shift, bias, out)
    want = fp.saturate_int32(fp.requantize(acc * m[:, None], mult, shift - e[:, None]) + bias)
    assert np.array_equal(out, want)


def test_linear_epilogue_kernel_extremes() -> None:
    """Hand-picked corners: |acc·m| just below 2^62, the rounding tie of every branch, saturation both ways."""
    top = (1 << 62) - 1
    acc = np.array([[top >> 15, -(top >> 15), 1, -1, 0, (1 << 31) - 1],
                    [3, -3, 5, -5, 1 << 20, -(1 << 20)]], dtype=np.int64)
    m = np.array([1 << 15, 1], dtype=np.int64)
    mult = np.array([(1 << 31) - 1, -((1 << 31) - 1), 1 << 30, 1 << 30, 0, 1 << 30], dtype=np.int64)
    bias = np.array([0, 0, I32_MAX, I32_MIN, -7, 1], dtype=np.int64)
    for shift_row in ([93, 93, 31, 31, 0, 40], [103, 62, 30, 1, 5, 32], [0, 0, 0, 0, 0, 0], [32] * 6, [31] * 6):
        for e in ([0, 0], [10, 3]):
            shift, ee = np.array(shift_row, dtype=np.int64), np.array(e, dtype=np.int64)
            bound = [[abs(int(a) * int(mm) * int(mu)) >> max(int(s) - int(x), 0) < 1 << 61
                      or int(s) - int(x) >= 31 for a, mu, s in zip(row, mult, shift, strict=True)]
                     for row, mm, x in zip(acc, m, ee, strict=True)]
            a2 = np.where(bound, acc, 0)
            out = np.empty(a2.shape, np.int64)
            kn.linear_epilogue(a2, m, ee, mult, shift, bias, out)
            want = fp.saturate_int32(fp.requantize(a2 * m[:, None], mult, shift - ee[:, None]) + bias)
            assert np.array_equal(out, want), (shift_row, e)


@settings(max_examples=200, deadline=None)
@given(seed=seeds, rows=st.integers(1, 8), h=st.integers(1, 96), gamma32=st.booleans())
def test_norm_kernel_equals_layer_norm_and_rms_norm(seed: int, rows: int, h: int, gamma32: bool) -> None:
    rng = np.random.default_rng(seed)
    x = _rows(rng, (rows, h))
    gamma, beta, eps = _norm_params(rng, h)
    g_in = gamma.astype(np.int32) if gamma32 else gamma
    out = np.empty((rows, h), np.int64)
    kn.norm(x, g_in, beta, True, eps, RSQRT, out)
    assert np.array_equal(out, ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT))
    kn.norm(x, g_in, np.zeros(0, np.int64), False, eps, RSQRT, out)
    assert np.array_equal(out, ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))


def test_norm_kernel_on_the_widest_rows() -> None:
    """H = 2^14 (the spec's maximum) with rows of full-range values: the largest Σc² the kernel accumulates."""
    rng = np.random.default_rng(3)
    h = ref.MAX_NORM_DIM
    x = np.stack([rng.integers(I32_MIN, I32_MAX, h, endpoint=True), np.full(h, I32_MIN),
                  np.where(np.arange(h) % 2 == 0, I32_MIN, I32_MAX), np.zeros(h, np.int64)])
    gamma, beta, eps = _norm_params(rng, h)
    out = np.empty(x.shape, np.int64)
    kn.norm(x, gamma, beta, True, eps, RSQRT, out)
    assert np.array_equal(out, ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT))
    kn.norm(x, gamma, np.zeros(0, np.int64), False, eps, RSQRT, out)
    assert np.array_equal(out, ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT))


def test_norm_kernel_at_every_rsqrt_table_knot() -> None:
    """Variances whose normalised mantissa lands on, just below and just above knots of the rsqrt table
    (2^28 + i·2^18: every 7th one and the first and last three, 2^30 included), for the exact (j = 0) and the
    rounded (j = 1) mantissa."""
    c = 1 << 12                                                       # rows [c, -c, ...]: mean 0, variance c²
    x = np.tile(np.array([[c, -c, c, -c]]), (2, 1)) * np.array([[1], [-1]])
    gamma = np.array([(1 << 27) - 1, 1 << 26, -(1 << 27), 12345679])
    beta = np.array([0, 1, -1, 1 << 20])
    out = np.empty(x.shape, np.int64)
    last = fp.RSQRT_TABLE_LEN - 1
    for i in sorted({*range(0, last, 7), 1, 2, last - 2, last - 1, last}):
        knot = (1 << 28) + (i << fp.RSQRT_STEP_SHIFT)
        for v in {knot - 1, knot, knot + 1, 4 * knot - 2, 4 * knot + 1}:
            eps = v - c * c
            if not 0 <= eps < 1 << 32:
                continue
            kn.norm(x, gamma, beta, True, eps, RSQRT, out)
            assert np.array_equal(out, ref.layer_norm(x, gamma, beta, eps_q32=eps, rsqrt_table=RSQRT)), v
            kn.norm(x, gamma, np.zeros(0, np.int64), False, eps, RSQRT, out)
            assert np.array_equal(out, ref.rms_norm(x, gamma, eps_q32=eps, rsqrt_table=RSQRT)), v




def test_kernels_compile_without_a_disk_cache_when_numba_finds_no_cache_location() -> None:
    """numba raises at decoration when no cache location is usable (read-only install, no home): the kernels
    then compile in memory (simulated with a cache-locator setting numba cannot resolve)."""
    code = ("import numpy as np\n"
            "from kolm_audit.runtime import cpu_kernels as kn, fixedpoint as fp\n"
            "x = np.array([[65536, -32768, 0], [7, -1 << 31, 5]])\n"
            "q, m, e = np.empty((2, 3), np.int8), np.empty(2, np.int64), np.empty(2, np.int64)\n"
            "kn.quantize_rows(x, q, m, e)\n"
            "rq, rm, re = fp.quantize_rows(x)\n"
            "assert (q == rq).all() and (m == rm[:, 0]).all() and (e == re[:, 0]).all()\n"
            "print(type(kn.quantize_rows._cache).__name__)\n")
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "NoSuchLocator"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "NullCache"
