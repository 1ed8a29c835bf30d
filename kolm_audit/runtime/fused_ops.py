"""Fused backends of ``kolm-int/1``: torch matrix products + one compiled kernel per element-wise operation.

:class:`FusedOps` is the glue shared by the fused CPU backend (:class:`~kolm_audit.runtime.cpu_fused.FusedCpuOps`,
numba kernels) and the fused CUDA backend (:class:`~kolm_audit.runtime.triton_fused.FusedTritonOps`, Triton
kernels). It keeps the exact torch matrix products of :class:`~kolm_audit.runtime.torch_backend.TorchOps`
(``docs/runtime-spec.md``, "Fast backends") and hands every element-wise step to a kernel hook (``_k_*``) that a
subclass implements: quantize-rows (§3.3), the linear epilogue (§3.2, §4.2), norms (§5.3), attention scores and
softmax (§5.2), the context's rounding, RoPE, SwiGLU and GELU. Every hook writes into an output allocated here,
so the data flow — and the integers — are the same on every device.

Activations that leave a kernel are int32 tensors (every one is saturated to the int32 range, spec §3.1); the
residual stream and norm outputs stay int64 (torch promotes int32 + int64 to int64), and :meth:`FusedOps.numpy`
widens what goes to the host.

Example (the CPU subclass)::

    >>> import numpy as np
    >>> from kolm_audit.runtime.cpu_fused import FusedCpuOps
    >>> from kolm_audit.runtime.reference import IntLinear, linear
    >>> rng = np.random.default_rng(1)
    >>> w = rng.integers(-127, 128, (4, 16))
    >>> lin = IntLinear(weight=w, wmax=int(abs(w).max()), mult=np.full(4, 1 << 30), shift=np.full(4, 36),
    ...                 bias=np.arange(4))
    >>> x = rng.integers(-(1 << 24), 1 << 24, (2, 16))
    >>> ops = FusedCpuOps()
    >>> ops.numpy(ops.linear(ops.const(x), ops.prepare_linear(lin))).tolist() == linear(x, lin).tolist()
    True
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime.torch_backend import TorchOps
from kolm_audit.runtime.torch_matmul import _F32_EXACT, TorchLinear

Tensor = torch.Tensor


class FusedOps(TorchOps, metaclass=ABCMeta):
    """Torch tensors and exact torch matrix products; element-wise steps through the subclass's ``_k_*`` hooks."""

    MEMOS = (*TorchOps.MEMOS, "_kolm_k32")

    def __init__(self, *, device: str, threads: int | None = None, gemm: str = "auto",
                 max_chunk: int | None = None) -> None:
        super().__init__(device=device, threads=threads, gemm=gemm, max_chunk=max_chunk)

    # ---- kernel hooks (outputs are allocated by the caller; see the subclasses) -------------------------------
    @abstractmethod
    def _k_quantize(self, x: Tensor, q: Tensor, m: Tensor, e: Tensor) -> None:
        """See the subclasses."""

    @abstractmethod
    def _k_epilogue(self, acc: Tensor, m: Tensor, e: Tensor, lin: TorchLinear, out: Tensor) -> None:
        """See the subclasses."""

    @abstractmethod
    def _k_norm(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor,
                out: Tensor) -> None:
        """See the subclasses."""

    @abstractmethod
    def _k_probs(self, acc: Tensor, mq: Tensor, eq: Tensor, mk: Tensor, ek: Tensor, valid: Tensor, group: int,
                 scale_mult: int, scale_shift: int, table: Tensor, probs: Tensor) -> None:
        """See the subclasses."""

    @abstractmethod
    def _k_context(self, ctx: Tensor, group: int, out: Tensor) -> None:
        """See the subclasses."""

    @abstractmethod
    def _k_rope(self, x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor, out: Tensor) -> None:
        """See the subclasses."""

    @abstractmethod
    def _k_swiglu(self, gate: Tensor, up: Tensor, table: Tensor, out: Tensor) -> None:
        """See the subclasses."""

    @abstractmethod
    def _k_gelu(self, x: Tensor, table: Tensor, out: Tensor) -> None:
        """See the subclasses."""

    # ---- helpers ------------------------------------------------------------------------------------------
    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _quantize(self, x2: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Spec §3.3 rows of ``x2`` [R, K] → ``(q [R, K] of dtype, m [R], e [R])`` (``q`` in [-127, 127])."""
        rows = x2.shape[0]
        q = self._empty(tuple(x2.shape), dtype)
        m, e = self._empty((rows,), torch.int64), self._empty((rows,), torch.int64)
        self._k_quantize(x2, q, m, e)
        return q, m, e

    def numpy(self, x: Any) -> np.ndarray:
        """Host int64 (kernel outputs are int32 tensors: every activation is saturated to the int32 range)."""
        out = super().numpy(x)
        return out.astype(np.int64) if out.dtype == np.int32 else out

    def _memo(self, x: Tensor, attr: str) -> tuple[Tensor, ...]:
        if attr != "_kolm_k32":
            return super()._memo(x, attr)
        found = getattr(x, attr, None)
        if found is None:                                              # keys: quantized rows as exact fp32
            b, h, t, d = x.shape
            q, m, e = self._quantize(x.reshape(-1, d), torch.float32)
            found = (q.reshape(b, h, t, d), m.reshape(b, h, t), e.reshape(b, h, t))
            setattr(x, attr, found)
        return found

    # ---- primitives ---------------------------------------------------------------------------------------
    def linear(self, x: Tensor, lin: TorchLinear, *, residual: Tensor | None = None) -> Tensor:
        k, n = x.shape[-1], lin.out_features
        q, m, e = self._quantize(x.reshape(-1, k), lin.operand)        # [R,K] in [-127,127]; [R] m, e
        acc = self.accumulate(q, lin)                                   # [R,N] exact (int32 | int64)
        out = self._empty((q.shape[0], n), torch.int32)                 # saturated: int32 holds it exactly
        self._k_epilogue(acc, m, e, lin, out)
        out = out.reshape(*x.shape[:-1], n)                             # [...,N] int32 Q.16
        if residual is None:
            return out
        return torch.clamp(residual + out, -(1 << 31), (1 << 31) - 1).to(torch.int32)   # saturate(x + y)

    def _norm_fused(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor) -> Tensor:
        h = x.shape[-1]
        x2 = x.reshape(-1, h)
        out = self._empty(tuple(x2.shape), torch.int64)
        self._k_norm(x2, gamma, beta, eps_q32, table, out)
        return out.reshape(x.shape)                                     # [...,H] int64 Q.16

    def layer_norm(self, x: Tensor, gamma: Tensor, beta: Tensor, *, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        return self._norm_fused(x, gamma, beta, eps_q32, rsqrt_table)

    def rms_norm(self, x: Tensor, gamma: Tensor, *, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        return self._norm_fused(x, gamma, None, eps_q32, rsqrt_table)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, *, scale_mult: int, scale_shift: int,
                  exp_table: Tensor, key_len: Tensor | None = None) -> Tensor:
        """Spec §5.2 with grouped-query heads (query head ``j`` uses key/value head ``j // g``); returns the
        context [B, Hq, Tq, D] as a view of [B, Tq, Hq·D] memory, so ``merge_heads`` copies nothing."""
        b, hq, tq, d = q.shape
        hk = k.shape[1]
        g = hq // hk
        if d * 127 * 127 >= _F32_EXACT or not self._f32_exact():       # the int64 torch path (exact anyway)
            return super().attention(q.long(), k.long(), v.long(), key_valid, scale_mult=scale_mult,
                                     scale_shift=scale_shift, exp_table=exp_table)
        qq, mq, eq = self._quantize(q.reshape(-1, d), torch.float32)   # [B·Hq·Tq, D] in [-127,127]; m, e
        kf, mk, ek = self._memo(k, "_kolm_k32")                         # [B,Hk,Tk,D] f32; [B,Hk,Tk]
        acc = torch.matmul(qq.reshape(b, hk, g * tq, d), kf.transpose(-1, -2))   # f32 exact, |.| < 2^22
        probs = self._empty(tuple(acc.shape), torch.float64)           # [B,Hk,g·Tq,Tk] Q.16 integer values
        self._k_probs(acc, mq.reshape(b, hq, tq), eq.reshape(b, hq, tq), mk, ek, key_valid, g, scale_mult,
                      scale_shift, exp_table, probs)
        ctx = torch.matmul(probs, self._memo(v, "_kolm_f64")[0])        # [B,Hk,g·Tq,D] f64, exact (< 2^48)
        out = self._empty((b, tq, hq * d), torch.int32)
        self._k_context(ctx, g, out)
        return out.reshape(b, tq, hq, d).permute(0, 2, 1, 3)           # [B,Hq,Tq,D] int32 Q.16

    def rope(self, x: Tensor, positions: Any, cos_table: Tensor, sin_table: Tensor) -> Tensor:
        out = self._empty(tuple(x.shape), torch.int32)                  # [B,n,T,D] int32 Q.16
        self._k_rope(x, self.const(positions), cos_table, sin_table, out)
        return out

    def swiglu(self, gate: Tensor, up: Tensor, sigmoid_table: Tensor) -> Tensor:
        n = gate.shape[-1]
        g2 = gate.reshape(-1, n)
        out = self._empty(tuple(g2.shape), torch.int32)
        self._k_swiglu(g2, up.reshape(-1, n), sigmoid_table, out)
        return out.reshape(gate.shape)                                  # [...,I] int32 Q.16

    def tanh(self, x: Tensor, tanh_table: Tensor) -> Tensor:
        return super().tanh(x.long(), tanh_table)                       # int64 torch path (the pooler only)

    def gelu(self, x: Tensor, cdf_table: Tensor) -> Tensor:
        n = x.shape[-1]
        x2 = x.reshape(-1, n)
        out = self._empty(tuple(x2.shape), torch.int32)
        self._k_gelu(x2, cdf_table, out)
        return out.reshape(x.shape)                                     # [...,N] int32 Q.16
