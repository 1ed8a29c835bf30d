"""Composite operations of the model forwards, composed from a backend's primitives (:class:`ComposedOps`).

A model forward calls ``ops.linear_norm``, ``ops.linear_swiglu``, ``ops.linear_gelu`` and ``ops.qkv_rope``; the numpy
reference and the torch backends get them from this mixin (the reference's sequence of operations), and a fused
backend runs each as fewer kernels with the same integers. ``ops.decode_forward`` is the one optional composite: a
backend may run the whole forward of a Llama decoding step at once; here it declines (``None``) and the model
composes it itself.

Example::

    >>> import numpy as np
    >>> from kolm_audit.runtime.ops import NumpyOps
    >>> from kolm_audit.runtime.reference import IntLinear
    >>> from kolm_audit.compile.tables import gelu_cdf_table
    >>> lin = IntLinear(weight=np.eye(2, dtype=np.int64), wmax=1, mult=np.full(2, 1 << 30), shift=np.full(2, 30),
    ...                 bias=np.zeros(2, dtype=np.int64))
    >>> ops = NumpyOps()
    >>> x = np.array([[65536, -65536]])
    >>> ops.linear_gelu(x, lin, gelu_cdf_table()).tolist() == ops.gelu(ops.linear(x, lin), gelu_cdf_table()).tolist()
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Array = Any   # a backend's integer array: np.ndarray (numpy) or torch.Tensor (cpu, cuda)


class ComposedOps:
    """The composite operations of the model forwards, composed from a backend's primitives.

    A fused backend overrides them with fewer kernels (``FusedTritonOps``: a linear layer's epilogue also does the
    activation, the residual add, the next norm and the next layer's input quantization); the integers are those of
    this composition, which is the reference's sequence of operations.
    """

    def linear_norm(self, x: Array, lin: Any, *, residual: Array, gamma: Array, beta: Array | None, eps_q32: int,
                    rsqrt_table: Array) -> tuple[Array, Array]:
        """``r = saturate(residual + linear(x))`` and its norm: LayerNorm with ``beta``, RMSNorm without."""
        ops: Any = self
        r = ops.linear(x, lin, residual=residual)                            # [...,N] Q.16
        if beta is None:
            return r, ops.rms_norm(r, gamma, eps_q32=eps_q32, rsqrt_table=rsqrt_table)
        return r, ops.layer_norm(r, gamma, beta, eps_q32=eps_q32, rsqrt_table=rsqrt_table)

    def linear_swiglu(self, x: Array, lin: Any, sigmoid_table: Array) -> Array:
        """``swiglu(gate, up)`` of a linear layer whose outputs are gate|up side by side (Llama spec §5)."""
        ops: Any = self
        gu = ops.linear(x, lin)                                              # [...,2I] Q.16 gate|up
        n = gu.shape[-1] // 2
        return ops.swiglu(gu[..., :n], gu[..., n:], sigmoid_table)           # [...,I] Q.16

    def linear_gelu(self, x: Array, lin: Any, cdf_table: Array) -> Array:
        """``gelu(linear(x))`` (spec §5.4, §6.1)."""
        ops: Any = self
        return ops.gelu(ops.linear(x, lin), cdf_table)

    def qkv_rope(self, x: Array, lin: Any, positions: Array, cos_table: Array, sin_table: Array, *, heads: int,
                 kv_heads: int, head_dim: int) -> tuple[Array, Array, Array]:
        """q, k, v of a linear layer whose outputs are q|k|v side by side, split into heads, RoPE applied to q and k
        (Llama spec §3–§4): [B, heads, T, D], [B, kv_heads, T, D], [B, kv_heads, T, D] Q.16."""
        ops: Any = self
        qkv = ops.linear(x, lin)                                             # [B,T,(nh+2nkv)·D] Q.16
        nq, nk = heads * head_dim, kv_heads * head_dim
        q = ops.heads(qkv[..., :nq], heads, head_dim)                        # [B,nh,T,D]
        k = ops.heads(qkv[..., nq:nq + nk], kv_heads, head_dim)              # [B,nkv,T,D]
        v = ops.heads(qkv[..., nq + nk:], kv_heads, head_dim)                # [B,nkv,T,D]
        return (ops.rope(q, positions, cos_table, sin_table), ops.rope(k, positions, cos_table, sin_table), v)

    def decode_forward(self, ids: np.ndarray, positions: np.ndarray, key_valid: np.ndarray, keys: Sequence[Array],
                       values: Sequence[Array], *, last: bool = False, tok_emb: Any, layers: Sequence[Any],
                       first_gamma: Array,
                       post_gammas: Sequence[Array], next_gammas: Sequence[Array], lm_head: Any, eps_q32: int,
                       rsqrt_table: Array, heads: int, cos_table: Array, sin_table: Array, scale_mult: int,
                       scale_shift: int, exp_table: Array,
                       sigmoid_table: Array) -> tuple[np.ndarray, list[Array], list[Array]] | None:
        """The forward of a Llama decoding step, where the backend has it as one kernel: the new tokens ``ids``
        [B, T] at ``positions`` [B, T] with the mask ``key_valid`` [B, 1, T, T0 + T] (host numpy arrays, the step's
        inputs) over each layer's cache ``keys[i]``/``values[i]`` [B, Hk, T0, D]; layer ``i`` with ``layers[i]``
        (its prepared linears) and norms ``post_gammas[i]``, ``next_gammas[i]`` (the next layer's input norm; the
        last one: the final norm); ``keys`` empty for a prefill. Returns ``(logits [B, T, V] Q.16 on the host —
        with ``last`` [B, 1, V], each request's last position only — the grown keys, values)`` —
        exactly what ``LlamaRuntime._forward`` composes (tested against that composition). ``None``: not offered
        for these inputs, the model composes the step."""
        return None
