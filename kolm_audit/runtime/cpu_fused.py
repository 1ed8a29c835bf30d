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

from kolm_audit.runtime import cpu_blocks as kb
from kolm_audit.runtime import cpu_kernels as kn
from kolm_audit.runtime.fused_ops import FusedOps
from kolm_audit.runtime.torch_matmul import TorchLinear

Tensor = torch.Tensor
_PAR_MIN = 1 << 16              # elements below which one thread does the whole operation
_Q8 = "_kolm_q8"                # memo on an output: its §3.3 rows (q int8 [R, K], m [R], e [R]) for the next linear
_MERGED = "_kolm_merged"        # memo on an attention output [B,H,T,D]: the same values as [B,T,H·D] (with _Q8)
_BLOCK_TQ = 8                   # attention with at most this many query rows per request runs as one kernel
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

    def __init__(self, *, threads: int | None = None, gemm: str = "auto", max_chunk: int | None = None) -> None:
        super().__init__(device="cpu", threads=threads, gemm=gemm, max_chunk=max_chunk)
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

    # ---- composite operations (cpu_blocks): fewer passes, the same integers ------------------------------------
    def _q8_out(self, rows: int, n: int) -> tuple[Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """An int32 output [rows, n] (tensor and its numpy view) and the numpy buffers of its §3.3 rows (q int8,
        m, e); numpy allocations cost a fraction of torch's at decoding sizes."""
        on = np.empty((rows, n), dtype=np.int32)
        return (torch.from_numpy(on), on, np.empty((rows, n), dtype=np.int8), np.empty(rows, dtype=np.int64),
                np.empty(rows, dtype=np.int64))

    @staticmethod
    def _keep_q8(out: Tensor, q: np.ndarray, m: np.ndarray, e: np.ndarray) -> Tensor:
        setattr(out, _Q8, (torch.from_numpy(q), m, e))
        return out

    def linear(self, x: Tensor, lin: TorchLinear, *, residual: Tensor | None = None) -> Tensor:
        """Spec §4.2 (+ the saturated residual add): the input's §3.3 rows come from its memo when the kernel that
        made ``x`` computed them (norms, GELU, SwiGLU, attention), else from one quantize pass."""
        k, n = x.shape[-1], lin.out_features
        memo = getattr(x, _Q8, None)
        if memo is not None:
            q, mn, en = memo                                            # [R,K] int8 tensor; [R] m, e (numpy)
        else:
            xn = x.reshape(-1, k).numpy()
            qn, mn, en = np.empty(xn.shape, np.int8), np.empty(xn.shape[0], np.int64), np.empty(xn.shape[0], np.int64)
            self._par(xn.shape[0], xn.size, lambda lo, hi: kn.quantize_rows(xn[lo:hi], qn[lo:hi], mn[lo:hi],
                                                                            en[lo:hi]))
            q = torch.from_numpy(qn)
        an = self.accumulate(q, lin).numpy()                            # [R,N] int32 | int64, exact
        on = np.empty(an.shape, dtype=np.int32)                         # [R,N] int32 Q.16
        mult, shift, bias = _host(lin.mult), _host(lin.shift), _host(lin.bias)
        if residual is None:
            self._par(an.shape[0], an.size, lambda lo, hi: kn.linear_epilogue(
                an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, on[lo:hi]))
        else:
            rn = residual.reshape(-1, n).numpy()
            self._par(an.shape[0], an.size, lambda lo, hi: kb.linear_epilogue_res(
                an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, rn[lo:hi], on[lo:hi]))
        return torch.from_numpy(on).reshape(*x.shape[:-1], n)

    def _norm_fused(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor) -> Tensor:
        h = x.shape[-1]
        xn = x.reshape(-1, h).numpy()
        out, on, qn, mn, en = self._q8_out(xn.shape[0], h)
        gn, tn, bn = _host(gamma), _host(table), _EMPTY if beta is None else _host(beta)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kb.norm_quant(
            xn[lo:hi], gn, bn, beta is not None, eps_q32, tn, on[lo:hi], qn[lo:hi], mn[lo:hi], en[lo:hi]))
        return self._keep_q8(out.reshape(x.shape), qn, mn, en)         # [...,H] int32 Q.16

    def gelu(self, x: Tensor, cdf_table: Tensor) -> Tensor:
        n = x.shape[-1]
        xn = x.reshape(-1, n).numpy()
        out, on, qn, mn, en = self._q8_out(xn.shape[0], n)
        tn = _host(cdf_table)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kb.gelu_quant(xn[lo:hi], tn, on[lo:hi], qn[lo:hi], mn[lo:hi],
                                                                     en[lo:hi]))
        return self._keep_q8(out.reshape(x.shape), qn, mn, en)         # [...,N] int32 Q.16

    def swiglu(self, gate: Tensor, up: Tensor, sigmoid_table: Tensor) -> Tensor:
        n = gate.shape[-1]
        gn, un = gate.reshape(-1, n).numpy(), up.reshape(-1, n).numpy()
        out, on, qn, mn, en = self._q8_out(gn.shape[0], n)
        tn = _host(sigmoid_table)
        self._par(gn.shape[0], gn.size, lambda lo, hi: kb.swiglu_quant(gn[lo:hi], un[lo:hi], tn, on[lo:hi], qn[lo:hi],
                                                                       mn[lo:hi], en[lo:hi]))
        return self._keep_q8(out.reshape(gate.shape), qn, mn, en)      # [...,I] int32 Q.16

    def segment_attention(self, qkv: Tensor, bounds: np.ndarray, *, heads: int, head_dim: int, scale_mult: int,
                          scale_shift: int, exp_table: Tensor) -> Tensor:
        """The whole §5.2 block of packed requests in one kernel
        (:func:`~kolm_audit.runtime.cpu_blocks.packed_attention`); requests are split between threads."""
        hid = heads * head_dim
        qn, bn, tn = qkv.numpy(), np.ascontiguousarray(bounds, dtype=np.int64), _host(exp_table)
        out, on, q8, mn, en = self._q8_out(qn.shape[0], hid)
        self._par(bn.size - 1, qn.shape[0] * hid * 4, lambda lo, hi: kb.packed_attention(
            qn, bn[lo:hi + 1], heads, head_dim, scale_mult, scale_shift, tn, on, q8, mn, en))
        return self._keep_q8(out, q8, mn, en)                           # [N,H] int32 Q.16

    def attention(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, *, scale_mult: int, scale_shift: int,
                  exp_table: Tensor, key_len: Tensor | None = None) -> Tensor:
        """Few query rows (decoding): the whole §5.2 block in one kernel
        (:func:`~kolm_audit.runtime.cpu_blocks.attention_block`, keys from the cache's quantization memo); more
        rows: the torch matrix products of :class:`FusedOps`."""
        b, hq, tq, d = q.shape
        if tq > _BLOCK_TQ:
            return super().attention(q, k, v, key_valid, scale_mult=scale_mult, scale_shift=scale_shift,
                                     exp_table=exp_table)
        kf, mk, ek = self._memo(k, "_kolm_k32")                         # [B,Hk,Tk,D] f32 in [-127,127]; [B,Hk,Tk]
        out, on, q8, mn, en = self._q8_out(b * tq, hq * d)
        qn, kfn, mkn, ekn, vn, valid = (t.numpy() for t in (q, kf, mk, ek, v, key_valid))
        o3, tn = on.reshape(b, tq, hq * d), _host(exp_table)
        self._par(b, b * hq * tq * k.shape[2] * d, lambda lo, hi: kb.attention_block(
            qn[lo:hi], kfn[lo:hi], mkn[lo:hi], ekn[lo:hi], vn[lo:hi], valid[lo:hi], hq // k.shape[1], scale_mult,
            scale_shift, tn, o3[lo:hi], q8[lo * tq:hi * tq], mn[lo * tq:hi * tq], en[lo * tq:hi * tq]))
        merged = self._keep_q8(out.reshape(b, tq, hq * d), q8, mn, en)  # [B,Tq,Hq·D] int32 Q.16
        ctx = merged.reshape(b, tq, hq, d).permute(0, 2, 1, 3)          # [B,Hq,Tq,D] view
        setattr(ctx, _MERGED, merged)
        return ctx

    def merge_heads(self, x: Tensor) -> Tensor:
        merged = getattr(x, _MERGED, None)
        return merged if merged is not None else super().merge_heads(x)

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
