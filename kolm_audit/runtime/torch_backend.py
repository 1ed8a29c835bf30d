"""Fast exact backend of ``kolm-int/1`` on torch (CPU or CUDA): the same integers as the numpy reference.

:class:`TorchOps` has the methods of :class:`kolm_audit.runtime.ops.NumpyOps` and computes every element-wise
step on ``int64`` tensors with :mod:`~kolm_audit.runtime.torch_fixedpoint` (the line-for-line transcription of
:mod:`~kolm_audit.runtime.fixedpoint`). Only the matrix products use fast hardware paths, each provably exact
(:mod:`~kolm_audit.runtime.torch_matmul`, ``docs/runtime-spec.md`` "Fast backends"); the attention context
``Σ_j P·V`` (``P <= 2^16``, ``|V| < 2^31``, ``|Σ| < 2^48``) is an fp64 batched GEMM, exact because every
product and partial sum is an integer below 2^53.

Element-wise steps take fewer passes than the reference but give the same integers: table lookups gather
from the fully expanded table (every interpolated value of ``lut_interp`` computed once, by ``lut_interp``
itself), ``rdiv(a, b) = floor((a + ⌊b/2⌋) / b)``, one requantization branch when the shifts are known to be
``>= 32``, in-place temporaries, and grouped-query attention without copying the shared keys and values.
Per-row quantization divides in fp64 (exact: ``|x| + d < 2^53``), and a linear layer whose
``K · 127 · wmax < 2^31`` and ``16 <= shift <= 61`` requantizes with a 16-bit split of ``mult`` (five int64
passes instead of eight; bounds in "Fast backends"); attention's softmax divides in fp64 (exact: every
operand below 2^47) and feeds the fp64 context GEMM directly; expanded tables are gathered as int32 when every
value fits. Temporaries that never leave a method reuse per-thread scratch buffers (large fresh allocations
cost page faults on every call).

Example::

    >>> import numpy as np
    >>> from kolm_audit.runtime.reference import IntLinear, linear
    >>> rng = np.random.default_rng(0)
    >>> w = rng.integers(-127, 128, (6, 32))
    >>> lin = IntLinear(weight=w, wmax=int(abs(w).max()), mult=np.full(6, 1 << 30), shift=np.full(6, 40),
    ...                 bias=np.zeros(6, dtype=np.int64))
    >>> x = rng.integers(-(1 << 20), 1 << 20, (3, 32))
    >>> ops = TorchOps(device="cpu")
    >>> ops.numpy(ops.linear(ops.const(x), ops.prepare_linear(lin))).tolist() == linear(x, lin).tolist()
    True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime import torch_fixedpoint as tfp
from kolm_audit.runtime.composed import ComposedOps
from kolm_audit.runtime.torch_matmul import ExactMatmul, TorchLinear, weight_digits

__all__ = ["TorchLinear", "TorchOps", "weight_digits"]

Tensor = torch.Tensor
_NEG_SENTINEL = -(1 << 62)
_FEW_ROWS = 16                  # norms over at most this many rows (decoding) compute row scalars in Python


def _append_time(old: Tensor, new: Tensor) -> Tensor:
    """``torch.cat([old, new], dim=2)`` with the same values, written into spare capacity of ``old``'s buffer when
    ``old`` is that buffer's newest prefix (else into a fresh buffer of twice the length). Earlier views stay
    valid: their elements are never written again, and an append from an older view copies instead."""
    t0, t1 = old.shape[2], new.shape[2]
    store = getattr(old, "_kolm_store", None)             # (buffer, [used length])
    if store is None or store[1][0] != t0 or store[0].shape[2] < t0 + t1 or store[0].dtype != new.dtype \
            or store[0].shape[:2] + store[0].shape[3:] != new.shape[:2] + new.shape[3:]:
        buf = torch.empty((*old.shape[:2], max(16, 2 * (t0 + t1)), *old.shape[3:]), dtype=old.dtype,
                          device=old.device)
        buf[:, :, :t0] = old
        store = (buf, [t0])
    store[0][:, :, t0:t0 + t1] = new
    store[1][0] = t0 + t1
    out = store[0][:, :, :t0 + t1]
    out._kolm_store = store                               # type: ignore[attr-defined]
    return out


def _table_in(table: Tensor, lo: int, hi: int) -> bool:
    """Whether every entry of a table tensor lies in ``[lo, hi]`` (checked once, kept on the tensor)."""
    key = f"_kolm_in_{lo}_{hi}"
    found = getattr(table, key, None)
    if found is None:
        found = bool(table.numel() == 0 or (int(table.min()) >= lo and int(table.max()) <= hi))
        setattr(table, key, found)
    return found


class TorchOps(ComposedOps, ExactMatmul):
    """The torch backend (``device`` ``"cpu"`` or ``"cuda"``): int64 tensors, exact GEMM paths (the mixin)."""

    MEMOS: tuple[str, ...] = tfp.MEMOS   # per-row memos a KV cache carries along (see ``cat``)

    def __init__(self, *, device: str = "cpu", threads: int | None = None, gemm: str = "auto",
                 max_chunk: int | None = None) -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError("device must be cpu or cuda")
        self.name = device
        self.device = torch.device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads() if device == "cpu" else threads
        self.gemm, self.max_chunk = gemm, max_chunk     # linear GEMM preference (kolm_audit.runtime.gemm_plan)
        self.gemm_paths: Counter[str] = Counter()       # every linear product run, by plan
        self._caps_found = None
        self._bf16_bmm = device == "cuda"              # attention scores: bf16 GEMM with fp32 output when available
        self._eps: dict[tuple[int, str], Tensor] = {}

    def _scratch(self, like: Tensor) -> Tensor:
        """A per-thread buffer of ``like``'s shape and dtype for a temporary that never leaves the method."""
        return tfp.scratch(like.shape, like.dtype, like.device)

    # ---- arrays -------------------------------------------------------------------------------------------
    def const(self, arr: Any) -> Tensor:
        if isinstance(arr, Tensor):
            return arr.to(device=self.device, dtype=torch.int64)
        return self._int64(arr)

    def mask(self, arr: Any) -> Tensor:
        if isinstance(arr, Tensor):
            return arr.to(device=self.device, dtype=torch.bool)
        return torch.from_numpy(np.array(arr, dtype=bool, copy=True)).to(self.device)

    def numpy(self, x: Any) -> np.ndarray:
        return x.cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)

    def heads(self, x: Tensor, n: int, d: int) -> Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, n, d).permute(0, 2, 1, 3)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, n, t, d = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, n * d)

    def cat(self, xs: Sequence[Tensor], axis: int) -> Tensor:
        """``torch.cat``. A KV cache grown along time (axis 2, two parts) is appended in place into spare
        capacity (:func:`_append_time`, amortized O(new) per step) and keeps its per-row memos (``MEMOS``): rows
        are independent, so the memo of the concatenation is the concatenation of the memos."""
        if not (axis == 2 and len(xs) == 2 and all(x.dim() == 4 for x in xs)):
            return torch.cat(list(xs), dim=axis)
        out = _append_time(xs[0], xs[1])
        for attr in self.MEMOS:
            if getattr(xs[0], attr, None) is not None:
                old, new = self._memo(xs[0], attr), self._memo(xs[1], attr)
                setattr(out, attr, tuple(_append_time(a, b) for a, b in zip(old, new, strict=True)))
        return out

    def repeat(self, x: Tensor, rep: int, axis: int) -> Tensor:
        return x if rep == 1 else torch.repeat_interleave(x, rep, dim=axis)

    def kv_buffer(self, like: Tensor, capacity: int) -> Tensor:
        """A zero buffer [B, H, capacity, D] of ``like``'s dtype for keys or values (a static KV cache)."""
        return torch.zeros((*like.shape[:2], capacity, *like.shape[3:]), dtype=like.dtype, device=self.device)

    def kv_write(self, kbuf: Tensor, vbuf: Tensor, k: Tensor, v: Tensor, slot: Tensor) -> None:
        """Write new keys and values [B, H, T, D] at timeline indices ``slot[0] .. slot[0] + T`` of the buffers (a
        device index: no host synchronization), with the per-row memos (``MEMOS``) a buffer already carries."""
        t = k.shape[2]
        idx = slot.reshape(1) if t == 1 else slot.reshape(1) + torch.arange(t, device=self.device)
        for buf, new in ((kbuf, k), (vbuf, v)):
            buf.index_copy_(2, idx, new.to(buf.dtype))
            for attr in self.MEMOS:
                memo = getattr(buf, attr, None)
                if memo is not None:                              # rows are independent: write the new rows' memo
                    for part, fresh in zip(memo, self._memo(new, attr), strict=True):
                        part.index_copy_(2, idx, fresh.to(part.dtype))

    def take(self, x: Tensor, rows: np.ndarray) -> Tensor:
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)
        out = x.index_select(0, idx)
        for attr in self.MEMOS:
            memo = getattr(x, attr, None)
            if memo is not None:
                setattr(out, attr, tuple(m.index_select(0, idx) for m in memo))
        return out

    def _memo(self, x: Tensor, attr: str) -> tuple[Tensor, ...]:
        """Per-row derived tensors of a key or value tensor (one of ``MEMOS``), computed once and kept on it."""
        return tfp.memo(x, attr)

    # ---- exact matrix products ----------------------------------------------------------------------------

    # ---- primitives ---------------------------------------------------------------------------------------
    def linear(self, x: Tensor, lin: TorchLinear, *, residual: Tensor | None = None) -> Tensor:
        y = self._linear(x, lin)
        return y if residual is None else y.add_(residual).clamp_(-(1 << 31), (1 << 31) - 1)

    def _linear(self, x: Tensor, lin: TorchLinear) -> Tensor:
        q, m, e, e0 = tfp.quantize_rows_flag(x, reuse=True)             # [...,K] int8 values (f64); [...,1]
        acc = self.int_matmul(q, lin, m)                                # [...,N] int64 acc·m, < 2^60
        if lin.split16 and e0:                                          # |acc·m| < 2^46, 16 <= shift <= 61
            t = torch.mul(acc, lin.mult_lo, out=self._scratch(acc))     # a temporary: reused buffer
            t.add_(lin.half_s).bitwise_right_shift_(16)                 # ⌊(A·ml + 2^(s-1)) / 2^16⌋
            y = acc.mul_(lin.mult_hi).add_(t).bitwise_right_shift_(lin.shift_16)      # ⌊(A·mh + t) / 2^(s-16)⌋
        elif lin.high0 and e0:                                          # shift - e = shift >= 32 for all
            y = tfp.requantize_high_(acc, lin.mult, lin.half_hi, lin.shift_hi)
        elif lin.high:
            s = lin.shift - e
            y = tfp.requantize_high_(acc, lin.mult, tfp.pow2(s - 32, acc), s - 31)
        else:
            y = tfp.requantize(acc, lin.mult, lin.shift - e)            # [...,N] Q.16
        return y.add_(lin.bias).clamp_(-(1 << 31), (1 << 31) - 1)

    def prepare_embedding(self, tensors: Mapping[str, np.ndarray], prefix: str) -> tuple[Tensor, ...]:
        w = torch.from_numpy(np.array(tensors[f"{prefix}.weight"], copy=True)).to(self.device)
        return w, self.const(tensors[f"{prefix}.mult"]), self.const(tensors[f"{prefix}.shift"])

    def embedding(self, emb: tuple[Tensor, ...], ids: Any, *, add: Tensor | None = None,
                  add_rows: np.ndarray | None = None) -> Tensor:
        w, mult, shift = emb
        idx = self.const(ids)
        rows = tfp.requantize(w[idx].to(torch.int64), mult[idx].unsqueeze(-1), shift[idx].unsqueeze(-1))
        return rows if add is None else tfp.saturate_int32(rows + add[self.const(add_rows)])

    def saturate(self, x: Tensor) -> Tensor:
        return tfp.saturate_int32(x)

    def rdiv(self, a: Tensor, b: Any) -> Tensor:
        return tfp.rdiv(a, b)

    def _row_scales(self, c: Tensor, eps_q32: int, rsqrt_table: Tensor) -> tuple[Tensor, Tensor] | None:
        """The norm's per-row ``(r, s)`` of spec §5.3 in Python integers, for a few rows (decoding), when every
        row has ``k = 0`` (``max|c| < 2^24``); ``None`` otherwise. Same integers as the tensor path, fewer ops."""
        h = c.shape[-1]
        rows = c.numel() // h if h else 0
        if self.device.type != "cpu" or not 0 < rows <= _FEW_ROWS:
            return None
        if int(tfp.absmax_rows(c).max()) >= 1 << 24:
            return None
        table = getattr(rsqrt_table, "_kolm_list", None)
        if table is None:
            table = rsqrt_table.tolist()
            rsqrt_table._kolm_list = table  # type: ignore[attr-defined]
        rs, ss = [], []
        for total in (c * c).sum(dim=-1).flatten().tolist():          # Σ c² per row, k = 0
            v = max((total + (h >> 1)) // h + eps_q32, 1)             # rdiv(Σ, H) + eps
            j = (v.bit_length() - 29) >> 1
            mant = v << (-2 * j) if j <= 0 else (v + (1 << (2 * j - 1))) >> (2 * j)
            pos = min(max(mant - (1 << 28), 0), (len(table) - 1) << 18)
            i = min(pos >> 18, len(table) - 2)
            f = pos - (i << 18)
            rs.append(table[i] + (((table[i + 1] - table[i]) * f + (1 << 17)) >> 18))
            ss.append(52 + j)
        shape = (*c.shape[:-1], 1)
        return torch.tensor(rs, dtype=torch.int64).reshape(shape), torch.tensor(ss, dtype=torch.int64).reshape(shape)

    def _norm(self, c: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        few = self._row_scales(c, eps_q32, rsqrt_table)
        if few is not None:
            r, s = few
            y = tfp.requantize_high_(c * r, gamma, tfp.pow2(s - 32, c), s - 31)
            if beta is not None:
                y = y.add_(beta)
            return y.clamp_(-(1 << 31), (1 << 31) - 1)
        h = c.shape[-1]
        cmax = tfp.absmax_rows(c)                                       # < 2^33
        k = tfp.bits_above(cmax, 24, 34)                                # max(0, bits(cmax) - 24) <= 9
        if int(cmax.max()) < 1 << 24:                                   # every k = 0: c' = c
            c2 = c
        else:
            c2 = torch.bitwise_right_shift(c + torch.bitwise_right_shift(tfp.pow2(k, c), 1), k)   # round_shift
        var = tfp.rdiv((c2 * c2).sum(dim=-1, keepdim=True), h)          # Σ <= 2^62
        v = (var + self._eps_table(eps_q32, c.device)[k]).clamp_(min=1) # + round_shift(eps, 2k); < 2^50
        nb = torch.frexp(v.double()).exponent.to(torch.int64)           # bits(v): exact, v < 2^53
        j = torch.bitwise_right_shift(nb - 29, 1)                       # floor((bits - 29) / 2)
        up, down = torch.clamp(-2 * j, min=0), torch.clamp(2 * j, min=0)
        mant = torch.bitwise_right_shift(torch.bitwise_left_shift(v, up) + (tfp.pow2(down, v) >> 1), down)
        r = tfp.lut_interp(mant, rsqrt_table, x0=1 << 28, step_shift=18, diff=tfp.table_diff(rsqrt_table))
        s = 52 + j + k                                                  # p - (16 - k) + 24 >= 38
        y = tfp.requantize_high_(c * r, gamma, tfp.pow2(s - 32, c), s - 31)
        if beta is not None:
            y = y.add_(beta)
        return y.clamp_(-(1 << 31), (1 << 31) - 1)

    def _eps_table(self, eps_q32: int, device: torch.device) -> Tensor:
        """``round_shift(eps_q32, 2k)`` for k = 0 … 16."""
        key = (eps_q32, str(device))
        if key not in self._eps:
            vals = [eps_q32 if kk == 0 else (eps_q32 + (1 << (2 * kk - 1))) >> (2 * kk) for kk in range(17)]
            self._eps[key] = torch.tensor(vals, dtype=torch.int64, device=device)
        return self._eps[key]

    def layer_norm(self, x: Tensor, gamma: Tensor, beta: Tensor, *, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        mu = tfp.rdiv(x.sum(dim=-1, keepdim=True), x.shape[-1])
        return self._norm(x - mu, gamma, beta, eps_q32, rsqrt_table)

    def rms_norm(self, x: Tensor, gamma: Tensor, *, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        return self._norm(x, gamma, None, eps_q32, rsqrt_table)

    def softmax(self, scores: Tensor, valid: Tensor, exp_table: Tensor) -> Tensor:
        return self._softmax(scores, valid, exp_table, f64=False)

    def _softmax(self, scores: Tensor, valid: Tensor, exp_table: Tensor, *, f64: bool) -> Tensor:
        """Spec §5.2 softmax (int64 Q.16); with ``f64`` the same integers as float64 when the division is
        provably exact in fp64 (``0 <= exp_table <= 2^30``, ``Tk <= 2^16``: ``e·2^16 + total < 2^47``)."""
        s = torch.where(valid, scores, _NEG_SENTINEL)
        mx = s.amax(dim=-1, keepdim=True)
        t = torch.where(valid, mx - s, 0)
        e = torch.where(valid, tfp.lut_(t, exp_table, x0=0, step_shift=9), 0)
        total = e.sum(dim=-1, keepdim=True)                             # >= 2^30, <= 2^46
        num = torch.bitwise_left_shift(e, 16)                           # e·2^16 <= 2^46
        if f64 and scores.shape[-1] <= 1 << 16 and _table_in(exp_table, 0, 1 << 30) and bool((total > 0).all()):
            return tfp.rdiv_f64(num, total)                             # float64 integer values
        return tfp.rdiv(num, total)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, *, scale_mult: int, scale_shift: int,
                  exp_table: Tensor, key_len: Tensor | None = None) -> Tensor:
        """Spec §5.2. ``k``, ``v`` may have fewer heads than ``q`` (grouped-query attention): query head ``j``
        uses key/value head ``j // (Hq / Hkv)``, as if they were repeated, without copying them. ``key_len`` (a
        hint: keys from there on are masked) is not used here."""
        b, hq, tq, d = q.shape
        hk, tk = k.shape[1], k.shape[2]
        g = hq // hk
        qq, mq, eq = tfp.quantize_rows_f64(q)                           # [B,Hq,Tq,D]; [B,Hq,Tq,1]
        kq, mk, ek = self._memo(k, "_kolm_rows")                             # [B,Hk,Tk,D]; [B,Hk,Tk,1]
        acc = self._bmm_small(qq.reshape(b, hk, g * tq, d), kq.transpose(-1, -2))   # |acc| < 2^22
        acc = acc.reshape(b, hq, tq, tk)
        mm = (mq.reshape(b, hk, g, tq, 1) * mk.reshape(b, hk, 1, 1, tk)).reshape(b, hq, tq, tk)
        ee = (eq.reshape(b, hk, g, tq, 1) + ek.reshape(b, hk, 1, 1, tk)).reshape(b, hq, tq, tk)
        acc.mul_(mm)                                                    # |acc·mq·mk| < 2^52
        eemax = int(ee.max())
        if eemax == 0:                                                  # usual: one shift for every score
            s0 = scale_shift + 16
            scores = tfp.requantize_high_(acc, scale_mult, 1 << (s0 - 32), s0 - 31) if s0 >= 32 else tfp.requantize(
                acc, scale_mult, s0)
        elif scale_shift + 16 - eemax >= 32:
            s1 = scale_shift + 16 - ee
            scores = tfp.requantize_high_(acc, scale_mult, tfp.pow2(s1 - 32, acc), s1 - 31)
        else:
            scores = tfp.requantize(acc, scale_mult, scale_shift + 16 - ee)
        probs = self._softmax(scores, key_valid, exp_table, f64=True)   # [B,Hq,Tq,Tk] Q.16 (f64 or int64)
        ctx = torch.matmul(probs.reshape(b, hk, g * tq, tk).double(), self._memo(v, "_kolm_f64")[0])   # < 2^48
        ctx = ctx.to(torch.int64).reshape(b, hq, tq, d)
        return ctx.add_(1 << 15).bitwise_right_shift_(16).clamp_(-(1 << 31), (1 << 31) - 1)

    def segment_attention(self, qkv: Tensor, bounds: np.ndarray, *, heads: int, head_dim: int, scale_mult: int,
                          scale_shift: int, exp_table: Tensor) -> Tensor:
        """:meth:`kolm_audit.runtime.ops.NumpyOps.segment_attention` through :meth:`attention` on a padded batch: the
        packed rows are gathered into [B, T] (padding repeats a request's first row; it is an invalid key and its
        output is dropped, spec §5.2), and the real positions are gathered back."""
        lens = np.diff(bounds)
        b, t, hid = lens.size, int(lens.max(initial=0)), heads * head_dim
        steps = np.arange(t)[None, :]
        valid = steps < lens[:, None]                                           # [B,T] real token?
        rows = np.where(valid, bounds[:-1, None] + steps, bounds[:-1, None])    # [B,T] packed row of each slot
        padded = qkv.index_select(0, self.const(rows.reshape(-1))).reshape(b, t, 3 * hid)
        q, k, v = (self.heads(padded[..., j * hid:(j + 1) * hid], heads, head_dim) for j in range(3))
        ctx = self.attention(q, k, v, self.mask(valid[:, None, None, :]), scale_mult=scale_mult,
                             scale_shift=scale_shift, exp_table=exp_table)      # [B,nh,T,D]
        flat = self.merge_heads(ctx).reshape(b * t, hid)
        return flat.index_select(0, self.const(np.flatnonzero(valid.reshape(-1))))   # [N,H]

    def gelu(self, x: Tensor, cdf_table: Tensor) -> Tensor:
        phi = tfp.lut_(x, cdf_table, x0=-8 << 16, step_shift=9)
        return phi.mul_(x).add_(1 << 29).bitwise_right_shift_(30).clamp_(-(1 << 31), (1 << 31) - 1)

    def tanh(self, x: Tensor, tanh_table: Tensor) -> Tensor:
        return tfp.lut_(x, tanh_table, x0=-8 << 16, step_shift=9).add_(1 << 13).bitwise_right_shift_(14)

    def rope(self, x: Tensor, positions: Any, cos_table: Tensor, sin_table: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        pos = self.const(positions)
        cos = cos_table[pos].unsqueeze(1)                               # [B,1,T,D/2] Q.30
        sin = sin_table[pos].unsqueeze(1)
        xa, xb = x[..., :half], x[..., half:]
        out_a = tfp.round_shift(xa * cos - xb * sin, 30)
        out_b = tfp.round_shift(xb * cos + xa * sin, 30)
        return tfp.saturate_int32(torch.cat([out_a, out_b], dim=-1))

    def silu(self, x: Tensor, sigmoid_table: Tensor) -> Tensor:
        sig = tfp.lut_(x, sigmoid_table, x0=-16 << 16, step_shift=9)
        return sig.mul_(x).add_(1 << 29).bitwise_right_shift_(30).clamp_(-(1 << 31), (1 << 31) - 1)

    def swiglu(self, gate: Tensor, up: Tensor, sigmoid_table: Tensor) -> Tensor:
        out = self.silu(gate, sigmoid_table).mul_(up).add_(1 << 15).bitwise_right_shift_(16)
        return out.clamp_(-(1 << 31), (1 << 31) - 1)
