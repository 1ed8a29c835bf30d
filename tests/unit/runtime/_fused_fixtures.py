"""Shared inputs and helpers of the fused CPU backend tests (``test_cpu_kernels.py``, ``test_cpu_fused_ops.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

pytest.importorskip("numba")

from kolm_audit.compile import tables as tb
from kolm_audit.compile.tables import sigmoid_table
from kolm_audit.runtime import cpu_fused as cf
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.ops import NumpyOps
from kolm_audit.runtime.torch_backend import TorchOps

FusedCpuOps = cf.FusedCpuOps
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
EXP, CDF, RSQRT, SIG = (tb.exp_table().astype(np.int64), tb.gelu_cdf_table().astype(np.int64), fp.rsqrt_table(),
                        sigmoid_table().astype(np.int64))
seeds = st.integers(0, 2**32 - 1)
ROW_KINDS = ("zero", "const", "spike", "full", "small", "mixed", "min", "tie")
NPO = NumpyOps()


def _rows(rng: np.random.Generator, shape: tuple[int, ...], *, hi: int = I32_MAX) -> np.ndarray:
    """Q.16 activations int64 in ``[-2^31, hi]``, each row (last axis) of a random kind: all zero, constant, one
    spike at ±2^31 among small values, the full int32 range, small, mixed magnitudes, holding ``-2^31``, or "tie":
    max-abs an exact multiple 127·c and the other values at half-steps ``j·c ± c/2`` (rounding ties)."""
    lead, n = shape[:-1], shape[-1]
    flat = np.empty((int(np.prod(lead, dtype=np.int64)), n), dtype=np.int64)
    for r in range(flat.shape[0]):
        kind = ROW_KINDS[int(rng.integers(len(ROW_KINDS)))]
        if kind == "zero":
            row = np.zeros(n, dtype=np.int64)
        elif kind == "const":
            row = np.full(n, int(rng.integers(I32_MIN, hi, endpoint=True)))
        elif kind == "spike":
            row = rng.integers(-(1 << 8), 1 << 8, n)
            row[int(rng.integers(n))] = int(rng.choice([I32_MIN, hi]))
        elif kind == "full":
            row = rng.integers(I32_MIN, hi, n, endpoint=True)
        elif kind == "small":
            row = rng.integers(-3, 4, n)
        elif kind == "mixed":
            row = rng.integers(I32_MIN, hi, n, endpoint=True) >> rng.integers(0, 32, n)
        elif kind == "min":
            row = rng.integers(-(1 << 20), 1 << 20, n)
            row[int(rng.integers(n))] = I32_MIN
        else:
            c = int(rng.integers(1, (1 << 31) // 127)) >> int(rng.integers(0, 24))
            row = rng.integers(-126, 127, n) * c + rng.choice([0, c // 2, -(c // 2), (c + 1) // 2], n)
            row[int(rng.integers(n))] = int(rng.choice([127, -127])) * c
        flat[r] = row
    return flat.reshape(shape)


@contextmanager
def _torch_threads() -> Iterator[None]:
    """Restore torch's global thread count (TorchOps(threads=n) sets it)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fused(threads: int | None = None) -> cf.FusedCpuOps:
    return FusedCpuOps(threads=threads)


def _np(ops: TorchOps, x: torch.Tensor) -> np.ndarray:
    return ops.numpy(x)


def _t(ops: TorchOps, x: np.ndarray, int32: bool) -> torch.Tensor:
    """``x`` as the backend's int64 tensor, or as int32 (what fused kernels hand to the next operation)."""
    t = ops.const(x)
    return t.to(torch.int32) if int32 else t


def _norm_params(rng: np.random.Generator, h: int) -> tuple[np.ndarray, np.ndarray, int]:
    gamma = rng.integers(-(1 << 27), 1 << 27, h) >> rng.integers(0, 20, h)
    gamma[rng.random(h) < 0.1] = 0
    beta = rng.integers(I32_MIN, I32_MAX, h) >> rng.integers(0, 32, h)
    eps = int(rng.choice([0, 1, 42950, 1 << 20, (1 << 32) - 1, int(rng.integers(0, 1 << 32))]))
    return gamma, beta, eps
