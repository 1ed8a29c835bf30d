"""The torch CPU backend with fused kernels: :class:`FusedCpuOps`, same integers as the reference, fewer passes.

:class:`~kolm_audit.runtime.torch_backend.TorchOps` on CPU spends most of its time issuing many small int64
torch operations per layer. Here every element-wise step of an operation runs as one compiled kernel
(:mod:`kolm_audit.runtime.cpu_kernels`, numba) over the torch tensors' memory, and only the matrix products stay
in torch, on the same exact paths (``torch._int_mm`` for linear layers, fp32 for attention scores while every
partial sum is below 2^24, fp64 for the attention context). Rows are independent, so large inputs are split
between ``threads`` worker threads (the kernels release the GIL): the split never changes an output.

``get_ops("cpu")`` returns this backend when numba is installed (the ``torch`` extra), else plain
:class:`TorchOps`; both are tested on every conformance vector.

Example::

    >>> import numpy as np
    >>> from kolm_audit.runtime.reference import IntLinear, linear
    >>> rng = np.random.default_rng(0)
    >>> w = rng.integers(-127, 128, (6, 32))
    >>> lin = IntLinear(weight=w, wmax=int(abs(w).max()), mult=np.full(6, 1 << 30), shift=np.full(6, 40),
    ...                 bias=np.zeros(6, dtype=np.int64))
    >>> x = rng.integers(-(1 << 20), 1 << 20, (3, 32))
    >>> ops = FusedCpuOps()
    >>> ops.numpy(ops.linear(ops.const(x), ops.prepare_linear(lin))).tolist() == linear(x, lin).tolist()
    True
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime import cpu_kernels as kn
from kolm_audit.runtime.torch_backend import TorchLinear, TorchOps

Tensor = torch.Tensor
_PAR_MIN = 1 << 16              # elements below which one thread does the whole operation
_F32_EXACT = 1 << 24
_EMPTY = np.zeros(0, dtype=np.int64)


def _host(t: Tensor) -> np.ndarray:
    """The numpy view of a constant CPU tensor (weights' scales, tables), made once and kept on the tensor."""
    arr = getattr(t, "_kolm_np", None)
    if arr is None:
        arr = t.numpy()
        t._kolm_np = arr                # type: ignore[attr-defined]
    return arr


def numba_available() -> bool:
    """Whether numba can be imported (without importing it)."""
    return importlib.util.find_spec("numba") is not None


class FusedCpuOps(TorchOps):
    """Torch CPU tensors, exact torch matrix products, one numba kernel per element-wise operation."""

    MEMOS = (*TorchOps.MEMOS, "_kolm_k32")

    def __init__(self, *, threads: int | None = None) -> None:
        super().__init__(device="cpu", threads=threads)
        self._pool: ThreadPoolExecutor | None = None

    def _par(self, rows: int, work: int, fn: Callable[[int, int], None]) -> None:
        """``fn(lo, hi)`` over row ranges covering ``[0, rows)``, on up to ``threads`` threads for large work."""
        n = min(self.threads or 1, rows)
        if n <= 1 or work < _PAR_MIN:
            fn(0, rows)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="kolm-cpu")
        step = -(-rows // n)
        futures = [self._pool.submit(fn, lo, min(lo + step, rows)) for lo in range(step, rows, step)]
        fn(0, step)
        for f in futures:
            f.result()

    def _quantize(self, x2: Tensor) -> tuple[Tensor, np.ndarray, np.ndarray]:
        """Spec §3.3 rows of ``x2`` [R, K] → ``(q int8 tensor, m, e)`` (numpy int64 [R])."""
        rows, k = x2.shape
        q = torch.empty((rows, k), dtype=torch.int8)
        m, e = np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64)
        xn, qn = x2.numpy(), q.numpy()
        self._par(rows, rows * k, lambda lo, hi: kn.quantize_rows(xn[lo:hi], qn[lo:hi], m[lo:hi], e[lo:hi]))
        return q, m, e

    # ---- arrays -------------------------------------------------------------------------------------------
    def numpy(self, x: Any) -> np.ndarray:
        """Host int64 (kernel outputs are int32 tensors: every activation is saturated to the int32 range)."""
        out = super().numpy(x)
        return out.astype(np.int64) if out.dtype == np.int32 else out

    # ---- primitives ---------------------------------------------------------------------------------------
    def linear(self, x: Tensor, lin: TorchLinear) -> Tensor:
        k, n = x.shape[-1], lin.out_features
        q, m, e = self._quantize(x.reshape(-1, k))                     # [R,K] int8; [R] m, e
        acc = self.accumulate(q, lin).numpy()                           # [R,N] int32 | int64, exact
        out = torch.empty((q.shape[0], n), dtype=torch.int32)          # saturated: int32 holds it exactly
        on, mult, shift, bias = out.numpy(), _host(lin.mult), _host(lin.shift), _host(lin.bias)
        self._par(q.shape[0], q.shape[0] * n, lambda lo, hi: kn.linear_epilogue(
            acc[lo:hi], m[lo:hi], e[lo:hi], mult, shift, bias, on[lo:hi]))
        return out.reshape(*x.shape[:-1], n)                            # [...,N] int32 Q.16

    def _norm_fused(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor) -> Tensor:
        h = x.shape[-1]
        xn = x.reshape(-1, h).numpy()
        out = torch.empty((xn.shape[0], h), dtype=torch.int64)
        on, gn, tn = out.numpy(), _host(gamma), _host(table)
        bn = _EMPTY if beta is None else _host(beta)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.norm(xn[lo:hi], gn, bn, beta is not None, eps_q32, tn,
                                                               on[lo:hi]))
        return out.reshape(x.shape)

    def layer_norm(self, x: Tensor, gamma: Tensor, beta: Tensor, *, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        return self._norm_fused(x, gamma, beta, eps_q32, rsqrt_table)

    def rms_norm(self, x: Tensor, gamma: Tensor, *, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        return self._norm_fused(x, gamma, None, eps_q32, rsqrt_table)

    def _memo(self, x: Tensor, attr: str) -> tuple[Tensor, ...]:
        if attr != "_kolm_k32":
            return super()._memo(x, attr)
        found = getattr(x, attr, None)
        if found is None:                                              # keys: quantized rows as exact fp32
            b, h, t, d = x.shape
            q, m, e = self._quantize(x.reshape(-1, d))
            found = (q.reshape(b, h, t, d).float(), torch.from_numpy(m).reshape(b, h, t),
                     torch.from_numpy(e).reshape(b, h, t))
            setattr(x, attr, found)
        return found

    def attention(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, *, scale_mult: int, scale_shift: int,
                  exp_table: Tensor) -> Tensor:
        """Spec §5.2 with grouped-query heads (query head ``j`` uses key/value head ``j // g``); returns the
        context [B, Hq, Tq, D] as a view of [B, Tq, Hq·D] memory, so ``merge_heads`` copies nothing."""
        b, hq, tq, d = q.shape
        hk = k.shape[1]
        g = hq // hk
        if d * 127 * 127 >= _F32_EXACT or not self._f32_exact():       # the int64 torch path (exact anyway)
            return super().attention(q.long(), k.long(), v.long(), key_valid, scale_mult=scale_mult,
                                     scale_shift=scale_shift, exp_table=exp_table)
        qq, mq, eq = self._quantize(q.reshape(-1, d))                   # [B·Hq·Tq, D] int8; m, e
        kf, mk, ek = self._memo(k, "_kolm_k32")                         # [B,Hk,Tk,D] f32; [B,Hk,Tk]
        acc = torch.matmul(qq.reshape(b, hk, g * tq, d).float(), kf.transpose(-1, -2))   # exact, |.| < 2^22
        probs = torch.empty(acc.shape, dtype=torch.float64)             # [B,Hk,g·Tq,Tk] Q.16 integer values
        an, pn, tn = acc.numpy(), probs.numpy(), _host(exp_table)
        mq, eq = mq.reshape(b, hq, tq), eq.reshape(b, hq, tq)
        mkn, ekn, vn = mk.numpy(), ek.numpy(), key_valid.numpy()
        self._par(b, acc.numel(), lambda lo, hi: kn.attention_probs(
            an[lo:hi], mq[lo:hi], eq[lo:hi], mkn[lo:hi], ekn[lo:hi], vn[lo:hi], g, scale_mult, scale_shift, tn,
            pn[lo:hi]))
        ctx = torch.matmul(probs, self._memo(v, "_kolm_f64")[0])        # [B,Hk,g·Tq,D] f64, exact (< 2^48)
        out = torch.empty((b, tq, hq * d), dtype=torch.int32)
        cn, on = ctx.numpy(), out.numpy()
        self._par(b, ctx.numel(), lambda lo, hi: kn.context_out(cn[lo:hi], g, on[lo:hi]))
        return out.reshape(b, tq, hq, d).permute(0, 2, 1, 3)           # [B,Hq,Tq,D] int32 Q.16

    def rope(self, x: Tensor, positions: Any, cos_table: Tensor, sin_table: Tensor) -> Tensor:
        out = torch.empty(x.shape, dtype=torch.int32)
        xn, on, pn = x.numpy(), out.numpy(), self.const(positions).numpy()
        cn, sn = _host(cos_table), _host(sin_table)
        self._par(x.shape[0], x.numel(), lambda lo, hi: kn.rope(xn[lo:hi], pn[lo:hi], cn, sn, on[lo:hi]))
        return out

    def swiglu(self, gate: Tensor, up: Tensor, sigmoid_table: Tensor) -> Tensor:
        n = gate.shape[-1]
        gn, un = gate.reshape(-1, n).numpy(), up.reshape(-1, n).numpy()
        out = torch.empty(gn.shape, dtype=torch.int32)
        on, tn = out.numpy(), _host(sigmoid_table)
        self._par(gn.shape[0], gn.size, lambda lo, hi: kn.swiglu(gn[lo:hi], un[lo:hi], tn, on[lo:hi]))
        return out.reshape(gate.shape)

    def tanh(self, x: Tensor, tanh_table: Tensor) -> Tensor:
        return super().tanh(x.long(), tanh_table)                       # int64 torch path (the pooler only)

    def gelu(self, x: Tensor, cdf_table: Tensor) -> Tensor:
        n = x.shape[-1]
        xn = x.reshape(-1, n).numpy()
        out = torch.empty(xn.shape, dtype=torch.int32)
        on, tn = out.numpy(), _host(cdf_table)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.gelu(xn[lo:hi], tn, on[lo:hi]))
        return out.reshape(x.shape)
