"""Composite operations of ``kolm-int/1`` backends, defined as compositions of their primitives.

A model forward calls these where a fast backend can run several primitives in one pass
(:class:`~kolm_audit.runtime.cpu_fused.FusedCpuOps` overrides them with fused kernels); this mixin is their
definition — the same primitive calls, in the same order, that the forward would make itself — so every backend
that does not override them (the numpy reference, the plain torch backend) computes them from its primitives.

Example::

    >>> import numpy as np
    >>> from kolm_audit.runtime.ops import NumpyOps
    >>> from kolm_audit.runtime.reference import IntLinear
    >>> from kolm_audit.runtime.fixedpoint import rsqrt_table
    >>> ops = NumpyOps()
    >>> lin = IntLinear(weight=np.eye(4, dtype=np.int64), wmax=1, mult=np.full(4, 1 << 30), shift=np.full(4, 30),
    ...                 bias=np.zeros(4, dtype=np.int64))
    >>> x, res = np.array([[1 << 16, 2 << 16, 3 << 16, 4 << 16]]), np.zeros((1, 4), dtype=np.int64)
    >>> s, y = ops.linear_norm(x, lin, residual=res, gamma=np.full(4, 1 << 24), beta=None, eps_q32=0,
    ...                        rsqrt_table=rsqrt_table())
    >>> s.tolist() == ops.linear(x, lin).tolist()
    True
"""

from __future__ import annotations

from typing import Any


class Composites:
    """Mixin: composite operations as compositions of the backend's primitives (``linear``, norms, ``gelu``,
    ``swiglu``, ``heads``, ``rope``, ``cat``, ``attention``, ``merge_heads``)."""

    def linear_norm(self, x: Any, lin: Any, *, residual: Any, gamma: Any, beta: Any | None, eps_q32: int,
                    rsqrt_table: Any) -> tuple[Any, Any]:
        """``(s, norm(s))`` with ``s = saturate(residual + linear(x))``: LayerNorm when ``beta`` is given, else RMSNorm
        (the residual block of §6.1 and Llama §3)."""
        s = self.linear(x, lin, residual=residual)
        if beta is None:
            return s, self.rms_norm(s, gamma, eps_q32=eps_q32, rsqrt_table=rsqrt_table)
        return s, self.layer_norm(s, gamma, beta, eps_q32=eps_q32, rsqrt_table=rsqrt_table)

    def linear_gelu(self, x: Any, lin: Any, *, cdf_table: Any) -> Any:
        """``gelu(linear(x))`` (§5.4 after §4.2)."""
        return self.gelu(self.linear(x, lin), cdf_table)

    def linear_swiglu(self, x: Any, lin: Any, *, sigmoid_table: Any) -> Any:
        """``swiglu(gate, up)`` of ``linear(x)`` whose first half of columns is the gate, the second the up projection
        (Llama §4; ``lin`` is gate|up fused by :func:`kolm_audit.runtime.ops.fuse_linears`)."""
        gu = self.linear(x, lin)
        n = gu.shape[-1] // 2
        return self.swiglu(gu[..., :n], gu[..., n:], sigmoid_table)

    def rope_attention(self, qkv: Any, positions: Any, past: tuple[Any, Any] | None, key_valid: Any, *, heads: int,
                       kv_heads: int, head_dim: int, cos_table: Any, sin_table: Any, scale_mult: int, scale_shift: int,
                       exp_table: Any) -> tuple[Any, tuple[Any, Any]]:
        """The attention block of a Llama layer (Llama spec §3, §5): ``qkv`` [B, T, (heads + 2·kv_heads)·D] holds
        q|k|v of the new tokens at ``positions`` [B, T]; RoPE of q and k, the new keys and values appended to
        ``past`` (keys after RoPE, values; [B, kv_heads, T0, D] each, or ``None``), attention over all of them with
        ``key_valid`` [B, 1, T, T0 + T]. Returns (context [B, T, heads·D] Q.16, the grown ``(keys, values)``)."""
        nq, nk = heads * head_dim, kv_heads * head_dim
        q = self.heads(qkv[..., :nq], heads, head_dim)                          # [B,nh,T,D] Q.16
        k = self.heads(qkv[..., nq:nq + nk], kv_heads, head_dim)                # [B,nkv,T,D] Q.16
        v = self.heads(qkv[..., nq + nk:], kv_heads, head_dim)                  # [B,nkv,T,D] Q.16
        q = self.rope(q, positions, cos_table, sin_table)                       # [B,nh,T,D] Q.16
        k = self.rope(k, positions, cos_table, sin_table)                       # [B,nkv,T,D] Q.16
        if past is not None:
            k, v = self.cat([past[0], k], axis=2), self.cat([past[1], v], axis=2)   # [B,nkv,T0+T,D] Q.16
        ctx = self.attention(q, k, v, key_valid, scale_mult=scale_mult, scale_shift=scale_shift,
                             exp_table=exp_table)                               # [B,nh,T,D] Q.16
        return self.merge_heads(ctx), (k, v)
