"""The CUDA backend with fused Triton kernels: :class:`FusedTritonOps`, same integers as the reference.

:class:`~kolm_audit.runtime.torch_backend.TorchOps` on CUDA issues a few hundred small int64 kernels per layer and
synchronizes with the host to choose branches. Here a layer is one exact GEMM per linear layer (the plan of
:mod:`~kolm_audit.runtime.gemm_plan`: bf16 operands with fp32 output in equal K-chunks, all chunks in one batched
call) plus composite Triton kernels (:mod:`~kolm_audit.runtime.triton_blocks`), and nothing synchronizes with the
host:

* a linear layer's epilogue also runs the activation (SwiGLU of gate|up, GELU), the residual add, the next
  LayerNorm/RMSNorm and the §3.3 quantization of its result, which the next linear layer takes from a memo on the
  output tensor instead of a quantize launch;
* q|k|v: epilogue + RoPE on q and k + the §3.3 rows of every q and k head in one launch (``qkv_rope``);
* attention: one launch (scores, softmax, ``Σ P·V``, rounding) reading keys from their int8 memo; the static KV
  cache (:mod:`~kolm_audit.runtime.decode`) is written by one launch per layer at a slot held in device memory.

A Llama decoder layer is 11 launches (4 GEMMs, 7 Triton kernels) where it was 36.5; counted on CPU through
:mod:`~kolm_audit.runtime.launches` (every Triton launch goes through :meth:`FusedTritonOps._run`). Decoding uses
static KV buffers and CUDA graphs by default (``decode``). Under ``TRITON_INTERPRET=1`` the backend also runs on CPU
tensors (``device="cpu"``; the GEMMs then use ``torch._int_mm``), which is how the unit tests check its integers
without a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton

from kolm_audit.errors import InputError
from kolm_audit.runtime import torch_fixedpoint as tfp
from kolm_audit.runtime import triton_blocks as kb
from kolm_audit.runtime import triton_kernels as kt
from kolm_audit.runtime.fused_ops import FusedOps
from kolm_audit.runtime.gemm_plan import plan_gemm
from kolm_audit.runtime.launches import triton_launch
from kolm_audit.runtime.torch_matmul import _DTYPES, TorchLinear

Tensor = torch.Tensor
_COLS = 1024                    # column block of the element-wise kernels over wide rows
_QX = "_kolm_qx"                # memo on an activation [..., K]: its §3.3 rows (q [R', K] operand dtype, m [R], e [R])
_Q8H = "_kolm_q8h"              # memo on a q-heads view [B, H, T, D]: per-head §3.3 rows (q8 int8, m, e [B, H, T])
_K8 = "_kolm_k8"                # the same for keys (carried along a KV cache: one of MEMOS)
_NO_ACT, _SWIGLU, _GELU = 0, 1, 2


def _unit(t: Tensor) -> Tensor:
    """``t`` with a unit last stride (the kernels index rows by their stride and columns contiguously)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _block(n: int) -> int:
    return triton.next_power_of_2(max(n, 1))


class FusedTritonOps(FusedOps):
    """Torch tensors on CUDA, exact torch GEMMs, composite Triton kernels; ``decode`` = graphs on CUDA."""

    MEMOS = (*FusedOps.MEMOS, _K8)
    graph_safe = True           # no operation synchronizes with the host: a decode step can be a CUDA graph

    def __init__(self, *, device: str = "cuda", threads: int | None = None, gemm: str = "auto",
                 max_chunk: int | None = None) -> None:
        super().__init__(device=device, threads=threads, gemm=gemm, max_chunk=max_chunk)
        self.decode = "graphs" if device == "cuda" else "static"
        try:                                     # the operand a typical layer's plan takes: what producers write
            plan = plan_gemm(k=1024, n=1024, digits=1, dmax=127, caps=self.gemm_caps(), prefer=gemm,
                             max_chunk=max_chunk)
            self._memo_dtype, self._pad_rows = _DTYPES[plan.operand], plan.pad_rows
        except InputError:                       # refused for every layer too: prepare_linear will say why
            self._memo_dtype, self._pad_rows = torch.bfloat16, 0
        self._segments: tuple[bytes, Tensor, Tensor] | None = None

    # ---- launching ----------------------------------------------------------------------------------------
    @staticmethod
    def _run(name: str, kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        """Launch ``kernel[grid](*args)`` (the one launch point: counted by an active LaunchCounter)."""
        with triton_launch(name):
            kernel[grid](*args, **kwargs)

    def _rows_buffer(self, rows: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Buffers for §3.3 rows of ``rows`` activations: q [max(rows, pad), K] (memo dtype), m, e [rows]."""
        return (self._empty((max(rows, self._pad_rows), k), self._memo_dtype), self._empty((rows,), torch.int64),
                self._empty((rows,), torch.int64))

    def _input_rows(self, x: Tensor, lin: TorchLinear) -> tuple[Tensor, Tensor, Tensor]:
        """The §3.3 rows of ``x`` [..., K]: its memo when the kernel that made it wrote one, else a quantize launch."""
        memo = getattr(x, _QX, None)
        if memo is not None:
            return memo
        x2 = _unit(x.reshape(-1, x.shape[-1]))
        q, m, e = self._rows_buffer(x2.shape[0], x2.shape[1])
        self._k_quantize(x2, q, m, e)
        return q, m, e

    @staticmethod
    def _partials3(part: Tensor) -> tuple[Tensor, int, int]:
        """GEMM partials as (tensor, chunk stride, row stride): [R', L·N] is one chunk."""
        if part.dim() == 2:
            return part, 0, part.stride(0)
        return part, part.stride(0), part.stride(1)

    # ---- linear layers --------------------------------------------------------------------------------------
    def _linear_block(self, x: Tensor, lin: TorchLinear, *, act: int = _NO_ACT, act_table: Tensor | None = None,
                      residual: Tensor | None = None, norm: tuple[Tensor, Tensor | None, int, Tensor] | None = None,
                      quant: bool = True) -> tuple[Tensor, Tensor]:
        """``(out, h)`` of one linear layer and what follows it (see :func:`triton_blocks.linear_block`); ``h`` is
        the norm of ``out`` (``out`` itself without ``norm``) and carries the §3.3 memo of its rows."""
        lead, rows = x.shape[:-1], int(np.prod(x.shape[:-1], dtype=np.int64))
        n_out = lin.out_features // 2 if act == _SWIGLU else lin.out_features
        out = self._empty((rows, n_out), torch.int32)
        h = self._empty((rows, n_out), torch.int32) if norm is not None else out
        if rows:
            q, m, e = self._input_rows(x, lin)
            part, sp_c, sp_r = self._partials3(self.partials(q, lin))     # exact GEMM (recorded plan)
            qo, mo, eo = self._rows_buffer(rows, n_out) if quant else (out, m, e)
            res = _unit(residual.reshape(rows, n_out)) if residual is not None else out
            gamma, beta, eps, table = norm if norm is not None else (lin.mult, None, 0, lin.mult)
            tab = act_table if act_table is not None else lin.mult
            self._run("linear_block", kb.linear_block, (rows,), part, sp_c, sp_r, lin.plan.chunks,
                      lin.plan.digits, lin.out_features, m, e, lin.mult, lin.shift, lin.bias, res, res.stride(0), out,
                      h, gamma, gamma if beta is None else beta, eps, table, table.shape[0], tab, tab.shape[0], qo,
                      qo.stride(0), mo, eo, n_out, ACT=act, RES=residual is not None,
                      NORM=0 if norm is None else (2 if beta is not None else 1), QUANT=quant,
                      BLOCK=kb.grid_blocks(n_out))
            if quant:
                setattr(h, _QX, (qo, mo, eo))
        out, hv = out.reshape(*lead, n_out), h.reshape(*lead, n_out)
        if rows and quant:
            setattr(hv, _QX, getattr(h, _QX))
        return out, hv

    def linear(self, x: Tensor, lin: TorchLinear, *, residual: Tensor | None = None) -> Tensor:
        return self._linear_block(x, lin, residual=residual, quant=False)[0]

    def linear_norm(self, x: Tensor, lin: TorchLinear, *, residual: Tensor, gamma: Tensor, beta: Tensor | None,
                    eps_q32: int, rsqrt_table: Tensor) -> tuple[Tensor, Tensor]:
        return self._linear_block(x, lin, residual=residual, norm=(gamma, beta, eps_q32, rsqrt_table))

    def linear_swiglu(self, x: Tensor, lin: TorchLinear, sigmoid_table: Tensor) -> Tensor:
        return self._linear_block(x, lin, act=_SWIGLU, act_table=sigmoid_table)[1]

    def linear_gelu(self, x: Tensor, lin: TorchLinear, cdf_table: Tensor) -> Tensor:
        return self._linear_block(x, lin, act=_GELU, act_table=cdf_table)[1]

    def _norm_fused(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor) -> Tensor:
        """Spec §5.3 in one launch that also writes the §3.3 rows of the result (the next linear layer's input)."""
        hdim = x.shape[-1]
        x2 = _unit(x.reshape(-1, hdim))
        rows = x2.shape[0]
        out = self._empty((rows, hdim), torch.int32)
        if rows:
            q, m, e = self._rows_buffer(rows, hdim)
            self._run("norm_quant", kb.norm_quant, (rows,), x2, x2.stride(0), gamma, gamma if beta is None else beta,
                      out, q, q.stride(0), m, e, hdim, eps_q32, table, table.shape[0], CENTER=beta is not None,
                      QUANT=True, BLOCK=_block(hdim))
            setattr(out, _QX, (q, m, e))
        view = out.reshape(x.shape)                                     # [...,H] int32 Q.16
        if rows:
            setattr(view, _QX, getattr(out, _QX))
        return view

    def embedding(self, emb: tuple[Tensor, ...], ids: Any, *, add: Tensor | None = None,
                  add_rows: np.ndarray | None = None) -> Tensor:
        """Spec §3.1 rows of the int8 embedding table in one launch (int64 Q.16); with ``add`` [P, H] and
        ``add_rows`` (one per id): ``saturate(rows + add[add_rows])`` (BERT's position and token-type rows)."""
        w, mult, shift = emb
        idx = self.const(ids).contiguous()
        rows, hdim = idx.numel(), w.shape[1]
        out = self._empty((rows, hdim), torch.int64)
        if rows:
            blk = min(_block(hdim), _COLS)
            self._run("embedding", kb.embedding, (rows, triton.cdiv(hdim, blk)), idx, w.contiguous(), mult, shift,
                      out, hdim, BLOCK=blk)
        out = out.reshape(*idx.shape, hdim)
        return out if add is None else tfp.saturate_int32(out + add[self.const(add_rows)])

    # ---- attention --------------------------------------------------------------------------------------------
    def _head_rows(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """§3.3 rows of every head row of ``x`` [B, H, T, D]: its memo, else one launch (kept on ``x``)."""
        for attr in (_Q8H, _K8):
            found = getattr(x, attr, None)
            if found is not None:
                return found
        b, nh, t, d = x.shape
        xu = _unit(x)
        q8 = self._empty((b, nh, t, d), torch.int8)
        m, e = self._empty((b, nh, t), torch.int64), self._empty((b, nh, t), torch.int64)
        if x.numel():
            self._run("quantize_heads", kb.quantize_heads, (b * nh * t,), xu, xu.stride(0), xu.stride(1),
                      xu.stride(2), q8, m, e, nh, t, d, BLOCK=_block(d))
        setattr(x, _K8, (q8, m, e))
        return q8, m, e

    def _memo(self, x: Tensor, attr: str) -> tuple[Tensor, ...]:
        if attr == _K8:
            return self._head_rows(x)
        return super()._memo(x, attr)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, *, scale_mult: int, scale_shift: int,
                  exp_table: Tensor, key_len: Tensor | None = None) -> Tensor:
        """Spec §5.2 in one launch per call (``key_len``: keys from there on are masked and skipped). Returns the
        context [B, Hq, Tq, D] as a view of [B, Tq, Hq·D] memory (``merge_heads`` copies nothing)."""
        b, hq, tq, d = q.shape
        q8, mq, eq = self._head_rows(q)
        k8, mk, ek = self._head_rows(k)
        hk, tk = k.shape[1], k.shape[2]
        v = _unit(v)
        valid = _unit(key_valid).expand(b, hq, tq, tk)                  # broadcast axes: stride 0
        out = self._empty((b, tq, hq * d), torch.int32)
        if out.numel():
            self._launch_attention(q8, mq, eq, k8, mk, ek, v, valid, None, key_len, out, (out.stride(0),
                                   out.stride(1), d), hq=hq, tq=tq, tk=tk, d=d, group=hq // hk,
                                   scale=(scale_mult, scale_shift), table=exp_table)
        return out.reshape(b, tq, hq, d).permute(0, 2, 1, 3)           # [B,Hq,Tq,D] int32 Q.16

    def _launch_attention(self, q8: Tensor, mq: Tensor, eq: Tensor, k8: Tensor, mk: Tensor, ek: Tensor, v: Tensor,
                          valid: Tensor | None, segments: tuple[Tensor, Tensor] | None, key_len: Tensor | None,
                          out: Tensor, so: tuple[int, int, int], *, hq: int, tq: int, tk: int, d: int, group: int,
                          scale: tuple[int, int], table: Tensor) -> None:
        sv = valid.stride() if valid is not None else (0, 0, 0, 1)
        lo, hi = segments if segments is not None else (mq, mq)
        blk_d = _block(d)
        self._run("attention", kb.attention, (q8.shape[0] * hq * tq,), q8, q8.stride(0), q8.stride(1), q8.stride(2),
                  mq, eq, mq.stride(0), mq.stride(1), mq.stride(2), k8, k8.stride(0), k8.stride(1), k8.stride(2),
                  mk, ek, mk.stride(0), mk.stride(1), mk.stride(2), v, v.stride(0), v.stride(1), v.stride(2),
                  valid if valid is not None else mq, sv[0], sv[1], sv[2], lo, hi,
                  key_len if key_len is not None else mq, out, so[0], so[1], so[2], hq, tq, tk, d, group, scale[0],
                  scale[1], table, table.shape[0], MASK=valid is not None, SEGMENTS=segments is not None,
                  HAS_LEN=key_len is not None, BLOCK_T=max(16, 2048 // blk_d), BLOCK_D=blk_d)

    def segment_attention(self, qkv: Tensor, bounds: np.ndarray, *, heads: int, head_dim: int, scale_mult: int,
                          scale_shift: int, exp_table: Tensor) -> Tensor:
        """Spec §5.2 for requests packed without padding: one launch for the §3.3 rows of the q and k heads, one for
        attention (each query row attends to its own request's rows)."""
        n, hid, d = qkv.shape[0], heads * head_dim, head_dim
        out = self._empty((n, hid), torch.int32)
        if not n:
            return out
        qkv = _unit(qkv)
        x = qkv[:, :2 * hid].reshape(n, 2 * heads, 1, d)                # [N,2nh,1,D] q heads then k heads
        q8 = self._empty((n, 2 * heads, 1, d), torch.int8)
        m, e = self._empty((n, 2 * heads, 1), torch.int64), self._empty((n, 2 * heads, 1), torch.int64)
        self._run("quantize_heads", kb.quantize_heads, (n * 2 * heads,), x, x.stride(0), x.stride(1), x.stride(2),
                  q8, m, e, 2 * heads, 1, d, BLOCK=_block(d))
        key = np.asarray(bounds, dtype=np.int64).tobytes()
        if self._segments is None or self._segments[0] != key:        # the same requests in every layer
            lens = np.diff(bounds)
            self._segments = (key, self.const(np.repeat(bounds[:-1], lens)), self.const(np.repeat(bounds[1:], lens)))
        lo, hi = self._segments[1], self._segments[2]
        # as [B=1, H, T=N, D]: query/key row t of head h at t·(row stride) + h·(head stride)
        q8v, mv, ev = q8[:, :heads, 0].unsqueeze(0), m[:, :heads, 0].unsqueeze(0), e[:, :heads, 0].unsqueeze(0)
        k8v, mkv, ekv = q8[:, heads:, 0].unsqueeze(0), m[:, heads:, 0].unsqueeze(0), e[:, heads:, 0].unsqueeze(0)
        vv = qkv[:, 2 * hid:].reshape(n, heads, d).unsqueeze(0)
        self._launch_attention(q8v.transpose(1, 2), mv.transpose(1, 2), ev.transpose(1, 2), k8v.transpose(1, 2),
                               mkv.transpose(1, 2), ekv.transpose(1, 2), vv.transpose(1, 2), None, (lo, hi), None,
                               out, (0, hid, d), hq=heads, tq=n, tk=n, d=d, group=1,
                               scale=(scale_mult, scale_shift), table=exp_table)
        return out

    # ---- Llama: q|k|v with RoPE, static KV cache --------------------------------------------------------------
    def qkv_rope(self, x: Tensor, lin: TorchLinear, positions: Any, cos_table: Tensor, sin_table: Tensor, *,
                 heads: int, kv_heads: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
        b, t = x.shape[0], x.shape[1]
        rows, d, nq, nk = b * t, head_dim, heads * head_dim, kv_heads * head_dim
        out = self._empty((rows, nq + 2 * nk), torch.int32)
        q8, k8 = self._empty((rows, heads, d), torch.int8), self._empty((rows, kv_heads, d), torch.int8)
        qm, qe = self._empty((rows, heads), torch.int64), self._empty((rows, heads), torch.int64)
        km, ke = self._empty((rows, kv_heads), torch.int64), self._empty((rows, kv_heads), torch.int64)
        if rows:
            q, m, e = self._input_rows(x, lin)
            part, sp_c, sp_r = self._partials3(self.partials(q, lin))
            pos = self.const(positions).contiguous()
            self._run("qkv_rope", kb.qkv_rope, (rows, heads + 2 * kv_heads), part, sp_c, sp_r, lin.plan.chunks,
                      lin.plan.digits, lin.out_features, m, e, lin.mult, lin.shift, lin.bias, pos, cos_table,
                      sin_table, out, q8, qm, qe, k8, km, ke, heads, kv_heads, d // 2, ROPE=True,
                      BLOCK=_block(d // 2))
        qkv = out.reshape(b, t, nq + 2 * nk)
        qh = self.heads(qkv[..., :nq], heads, d)                        # [B,nh,T,D] int32 Q.16 (views)
        kh = self.heads(qkv[..., nq:nq + nk], kv_heads, d)
        vh = self.heads(qkv[..., nq + nk:], kv_heads, d)
        setattr(qh, _Q8H, (q8.reshape(b, t, heads, d).permute(0, 2, 1, 3), qm.reshape(b, t, heads).permute(0, 2, 1),
                           qe.reshape(b, t, heads).permute(0, 2, 1)))
        setattr(kh, _K8, (k8.reshape(b, t, kv_heads, d).permute(0, 2, 1, 3),
                          km.reshape(b, t, kv_heads).permute(0, 2, 1), ke.reshape(b, t, kv_heads).permute(0, 2, 1)))
        return qh, kh, vh

    def kv_buffer(self, like: Tensor, capacity: int) -> Tensor:
        return torch.zeros((*like.shape[:2], capacity, *like.shape[3:]), dtype=like.dtype, device=self.device)

    def kv_write(self, kbuf: Tensor, vbuf: Tensor, k: Tensor, v: Tensor, slot: Tensor) -> None:
        """New keys and values (with the keys' §3.3 memo) into the static buffers at ``slot``: one launch."""
        memo = getattr(kbuf, _K8, None)
        if memo is None:                                                # first write: the buffer's key memo
            b, nkv, cap, d = kbuf.shape
            memo = (torch.zeros((b, nkv, cap, d), dtype=torch.int8, device=self.device),
                    torch.zeros((b, nkv, cap), dtype=torch.int64, device=self.device),
                    torch.zeros((b, nkv, cap), dtype=torch.int64, device=self.device))
            setattr(kbuf, _K8, memo)
        q8, qm, qe = self._head_rows(k)
        b, nkv, t, d = k.shape
        if k.numel():
            k, v = _unit(k), _unit(v)
            self._run("kv_write", kb.kv_write, (b * nkv * t,), k, k.stride(0), k.stride(1), k.stride(2), v,
                      v.stride(0), v.stride(1), v.stride(2), q8, q8.stride(0), q8.stride(1), q8.stride(2), qm,
                      qm.stride(0), qm.stride(1), qm.stride(2), qe, kbuf, vbuf, memo[0], memo[1], memo[2], slot, nkv,
                      t, kbuf.shape[2], d, BLOCK=_block(d))

    # ---- kernel hooks of FusedOps (element-wise operations on their own) ---------------------------------------
    def _k_quantize(self, x: Tensor, q: Tensor, m: Tensor, e: Tensor) -> None:
        x = _unit(x)
        if x.shape[0]:
            self._run("quantize_rows", kt.quantize_rows, (x.shape[0],), x, x.stride(0), q, m, e, x.shape[1],
                      BLOCK=_block(x.shape[1]))

    def _k_epilogue(self, acc: Tensor, m: Tensor, e: Tensor, lin: TorchLinear, out: Tensor) -> None:
        acc = acc.contiguous()
        rows, n = acc.shape
        if rows:
            self._run("linear_block", kb.linear_block, (rows,), acc, 0, acc.stride(0), 1, 1, n, m, e, lin.mult,
                      lin.shift, lin.bias, out, 0, out, out, lin.mult, lin.mult, 0, lin.mult, 1, lin.mult, 1, out, 0,
                      m, e, n, ACT=_NO_ACT, RES=False, NORM=0, QUANT=False, BLOCK=kb.grid_blocks(n))

    def _k_norm(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor,
                out: Tensor) -> None:
        x = _unit(x)
        if x.shape[0]:
            self._run("norm_quant", kb.norm_quant, (x.shape[0],), x, x.stride(0), gamma,
                      gamma if beta is None else beta, out, out, 0, out, out, x.shape[1], eps_q32, table,
                      table.shape[0], CENTER=beta is not None, QUANT=False, BLOCK=_block(x.shape[1]))

    def _k_probs(self, acc: Tensor, mq: Tensor, eq: Tensor, mk: Tensor, ek: Tensor, valid: Tensor, group: int,
                 scale_mult: int, scale_shift: int, table: Tensor, probs: Tensor) -> None:
        b, hk, gtq, tk = acc.shape
        tq = gtq // group
        mk, ek = mk.contiguous(), ek.contiguous()                       # [B,Hk,Tk] (a cache memo is a view)
        full = _unit(valid).expand(b, hk * group, tq, tk)             # broadcast axes: stride 0
        sv = full.stride()
        if acc.numel():
            self._run("attention_probs", kt.attention_probs, (b * hk * gtq,), acc.contiguous(), mq.contiguous(),
                      eq.contiguous(), mk, ek, full, sv[0], sv[1], sv[2], probs, hk, tq, tk, group, scale_mult,
                      scale_shift, table, table.shape[0], BLOCK=_block(tk))

    def _k_context(self, ctx: Tensor, group: int, out: Tensor) -> None:
        b, hk, gtq, d = ctx.shape
        if ctx.numel():
            self._run("context_out", kt.context_out, (b * hk * gtq,), ctx.contiguous(), out, hk, gtq // group, d,
                      group, BLOCK=_block(d))

    def _k_rope(self, x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor, out: Tensor) -> None:
        x = _unit(x)
        b, nh, t, d = x.shape
        if x.numel():
            self._run("rope", kt.rope, (b * nh * t,), x, x.stride(0), x.stride(1), x.stride(2), pos.contiguous(), cos,
                      sin, out, nh, t, d // 2, BLOCK=_block(d // 2))

    def _k_swiglu(self, gate: Tensor, up: Tensor, table: Tensor, out: Tensor) -> None:
        gate, up = _unit(gate), _unit(up)
        rows, n = gate.shape
        blk = min(_block(n), _COLS)
        if rows:
            self._run("swiglu", kt.swiglu, (rows, triton.cdiv(n, blk)), gate, gate.stride(0), up, up.stride(0), out,
                      n, table, table.shape[0], BLOCK=blk)

    def _k_gelu(self, x: Tensor, table: Tensor, out: Tensor) -> None:
        x = _unit(x)
        rows, n = x.shape
        blk = min(_block(n), _COLS)
        if rows:
            self._run("gelu", kt.gelu, (rows, triton.cdiv(n, blk)), x, x.stride(0), out, n, table, table.shape[0],
                      BLOCK=blk)

