"""Reading quantized weights of ``kolm-int/1`` back into exact integers (spec: docs/runtime-spec.md §4.1).

The build side (float → integer codes) is :mod:`kolm_audit.compile.quantize`; this module only decodes what an
artifact stores and checks every bound the spec relies on, so a crafted file cannot overflow an accumulation.

==========  =============================================  ================================================
scheme      tensors of a linear layer ``P``                  effective integer weight ``W[n, k]``
==========  =============================================  ================================================
int8        ``P.weight`` int8 [N, K]                         ``weight``
int4        ``P.weight`` uint8 [N, K/2] (two per byte),      ``q4 · group_scale[n, k // 32]``
            ``P.group_scale`` int16 [N, K/32]
nvfp4       ``P.weight`` uint8 [N, K/2] (E2M1 codes),        ``e2m1[code] · e4m3[block_scale[n, k // 16]]``
            ``P.block_scale`` uint8 [N, K/16] (E4M3 codes)   (tables.nvfp4_e2m1, tables.nvfp4_e4m3)
all         ``P.mult`` int32 [N], ``P.shift`` int32 [N],     real weight ≈ ``W · mult / 2^shift``
            ``P.bias`` int32 [N] (Q.16)
==========  =============================================  ================================================

Example::

    >>> import numpy as np
    >>> t = {"x.weight": np.array([[64, -127], [127, 0]], dtype=np.int8),
    ...      "x.mult": np.array([1 << 30, 1 << 30], dtype=np.int32), "x.shift": np.array([37, 37], dtype=np.int32),
    ...      "x.bias": np.zeros(2, dtype=np.int32)}
    >>> load_linear(t, "x", scheme="int8").wmax
    127
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kolm_audit.errors import ArtifactError, UnsupportedModel
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.reference import IntLinear

SCHEMES = ("int8", "int4", "nvfp4")
INT4_GROUP = 32
INT4_QMAX = 7
INT4_SCALE_MAX = 32767              # int16 group scales, relative to the channel scale
NVFP4_BLOCK = 16
E2M1_HALVES = (0, 1, 2, 3, 4, 6, 8, 12)     # 2 × E2M1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6
MIN_SHIFT, MAX_SHIFT = 10, 80               # linear-layer shifts (spec §4.2: shift - e >= 0, e <= 10)
MAX_REAL_WEIGHT_LOG2 = 14                   # every effective real weight |W·M/2^S| < 2^14 (spec §4.3)


def quantization_params(scheme: str) -> dict[str, Any]:
    """The manifest ``quantization`` object of a scheme (spec §4.1)."""
    base: dict[str, Any] = {"scheme": scheme, "activations": "int8-per-token", "embeddings": "int8-per-row"}
    if scheme == "int8":
        return {**base, "weights": "int8-per-output-channel"}
    if scheme == "int4":
        return {**base, "weights": "int4-groupwise", "group_size": INT4_GROUP}
    if scheme == "nvfp4":
        return {**base, "weights": "nvfp4", "block_size": NVFP4_BLOCK}
    raise UnsupportedModel("unknown quantization scheme", field="quantization.scheme",
                           expected=" | ".join(SCHEMES), actual=repr(scheme))


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 [N, K/2] → int64 [N, K] codes 0..15 (inverse of :func:`pack_nibbles`)."""
    p = packed.astype(np.int64)
    out = np.empty((p.shape[0], p.shape[1] * 2), dtype=np.int64)
    out[:, 0::2] = p & 15
    out[:, 1::2] = p >> 4
    return out


def need_tensor(tensors: Mapping[str, np.ndarray], name: str, dtype: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """The tensor ``name`` with exactly ``dtype`` (and ``shape`` unless None), else :class:`ArtifactError`."""
    if name not in tensors:
        raise ArtifactError("tensor missing", field=f"tensors.{name}")
    arr = tensors[name]
    if arr.dtype != np.dtype(dtype) or (shape is not None and tuple(arr.shape) != shape):
        raise ArtifactError("tensor has the wrong dtype or shape", field=f"tensors.{name}",
                            expected=f"{dtype} {list(shape) if shape else ''}".strip(),
                            actual=f"{arr.dtype} {list(arr.shape)}")
    return arr


def load_linear(tensors: Mapping[str, np.ndarray], prefix: str, *, scheme: str) -> IntLinear:
    """Decode the tensors ``prefix.*`` into an exact integer :class:`IntLinear` (spec §4.1)."""
    mult = need_tensor(tensors, f"{prefix}.mult", "int32", None)
    n = mult.shape[0]
    shift = need_tensor(tensors, f"{prefix}.shift", "int32", (n,))
    bias = need_tensor(tensors, f"{prefix}.bias", "int32", (n,))
    if scheme == "int8":
        w = need_tensor(tensors, f"{prefix}.weight", "int8", None).astype(np.int32)
    elif scheme in ("int4", "nvfp4"):
        packed = need_tensor(tensors, f"{prefix}.weight", "uint8", None)
        codes = unpack_nibbles(packed)
        k = codes.shape[1]
        if scheme == "int4":
            gs = need_tensor(tensors, f"{prefix}.group_scale", "int16", (n, k // INT4_GROUP)).astype(np.int64)
            if np.any(gs < 0):
                raise ArtifactError("negative int4 group scale", field=f"tensors.{prefix}.group_scale",
                                    expected="0..32767")
            q = np.where(codes >= 8, codes - 16, codes)
            w = q * np.repeat(gs, INT4_GROUP, axis=1)
        else:
            bs = need_tensor(tensors, f"{prefix}.block_scale", "uint8", (n, k // NVFP4_BLOCK)).astype(np.int64)
            if np.any((bs & 0x7F) == 0x7F):
                raise ArtifactError("NaN E4M3 block scale", field=f"tensors.{prefix}.block_scale")
            e2 = need_tensor(tensors, "tables.nvfp4_e2m1", "int32", (16,)).astype(np.int64)
            e4 = need_tensor(tensors, "tables.nvfp4_e4m3", "int32", (256,)).astype(np.int64)
            w = e2[codes] * np.repeat(e4[bs], NVFP4_BLOCK, axis=1)
        w = w.astype(np.int32)
    else:
        quantization_params(scheme)
        raise AssertionError("unreachable")
    if w.shape[0] != n:
        raise ArtifactError("weight rows differ from mult length", field=f"tensors.{prefix}.weight",
                            expected=f"{n} rows", actual=str(list(w.shape)))
    live = mult != 0
    if np.any(live & ((shift < MIN_SHIFT) | (shift > MAX_SHIFT))) or np.any(np.abs(mult.astype(np.int64)) >= 1 << 31):
        raise ArtifactError("requantization shift out of range", field=f"tensors.{prefix}.shift",
                            expected=f"{MIN_SHIFT}..{MAX_SHIFT}")
    rowmax = np.abs(w.astype(np.int64)).max(axis=1) if w.size else np.zeros(n, dtype=np.int64)
    sh = shift.astype(np.int64)
    small = sh < 48                              # else rowmax·|M| < 2^53 < 2^(S+14) holds trivially
    limit = np.left_shift(np.int64(1), np.where(small, sh + MAX_REAL_WEIGHT_LOG2, 0))
    if np.any(small & (rowmax * np.abs(mult.astype(np.int64)) >= limit)):
        raise ArtifactError("effective weight too large (|W·M/2^S| must be < 2^14)", field=f"tensors.{prefix}.mult")
    wmax = int(rowmax.max()) if w.size else 0
    return IntLinear(weight=w, wmax=wmax, mult=mult.astype(np.int64), shift=shift.astype(np.int64),
                     bias=bias.astype(np.int64))


def check_embedding(tensors: Mapping[str, np.ndarray], prefix: str, *, rows: int, dim: int) -> None:
    """Validate an int8 embedding table ``prefix.*`` [rows, dim] at load (ArtifactError naming the tensor)."""
    w = need_tensor(tensors, f"{prefix}.weight", "int8", (rows, dim)).astype(np.int64)
    mult = need_tensor(tensors, f"{prefix}.mult", "int32", (rows,)).astype(np.int64)
    shift = need_tensor(tensors, f"{prefix}.shift", "int32", (rows,)).astype(np.int64)
    if np.any((mult != 0) & ((shift < 0) | (shift > MAX_SHIFT))):
        raise ArtifactError("embedding shift out of range", field=f"tensors.{prefix}.shift",
                            expected=f"0..{MAX_SHIFT}")
    # a row is an activation (spec §3.1: int32 range); requantize is monotone in w for a fixed row scale, so the
    # row's extremes come from its smallest and largest weight
    if rows and dim:
        live, sh = mult != 0, np.where(mult != 0, shift, 0)
        ends = [np.where(live, fp.requantize(w.min(axis=1), mult, sh), 0),
                np.where(live, fp.requantize(w.max(axis=1), mult, sh), 0)]
        bad = np.flatnonzero((np.minimum(*ends) < fp.INT32_MIN) | (np.maximum(*ends) > fp.INT32_MAX))
        if bad.size:
            v = int(bad[0])
            raise ArtifactError("embedding row outside the int32 range", field=f"tensors.{prefix}.mult",
                                expected="every row requantize(weight[v], mult[v], shift[v]) within int32 (spec §3.1)",
                                actual=f"row {v}: values {int(ends[0][v])}..{int(ends[1][v])}")
