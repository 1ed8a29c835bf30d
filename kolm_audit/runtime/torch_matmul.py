"""Exact matrix products of the torch backends (``docs/runtime-spec.md``, "Fast backends").

Integer-valued operands go through the fastest hardware path that is provably exact:

* **linear** ``acc = q · Wᵀ`` with ``|q| <= 127``: the integer weight is split once, at load, into balanced
  base-256 digits ``W = Σ_l D_l · 256^l`` with ``D_l`` in ``[-128, 127]`` (one digit for int8 weights, three for
  int4/NVFP4), stacked along N as one operand ``[L·N, K]``. Which product runs is a per-layer
  :class:`~kolm_audit.runtime.gemm_plan.GemmPlan` (``torch._int_mm`` on CPU; on CUDA bf16 operands with fp32 output,
  ``torch.mm/bmm(..., out_dtype=torch.float32)``, over equal K-chunks whose partial sums stay below 2^24, all
  chunks in one batched call; or ``_int_mm``, fp32, fp64 when asked), chosen from the shapes and the device and
  refused when not proven exact. Chunks and digits are recombined in int64 (or by the fused epilogue).
  The backend records every product it runs (``gemm_paths``).
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

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime.gemm_plan import GemmCaps, GemmPlan, check_runtime, plan_gemm
from kolm_audit.runtime.reference import IntLinear

Tensor = torch.Tensor
_F32_EXACT = 1 << 24            # every integer of magnitude <= 2^24 is exact in fp32
_DIGIT_BASE_BITS = 8            # balanced base-256 digits in [-128, 127]
_DTYPES = {"int8": torch.int8, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class TorchLinear:
    """A linear layer prepared for a device: the stacked weight digits plus int64 ``mult``/``shift``/``bias``."""

    weight: Tensor                     # [L·N, K] in the plan's operand dtype; rows l·N..(l+1)·N are digit l
    plan: GemmPlan                     # the exact product that runs this layer
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

    @property
    def operand(self) -> torch.dtype:
        """The dtype the quantized activation must have for this layer's product."""
        return _DTYPES[self.plan.operand]


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


def _probe(fn: Any) -> bool:
    try:
        fn()
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


def _int_mm_exact(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` returns exact sums here, checked once on operands that expose a 16-bit shortcut.

    Measured: with oneDNN limited to an ISA without VNNI (``ONEDNN_MAX_CPU_ISA=AVX2``, or a CPU without it), the
    kernel sums pairs of products in saturating int16 (``vpmaddubsw``) and returns wrong integers. Full-range
    ±127 operands over K = 64 reach that saturation on every row; the result is compared with int64 arithmetic.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    gen = np.random.default_rng(20261201)
    a = gen.choice(np.array([-127, 127, 126, -126], dtype=np.int8), size=(32, 64))
    b = gen.choice(np.array([-127, 127, 125, -125], dtype=np.int8), size=(16, 64))
    want = a.astype(np.int64) @ b.astype(np.int64).T
    try:
        got = torch._int_mm(torch.from_numpy(a).to(device), torch.from_numpy(b).to(device).t())
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return bool(np.array_equal(got.cpu().numpy().astype(np.int64), want))


class ExactMatmul:
    """The exact matrix products of :class:`~kolm_audit.runtime.torch_backend.TorchOps` (a mixin: it reads
    ``device``, ``const``, the ``_bf16_bmm`` flag and the GEMM preference ``gemm`` / ``max_chunk`` of the backend).

    ``gemm_paths`` counts every linear product run, by :attr:`GemmPlan.description` (what the benchmark prints)."""

    device: torch.device
    _bf16_bmm: bool
    gemm: str
    max_chunk: int | None
    gemm_paths: Counter[str]
    _caps_found: GemmCaps | None

    def _int64(self, arr: Any) -> Tensor:
        """An array-like as an int64 tensor on the backend's device (``TorchOps.const`` for non-tensors)."""
        return torch.from_numpy(np.ascontiguousarray(np.asarray(arr).astype(np.int64))).to(self.device)

    def _f32_exact(self) -> bool:
        """fp32 GEMM is an exact integer carrier only at full fp32 precision (no TF32 / bf16 shortcuts)."""
        if torch.get_float32_matmul_precision() != "highest":
            return False
        return self.device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32

    def gemm_caps(self) -> GemmCaps:
        """What this device can run (probed once with tiny products; ``fp32_exact`` read now)."""
        found = getattr(self, "_caps_found", None)
        if found is None:
            dev, cuda = self.device, self.device.type == "cuda"
            a8 = torch.ones((32, 16), dtype=torch.int8, device=dev)
            b16 = torch.ones((16, 8), dtype=torch.bfloat16, device=dev)
            found = GemmCaps(
                device=dev.type, int_mm=_probe(lambda: torch._int_mm(a8, a8.t()[:, :8])) and _int_mm_exact(dev),
                bf16_fp32=cuda and _probe(lambda: torch.mm(b16.t(), b16, out_dtype=torch.float32))
                and _probe(lambda: torch.bmm(b16.view(2, 8, 8), b16.view(2, 8, 8), out_dtype=torch.float32)),
                fp32_exact=self._f32_exact(), int_mm_multiple=8 if cuda else 1, int_mm_min_rows=16 if cuda else 0)
            self._caps_found = found
        return GemmCaps(device=found.device, int_mm=found.int_mm, bf16_fp32=found.bf16_fp32,
                        fp32_exact=self._f32_exact(), int_mm_min_k=found.int_mm_min_k,
                        int_mm_multiple=found.int_mm_multiple, int_mm_min_rows=found.int_mm_min_rows)

    def prepare_linear(self, lin: IntLinear) -> TorchLinear:
        digits = weight_digits(np.asarray(lin.weight))            # [N, K] each
        n, k = (int(v) for v in lin.weight.shape)
        dmax = max(int(np.abs(d.astype(np.int64)).max(initial=0)) for d in digits)
        plan = plan_gemm(k=k, n=n, digits=len(digits), dmax=dmax, caps=self.gemm_caps(), prefer=self.gemm,
                         max_chunk=self.max_chunk)
        stacked = np.ascontiguousarray(np.concatenate(digits, axis=0))   # [L·N, K] int8
        weight = torch.from_numpy(stacked).to(self.device).to(_DTYPES[plan.operand])
        mult = np.asarray(lin.mult, dtype=np.int64)
        shift = np.where(mult == 0, 40, np.asarray(lin.shift, dtype=np.int64))   # 0 · anything = 0
        high = bool(shift.size == 0 or shift.min() >= 32 + 10)
        high0 = bool(shift.size == 0 or shift.min() >= 32)
        half_hi = np.left_shift(1, np.maximum(shift - 32, 0))
        wmax = int(np.abs(np.asarray(lin.weight)).max(initial=0))
        split16 = bool(k * 127 * wmax < 1 << 31 and (shift.size == 0 or (
            shift.min() >= 16 and shift.max() <= 61 and mult.min() >= 0 and mult.max() < 1 << 31)))
        return TorchLinear(weight=weight, plan=plan, mult=self._int64(mult), shift=self._int64(shift),
                           bias=self._int64(lin.bias), out_features=n, high=high, high0=high0,
                           half_hi=self._int64(half_hi), shift_hi=self._int64(shift - 31), split16=split16,
                           mult_hi=self._int64(mult >> 16), mult_lo=self._int64(mult & 0xFFFF),
                           half_s=self._int64(np.left_shift(1, np.clip(shift - 1, 0, 62))),
                           shift_16=self._int64(np.maximum(shift - 16, 0)))

    def partials(self, a: Tensor, lin: TorchLinear) -> Tensor:
        """The exact products of ``a`` [M, K] (values in [-127, 127]; rows beyond ``M`` may be padding) with every
        digit and K-chunk of ``lin``'s plan: ``[M', L·N]`` for one chunk, else ``[C, M', L·N]`` (chunk ``c`` in
        batch ``c``), ``M' >= M`` — int32 or floats holding exact integers. Records the plan run."""
        plan, w = lin.plan, lin.weight
        if plan.path == "fp32":
            check_runtime(plan, fp32_exact=self._f32_exact())
        a = a if a.dtype == w.dtype else a.to(w.dtype)
        if a.shape[0] < plan.pad_rows:                                    # CUDA _int_mm: more than 16 rows
            a = torch.cat([a, a.new_zeros((plan.pad_rows - a.shape[0], a.shape[1]))])
        self.gemm_paths[plan.description] += 1
        c, chunks = plan.chunk, plan.chunks
        if plan.path == "int_mm":
            if chunks == 1:
                return torch._int_mm(a, w.t())                              # int32, exact (bound < 2^31)
            return torch.stack([torch._int_mm(a[:, i * c:(i + 1) * c], w[:, i * c:(i + 1) * c].t())
                                for i in range(chunks)])
        kw = {"out_dtype": torch.float32} if plan.path == "bf16_fp32" else {}
        if chunks == 1:
            return torch.mm(a, w.t(), **kw)                                 # fp32 / fp64 integers, exact
        a3 = a.view(a.shape[0], chunks, c).transpose(0, 1)                  # [C, M, c] strided view
        w3 = w.view(w.shape[0], chunks, c).permute(1, 2, 0)                 # [C, c, L·N] strided view
        return torch.bmm(a3, w3, **kw)                                      # [C, M, L·N], one call

    def accumulate(self, a: Tensor, lin: TorchLinear) -> Tensor:
        """Exact ``a @ Wᵀ`` for ``a`` [M, K] in [-127, 127] → [M, N] int32 (one int32 product) or int64."""
        m, n, plan = a.shape[0], lin.out_features, lin.plan
        part = self.partials(a, lin)
        if plan.chunks > 1:
            part = part.to(torch.int64).sum(dim=0)                          # chunks: exact int64 sum
        part = part[:m]
        if plan.digits == 1:
            return part if part.dtype in (torch.int32, torch.int64) else part.to(torch.int64)
        acc = part[:, :n].to(torch.int64)
        for j in range(1, plan.digits):                                     # acc = Σ_l part_l · 256^l
            acc.add_(part[:, j * n:(j + 1) * n].to(torch.int64).bitwise_left_shift_(_DIGIT_BASE_BITS * j))
        return acc

    def int_matmul(self, q: Tensor, lin: TorchLinear, scale: Tensor | None = None) -> Tensor:
        """Exact ``q @ Wᵀ`` (times the per-row ``scale`` [..., 1] if given) for integer-valued ``q`` [..., K]
        (int64 or float64) with ``|q| <= 127`` → int64 [..., N]."""
        k = q.shape[-1]
        acc = self.accumulate(q.reshape(-1, k), lin).reshape(*q.shape[:-1], lin.out_features)
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
