"""The torch CPU backend with fused kernels: :class:`FusedCpuOps`, same integers as the reference, fewer passes.

:class:`~kolm_audit.runtime.torch_backend.TorchOps` on CPU spends most of its time issuing many small int64
torch operations per layer. Here every element-wise step of an operation runs as one compiled kernel
(:mod:`kolm_audit.runtime.cpu_kernels`, numba) over the torch tensors' memory, and only the matrix products stay
in torch, on the same exact paths (``torch._int_mm`` for linear layers, fp32 for attention scores while every
partial sum is below 2^24, fp64 for the attention context); the glue is
:class:`~kolm_audit.runtime.fused_ops.FusedOps`. Rows are independent, so large inputs are split between
``threads`` worker threads (the kernels release the GIL): the split never changes an output.

``get_ops("cpu")`` returns this backend when numba is installed (the ``torch`` extra), else plain
:class:`TorchOps`; both are tested on every conformance vector.

Example::

    >>> import numpy as np
    >>> from kolm_audit.runtime.llama_ops import swiglu
    >>> from kolm_audit.compile.tables import sigmoid_table
    >>> rng = np.random.default_rng(0)
    >>> gate, up = rng.integers(-(1 << 20), 1 << 20, (2, 3, 8))
    >>> ops, table = FusedCpuOps(), sigmoid_table()
    >>> got = ops.swiglu(ops.const(gate), ops.const(up), ops.const(table))
    >>> ops.numpy(got).tolist() == swiglu(gate, up, table).tolist()
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from kolm_audit.runtime import cpu_kernels as kn
from kolm_audit.runtime.fused_ops import FusedOps
from kolm_audit.runtime.torch_matmul import TorchLinear

Tensor = torch.Tensor
_PAR_MIN = 1 << 16              # elements below which one thread does the whole operation
_EMPTY = np.zeros(0, dtype=np.int64)


def _host(t: Tensor) -> np.ndarray:
    """The numpy view of a constant CPU tensor (weights' scales, tables), made once and kept on the tensor."""
    arr = getattr(t, "_kolm_np", None)
    if arr is None:
        arr = t.numpy()
        t._kolm_np = arr                # type: ignore[attr-defined]
    return arr


class FusedCpuOps(FusedOps):
    """Torch CPU tensors, exact torch matrix products, one numba kernel per element-wise operation."""

    def __init__(self, *, threads: int | None = None) -> None:
        super().__init__(device="cpu", threads=threads)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0                   # a forked child gets a pool of its own (its parent's threads are gone)

    def _par(self, rows: int, work: int, fn: Callable[[int, int], None]) -> None:
        """``fn(lo, hi)`` over row ranges covering ``[0, rows)``, on up to ``threads`` threads for large work."""
        n = min(self.threads or 1, rows)
        if n <= 1 or work < _PAR_MIN:
            fn(0, rows)
            return
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="kolm-cpu")
            self._pool_pid = os.getpid()
        step = -(-rows // n)
        futures = [self._pool.submit(fn, lo, min(lo + step, rows)) for lo in range(step, rows, step)]
        fn(0, step)
        for f in futures:
            f.result()

    # ---- kernel hooks -------------------------------------------------------------------------------------
    def _k_quantize(self, x: Tensor, q: Tensor, m: Tensor, e: Tensor) -> None:
        xn, qn, mn, en = x.numpy(), q.numpy(), m.numpy(), e.numpy()
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.quantize_rows(xn[lo:hi], qn[lo:hi], mn[lo:hi], en[lo:hi]))

    def _k_epilogue(self, acc: Tensor, m: Tensor, e: Tensor, lin: TorchLinear, out: Tensor) -> None:
        an, mn, en, on = acc.numpy(), m.numpy(), e.numpy(), out.numpy()
        mult, shift, bias = _host(lin.mult), _host(lin.shift), _host(lin.bias)
        self._par(an.shape[0], an.size, lambda lo, hi: kn.linear_epilogue(
            an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, on[lo:hi]))

    def _k_norm(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor,
                out: Tensor) -> None:
        xn, on, gn, tn = x.numpy(), out.numpy(), _host(gamma), _host(table)
        bn = _EMPTY if beta is None else _host(beta)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.norm(xn[lo:hi], gn, bn, beta is not None, eps_q32, tn,
                                                               on[lo:hi]))

    def _k_probs(self, acc: Tensor, mq: Tensor, eq: Tensor, mk: Tensor, ek: Tensor, valid: Tensor, group: int,
                 scale_mult: int, scale_shift: int, table: Tensor, probs: Tensor) -> None:
        an, pn, tn = acc.numpy(), probs.numpy(), _host(table)
        mqn, eqn, mkn, ekn, vn = mq.numpy(), eq.numpy(), mk.numpy(), ek.numpy(), valid.numpy()
        self._par(an.shape[0], an.size, lambda lo, hi: kn.attention_probs(
            an[lo:hi], mqn[lo:hi], eqn[lo:hi], mkn[lo:hi], ekn[lo:hi], vn[lo:hi], group, scale_mult, scale_shift,
            tn, pn[lo:hi]))

    def _k_context(self, ctx: Tensor, group: int, out: Tensor) -> None:
        cn, on = ctx.numpy(), out.numpy()
        self._par(cn.shape[0], cn.size, lambda lo, hi: kn.context_out(cn[lo:hi], group, on[lo:hi]))

    def _k_rope(self, x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor, out: Tensor) -> None:
        xn, on, pn, cn, sn = x.numpy(), out.numpy(), pos.numpy(), _host(cos), _host(sin)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.rope(xn[lo:hi], pn[lo:hi], cn, sn, on[lo:hi]))

    def _k_swiglu(self, gate: Tensor, up: Tensor, table: Tensor, out: Tensor) -> None:
        gn, un, on, tn = gate.numpy(), up.numpy(), out.numpy(), _host(table)
        self._par(gn.shape[0], gn.size, lambda lo, hi: kn.swiglu(gn[lo:hi], un[lo:hi], tn, on[lo:hi]))

    def _k_gelu(self, x: Tensor, table: Tensor, out: Tensor) -> None:
        xn, on, tn = x.numpy(), out.numpy(), _host(table)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.gelu(xn[lo:hi], tn, on[lo:hi]))
