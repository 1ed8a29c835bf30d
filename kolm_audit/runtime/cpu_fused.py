"""The torch CPU backend with fused kernels: :class:`FusedCpuOps`, same integers as the reference, fewer passes.

:class:`~kolm_audit.runtime.torch_backend.TorchOps` on CPU spends most of its time issuing many small int64
torch operations per layer. Here the element-wise work runs as compiled kernels (numba:
:mod:`~kolm_audit.runtime.cpu_kernels` one per operation, :mod:`~kolm_audit.runtime.cpu_blocks` several per pass,
:mod:`~kolm_audit.runtime.cpu_attention` the attention blocks) over the tensors' memory; the linear layers' matrix
products of at most 64 rows run in :mod:`~kolm_audit.runtime.cpu_gemv` (4 without AVX-512 VNNI), larger ones
stay in torch (``torch._int_mm``, exact; the glue of the remaining primitives is
:class:`~kolm_audit.runtime.fused_ops.FusedOps`). The composite operations of the model forwards
(:class:`~kolm_audit.runtime.composed.ComposedOps`: ``linear_norm``, ``linear_gelu``, ``linear_swiglu``,
``qkv_rope``) run as one kernel after the product, and every kernel that feeds a linear layer also hands it
the §3.3 quantization of its rows (a memo on the output), so no quantize pass remains. At most 64 rows (4
without the packed tiles), a whole BERT forward (:meth:`FusedCpuOps.encode_forward`) and a whole Llama decoding step
(:meth:`FusedCpuOps.decode_forward`; a generation's steps through :meth:`FusedCpuOps.decoder`) run as one kernel
each. Rows are independent, so
large inputs are split between ``threads`` worker threads (the kernels release the GIL), and a one-kernel forward
of a single sentence or prompt is run by the threads together, each computing its part
(:mod:`~kolm_audit.runtime.host_threads`, :mod:`~kolm_audit.runtime.cpu_sync`): no split changes an output.

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

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime import cpu_attention as ka
from kolm_audit.runtime import cpu_blocks as kb
from kolm_audit.runtime import cpu_decode as kd
from kolm_audit.runtime import cpu_encode as ke
from kolm_audit.runtime import cpu_gemv as kg
from kolm_audit.runtime import cpu_kernels as kn
from kolm_audit.runtime import cpu_sync as ks
from kolm_audit.runtime.fused_ops import FusedOps
from kolm_audit.runtime.host_crew import EncodeCrew
from kolm_audit.runtime.host_decoder import BUNDLE, KQ8, CpuDecoder, KVBundle, step_buffers
from kolm_audit.runtime.host_operands import encode_operands, gemv_operand, host, step_operands, table
from kolm_audit.runtime.host_threads import Workers
from kolm_audit.runtime.torch_matmul import TorchLinear

Tensor = torch.Tensor
_Q8 = "_kolm_q8"                # memo on an output: its §3.3 rows (q int8 [R, K], m [R], e [R]) for the next linear
_MERGED = "_kolm_merged"        # memo on an attention output [B,H,T,D]: the same values as [B,T,H·D] (with _Q8)
_BLOCK_TQ = 8                   # attention with at most this many query rows per request runs as one kernel
_ROW_COST = 256                 # a BERT row's work in attention-row units (1-thread MiniLM: ~120 + 0.45·n µs a row)
_GEMM_ROWS = 64                 # products of 5 to this many rows run in cpu_gemv's packed tiles, not torch
# products, and Llama decoding steps as one kernel (cpu_decode), of at most this many rows run inside numba
_KERNEL_ROWS = _GEMM_ROWS if kg.GEMM else kg.FEW_ROWS
_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY2 = np.zeros((0, 0), dtype=np.int64)


_IN_KERNEL = "int8, partial sums < 2^31"


def _decode_path(layers: int) -> str:
    """The ``gemm_paths`` entry of a one-kernel Llama step: its 4 products a layer and the LM head."""
    return f"cpu_decode one kernel: {4 * layers + 1} products in cpu_gemv ({_IN_KERNEL})"


def _row_groups(bounds: np.ndarray, cap: int) -> list[tuple[int, int]]:
    """Consecutive requests (``bounds`` [B+1], each at most ``cap`` rows) in groups of at most ``cap`` packed rows:
    ``(first, end)`` request ranges, in order.

    >>> _row_groups(np.array([0, 40, 65, 70, 134]), 64)
    [(0, 1), (1, 3), (3, 4)]
    """
    groups, first = [], 0
    for end in range(1, bounds.size):                          # the group holds requests first … end - 1
        if bounds[end] - bounds[first] > cap:                 # request end - 1 does not fit: it starts the next one
            groups.append((first, end - 1))
            first = end - 1
    groups.append((first, bounds.size - 1))
    return groups


def _balanced_runs(bounds: np.ndarray, cap: int, parts: int) -> list[list[tuple[int, int]]]:
    """Consecutive requests (``bounds`` [B+1]) cut at request boundaries into at most ``parts`` runs of about equal
    work (each cut at the boundary nearest its share; a request of ``n`` rows costs ``n·(n + _ROW_COST)``: attention
    grows with the length), each run in :func:`_row_groups` of at most ``cap`` rows: one run per thread. Groups dealt
    out by count left a batch of 32 sentences sorted by length (503 rows, 10 groups) 283 short rows on one thread and
    220 long ones on the other: 35.0 | 28.6 ms of one thread's work. Below, groups of 60, 60, 30 rows would go
    120 | 30; runs go 60 | 90 (works 17,160 | 24,540).

    >>> bounds = np.array([0, 30, 60, 90, 100, 110, 120, 130, 140, 150])
    >>> _row_groups(bounds, 64), _balanced_runs(bounds, 64, 2)
    ([(0, 2), (2, 6), (6, 9)], [[(0, 2)], [(2, 6), (6, 9)]])
    """
    lens = np.diff(bounds)
    cost = np.concatenate([[0], np.cumsum(lens * (lens + _ROW_COST))])   # [B+1] work before each request
    b = lens.size
    cuts = [0]
    for j in range(1, parts):
        target = cost[-1] * j / parts
        i = int(np.searchsorted(cost, target))                    # cost[i - 1] < target <= cost[i]
        if i > 0 and target - cost[i - 1] < cost[min(i, b)] - target:
            i -= 1
        if cuts[-1] < i < b:
            cuts.append(i)
    cuts.append(b)
    return [[(first + lo, end + lo) for first, end in _row_groups(bounds[lo:hi + 1] - bounds[lo], cap)]
            for lo, hi in pairwise(cuts)]


class FusedCpuOps(FusedOps):
    """Torch CPU tensors, exact torch matrix products, numba kernels for everything element-wise."""

    MEMOS = (*FusedOps.MEMOS, KQ8)

    def __init__(self, *, threads: int | None = None, gemm: str = "auto", max_chunk: int | None = None) -> None:
        super().__init__(device="cpu", threads=threads, gemm=gemm, max_chunk=max_chunk)
        self._workers = Workers(self.threads or 1)
        self._par = self._workers.par
        self._operand_memo: dict[Callable[..., tuple | None], tuple] = {}
        self._encode_crew: EncodeCrew | None = None                     # one-group BERT forwards split in parts
        self._facts_memo: tuple | None = None                           # encoder operands' row work, path, consts

    # ---- helpers -------------------------------------------------------------------------------------------
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

    def _accumulate(self, x: Tensor, lin: TorchLinear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The exact ``Σ_k q·W`` of §4.2 for the rows of ``x`` [..., K] → (acc [R, N] int32 | int64, m [R], e [R]):
        the §3.3 rows come from the memo of the kernel that made ``x`` (norms, GELU, SwiGLU, attention), else from
        one quantize pass."""
        k = x.shape[-1]
        memo = getattr(x, _Q8, None)
        if memo is not None:
            q, mn, en = memo                                            # [R,K] int8 tensor; [R] m, e (numpy)
        else:
            xn = x.reshape(-1, k).numpy()
            qn, mn, en = np.empty(xn.shape, np.int8), np.empty(xn.shape[0], np.int64), np.empty(xn.shape[0], np.int64)
            self._par(xn.shape[0], xn.size, lambda lo, hi: kn.quantize_rows(xn[lo:hi], qn[lo:hi], mn[lo:hi],
                                                                            en[lo:hi]))
            q = torch.from_numpy(qn)
        rows = q.shape[0]
        operand = gemv_operand(lin) if rows <= _KERNEL_ROWS or (kg.AMX and k % kg.K_BLOCK == 0) else None
        if operand is not None:                                         # no call into torch
            w, wsum, _, _, _, wp, psum = operand
            qn, acc = q.numpy(), np.empty((rows, lin.out_features), dtype=np.int32)
            kind = "tiles" if kg.GEMM and rows > kg.FEW_ROWS else "rows"
            self.gemm_paths[f"cpu_gemv {kind} K={k}, N={w.shape[0]} ({_IN_KERNEL})"] += 1
            self._par(rows, rows * w.size if rows > kg.FEW_ROWS else 0, lambda lo, hi: kg.matmul_rows(
                qn[lo:hi], w, wsum, wp, psum, acc[lo:hi]))              # few rows: one thread
            return acc, mn, en                                          # [R,N] int32, exact
        return self.accumulate(q, lin).numpy(), mn, en                  # [R,N] int32 | int64, exact (GEMM plan)

    @staticmethod
    def _scales(lin: TorchLinear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return host(lin.mult), host(lin.shift), host(lin.bias)

    # ---- linear layers and their composites (cpu_blocks) --------------------------------------------------------
    def linear(self, x: Tensor, lin: TorchLinear, *, residual: Tensor | None = None) -> Tensor:
        """Spec §4.2 (+ the saturated residual add)."""
        n = lin.out_features
        an, mn, en = self._accumulate(x, lin)                           # [R,N] exact; [R] m, e
        on = np.empty(an.shape, dtype=np.int32)                         # [R,N] int32 Q.16
        mult, shift, bias = self._scales(lin)
        if residual is None:
            self._par(an.shape[0], an.size, lambda lo, hi: kn.linear_epilogue(
                an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, on[lo:hi]))
        else:
            rn = residual.reshape(-1, n).numpy()
            self._par(an.shape[0], an.size, lambda lo, hi: kb.linear_epilogue_res(
                an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, rn[lo:hi], on[lo:hi]))
        return torch.from_numpy(on).reshape(*x.shape[:-1], n)

    def linear_norm(self, x: Tensor, lin: TorchLinear, *, residual: Tensor, gamma: Tensor, beta: Tensor | None,
                    eps_q32: int, rsqrt_table: Tensor) -> tuple[Tensor, Tensor]:
        """``(s, norm(s))``, ``s = saturate(residual + linear(x))``, in one pass after the product
        (:func:`~kolm_audit.runtime.cpu_blocks.epilogue_norm_quant`)."""
        n = lin.out_features
        an, mn, en = self._accumulate(x, lin)                           # [R,H] exact; [R] m, e
        rn = residual.reshape(-1, n).numpy()                            # [R,H] Q.16
        sn = np.empty(an.shape, dtype=np.int32)                         # [R,H] int32 Q.16 residual sum
        out, on, qn, qm, qe = self._q8_out(an.shape[0], n)              # [R,H] int32 Q.16 norm + §3.3 rows
        mult, shift, bias = self._scales(lin)
        gn, tn, bn = host(gamma), host(rsqrt_table), _EMPTY if beta is None else host(beta)
        self._par(an.shape[0], an.size * 4, lambda lo, hi: kb.epilogue_norm_quant(
            an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, rn[lo:hi], gn, bn, beta is not None, eps_q32, tn,
            sn[lo:hi], on[lo:hi], qn[lo:hi], qm[lo:hi], qe[lo:hi]))
        lead = x.shape[:-1]
        return torch.from_numpy(sn).reshape(*lead, n), self._keep_q8(out.reshape(*lead, n), qn, qm, qe)

    def linear_gelu(self, x: Tensor, lin: TorchLinear, cdf_table: Tensor) -> Tensor:
        """``gelu(linear(x))`` in one pass after the product
        (:func:`~kolm_audit.runtime.cpu_blocks.epilogue_gelu_quant`)."""
        pair = table(cdf_table, "pair")
        if pair is None:
            return super().linear_gelu(x, lin, cdf_table)
        n = lin.out_features
        an, mn, en = self._accumulate(x, lin)
        out, on, qn, qm, qe = self._q8_out(an.shape[0], n)
        mult, shift, bias = self._scales(lin)
        self._par(an.shape[0], an.size * 4, lambda lo, hi: kb.epilogue_gelu_quant(
            an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, pair, on[lo:hi], qn[lo:hi], qm[lo:hi], qe[lo:hi]))
        return self._keep_q8(out.reshape(*x.shape[:-1], n), qn, qm, qe)   # [...,I] int32 Q.16

    def linear_swiglu(self, x: Tensor, lin: TorchLinear, sigmoid_table: Tensor) -> Tensor:
        """``swiglu`` of the gate|up linear in one pass after the product
        (:func:`~kolm_audit.runtime.cpu_blocks.epilogue_swiglu_quant`)."""
        pair = table(sigmoid_table, "pair")
        if pair is None:
            return super().linear_swiglu(x, lin, sigmoid_table)
        n = lin.out_features // 2
        an, mn, en = self._accumulate(x, lin)                           # [R,2I] exact
        out, on, qn, qm, qe = self._q8_out(an.shape[0], n)
        mult, shift, bias = self._scales(lin)
        self._par(an.shape[0], an.size * 4, lambda lo, hi: kb.epilogue_swiglu_quant(
            an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, pair, on[lo:hi], qn[lo:hi], qm[lo:hi], qe[lo:hi]))
        return self._keep_q8(out.reshape(*x.shape[:-1], n), qn, qm, qe)   # [...,I] int32 Q.16

    def embedding(self, emb: tuple[Tensor, ...], ids: Any, *, add: Tensor | None = None,
                  add_rows: np.ndarray | None = None) -> Tensor:
        """Q.16 embedding rows (+ ``add[add_rows]``, saturated) in one kernel
        (:func:`~kolm_audit.runtime.cpu_blocks.embedding_rows`)."""
        w, mult, shift = emb
        idn = np.ascontiguousarray(ids, dtype=np.int64)
        flat = idn.reshape(-1)
        on = np.empty((flat.size, w.shape[1]), dtype=np.int32)
        an = _EMPTY2 if add is None else host(add)
        rows = _EMPTY if add_rows is None else np.ascontiguousarray(add_rows, dtype=np.int64).reshape(-1)
        kb.embedding_rows(flat, host(w), host(mult), host(shift), an, rows, on)
        return torch.from_numpy(on).reshape(*idn.shape, w.shape[1])    # [...,H] int32 Q.16

    # ---- element-wise primitives with the §3.3 memo ---------------------------------------------------------------
    def _norm_fused(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor) -> Tensor:
        h = x.shape[-1]
        xn = x.reshape(-1, h).numpy()
        out, on, qn, mn, en = self._q8_out(xn.shape[0], h)
        gn, tn, bn = host(gamma), host(table), _EMPTY if beta is None else host(beta)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kb.norm_quant(
            xn[lo:hi], gn, bn, beta is not None, eps_q32, tn, on[lo:hi], qn[lo:hi], mn[lo:hi], en[lo:hi]))
        return self._keep_q8(out.reshape(x.shape), qn, mn, en)         # [...,H] int32 Q.16

    def gelu(self, x: Tensor, cdf_table: Tensor) -> Tensor:
        pair = table(cdf_table, "pair")
        if pair is None or x.dtype != torch.int32:                     # 32-bit products need int32 inputs
            return super().gelu(x, cdf_table)
        n = x.shape[-1]
        xn = x.reshape(-1, n).numpy()
        out, on, qn, mn, en = self._q8_out(xn.shape[0], n)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kb.gelu_quant(xn[lo:hi], pair, on[lo:hi], qn[lo:hi], mn[lo:hi],
                                                                     en[lo:hi]))
        return self._keep_q8(out.reshape(x.shape), qn, mn, en)         # [...,N] int32 Q.16

    def swiglu(self, gate: Tensor, up: Tensor, sigmoid_table: Tensor) -> Tensor:
        pair = table(sigmoid_table, "pair")
        if pair is None or gate.dtype != torch.int32 or up.dtype != torch.int32:
            return super().swiglu(gate, up, sigmoid_table)
        n = gate.shape[-1]
        gn, un = gate.reshape(-1, n).numpy(), up.reshape(-1, n).numpy()
        out, on, qn, mn, en = self._q8_out(gn.shape[0], n)
        self._par(gn.shape[0], gn.size, lambda lo, hi: kb.swiglu_quant(gn[lo:hi], un[lo:hi], pair, on[lo:hi],
                                                                       qn[lo:hi], mn[lo:hi], en[lo:hi]))
        return self._keep_q8(out.reshape(gate.shape), qn, mn, en)      # [...,I] int32 Q.16

    # ---- attention (cpu_attention) ----------------------------------------------------------------------------
    def segment_attention(self, qkv: Tensor, bounds: np.ndarray, *, heads: int, head_dim: int, scale_mult: int,
                          scale_shift: int, exp_table: Tensor) -> Tensor:
        """The whole §5.2 block of packed requests in one kernel
        (:func:`~kolm_audit.runtime.cpu_attention.packed_attention`); requests are split between threads."""
        pair = table(exp_table, "softmax")
        if pair is None:
            return super().segment_attention(qkv, bounds, heads=heads, head_dim=head_dim, scale_mult=scale_mult,
                                             scale_shift=scale_shift, exp_table=exp_table)
        hid = heads * head_dim
        qn, bn = qkv.numpy(), np.ascontiguousarray(bounds, dtype=np.int64)
        out, on, q8, mn, en = self._q8_out(qn.shape[0], hid)
        self._par(bn.size - 1, qn.shape[0] * hid * 4, lambda lo, hi: ka.packed_attention(
            qn, bn[lo:hi + 1], heads, head_dim, scale_mult, scale_shift, pair, on, q8, mn, en))
        return self._keep_q8(out, q8, mn, en)                           # [N,H] int32 Q.16

    def _memo(self, x: Tensor, attr: str) -> tuple[Tensor, ...]:
        if attr != KQ8:
            return super()._memo(x, attr)
        found = getattr(x, attr, None)
        kv = getattr(x, BUNDLE, None)
        if found is None and kv is not None:                           # a decoding cache's keys: from the bundle
            t = x.shape[2]
            found = tuple(torch.from_numpy(kv.buffers[i][:, :, :t]) for i in (1, 2, 3))
            setattr(x, attr, found)
        if found is None:                                              # keys: their §3.3 rows, int8
            b, h, t, d = x.shape
            q, m, e = self._quantize(x.reshape(-1, d), torch.int8)
            found = (q.reshape(b, h, t, d), m.reshape(b, h, t), e.reshape(b, h, t))
            setattr(x, attr, found)
        return found

    def _attend(self, q: np.ndarray, kq: np.ndarray, mk: np.ndarray, ek: np.ndarray, v: np.ndarray, valid: np.ndarray,
                scale_mult: int, scale_shift: int, pair: np.ndarray) -> Tensor:
        """:func:`~kolm_audit.runtime.cpu_attention.cached_attention` of ``q`` [B, Hq, Tq, D] → the context
        [B, Tq, Hq·D] int32 with its §3.3 memo; requests split between threads."""
        b, hq, tq, d = q.shape
        out, on, q8, mn, en = self._q8_out(b * tq, hq * d)
        o3 = on.reshape(b, tq, hq * d)
        self._par(b, b * hq * tq * valid.shape[-1] * d, lambda lo, hi: ka.cached_attention(
            q[lo:hi], kq[lo:hi], mk[lo:hi], ek[lo:hi], v[lo:hi], valid[lo:hi], scale_mult, scale_shift, pair,
            o3[lo:hi], q8[lo * tq:hi * tq], mn[lo * tq:hi * tq], en[lo * tq:hi * tq]))
        return self._keep_q8(out.reshape(b, tq, hq * d), q8, mn, en)   # [B,Tq,Hq·D] int32 Q.16

    def attention(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, *, scale_mult: int, scale_shift: int,
                  exp_table: Tensor, key_len: Tensor | None = None) -> Tensor:
        """The whole §5.2 block in one kernel (:func:`~kolm_audit.runtime.cpu_attention.cached_attention`), keys from
        their int8 memo (``KQ8``: made by :meth:`qkv_rope`, carried along by the KV cache), for few query rows
        (decoding) or keys that already have the memo (a Llama prefill); otherwise the torch matrix products of
        :class:`FusedOps`. ``key_len`` (a hint: keys from there on are masked) is not used."""
        pair = table(exp_table, "softmax")
        if pair is None or (q.shape[2] > _BLOCK_TQ and getattr(k, KQ8, None) is None):
            return super().attention(q, k, v, key_valid, scale_mult=scale_mult, scale_shift=scale_shift,
                                     exp_table=exp_table, key_len=key_len)
        b, hq, tq, d = q.shape
        kq, mk, ek = self._memo(k, KQ8)                                 # [B,Hk,Tk,D] int8; [B,Hk,Tk]
        merged = self._attend(q.numpy(), kq.numpy(), mk.numpy(), ek.numpy(), v.numpy(), key_valid.numpy(),
                              scale_mult, scale_shift, pair)            # [B,Tq,Hq·D] int32 Q.16
        ctx = merged.reshape(b, tq, hq, d).permute(0, 2, 1, 3)          # [B,Hq,Tq,D] view
        setattr(ctx, _MERGED, merged)
        return ctx

    def merge_heads(self, x: Tensor) -> Tensor:
        merged = getattr(x, _MERGED, None)
        return merged if merged is not None else super().merge_heads(x)

    def qkv_rope(self, x: Tensor, lin: TorchLinear, positions: Any, cos_table: Tensor, sin_table: Tensor, *,
                 heads: int, kv_heads: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
        """The q|k|v linear, then RoPE of q and k in one kernel (:func:`~kolm_audit.runtime.cpu_attention.rope_append`)
        that also quantizes each new key row once (spec §3.3, the ``KQ8`` memo every later decoding step reads; the
        KV cache carries it along): q [B, heads, T, D], k and v [B, kv_heads, T, D] int32 Q.16."""
        cos, sin = table(cos_table, "int32"), table(sin_table, "int32")
        if cos is None or sin is None:
            return super().qkv_rope(x, lin, positions, cos_table, sin_table, heads=heads, kv_heads=kv_heads,
                                    head_dim=head_dim)
        qkv = self.linear(x, lin)                                        # [B,T,(nh+2nkv)·D] int32 Q.16
        b, t, d = qkv.shape[0], qkv.shape[1], head_dim
        qn, pn = qkv.numpy(), np.ascontiguousarray(self.const(positions).numpy())   # pn [B,T] int64
        qr = np.empty((b, heads, t, d), dtype=np.int32)                  # [B,nh,T,D] rotated queries
        kr, vr = np.empty((b, kv_heads, t, d), dtype=np.int32), np.empty((b, kv_heads, t, d), dtype=np.int32)
        kq = np.empty((b, kv_heads, t, d), dtype=np.int8)                # [B,nkv,T,D] §3.3 rows of the keys
        mk, ek = np.empty((b, kv_heads, t), dtype=np.int64), np.empty((b, kv_heads, t), dtype=np.int64)
        self._par(b, b * t * qn.shape[2], lambda lo, hi: ka.rope_append(
            qn[lo:hi], pn[lo:hi], cos, sin, heads, kv_heads, 0, qr[lo:hi], kr[lo:hi], kq[lo:hi], mk[lo:hi], ek[lo:hi],
            vr[lo:hi]))
        k = torch.from_numpy(kr)
        setattr(k, KQ8, (torch.from_numpy(kq), torch.from_numpy(mk), torch.from_numpy(ek)))
        return torch.from_numpy(qr), k, torch.from_numpy(vr)

    def _operands(self, build: Callable[..., tuple | None], consts: tuple[Any, ...]) -> tuple | None:
        """``build(*consts)`` (host operands of a one-kernel forward, or ``None``), made once per builder and kept
        while the same objects come back (a model passes the same ones every call: the lookups cost ~15 µs)."""
        memo = self._operand_memo.get(build)
        if memo is None or any(a is not b for a, b in zip(memo[0], consts, strict=True)):
            memo = self._operand_memo[build] = (consts, build(*consts))
        return memo[1]

    def _encode_facts(self, found: tuple, scalars: tuple[int, int, int, int, int]) -> tuple[int, str, Any]:
        """For the encoder operands ``found`` and ``scalars`` (heads, head size, ε, scale multiplier and shift): the
        multiply-adds of one row through every product, the ``gemm_paths`` entry of their one-kernel forward and
        the kernel's :class:`~kolm_audit.runtime.cpu_encode.EncodeConsts`, made once: each Python step around a
        forward runs with the interpreter's memory evicted by the weights (~5× its cost alone: ~10 µs for an
        ``np.diff``)."""
        memo = self._facts_memo
        if memo is None or memo[0] is not found or memo[1] != scalars:
            stack = found[4]
            memo = self._facts_memo = (found, scalars, sum(lin[0].size for layer in stack for lin in layer[:4]),
                                       f"cpu_encode one kernel: {4 * len(stack)} products in cpu_gemv ({_IN_KERNEL})",
                                       ke.encode_consts(found, scalars))
        return memo[2], memo[3], memo[4]

    def _step_ready(self, rows: int, keys: Sequence[Tensor], values: Sequence[Tensor],
                    consts: tuple[Any, ...]) -> tuple | None:
        """:func:`~kolm_audit.runtime.host_operands.step_operands` of ``consts`` when a step of ``rows`` token rows
        over this cache (none yet: a prefill) can run as one kernel (at most ``_KERNEL_ROWS`` rows, every layer's
        keys and values int32), else ``None``."""
        if rows > _KERNEL_ROWS or any(a.dtype != torch.int32 for a in (*keys, *values)):
            return None
        return self._operands(step_operands, consts)

    def decode_forward(self, ids: Any, positions: Any, key_valid: Any, keys: Sequence[Tensor],
                       values: Sequence[Tensor], *, last: bool = False, tok_emb: tuple[Tensor, ...],
                       layers: Sequence[Any], first_gamma: Tensor, post_gammas: Sequence[Tensor],
                       next_gammas: Sequence[Tensor], lm_head: TorchLinear, eps_q32: int, rsqrt_table: Tensor,
                       heads: int, cos_table: Tensor, sin_table: Tensor, scale_mult: int, scale_shift: int,
                       exp_table: Tensor,
                       sigmoid_table: Tensor) -> tuple[np.ndarray, list[Tensor], list[Tensor]] | None:
        """A decoding step's forward as one kernel (:func:`~kolm_audit.runtime.cpu_decode.decode_forward`) for at
        most ``_KERNEL_ROWS`` new token rows (64 where :mod:`~kolm_audit.runtime.cpu_gemv` has its packed tiles, else
        4; host inputs, host logits — with ``last`` only each request's last position's); each layer's new keys and
        values are written into the spare capacity of its :class:`KVBundle`. A prefill (no cache yet) runs here
        only where its rows are split between threads (``Workers.parts``; on one thread the composed prefill is as
        fast). ``None`` (the composed forward runs) for anything else: more rows, wider weights, tables outside
        the fast kernels' bounds."""
        idn = np.ascontiguousarray(ids, dtype=np.int64)
        b, t = idn.shape
        found = self._step_ready(b * t, keys, values, (tok_emb, layers, first_gamma, post_gammas, next_gammas,
                                                       lm_head, rsqrt_table, cos_table, sin_table, exp_table,
                                                       sigmoid_table))
        if found is None:
            return None
        emb, g_first, stack, head, rsqrt, cos, sin, exp_pair, sig_pair = found
        parts = self._workers.parts(b * t, b * t * sum(lin[0].size for layer in stack for lin in layer[:4]))
        if not keys and parts == 1:
            return None
        t0 = keys[0].shape[2] if keys else 0
        shared = step_buffers(found, heads, b, t)                  # (qkv [R, (nh+2nkv)·D], q [B, nh, T, D], ctx)
        d = shared[1].shape[3]
        kvs = ([KVBundle.growing(self, k, v, t) for k, v in zip(keys, values, strict=True)] if keys else
               [KVBundle.empty(b, (shared[0].shape[1] // d - heads) // 2, d, t) for _ in stack])   # room for T rows
        logits = np.empty((b if last else b * t, lm_head.out_features), np.int32)
        pos, valid = np.ascontiguousarray(positions, dtype=np.int64), np.ascontiguousarray(key_valid, dtype=np.bool_)
        caches = tuple(kv.buffers for kv in kvs)
        self.gemm_paths[_decode_path(len(layers))] += 1
        self._workers.together(parts, lambda part, sync: kd.decode_forward(
            idn.reshape(-1), emb, g_first, stack, caches, head, eps_q32, rsqrt, pos, cos, sin, heads, t0, valid,
            scale_mult, scale_shift, exp_pair, sig_pair, last, part, parts, sync, shared, logits))   # int32 Q.16
        grown = []
        for kv in kvs:
            kv.used = t0 + t
            grown.append(kv.views())
        return logits.reshape(b, 1 if last else t, -1), [k for k, _ in grown], [v for _, v in grown]

    def decoder(self, keys: Sequence[Tensor], values: Sequence[Tensor], key_ok: np.ndarray, pos: np.ndarray, *,
                tok_emb: tuple[Tensor, ...], layers: Sequence[Any], first_gamma: Tensor,
                post_gammas: Sequence[Tensor], next_gammas: Sequence[Tensor], lm_head: TorchLinear, eps_q32: int,
                rsqrt_table: Tensor, heads: int, cos_table: Tensor, sin_table: Tensor, scale_mult: int,
                scale_shift: int, exp_table: Tensor, sigmoid_table: Tensor) -> CpuDecoder | None:
        """A :class:`~kolm_audit.runtime.host_decoder.CpuDecoder` for the one-token steps after a prefill whose
        cache holds ``keys``/``values`` [B, Hk, T, D] (``key_ok`` [B, T], ``pos`` [B]): the steps of
        :meth:`decode_forward` with the cache on the host. ``None`` where :meth:`decode_forward` would decline."""
        if not keys:
            return None
        found = self._step_ready(key_ok.shape[0], keys, values, (tok_emb, layers, first_gamma, post_gammas,
                                                                  next_gammas, lm_head, rsqrt_table, cos_table,
                                                                  sin_table, exp_table, sigmoid_table))
        if found is None:
            return None
        kvs = [KVBundle.growing(self, k, v, 1) for k, v in zip(keys, values, strict=True)]
        return CpuDecoder(operands=found, kvs=kvs, key_ok=key_ok, pos=pos,
                          scalars=(eps_q32, heads, scale_mult, scale_shift), vocab=lm_head.out_features,
                          paths=(self.gemm_paths, _decode_path(len(layers))), workers=self._workers)

    def encode_forward(self, ids: np.ndarray, pos: np.ndarray, bounds: np.ndarray, *, word_emb: tuple[Tensor, ...],
                       pos_type: Tensor, emb_norm: tuple[Tensor, Tensor], layers: Sequence[Any],
                       layer_norms: Sequence[tuple[Tensor, ...]], eps_q32: int, rsqrt_table: Tensor, heads: int,
                       head_dim: int, scale_mult: int, scale_shift: int, exp_table: Tensor,
                       cdf_table: Tensor) -> Tensor | None:
        """A BERT encoder's forward in one-kernel calls (:func:`~kolm_audit.runtime.cpu_encode.encode_forward`) of
        the packed rows ``ids`` [N] (``pos`` [N], requests ``bounds`` [B+1]): the final hidden states [N, H] int32
        Q.16. Consecutive requests go in groups of at most ``_KERNEL_ROWS`` rows, one call each, the groups split
        between ``threads`` worker threads (a request's rows never leave its group, and attention only combines a
        request's own rows: the grouping never changes an output); a single group is split into parts instead, run
        by an :class:`~kolm_audit.runtime.host_crew.EncodeCrew` (part 0 on this thread, the others on partner
        threads waiting for the next call). ``None`` (the composed forward runs) for a
        request of more than ``_KERNEL_ROWS`` tokens, weights that are not one int8 digit, tables outside the fast
        kernels' bounds."""
        bn = np.ascontiguousarray(bounds, dtype=np.int64)
        if bn.size < 2 or int((bn[1:] - bn[:-1]).max()) > _KERNEL_ROWS:
            return None
        found = self._operands(encode_operands, (word_emb, pos_type, emb_norm, layers, layer_norms, rsqrt_table,
                                                  exp_table, cdf_table))
        if found is None:
            return None
        emb, stack = found[0], found[4]
        scalars = (heads, head_dim, eps_q32, scale_mult, scale_shift)
        row_macs, path, consts = self._encode_facts(found, scalars)
        idn, pn = np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(pos, dtype=np.int64)
        rows, hid = idn.shape[0], emb[0].shape[1]
        macs = rows * row_macs                              # the products' work
        if rows <= _KERNEL_ROWS:                            # one group (_row_groups) holds every request
            parts, runs = self._workers.parts(rows, macs), [[(0, bn.size - 1)]]
        else:
            parts, runs = 1, _balanced_runs(bn, _KERNEL_ROWS, self._workers.parts(bn.size - 1, macs))
        self.gemm_paths[path] += sum(map(len, runs))
        if parts > 1:                                       # one group: its rows and heads split between threads
            crew = self._encode_crew
            if crew is None or not crew.fits(found, parts):
                if crew is not None:
                    crew.stop()
                crew = self._encode_crew = EncodeCrew(operands=found, parts=parts, rows=_KERNEL_ROWS,
                                                      scalars=scalars)
            self._workers.rest()                            # spinning pool workers would slow the partners
            return torch.from_numpy(crew.run(idn, pn, bn))              # [N,H] int32 Q.16

        if self._encode_crew is not None:
            self._encode_crew.dismiss()                     # its spinning partners would slow the pool's threads
        out = np.empty((rows, hid), np.int32)                                    # [N,H] int32 Q.16
        scratch = ke.split_buffers(rows, stack[0][0][0].shape[0], hid, 0, 1)     # q|k|v [N,3H], context [N,H]

        def run(lo: int, hi: int) -> None:                  # runs lo … hi - 1: their groups, one call each
            for first, end in (group for each in runs[lo:hi] for group in each):
                r0, r1 = bn[first], bn[end]
                ke.encode_forward(idn[r0:r1], pn[r0:r1], bn[first:end + 1] - r0, consts, 0, 1, ks.ALONE, 0,
                                  tuple(a[r0:r1] for a in scratch), out[r0:r1])
        self._par(len(runs), macs, run)
        return torch.from_numpy(out)                                    # [N,H] int32 Q.16

    def mean_pool(self, x: Tensor, bounds: np.ndarray) -> np.ndarray:
        """§6.3 mean of each request's packed rows of ``x`` [N, H] (int32 Q.16; requests ``bounds`` [B+1]): int64
        [B, H] Q.16, in one kernel (:func:`~kolm_audit.runtime.cpu_encode.mean_pool`) rather than a widened copy,
        a segmented sum and a division in numpy (~1 ms of a 32-sentence batch)."""
        bn = np.ascontiguousarray(bounds, dtype=np.int64)
        xn = x.numpy()
        if xn.dtype != np.int32 or not xn.flags.c_contiguous:
            xn = np.ascontiguousarray(xn, dtype=np.int64)
        out = np.empty((bn.size - 1, xn.shape[1]), np.int64)                    # [B,H] Q.16
        ke.mean_pool(xn, bn, out)
        return out

    # ---- kernel hooks -------------------------------------------------------------------------------------
    def _k_quantize(self, x: Tensor, q: Tensor, m: Tensor, e: Tensor) -> None:
        xn, qn, mn, en = x.numpy(), q.numpy(), m.numpy(), e.numpy()
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.quantize_rows(xn[lo:hi], qn[lo:hi], mn[lo:hi], en[lo:hi]))

    def _k_epilogue(self, acc: Tensor, m: Tensor, e: Tensor, lin: TorchLinear, out: Tensor) -> None:
        an, mn, en, on = acc.numpy(), m.numpy(), e.numpy(), out.numpy()
        mult, shift, bias = host(lin.mult), host(lin.shift), host(lin.bias)
        self._par(an.shape[0], an.size, lambda lo, hi: kn.linear_epilogue(
            an[lo:hi], mn[lo:hi], en[lo:hi], mult, shift, bias, on[lo:hi]))

    def _k_norm(self, x: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, table: Tensor,
                out: Tensor) -> None:
        xn, on, gn, tn = x.numpy(), out.numpy(), host(gamma), host(table)
        bn = _EMPTY if beta is None else host(beta)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.norm(xn[lo:hi], gn, bn, beta is not None, eps_q32, tn,
                                                               on[lo:hi]))

    def _k_probs(self, acc: Tensor, mq: Tensor, eq: Tensor, mk: Tensor, ek: Tensor, valid: Tensor, group: int,
                 scale_mult: int, scale_shift: int, table: Tensor, probs: Tensor) -> None:
        an, pn, tn = acc.numpy(), probs.numpy(), host(table)
        mqn, eqn, mkn, ekn, vn = mq.numpy(), eq.numpy(), mk.numpy(), ek.numpy(), valid.numpy()
        self._par(an.shape[0], an.size, lambda lo, hi: kn.attention_probs(
            an[lo:hi], mqn[lo:hi], eqn[lo:hi], mkn[lo:hi], ekn[lo:hi], vn[lo:hi], group, scale_mult, scale_shift,
            tn, pn[lo:hi]))

    def _k_context(self, ctx: Tensor, group: int, out: Tensor) -> None:
        cn, on = ctx.numpy(), out.numpy()
        self._par(cn.shape[0], cn.size, lambda lo, hi: kn.context_out(cn[lo:hi], group, on[lo:hi]))

    def _k_rope(self, x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor, out: Tensor) -> None:
        xn, on, pn, cn, sn = x.numpy(), out.numpy(), pos.numpy(), host(cos), host(sin)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.rope(xn[lo:hi], pn[lo:hi], cn, sn, on[lo:hi]))

    def _k_swiglu(self, gate: Tensor, up: Tensor, table: Tensor, out: Tensor) -> None:
        gn, un, on, tn = gate.numpy(), up.numpy(), out.numpy(), host(table)
        self._par(gn.shape[0], gn.size, lambda lo, hi: kn.swiglu(gn[lo:hi], un[lo:hi], tn, on[lo:hi]))

    def _k_gelu(self, x: Tensor, table: Tensor, out: Tensor) -> None:
        xn, on, tn = x.numpy(), out.numpy(), host(table)
        self._par(xn.shape[0], xn.size, lambda lo, hi: kn.gelu(xn[lo:hi], tn, on[lo:hi]))
