"""Fast exact backend of ``kolm-int/1`` on torch (CPU or CUDA): the same integers as the numpy reference.

:class:`TorchOps` has the methods of :class:`kolm_audit.runtime.ops.NumpyOps` and computes every element-wise
step on ``int64`` tensors with :mod:`~kolm_audit.runtime.torch_fixedpoint` (the line-for-line transcription of
:mod:`~kolm_audit.runtime.fixedpoint`). Only the matrix products use fast hardware paths, each provably exact
(``docs/runtime-spec.md``, "Fast backends"):

* **linear** ``acc = q · Wᵀ`` with ``|q| <= 127``: the integer weight is split once, at load, into balanced
  base-256 digits ``W = Σ_l D_l · 256^l`` with ``D_l`` in ``[-128, 127]`` (one digit for int8 weights, three for
  int4/NVFP4). Each ``q · D_lᵀ`` runs as ``torch._int_mm`` (int8 × int8 → int32) on CPU — every partial sum
  is at most ``K · 127 · 128 < 2^31`` for ``K <= 2^16`` — and on CUDA as a bf16 GEMM with fp32 output
  (``torch.mm(..., out_dtype=torch.float32)``) over K-chunks of 1024 (partial sums ``<= 1024·127·128 < 2^24``,
  exact in fp32); digits are recombined in int64.
* **attention scores** ``Σ_d qq·kq`` (int8-valued, ``|acc| <= D·127² < 2^22``): fp32 batched GEMM (CPU; CUDA
  bf16 operands with fp32 output when available), exact because every partial sum is below 2^24.
* **attention context** ``Σ_j P·V`` (``P <= 2^16``, ``|V| < 2^31``, ``|Σ| < 2^48``): fp64 batched GEMM, exact
  because every product and partial sum is an integer below 2^53.

fp32 paths are used only while ``torch.get_float32_matmul_precision() == "highest"`` (and, on CUDA, TF32 is
off); otherwise the fp64 path is taken, which is exact for all of them.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime import torch_fixedpoint as tfp
from kolm_audit.runtime.reference import IntLinear

Tensor = torch.Tensor
_NEG_SENTINEL = -(1 << 62)
_CUDA_K_CHUNK = 1024            # 1024 · 127 · 128 < 2^24: bf16 GEMM partial sums exact in fp32
_CPU_K_CHUNK = 1 << 17          # 2^17 · 127 · 128 < 2^31: int8 GEMM partial sums exact in int32
_F32_EXACT = 1 << 24            # every integer of magnitude <= 2^24 is exact in fp32
_DIGIT_BASE_BITS = 8            # balanced base-256 digits in [-128, 127]


@dataclass(frozen=True)
class TorchLinear:
    """A linear layer prepared for a device: weight digits ``[K, N]`` plus int64 ``mult``/``shift``/``bias``."""

    digits: tuple[Tensor, ...]         # int8 (CPU) or bf16 (CUDA) [K, N]; W = Σ_l digits[l] · 256^l
    mult: Tensor                       # int64 [N]
    shift: Tensor                      # int64 [N]
    bias: Tensor                       # int64 [N] Q.16
    out_features: int


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


class TorchOps:
    """The torch backend (``device`` ``"cpu"`` or ``"cuda"``): int64 tensors, exact GEMM paths."""

    def __init__(self, *, device: str = "cpu", threads: int | None = None) -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError("device must be cpu or cuda")
        self.name = device
        self.device = torch.device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads() if device == "cpu" else threads
        self._bf16_mm = device == "cuda"           # bf16 GEMM with fp32 output (else fp32/fp64, both exact)
        self._bf16_bmm = device == "cuda"

    # ---- arrays -------------------------------------------------------------------------------------------
    def const(self, arr: Any) -> Tensor:
        if isinstance(arr, Tensor):
            return arr.to(device=self.device, dtype=torch.int64)
        return torch.from_numpy(np.ascontiguousarray(np.asarray(arr).astype(np.int64))).to(self.device)

    def mask(self, arr: Any) -> Tensor:
        if isinstance(arr, Tensor):
            return arr.to(device=self.device, dtype=torch.bool)
        return torch.from_numpy(np.ascontiguousarray(np.asarray(arr, dtype=bool))).to(self.device)

    def numpy(self, x: Any) -> np.ndarray:
        return x.cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)

    def heads(self, x: Tensor, n: int, d: int) -> Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, n, d).permute(0, 2, 1, 3)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, n, t, d = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, n * d)

    def cat(self, xs: Sequence[Tensor], axis: int) -> Tensor:
        return torch.cat(list(xs), dim=axis)

    def repeat(self, x: Tensor, rep: int, axis: int) -> Tensor:
        return x if rep == 1 else torch.repeat_interleave(x, rep, dim=axis)

    def take(self, x: Tensor, rows: np.ndarray) -> Tensor:
        return x.index_select(0, torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device))

    # ---- exact matrix products ----------------------------------------------------------------------------
    def _f32_exact(self) -> bool:
        """fp32 GEMM is an exact integer carrier only at full fp32 precision (no TF32 / bf16 shortcuts)."""
        if torch.get_float32_matmul_precision() != "highest":
            return False
        return self.device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32

    def _mm_digit(self, a: Tensor, d: Tensor) -> Tensor:
        """Exact ``a @ d`` for ``a`` [M, K] in [-127, 127] (int8 on CPU, bf16 on CUDA) and a digit [K, N]."""
        k = a.shape[1]
        cpu = self.device.type == "cpu"
        step = _CPU_K_CHUNK if cpu else _CUDA_K_CHUNK
        out: Tensor | None = None
        for k0 in range(0, k, step):
            ak, dk = a[:, k0:k0 + step], d[k0:k0 + step]
            part = torch._int_mm(ak, dk) if cpu else self._mm_bf16(ak, dk)   # exact partial sums
            part = part.to(torch.int64)
            out = part if out is None else out + part
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
        digits = weight_digits(np.asarray(lin.weight).T)          # [K, N] each
        dtype = torch.int8 if self.device.type == "cpu" else torch.bfloat16
        dev = tuple(torch.from_numpy(np.ascontiguousarray(d)).to(self.device).to(dtype) for d in digits)
        return TorchLinear(digits=dev, mult=self.const(lin.mult), shift=self.const(lin.shift),
                           bias=self.const(lin.bias), out_features=int(lin.weight.shape[0]))

    def int_matmul(self, q: Tensor, lin: TorchLinear) -> Tensor:
        """Exact ``q @ Wᵀ`` for int64 ``q`` [..., K] with ``|q| <= 127`` → int64 [..., N]."""
        k = q.shape[-1]
        a = q.reshape(-1, k).to(torch.int8 if self.device.type == "cpu" else torch.bfloat16)
        acc: Tensor | None = None
        for j, d in enumerate(lin.digits):
            part = self._mm_digit(a, d)
            part = part if j == 0 else torch.bitwise_left_shift(part, _DIGIT_BASE_BITS * j)
            acc = part if acc is None else acc + part
        assert acc is not None
        return acc.reshape(*q.shape[:-1], lin.out_features)

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

    # ---- primitives ---------------------------------------------------------------------------------------
    def linear(self, x: Tensor, lin: TorchLinear) -> Tensor:
        q, m, e = tfp.quantize_rows(x)                                  # [...,K] int8 values; [...,1]
        acc = self.int_matmul(q, lin)                                   # [...,N] int64 exact
        y = tfp.requantize(acc * m, lin.mult, lin.shift - e)            # [...,N] Q.16
        return tfp.saturate_int32(y + lin.bias)

    def prepare_embedding(self, tensors: Mapping[str, np.ndarray], prefix: str) -> tuple[Tensor, ...]:
        w = torch.from_numpy(np.ascontiguousarray(tensors[f"{prefix}.weight"])).to(self.device)
        return w, self.const(tensors[f"{prefix}.mult"]), self.const(tensors[f"{prefix}.shift"])

    def embedding(self, emb: tuple[Tensor, ...], ids: Any) -> Tensor:
        w, mult, shift = emb
        idx = self.const(ids)
        return tfp.requantize(w[idx].to(torch.int64), mult[idx].unsqueeze(-1), shift[idx].unsqueeze(-1))

    def saturate(self, x: Tensor) -> Tensor:
        return tfp.saturate_int32(x)

    def rdiv(self, a: Tensor, b: Any) -> Tensor:
        return tfp.rdiv(a, b)

    def _norm(self, c: Tensor, gamma: Tensor, beta: Tensor | None, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        h = c.shape[-1]
        cmax = c.abs().amax(dim=-1, keepdim=True)
        k = torch.clamp(tfp.bit_length(cmax) - 24, min=0)
        c2 = tfp.round_shift(c, k)
        var = tfp.rdiv((c2 * c2).sum(dim=-1, keepdim=True), h)
        eps = torch.full_like(k, eps_q32)
        v = torch.clamp(var + tfp.round_shift(eps, 2 * k), min=1)
        r, p = tfp.rsqrt(v, rsqrt_table)
        y = tfp.requantize(c * r, gamma, p - (16 - k) + 24)
        if beta is not None:
            y = y + beta
        return tfp.saturate_int32(y)

    def layer_norm(self, x: Tensor, gamma: Tensor, beta: Tensor, *, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        mu = tfp.rdiv(x.sum(dim=-1, keepdim=True), x.shape[-1])
        return self._norm(x - mu, gamma, beta, eps_q32, rsqrt_table)

    def rms_norm(self, x: Tensor, gamma: Tensor, *, eps_q32: int, rsqrt_table: Tensor) -> Tensor:
        return self._norm(x, gamma, None, eps_q32, rsqrt_table)

    def softmax(self, scores: Tensor, valid: Tensor, exp_table: Tensor) -> Tensor:
        s = torch.where(valid, scores, _NEG_SENTINEL)
        mx = s.amax(dim=-1, keepdim=True)
        t = torch.where(valid, mx - s, 0)
        e = torch.where(valid, tfp.lut_interp(t, exp_table, x0=0, step_shift=9), 0)
        total = e.sum(dim=-1, keepdim=True)
        return tfp.rdiv(torch.bitwise_left_shift(e, 16), total)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, *, scale_mult: int, scale_shift: int,
                  exp_table: Tensor) -> Tensor:
        qq, mq, eq = tfp.quantize_rows(q)                               # [B,H,Tq,D]; [B,H,Tq,1]
        kq, mk, ek = tfp.quantize_rows(k)                               # [B,H,Tk,D]; [B,H,Tk,1]
        acc = self._bmm_small(qq, kq.transpose(-1, -2))                 # [B,H,Tq,Tk], |acc| < 2^22
        mm = mq * mk.transpose(-1, -2)
        ee = eq + ek.transpose(-1, -2)
        scores = tfp.requantize(acc * mm, scale_mult, scale_shift + 16 - ee)
        probs = self.softmax(scores, key_valid, exp_table)              # [B,H,Tq,Tk] Q.16
        ctx = torch.matmul(probs.double(), v.double()).to(torch.int64)  # exact: |Σ P·V| < 2^48 < 2^53
        return tfp.saturate_int32(tfp.round_shift(ctx, 16))

    def gelu(self, x: Tensor, cdf_table: Tensor) -> Tensor:
        phi = tfp.lut_interp(x, cdf_table, x0=-8 << 16, step_shift=9)
        return tfp.saturate_int32(tfp.round_shift(x * phi, 30))

    def tanh(self, x: Tensor, tanh_table: Tensor) -> Tensor:
        return tfp.round_shift(tfp.lut_interp(x, tanh_table, x0=-8 << 16, step_shift=9), 14)

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
        sig = tfp.lut_interp(x, sigmoid_table, x0=-16 << 16, step_shift=9)
        return tfp.saturate_int32(tfp.round_shift(x * sig, 30))

    def swiglu(self, gate: Tensor, up: Tensor, sigmoid_table: Tensor) -> Tensor:
        return tfp.saturate_int32(tfp.round_shift(self.silu(gate, sigmoid_table) * up, 16))
