"""Host forms of a model's constant tensors for the fused CPU backend's kernels, made once and kept on the tensors.

The kernels of :mod:`~kolm_audit.runtime.cpu_fused` read numpy arrays: the scales and tables of a layer
(:func:`host`, :func:`table`), a linear layer's int8 weight with its sums and packed panels (:func:`gemv_operand`),
and the nested tuples a one-kernel forward takes (:func:`step_operands` for
:func:`~kolm_audit.runtime.cpu_decode.decode_forward`, :func:`encode_operands` for
:func:`~kolm_audit.runtime.cpu_encode.encode_forward`). Each is ``None`` where the fast kernels' bounds do not hold
(then the general paths run).

Example::

    >>> import torch
    >>> t = torch.tensor([5, 7, 4])
    >>> table(t, "pair").tolist() == [5 + (2 << 32), 7 + (-3 << 32)]
    True
    >>> host(t) is host(t)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime import cpu_gemv as kg
from kolm_audit.runtime import cpu_kernels as kn
from kolm_audit.runtime.torch_matmul import TorchLinear

Tensor = torch.Tensor


def host(t: Tensor) -> np.ndarray:
    """The numpy view of a constant CPU tensor (weights' scales, tables), made once and kept on the tensor."""
    arr = getattr(t, "_kolm_np", None)
    if arr is None:
        arr = t.numpy()
        t._kolm_np = arr                # type: ignore[attr-defined]
    return arr


def table(t: Tensor, kind: str) -> np.ndarray | None:
    """A host form of a table tensor for the fast kernels, made once and kept on the tensor, or ``None`` when the
    table is outside the bounds those kernels rely on (then the general path runs): ``pair`` — the pair table of
    :func:`~kolm_audit.runtime.cpu_kernels.pair_table`; ``softmax`` — the same for ``tables.exp`` when every entry is
    in ``[0, 2^30]`` and ``T[0] >= 1`` (the float64 division of §5.2 is then exact and ``Σp >= 1``); ``int32`` — the
    entries as int32 when they fit (RoPE's 32-bit products)."""
    key = f"_kolm_{kind}"
    if not hasattr(t, key):
        vals = host(t).astype(np.int64)
        found: np.ndarray | None
        if kind == "int32":
            fits = vals.size == 0 or (vals.min() >= kn.I32_MIN and vals.max() <= kn.I32_MAX)
            found = np.ascontiguousarray(vals, dtype=np.int32) if fits else None
        else:
            found = kn.pair_table(vals)
            if kind == "softmax" and found is not None and not (vals.min() >= 0 and vals.max() <= 1 << 30
                                                                 and vals[0] >= 1):
                found = None
        setattr(t, key, found)
    return getattr(t, key)


def gemv_operand(lin: TorchLinear) -> tuple[np.ndarray, ...] | None:
    """``(w int8 [N, K], wsum, mult, shift, bias, wp, psum)`` of a layer whose product is one int8 digit in one chunk
    (the operand of :mod:`~kolm_audit.runtime.cpu_gemv` and :mod:`~kolm_audit.runtime.cpu_decode`: ``wsum`` of
    :func:`~kolm_audit.runtime.cpu_gemv.weight_sums`, ``wp``, ``psum`` the packed panels of
    :func:`~kolm_audit.runtime.cpu_gemv.pack_weights`), made once and kept on the weight tensor; ``None`` for other
    plans (wider weights, chunked K: the torch product runs them)."""
    w = lin.weight
    if not hasattr(w, "_kolm_gemv"):
        found = None
        if lin.plan.digits == 1 and lin.plan.chunks == 1 and w.dtype == torch.int8:
            wn = np.ascontiguousarray(host(w))
            found = (wn, kg.weight_sums(wn), host(lin.mult), host(lin.shift), host(lin.bias), *kg.pack_weights(wn))
        w._kolm_gemv = found            # type: ignore[attr-defined]
    return w._kolm_gemv                # type: ignore[attr-defined]


def layer_operands(layers: Sequence[Any], post: Sequence[Tensor], nxt: Sequence[Tensor]) -> tuple | None:
    """Per layer ``(qkv, o_proj, gate_up, down_proj operands, post-attention gamma, next gamma)`` as host arrays
    for :func:`~kolm_audit.runtime.cpu_decode.decode_forward`, or ``None`` when a layer's product is not one int8
    digit."""
    out = []
    for lay, gp, gn in zip(layers, post, nxt, strict=True):
        lins = tuple(gemv_operand(lay[name]) for name in ("qkv", "o_proj", "gate_up", "down_proj"))
        if any(op is None for op in lins):
            return None
        out.append((*lins, host(gp), host(gn)))
    return tuple(out)


def step_operands(tok_emb: tuple[Tensor, ...], layers: Sequence[Any], first: Tensor, post: Sequence[Tensor],
                   nxt: Sequence[Tensor], lm_head: TorchLinear, rsqrt: Tensor, cos_t: Tensor, sin_t: Tensor,
                   exp_t: Tensor, sig_t: Tensor) -> tuple | None:
    """The constant operands of :func:`~kolm_audit.runtime.cpu_decode.decode_forward`: ``(emb, g_first, stack,
    head, rsqrt, cos, sin, exp_pair, sig_pair)``, or ``None`` when one is outside the fast kernels' bounds."""
    found = (tuple(host(a) for a in tok_emb), host(first), layer_operands(layers, post, nxt),
             gemv_operand(lm_head), host(rsqrt), table(cos_t, "int32"), table(sin_t, "int32"),
             table(exp_t, "softmax"), table(sig_t, "pair"))
    return None if any(a is None for a in found) else found


def encode_operands(word_emb: tuple[Tensor, ...], pos_type: Tensor, emb_norm: tuple[Tensor, Tensor],
                     layers: Sequence[Any], layer_norms: Sequence[tuple[Tensor, ...]], rsqrt: Tensor, exp_t: Tensor,
                     cdf_t: Tensor) -> tuple | None:
    """The constant operands of :func:`~kolm_audit.runtime.cpu_encode.encode_forward`: ``(emb, add, g_emb, b_emb,
    layers, rsqrt, exp_pair, cdf_pair)``, a layer ``(qkv, attn.o, ffn.up, ffn.down operands, g_attn, b_attn, g_ffn,
    b_ffn)``; ``None`` when a product is not one int8 digit or a table is outside the fast kernels' bounds."""
    stack = []
    for lay, norms in zip(layers, layer_norms, strict=True):
        lins = tuple(gemv_operand(lay[name]) for name in ("qkv", "attn.o", "ffn.up", "ffn.down"))
        if any(op is None for op in lins):
            return None
        stack.append((*lins, *(host(a) for a in norms)))
    found = (tuple(host(a) for a in word_emb), host(pos_type), host(emb_norm[0]), host(emb_norm[1]),
             tuple(stack), host(rsqrt), table(exp_t, "softmax"), table(cdf_t, "pair"))
    return None if not stack or any(a is None for a in found) else found
