"""Backends of ``kolm-int/1``: one object (``ops``) with every primitive a model forward calls.

The model files (:mod:`~kolm_audit.runtime.models.llama`, :mod:`~kolm_audit.runtime.models.bert`) keep their
readable forward and call ``ops.linear``, ``ops.attention``, ``ops.rms_norm``… on the backend's own arrays.
:class:`NumpyOps` is the reference (it calls :mod:`~kolm_audit.runtime.reference`,
:mod:`~kolm_audit.runtime.llama_ops` and :mod:`~kolm_audit.runtime.fixedpoint` unchanged);
:class:`kolm_audit.runtime.torch_backend.TorchOps` computes the same integers on torch CPU or CUDA. Every
backend returns identical integers (tested on every conformance vector), so the choice of backend — like the
thread count — never changes an output; it is recorded for information only.

Backend names: ``numpy``; ``cpu`` and ``cuda`` (torch); ``auto`` = ``cuda`` when a GPU is visible, else ``cpu``
when torch imports, else ``numpy``.

Example::

    >>> import numpy as np
    >>> ops = get_ops("numpy")
    >>> ops.name, ops.numpy(ops.saturate(ops.const(np.array([1 << 40, -5])))).tolist()
    ('numpy', [2147483647, -5])
    >>> resolve_backend("numpy")
    'numpy'
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from kolm_audit.errors import InputError
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import llama_ops as lo
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime.composed import ComposedOps

BACKENDS = ("auto", "numpy", "cpu", "cuda")
THREADS_ENV = "KOLM_THREADS"

Array = Any   # a backend's integer array: np.ndarray (numpy) or torch.Tensor (cpu, cuda)


class Ops(Protocol):
    """What a model forward asks of a backend. Every method returns the integers the reference returns.

    Arrays are the backend's own (``const`` and ``mask`` bring numpy arrays in, ``numpy`` takes them out);
    ``prepare_linear``/``prepare_embedding`` turn loaded weights into whatever the backend's matmul wants.
    The formats are those of docs/runtime-spec.md: activations Q.16 saturated to int32, tables Q.30.
    """

    name: str                    # "numpy" | "cpu" | "cuda": the backend actually used (recorded, informational)
    threads: int | None          # torch thread count, None for numpy

    def const(self, arr: Any) -> Array: ...
    def mask(self, arr: Any) -> Array: ...
    def numpy(self, x: Array) -> np.ndarray: ...
    def heads(self, x: Array, n: int, d: int) -> Array: ...
    def merge_heads(self, x: Array) -> Array: ...
    def cat(self, xs: Sequence[Array], axis: int) -> Array: ...
    def take(self, x: Array, rows: np.ndarray) -> Array: ...
    def prepare_linear(self, lin: ref.IntLinear) -> Any: ...
    def linear(self, x: Array, lin: Any, *, residual: Array | None = None) -> Array: ...
    def prepare_embedding(self, tensors: Mapping[str, np.ndarray], prefix: str) -> Any: ...
    def embedding(self, emb: Any, ids: np.ndarray, *, add: Array | None = None,
                  add_rows: np.ndarray | None = None) -> Array: ...
    def saturate(self, x: Array) -> Array: ...
    def layer_norm(self, x: Array, gamma: Array, beta: Array, *, eps_q32: int, rsqrt_table: Array) -> Array: ...
    def rms_norm(self, x: Array, gamma: Array, *, eps_q32: int, rsqrt_table: Array) -> Array: ...
    def attention(self, q: Array, k: Array, v: Array, key_valid: Array, *, scale_mult: int, scale_shift: int,
                  exp_table: Array, key_len: Array | None = None) -> Array: ...
    def segment_attention(self, qkv: Array, bounds: np.ndarray, *, heads: int, head_dim: int, scale_mult: int,
                          scale_shift: int, exp_table: Array) -> Array: ...
    def gelu(self, x: Array, cdf_table: Array) -> Array: ...
    def tanh(self, x: Array, tanh_table: Array) -> Array: ...
    def rope(self, x: Array, positions: Array, cos_table: Array, sin_table: Array) -> Array: ...
    def swiglu(self, gate: Array, up: Array, sigmoid_table: Array) -> Array: ...
    # composites (ComposedOps gives them by composition; fused backends run them as fewer kernels)
    def linear_norm(self, x: Array, lin: Any, *, residual: Array, gamma: Array, beta: Array | None, eps_q32: int,
                    rsqrt_table: Array) -> tuple[Array, Array]: ...
    def linear_swiglu(self, x: Array, lin: Any, sigmoid_table: Array) -> Array: ...
    def linear_gelu(self, x: Array, lin: Any, cdf_table: Array) -> Array: ...
    def qkv_rope(self, x: Array, lin: Any, positions: Array, cos_table: Array, sin_table: Array, *, heads: int,
                 kv_heads: int, head_dim: int) -> tuple[Array, Array, Array]: ...
    def decode_forward(self, ids: np.ndarray, positions: np.ndarray, key_valid: np.ndarray, keys: Sequence[Array],
                       values: Sequence[Array], *, last: bool = False, tok_emb: Any, layers: Sequence[Any],
                       first_gamma: Array,
                       post_gammas: Sequence[Array], next_gammas: Sequence[Array], lm_head: Any, eps_q32: int,
                       rsqrt_table: Array, heads: int, cos_table: Array, sin_table: Array, scale_mult: int,
                       scale_shift: int, exp_table: Array,
                       sigmoid_table: Array) -> tuple[np.ndarray, list[Array], list[Array]] | None: ...
    def kv_buffer(self, like: Array, capacity: int) -> Array: ...
    def kv_write(self, kbuf: Array, vbuf: Array, k: Array, v: Array, slot: Array) -> None: ...


class NumpyOps(ComposedOps):
    """The numpy reference backend: arrays are ``np.ndarray`` int64 (bool for masks)."""

    name = "numpy"
    threads: int | None = None

    # ---- arrays -------------------------------------------------------------------------------------------
    def const(self, arr: Any) -> np.ndarray:
        """An integer array in this backend (int64)."""
        return np.asarray(arr).astype(np.int64)

    def mask(self, arr: Any) -> np.ndarray:
        return np.asarray(arr, dtype=bool)

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def heads(self, x: np.ndarray, n: int, d: int) -> np.ndarray:
        """[B, T, n·d] → [B, n, T, d]."""
        b, t, _ = x.shape
        return x.reshape(b, t, n, d).transpose(0, 2, 1, 3)

    def merge_heads(self, x: np.ndarray) -> np.ndarray:
        """[B, n, T, d] → [B, T, n·d]."""
        b, n, t, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, t, n * d)

    def cat(self, xs: Sequence[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(list(xs), axis=axis)

    def repeat(self, x: np.ndarray, rep: int, axis: int) -> np.ndarray:
        return x if rep == 1 else np.repeat(x, rep, axis=axis)

    def take(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (numpy int array) of ``x`` along axis 0."""
        return x[rows]

    # ---- primitives ---------------------------------------------------------------------------------------
    def prepare_linear(self, lin: ref.IntLinear) -> ref.IntLinear:
        return lin

    def linear(self, x: np.ndarray, lin: ref.IntLinear, *, residual: np.ndarray | None = None) -> np.ndarray:
        """Spec §4.2; with ``residual``: ``saturate(residual + linear(x))`` (the residual add of §6.1 / Llama §3)."""
        y = ref.linear(x, lin)
        return y if residual is None else fp.saturate_int32(residual + y)

    def prepare_embedding(self, tensors: Mapping[str, np.ndarray], prefix: str) -> tuple[np.ndarray, ...]:
        return (np.asarray(tensors[f"{prefix}.weight"]), tensors[f"{prefix}.mult"].astype(np.int64),
                tensors[f"{prefix}.shift"].astype(np.int64))

    def embedding(self, emb: tuple[np.ndarray, ...], ids: np.ndarray, *, add: np.ndarray | None = None,
                  add_rows: np.ndarray | None = None) -> np.ndarray:
        """Q.16 rows of an int8 embedding table: ``requantize(w[id], mult[id], shift[id])``; with ``add`` [P, H] and
        ``add_rows`` (one per id): ``saturate(rows + add[add_rows])`` (BERT's position and token-type rows)."""
        w, mult, shift = emb
        rows = fp.requantize(w[ids].astype(np.int64), mult[ids][..., None], shift[ids][..., None])
        return rows if add is None else fp.saturate_int32(rows + add[add_rows])

    def saturate(self, x: np.ndarray) -> np.ndarray:
        return fp.saturate_int32(x)

    def rdiv(self, a: np.ndarray, b: Any) -> np.ndarray:
        return fp.rdiv(a, b)

    def layer_norm(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps_q32: int,
                   rsqrt_table: np.ndarray) -> np.ndarray:
        return ref.layer_norm(x, gamma, beta, eps_q32=eps_q32, rsqrt_table=rsqrt_table)

    def rms_norm(self, x: np.ndarray, gamma: np.ndarray, *, eps_q32: int, rsqrt_table: np.ndarray) -> np.ndarray:
        return ref.rms_norm(x, gamma, eps_q32=eps_q32, rsqrt_table=rsqrt_table)

    def softmax(self, scores: np.ndarray, valid: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
        return ref.softmax(scores, valid, exp_table)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, key_valid: np.ndarray, *, scale_mult: int,
                  scale_shift: int, exp_table: np.ndarray, key_len: np.ndarray | None = None) -> np.ndarray:
        """Spec §5.2; ``k``/``v`` with fewer heads than ``q`` are repeated (query head j uses KV head j // g).
        ``key_len`` (keys at and beyond it are all masked) is a hint for backends that can skip them."""
        g = q.shape[1] // k.shape[1]
        if g > 1:
            k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        return ref.attention(q, k, v, key_valid, scale_mult=scale_mult, scale_shift=scale_shift,
                             exp_table=exp_table)

    def segment_attention(self, qkv: np.ndarray, bounds: np.ndarray, *, heads: int, head_dim: int, scale_mult: int,
                          scale_shift: int, exp_table: np.ndarray) -> np.ndarray:
        """Spec §5.2 for requests packed without padding: ``qkv`` [N, 3·heads·head_dim] holds q|k|v of every token,
        request ``i`` owns rows ``bounds[i]:bounds[i+1]`` and attends to all of its own keys (none of another's).
        Returns the context [N, heads·head_dim] Q.16."""
        hid = heads * head_dim
        out = []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            part = qkv[a:b][None]                                               # [1,T,3H] one request
            q, k, v = (self.heads(part[..., j * hid:(j + 1) * hid], heads, head_dim) for j in range(3))
            valid = np.ones((1, 1, 1, b - a), dtype=bool)                       # every key is its own
            ctx = self.attention(q, k, v, valid, scale_mult=scale_mult, scale_shift=scale_shift, exp_table=exp_table)
            out.append(self.merge_heads(ctx)[0])                                # [T,H]
        return np.concatenate(out) if out else np.zeros((0, hid), dtype=np.int64)

    def gelu(self, x: np.ndarray, cdf_table: np.ndarray) -> np.ndarray:
        return ref.gelu(x, cdf_table)

    def tanh(self, x: np.ndarray, tanh_table: np.ndarray) -> np.ndarray:
        return ref.tanh(x, tanh_table)

    def rope(self, x: np.ndarray, positions: np.ndarray, cos_table: np.ndarray, sin_table: np.ndarray) -> np.ndarray:
        return lo.rope(x, positions, cos_table, sin_table)

    def swiglu(self, gate: np.ndarray, up: np.ndarray, sigmoid_table: np.ndarray) -> np.ndarray:
        return lo.swiglu(gate, up, sigmoid_table)

    # ---- static KV buffers (docs/runtime-spec-llama.md §7: a longer buffer with unfilled, masked keys) ------
    def kv_buffer(self, like: np.ndarray, capacity: int) -> np.ndarray:
        """A zero buffer [B, H, capacity, D] of ``like``'s dtype for keys or values."""
        return np.zeros((*like.shape[:2], capacity, *like.shape[3:]), dtype=like.dtype)

    def kv_write(self, kbuf: np.ndarray, vbuf: np.ndarray, k: np.ndarray, v: np.ndarray, slot: np.ndarray) -> None:
        """Write new keys and values [B, H, T, D] at timeline indices ``slot[0] .. slot[0] + T`` of the buffers."""
        s, t = int(np.asarray(slot).reshape(-1)[0]), k.shape[2]
        kbuf[:, :, s:s + t] = k
        vbuf[:, :, s:s + t] = v


def fuse_linears(lins: Sequence[ref.IntLinear]) -> ref.IntLinear:
    """Linear layers with the same input stacked along N: one quantization and one matmul, the same integers
    (quantization is per input row, every output column is computed on its own)."""
    return ref.IntLinear(weight=np.concatenate([lin.weight for lin in lins], axis=0),
                         wmax=max(lin.wmax for lin in lins), mult=np.concatenate([lin.mult for lin in lins]),
                         shift=np.concatenate([lin.shift for lin in lins]),
                         bias=np.concatenate([lin.bias for lin in lins]))


def torch_available() -> bool:
    """Whether torch can be imported (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def resolve_backend(name: str) -> str:
    """``auto`` → ``cuda`` | ``cpu`` | ``numpy``; other names are checked (InputError naming ``backend``)."""
    if name not in BACKENDS:
        raise InputError("unknown backend", field="backend", expected=" | ".join(BACKENDS), actual=repr(name))
    if name == "numpy":
        return name
    if not torch_available():
        if name == "auto":
            return "numpy"
        raise InputError("torch is not installed", field="backend", expected="numpy (or install torch)",
                         actual=name)
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("no CUDA device is available", field="backend", expected="auto | numpy | cpu",
                         actual="cuda")
    return name


def thread_count(threads: int | None) -> int | None:
    """The torch thread count: ``threads`` if given, else ``$KOLM_THREADS``, else torch's default (recorded)."""
    if threads is None and os.environ.get(THREADS_ENV):
        raw = os.environ[THREADS_ENV]
        if not raw.isdigit() or int(raw) < 1:
            raise InputError("bad thread count", field=THREADS_ENV, expected="a positive integer", actual=raw)
        threads = int(raw)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError("bad thread count", field="threads", expected="a positive integer", actual=repr(threads))
    return threads


def get_ops(backend: str = "auto", *, threads: int | None = None, fused: bool = True, gemm: str = "auto") -> Ops:
    """The ops object of ``backend`` (``auto`` | ``numpy`` | ``cpu`` | ``cuda``); ``ops.name`` is the one used.

    With ``fused`` (the default) ``cpu`` uses :class:`~kolm_audit.runtime.cpu_fused.FusedCpuOps` when numba is
    installed and ``cuda`` uses :class:`~kolm_audit.runtime.triton_fused.FusedTritonOps` when Triton is; otherwise
    (or with ``fused=False``) plain :class:`~kolm_audit.runtime.torch_backend.TorchOps`. The same integers either
    way. ``gemm`` is the linear layers' GEMM preference of the torch backends (:func:`kolm_audit.runtime.gemm_plan.
    plan_gemm`: ``auto``, a path such as ``int_mm`` — required — or an order such as ``int_mm,bf16_fp32``)."""
    name = resolve_backend(backend)
    n = thread_count(threads)
    if name == "numpy":
        return NumpyOps()
    if name == "cpu" and fused and importlib.util.find_spec("numba") is not None:
        from kolm_audit.runtime.cpu_fused import FusedCpuOps

        return FusedCpuOps(threads=n, gemm=gemm)
    if name == "cuda" and fused and importlib.util.find_spec("triton") is not None:
        from kolm_audit.runtime.triton_fused import FusedTritonOps

        return FusedTritonOps(device="cuda", threads=n, gemm=gemm)
    from kolm_audit.runtime.torch_backend import TorchOps

    return TorchOps(device=name, threads=n, gemm=gemm)
