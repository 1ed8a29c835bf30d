"""Weight quantizers of ``kolm-int/1`` (int8, int4, NVFP4) and the ``quantize_checkpoint`` entry point.

Floats appear only here, once, at build time. Every stored tensor is an integer; the runtime decodes it
back to exact integer weights with :func:`kolm_audit.runtime.weights.load_linear`, where the tensor layout of
each scheme is tabled (spec: docs/runtime-spec.md §4.1).

Example::

    >>> import numpy as np
    >>> from kolm_audit.runtime.weights import load_linear
    >>> t = quantize_linear(np.array([[0.5, -1.0], [0.25, 0.0]], dtype=np.float32), None, "x", scheme="int8")
    >>> t["x.weight"].tolist(), load_linear(t, "x", scheme="int8").wmax
    ([[64, -127], [127, 0]], 127)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from kolm_audit.errors import UnsupportedModel
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.reference import GAMMA_FRAC_BITS
from kolm_audit.runtime.weights import (
    E2M1_HALVES,
    INT4_GROUP,
    INT4_QMAX,
    INT4_SCALE_MAX,
    MAX_REAL_WEIGHT_LOG2,
    MIN_SHIFT,
    NVFP4_BLOCK,
    quantization_params,
)


@dataclass(frozen=True)
class QuantizedModel:
    """Everything a ``.kolm`` needs besides provenance: manifest parts + integer tensors."""

    architecture: dict[str, Any]
    task: dict[str, Any]
    quantization: dict[str, Any]
    tensors: Mapping[str, np.ndarray]


def _mult_shift(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel real scales → (mult int32, shift int32); scales too small to matter become 0."""
    mult = np.zeros(scales.shape[0], dtype=np.int32)
    shift = np.zeros(scales.shape[0], dtype=np.int32)
    for n, s in enumerate(scales.tolist()):
        m, sh = fp.quantize_multiplier(Fraction(s))
        if sh > 80:                           # |scale| < 2^-50: the channel is zero for every input
            m, sh = 0, 0
        if m > 0 and sh < MIN_SHIFT:
            raise UnsupportedModel("weight scale too large for kolm-int/1", field="weight scale", actual=str(s))
        mult[n], shift[n] = m, sh
    return mult, shift


def _rnd(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """[N, K] 4-bit codes (0..15) → uint8 [N, K/2]; element 2j in the low nibble, 2j+1 in the high nibble."""
    c = codes.astype(np.uint8)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).astype(np.uint8)


def e4m3_table() -> np.ndarray:
    """``tables.nvfp4_e4m3``: int32 [256], code → value · 2^9 (sign bit 7; NaN codes 0x7F/0xFF → 0)."""
    out = np.zeros(256, dtype=np.int64)
    for code in range(128):
        e, m = code >> 3, code & 7
        out[code] = m if e == 0 else (8 + m) << (e - 1)
    out[0x7F] = 0
    out[128:] = -out[:128]
    return out.astype(np.int32)


def e2m1_table() -> np.ndarray:
    """``tables.nvfp4_e2m1``: int32 [16], code → 2 · value (bit 3 = sign)."""
    mags = np.array(E2M1_HALVES, dtype=np.int32)
    return np.concatenate([mags, -mags]).astype(np.int32)


def _nearest(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the nearest grid value (grid ascending, >= 0); ties go to the larger value."""
    mid = (grid[1:] + grid[:-1]) / 2
    return np.searchsorted(mid, values, side="right")


def _encode_int8(w: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    scale = np.abs(w).max(axis=1) / fp.QMAX
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(_rnd(w / safe[:, None]), -fp.QMAX, fp.QMAX).astype(np.int8)
    return {"weight": q}, scale


def int4_scale_max(k: int) -> int:
    """Largest integer group scale for input dimension ``k``: as fine as int16 allows, but coarse enough that
    ``k · 127 · 8 · scale < 2^31`` when possible, so the runtime may accumulate in int32 (at least 255)."""
    return max(255, min(INT4_SCALE_MAX, ((1 << 31) - 1) // (k * 127 * (INT4_QMAX + 1))))


def _encode_int4(w: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    n, k = w.shape
    g = w.reshape(n, k // INT4_GROUP, INT4_GROUP)
    gscale = np.abs(g).max(axis=2) / INT4_QMAX                     # [N, K/32] real group scales
    top = int4_scale_max(k)
    chan = gscale.max(axis=1) / top                                 # [N] channel scale
    safe_c = np.where(chan > 0, chan, 1.0)
    gs = np.clip(_rnd(gscale / safe_c[:, None]), 0, top)            # [N, K/32] integer group scales
    eff = gs * safe_c[:, None]
    safe_e = np.where(eff > 0, eff, 1.0)
    q = np.where(eff[:, :, None] > 0, np.clip(_rnd(g / safe_e[:, :, None]), -INT4_QMAX, INT4_QMAX), 0)
    q = q.reshape(n, k).astype(np.int64)
    return {"weight": pack_nibbles(q & 15), "group_scale": gs.astype(np.int16)}, chan


def _encode_nvfp4(w: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    n, k = w.shape
    b = w.reshape(n, k // NVFP4_BLOCK, NVFP4_BLOCK)
    amax = float(np.abs(w).max())
    gscale = amax / (6 * 448) if amax > 0 else 1.0                 # per-tensor global scale (FP32 in NVFP4)
    e4 = e4m3_table().astype(np.int64)[:127]                        # positive finite codes 0..126, ascending
    want = np.abs(b).max(axis=2) / 6 / gscale * 512                 # block scale in units of 2^-9
    bcode = _nearest(want, e4.astype(np.float64))                   # [N, K/16] E4M3 codes
    bval = e4[bcode].astype(np.float64) / 512 * gscale              # real block scale
    safe = np.where(bval > 0, bval, 1.0)
    mag = np.abs(b) / safe[:, :, None] * 2                          # magnitude in halves
    idx = np.where(bval[:, :, None] > 0, _nearest(mag, np.array(E2M1_HALVES, dtype=np.float64)), 0)
    codes = (idx | np.where(b < 0, 8, 0)).reshape(n, k)
    codes = np.where(codes == 8, 0, codes)                          # no negative zero
    chan = np.full(n, gscale / 1024)                                # W_real = gscale · (2v) · (s·2^9) / 2^10
    return {"weight": pack_nibbles(codes), "block_scale": bcode.astype(np.uint8)}, chan


def quantize_linear(weight: np.ndarray, bias: np.ndarray | None, prefix: str, *,
                    scheme: str) -> dict[str, np.ndarray]:
    """Quantize one float linear layer ``[N, K]`` (+ bias ``[N]``) into the tensors ``prefix.*`` of ``scheme``."""
    w = np.asarray(weight, dtype=np.float64)
    n, k = w.shape
    block = {"int8": 1, "int4": INT4_GROUP, "nvfp4": NVFP4_BLOCK}[quantization_params(scheme)["scheme"]]
    if k % block:
        raise UnsupportedModel(f"input dimension must be a multiple of {block} for {scheme}",
                               field=f"{prefix}.weight.shape", actual=str(list(w.shape)))
    if not np.all(np.isfinite(w)):
        raise UnsupportedModel("non-finite weight", field=f"{prefix}.weight")
    if w.size and np.abs(w).max() >= 2.0 ** (MAX_REAL_WEIGHT_LOG2 - 1):
        raise UnsupportedModel("weight magnitude too large for kolm-int/1", field=f"{prefix}.weight",
                               expected=f"|w| < 2^{MAX_REAL_WEIGHT_LOG2 - 1}")
    parts, scale = {"int8": _encode_int8, "int4": _encode_int4, "nvfp4": _encode_nvfp4}[scheme](w)
    mult, shift = _mult_shift(scale)
    b = np.zeros(n) if bias is None else np.asarray(bias, dtype=np.float64)
    bq = fp.to_fixed(b, fp.ACT_FRAC_BITS)
    if np.any(np.abs(bq) > fp.INT32_MAX):
        raise UnsupportedModel("bias outside the Q.16 int32 range", field=f"{prefix}.bias")
    out = {f"{prefix}.{name}": arr for name, arr in parts.items()}
    out.update({f"{prefix}.mult": mult, f"{prefix}.shift": shift, f"{prefix}.bias": bq.astype(np.int32)})
    return out


def nvfp4_tables() -> dict[str, np.ndarray]:
    return {"tables.nvfp4_e2m1": e2m1_table(), "tables.nvfp4_e4m3": e4m3_table()}


def quantize_embedding(table: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Embedding table [V, H] → int8 rows with a per-row (mult, shift) giving Q.16 values (spec §6.1)."""
    w = np.asarray(table, dtype=np.float64)
    parts, scale = _encode_int8(w)
    mult, shift = _mult_shift(scale * (1 << fp.ACT_FRAC_BITS))
    return {f"{prefix}.weight": parts["weight"], f"{prefix}.mult": mult, f"{prefix}.shift": shift}


def quantize_norm(gamma: np.ndarray, beta: np.ndarray | None, prefix: str) -> dict[str, np.ndarray]:
    """LayerNorm/RMSNorm weights: gamma Q.24 int32, beta Q.16 int32 (spec §5.3)."""
    g = fp.to_fixed(gamma, GAMMA_FRAC_BITS)
    if np.any(np.abs(g) > fp.INT32_MAX):
        raise UnsupportedModel("norm weight outside the Q.24 int32 range (|gamma| < 128)", field=f"{prefix}.gamma")
    out = {f"{prefix}.gamma": g.astype(np.int32)}
    if beta is not None:
        b = fp.to_fixed(beta, fp.ACT_FRAC_BITS)
        if np.any(np.abs(b) > fp.INT32_MAX):
            raise UnsupportedModel("norm bias outside the Q.16 int32 range", field=f"{prefix}.beta")
        out[f"{prefix}.beta"] = b.astype(np.int32)
    return out
