"""The CUDA backend with fused Triton kernels: :class:`FusedTritonOps`, same integers as the reference.

:class:`~kolm_audit.runtime.torch_backend.TorchOps` on CUDA issues a few hundred small int64 kernels per layer
and synchronizes with the host to choose branches; this backend runs every element-wise step as one Triton
kernel (:mod:`kolm_audit.runtime.triton_kernels`, no host synchronization) and keeps the exact torch matrix
products (bf16 operands with fp32 output for linear layers, fp32 for attention scores, fp64 for the context);
the glue is :class:`~kolm_audit.runtime.fused_ops.FusedOps`. ``get_ops("cuda")`` uses it when Triton is
installed. Under ``TRITON_INTERPRET=1`` it also runs on CPU tensors (``device="cpu"``), which is how the unit
tests check its integers without a GPU.
"""

from __future__ import annotations

import torch
import triton

from kolm_audit.runtime import triton_kernels as kt
from kolm_audit.runtime.fused_ops import FusedOps
from kolm_audit.runtime.torch_matmul import TorchLinear

Tensor = torch.Tensor
_COLS = 1024                    # column block of the element-wise kernels over wide rows


def _unit(t: Tensor) -> Tensor:
    """``t`` with a unit last stride (the kernels index rows by their stride and columns contiguously)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _block(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


class FusedTritonOps(FusedOps):
    """Torch tensors on CUDA, exact torch matrix products, one Triton kernel per element-wise operation."""

    def __init__(self, *, device: str = "cuda", threads: int | None = None) -> None:
        super().__init__(device=device, threads=threads)

    def _k_quantize(self, x: Tensor, q: Tensor, m: Tensor, e: Tensor) -> None:
        x = _unit(x)
        if x.shape[0]:
            kt.quantize_rows[(x.shape[0],)](x, x.stride(0), q, m, e, x.shape[1], BLOCK=_block(x.shape[1]))

    def _k_epilogue(self, acc: Tensor, m: Tensor, e: Tensor, lin: TorchLinear, out: Tensor) -> None:
        acc = acc.contiguous()
        rows, n = acc.shape
        blk = min(_block(n), _COLS)
        if rows:
            kt.linear_epilogue[(rows, triton.cdiv(n, blk))](acc, m, e, lin.mult, lin.shift, lin.bias, out, n,
                                                            BLOCK=blk)

    def _k_norm(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor,
                out: Tensor) -> None:
        x = _unit(x)
        if x.shape[0]:
            kt.norm[(x.shape[0],)](x, x.stride(0), gamma, gamma if beta is None else beta, out, x.shape[1], eps_q32,
                                   table, table.shape[0], CENTER=beta is not None, BLOCK=_block(x.shape[1]))

    def _k_probs(self, acc: Tensor, mq: Tensor, eq: Tensor, mk: Tensor, ek: Tensor, valid: Tensor, group: int,
                 scale_mult: int, scale_shift: int, table: Tensor, probs: Tensor) -> None:
        b, hk, gtq, tk = acc.shape
        tq = gtq // group
        mk, ek = mk.contiguous(), ek.contiguous()                       # [B,Hk,Tk] (a cache memo is a view)
        full = _unit(valid).expand(b, hk * group, tq, tk)             # broadcast axes: stride 0
        sv = full.stride()
        if acc.numel():
            kt.attention_probs[(b * hk * gtq,)](acc.contiguous(), mq.contiguous(), eq.contiguous(), mk, ek, full,
                                                sv[0], sv[1], sv[2], probs, hk, tq, tk, group, scale_mult,
                                                scale_shift, table, table.shape[0], BLOCK=_block(tk))

    def _k_context(self, ctx: Tensor, group: int, out: Tensor) -> None:
        b, hk, gtq, d = ctx.shape
        if ctx.numel():
            kt.context_out[(b * hk * gtq,)](ctx.contiguous(), out, hk, gtq // group, d, group, BLOCK=_block(d))

    def _k_rope(self, x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor, out: Tensor) -> None:
        x = _unit(x)
        b, nh, t, d = x.shape
        if x.numel():
            kt.rope[(b * nh * t,)](x, x.stride(0), x.stride(1), x.stride(2), pos.contiguous(), cos, sin, out, nh, t,
                                   d // 2, BLOCK=_block(d // 2))

    def _k_swiglu(self, gate: Tensor, up: Tensor, table: Tensor, out: Tensor) -> None:
        gate, up = _unit(gate), _unit(up)
        rows, n = gate.shape
        blk = min(_block(n), _COLS)
        if rows:
            kt.swiglu[(rows, triton.cdiv(n, blk))](gate, gate.stride(0), up, up.stride(0), out, n, table,
                                                   table.shape[0], BLOCK=blk)

    def _k_gelu(self, x: Tensor, table: Tensor, out: Tensor) -> None:
        x = _unit(x)
        rows, n = x.shape
        blk = min(_block(n), _COLS)
        if rows:
            kt.gelu[(rows, triton.cdiv(n, blk))](x, x.stride(0), out, n, table, table.shape[0], BLOCK=blk)
