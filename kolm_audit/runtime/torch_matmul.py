"""Exact matrix products of the torch backends (``docs/runtime-spec.md``, "Fast backends").

Integer-valued operands go through the fastest hardware path that is provably exact:

* **linear** ``acc = q · Wᵀ`` with ``|q| <= 127``: the integer weight is split once, at load, into balanced
  base-256 digits ``W = Σ_l D_l · 256^l`` with ``D_l`` in ``[-128, 127]`` (one digit for int8 weights, three for
  int4/NVFP4). Each ``q · D_lᵀ`` runs as ``torch._int_mm`` (int8 × int8 → int32) on CPU — every partial sum
  is at most ``K · 127 · 128 < 2^31`` for ``K <= 2^16`` — and on CUDA as a bf16 GEMM with fp32 output
  (``torch.mm(..., out_dtype=torch.float32)``) over K-chunks of 1024 (partial sums ``<= 1024·127·128 < 2^24``,
  exact in fp32); digits are recombined in int64.
* **attention scores** ``Σ_d qq·kq`` (int8-valued, ``|acc| <= D·127² < 2^22``): fp32 batched GEMM (CPU; CUDA
  bf16 operands with fp32 output when available), exact because every partial sum is below 2^24.

fp32 paths are used only while ``torch.get_float32_matmul_precision() == "highest"`` (and, on CUDA, TF32 is
off); otherwise the fp64 path is taken, which is exact for all of them. ``torch._int_mm`` is used only for
``K >= 8`` (torch 2.13 CPU returns wrong sums for ``K = 1``).

Example::

    >>> weight_digits(np.array([[300, -2]]))[1].tolist()         # 300 = 44 + 1·256
    [[1, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime.reference import IntLinear

Tensor = torch.Tensor
_CUDA_K_CHUNK = 1024            # 1024 · 127 · 128 < 2^24: bf16 GEMM partial sums exact in fp32
_CPU_K_CHUNK = 1 << 17          # 2^17 · 127 · 128 < 2^31: int8 GEMM partial sums exact in int32
_F32_EXACT = 1 << 24            # every integer of magnitude <= 2^24 is exact in fp32
_INT_MM_MIN_K = 8               # torch._int_mm (CPU, torch 2.13) returns wrong sums for K = 1: never used below 8
_DIGIT_BASE_BITS = 8            # balanced base-256 digits in [-128, 127]


@dataclass(frozen=True)
class TorchLinear:
    """A linear layer prepared for a device: weight digits ``[K, N]`` plus int64 ``mult``/``shift``/``bias``."""

    digits: tuple[Tensor, ...]         # int8 (CPU) or bf16 (CUDA) [N, K]; W = Σ_l digits[l] · 256^l
    mult: Tensor                       # int64 [N]
    shift: Tensor                      # int64 [N] (40 where mult == 0: the result is 0 for every shift)
    bias: Tensor                       # int64 [N] Q.16
    out_features: int
    high: bool                         # every shift - e >= 32 (shift >= 42, e <= 10): one requantize branch
    high0: bool                        # every shift >= 32: per-column constants serve rows with e == 0
    half_hi: Tensor                    # int64 [N] 2^(shift - 32): rounding term when e == 0
    shift_hi: Tensor                   # int64 [N] shift - 31
    split16: bool                      # K·127·wmax < 2^31 and 16 <= shift <= 61: the 16-bit split requantization
    mult_hi: Tensor                    # int64 [N] mult >> 16 (< 2^15)
    mult_lo: Tensor                    # int64 [N] mult & 0xFFFF
    half_s: Tensor                     # int64 [N] 2^(shift - 1)
    shift_16: Tensor                   # int64 [N] shift - 16


def weight_digits(w: np.ndarray) -> list[np.ndarray]:
    """Balanced base-256 digits of an integer matrix: ``w == Σ_l d_l · 256^l`` with every ``d_l`` in [-128, 127].

    >>> [d.tolist() for d in weight_digits(np.array([[127, -128, 300, -40000]]))]
    [[[127, -128, 44, -64]], [[0, 0, 1, 100]], [[0, 0, 0, -1]]]
    """
    rest = np.asarray(w, dtype=np.int64)
    out = []
    while True:
        d = ((rest + 128) & 255) - 128
        out.append(d.astype(np.int8))
        rest = (rest - d) >> _DIGIT_BASE_BITS
        if not rest.any():
            return out


class ExactMatmul:
    """The exact matrix products of :class:`~kolm_audit.runtime.torch_backend.TorchOps` (a mixin: it reads
    ``device``, ``const`` and the ``_bf16_mm`` / ``_bf16_bmm`` flags of the backend)."""

    device: torch.device
    _bf16_mm: bool
    _bf16_bmm: bool

    def _int64(self, arr: Any) -> Tensor:
        """An array-like as an int64 tensor on the backend's device (``TorchOps.const`` for non-tensors)."""
        return torch.from_numpy(np.ascontiguousarray(np.asarray(arr).astype(np.int64))).to(self.device)

    def _f32_exact(self) -> bool:
        """fp32 GEMM is an exact integer carrier only at full fp32 precision (no TF32 / bf16 shortcuts)."""
        if torch.get_float32_matmul_precision() != "highest":
            return False
        return self.device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32

    def _mm_digit(self, a: Tensor, d: Tensor) -> Tensor:
        """Exact ``a @ dᵀ`` for ``a`` [M, K] in [-127, 127] (int8 on CPU, bf16 on CUDA) and a digit [N, K]: int32,
        or fp32/fp64 holding integers (one K-chunk on CUDA), or int64 (several chunks)."""
        k = a.shape[1]
        cpu = self.device.type == "cpu"
        step = _CPU_K_CHUNK if cpu else _CUDA_K_CHUNK
        out: Tensor | None = None
        for k0 in range(0, k, step):
            ak, dk = (a, d.t()) if k <= step else (a[:, k0:k0 + step], d[:, k0:k0 + step].t())   # d is [N, K]
            if cpu and ak.shape[1] >= _INT_MM_MIN_K:
                part = torch._int_mm(ak, dk)                                 # int32, exact partial sums
            elif cpu:
                part = torch.mm(ak.double(), dk.double()).to(torch.int64)   # tiny K: exact in fp64
            else:
                part = self._mm_bf16(ak, dk)                                 # fp32 (or fp64), exact partial sums
            if k <= step:
                return part                                                  # int32, int64 or float, exact
            part = part.to(torch.int64)
            out = part if out is None else out.add_(part)
        assert out is not None
        return out

    def _mm_bf16(self, a: Tensor, b: Tensor) -> Tensor:
        if self._bf16_mm:
            try:
                return torch.mm(a, b, out_dtype=torch.float32)
            except (RuntimeError, TypeError):
                self._bf16_mm = False
        if self._f32_exact():
            return torch.mm(a.float(), b.float())
        return torch.mm(a.double(), b.double())

    def prepare_linear(self, lin: IntLinear) -> TorchLinear:
        digits = weight_digits(np.asarray(lin.weight))            # [N, K] each (used transposed)
        dtype = torch.int8 if self.device.type == "cpu" else torch.bfloat16
        dev = tuple(torch.from_numpy(np.ascontiguousarray(d)).to(self.device).to(dtype) for d in digits)
        mult = np.asarray(lin.mult, dtype=np.int64)
        shift = np.where(mult == 0, 40, np.asarray(lin.shift, dtype=np.int64))   # 0 · anything = 0
        high = bool(shift.size == 0 or shift.min() >= 32 + 10)
        high0 = bool(shift.size == 0 or shift.min() >= 32)
        half_hi = np.left_shift(1, np.maximum(shift - 32, 0))
        k, wmax = int(lin.weight.shape[1]), int(np.abs(np.asarray(lin.weight)).max(initial=0))
        split16 = bool(k * 127 * wmax < 1 << 31 and (shift.size == 0 or (
            shift.min() >= 16 and shift.max() <= 61 and mult.min() >= 0 and mult.max() < 1 << 31)))
        return TorchLinear(digits=dev, mult=self._int64(mult), shift=self._int64(shift), bias=self._int64(lin.bias),
                           out_features=int(lin.weight.shape[0]), high=high, high0=high0, half_hi=self._int64(half_hi),
                           shift_hi=self._int64(shift - 31), split16=split16, mult_hi=self._int64(mult >> 16),
                           mult_lo=self._int64(mult & 0xFFFF),
                           half_s=self._int64(np.left_shift(1, np.clip(shift - 1, 0, 62))),
                           shift_16=self._int64(np.maximum(shift - 16, 0)))

    def accumulate(self, a: Tensor, lin: TorchLinear) -> Tensor:
        """Exact ``a @ Wᵀ`` for ``a`` [M, K] in [-127, 127] (int8 on CPU, bf16 on CUDA) → [M, N] int32, int64, or
        (CUDA, one digit and one K-chunk) a float tensor holding the exact integers."""
        parts = [self._mm_digit(a, d) for d in lin.digits]
        acc = parts[0] if len(parts) == 1 else parts[0].to(torch.int64)
        for j, part in enumerate(parts[1:], start=1):
            acc.add_(part.to(torch.int64).bitwise_left_shift_(_DIGIT_BASE_BITS * j))
        return acc

    def int_matmul(self, q: Tensor, lin: TorchLinear, scale: Tensor | None = None) -> Tensor:
        """Exact ``q @ Wᵀ`` (times the per-row ``scale`` [..., 1] if given) for integer-valued ``q`` [..., K]
        (int64 or float64) with ``|q| <= 127`` → int64 [..., N]."""
        k = q.shape[-1]
        a = q.reshape(-1, k).to(torch.int8 if self.device.type == "cpu" else torch.bfloat16)
        acc = self.accumulate(a, lin).reshape(*q.shape[:-1], lin.out_features)
        if scale is not None:                                           # int64 acc · scale, in place
            return (acc.to(torch.int64) if acc.dtype != torch.int64 else acc.clone()).mul_(scale)
        return acc.to(torch.int64)

    def _bmm_small(self, a: Tensor, b: Tensor) -> Tensor:
        """Exact ``a @ b`` (batched) for int8-valued operands (|.| <= 127): scores of attention."""
        if a.shape[-1] * 127 * 127 >= _F32_EXACT:
            return torch.matmul(a.double(), b.double()).to(torch.int64)     # exact below 2^53
        if self._bf16_bmm:
            try:
                shape = a.shape[:-1] + b.shape[-1:]
                a3 = a.reshape(-1, *a.shape[-2:]).to(torch.bfloat16)
                b3 = b.expand(*a.shape[:-2], *b.shape[-2:]).reshape(-1, *b.shape[-2:]).to(torch.bfloat16)
                return torch.bmm(a3, b3, out_dtype=torch.float32).reshape(shape).to(torch.int64)
            except (RuntimeError, TypeError):
                self._bf16_bmm = False
        if self._f32_exact():
            return torch.matmul(a.float(), b.float()).to(torch.int64)
        return torch.matmul(a.double(), b.double()).to(torch.int64)
