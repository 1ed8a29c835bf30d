"""Weight quantizers of ``kolm-int/1`` (int8, int4, NVFP4) and the ``quantize_checkpoint`` entry point.

Floats appear only here, once, at build time. Every stored tensor is an integer; the runtime decodes it
back to exact integer weights with :func:`load_linear` (spec: docs/runtime-spec.md §4.1).

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

from kolm_audit.errors import ArtifactError, UnsupportedModel
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.reference import IntLinear

SCHEMES = ("int8", "int4", "nvfp4")
INT4_GROUP = 32
INT4_QMAX = 7
INT4_SCALE_MAX = 32767              # int16 group scales, relative to the channel scale
NVFP4_BLOCK = 16
E2M1_HALVES = (0, 1, 2, 3, 4, 6, 8, 12)     # 2 × E2M1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6
E4M3_MAX_UNITS = 448 << 9                   # largest E4M3 value (448) in units of 2^-9
MIN_SHIFT, MAX_SHIFT = 10, 80               # linear-layer shifts (spec §4.2: shift - e >= 0, e <= 10)
MAX_REAL_WEIGHT_LOG2 = 14                   # every effective real weight |W·M/2^S| < 2^14 (spec §4.3)


@dataclass(frozen=True)
class QuantizedModel:
    """Everything a ``.kolm`` needs besides provenance: manifest parts + integer tensors (contracts.md)."""

    architecture: dict[str, Any]
    task: dict[str, Any]
    quantization: dict[str, Any]
    tensors: Mapping[str, np.ndarray]


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


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 [N, K/2] → int64 [N, K] codes 0..15 (inverse of :func:`pack_nibbles`)."""
    p = packed.astype(np.int64)
    out = np.empty((p.shape[0], p.shape[1] * 2), dtype=np.int64)
    out[:, 0::2] = p & 15
    out[:, 1::2] = p >> 4
    return out


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


def nvfp4_tables() -> dict[str, np.ndarray]:
    return {"tables.nvfp4_e2m1": e2m1_table(), "tables.nvfp4_e4m3": e4m3_table()}


def quantize_checkpoint(ckpt: Any, *, scheme: str) -> QuantizedModel:
    """Quantize an :class:`kolm_audit.hf.HFCheckpoint` with ``scheme`` (int8 | int4 | nvfp4).

    Dispatches on the architecture: BERT → :func:`kolm_audit.runtime.models.bert.quantize_bert`, Llama family
    → :func:`kolm_audit.runtime.models.llama.quantize_llama`.
    """
    from kolm_audit.runtime.tokenize import Tokenizer, check_tokenizer_fits

    quantization_params(scheme)
    model_type = ckpt.config.get("model_type")
    if model_type == "bert":
        from kolm_audit.runtime.models.bert import quantize_bert

        qm = quantize_bert(ckpt, scheme=scheme)
    elif model_type in ("llama", "qwen2", "mistral"):
        from kolm_audit.runtime.models.llama import quantize_llama

        qm = quantize_llama(ckpt, scheme=scheme)
    else:
        raise UnsupportedModel("unsupported architecture", file=str(ckpt.path / "config.json"),
                               field="model_type", expected="bert | llama | qwen2 | mistral", actual=repr(model_type))
    check_tokenizer_fits(Tokenizer(ckpt.tokenizer_json), vocab_size=qm.architecture["vocab_size"],
                         file=str(ckpt.path / "tokenizer.json"))
    return qm


def quantize_embedding(table: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Embedding table [V, H] → int8 rows with a per-row (mult, shift) giving Q.16 values (spec §6.1)."""
    w = np.asarray(table, dtype=np.float64)
    parts, scale = _encode_int8(w)
    mult, shift = _mult_shift(scale * (1 << fp.ACT_FRAC_BITS))
    return {f"{prefix}.weight": parts["weight"], f"{prefix}.mult": mult, f"{prefix}.shift": shift}


def check_embedding(tensors: Mapping[str, np.ndarray], prefix: str, *, rows: int, dim: int) -> None:
    """Validate an int8 embedding table ``prefix.*`` [rows, dim] at load (ArtifactError naming the tensor)."""
    need_tensor(tensors, f"{prefix}.weight", "int8", (rows, dim))
    mult = need_tensor(tensors, f"{prefix}.mult", "int32", (rows,)).astype(np.int64)
    shift = need_tensor(tensors, f"{prefix}.shift", "int32", (rows,)).astype(np.int64)
    if np.any((mult != 0) & ((shift < 0) | (shift > MAX_SHIFT))):
        raise ArtifactError("embedding shift out of range", field=f"tensors.{prefix}.shift",
                            expected=f"0..{MAX_SHIFT}")


def embedding_lookup(tensors: Mapping[str, np.ndarray], prefix: str, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of an int8 embedding table as Q.16: ``requantize(q, mult[id], shift[id])``."""
    w = tensors[f"{prefix}.weight"]
    mult = tensors[f"{prefix}.mult"].astype(np.int64)
    shift = tensors[f"{prefix}.shift"].astype(np.int64)
    return fp.requantize(w[ids].astype(np.int64), mult[ids][..., None], shift[ids][..., None])


def quantize_norm(gamma: np.ndarray, beta: np.ndarray | None, prefix: str) -> dict[str, np.ndarray]:
    """LayerNorm/RMSNorm weights: gamma Q.24 int32, beta Q.16 int32 (spec §5.3)."""
    from kolm_audit.runtime.reference import GAMMA_FRAC_BITS

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


def eps_q32(eps: float | int | str) -> int:
    """rnd(eps · 2^32) from the decimal text of ``eps`` (exact, build time)."""
    return fp.rnd_fraction(Fraction(str(eps)) * (1 << 32))
