"""Build time of the Llama family: config validation, the ``tables.*`` it needs, and ``quantize_llama``.

Covers Llama, Qwen2 (q/k/v bias) and Mistral configs. Anything that would change the forward pass and that
the runtime does not implement is refused with :class:`UnsupportedModel` naming the field. Floats appear
only here (reading the checkpoint); the tables are computed with ``decimal`` and Python integers, so every
build on every machine writes the same bytes (spec: docs/runtime-spec-llama.md §2).

Example::

    >>> arch = llama_architecture({"model_type": "llama", "vocab_size": 384, "hidden_size": 64,
    ...     "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-05,
    ...     "hidden_act": "silu", "eos_token_id": 2})
    >>> arch["head_dim"], arch["eos_token_ids"], arch["rms_norm_eps"], arch["rms_norm_eps_q32"]
    (16, [2], '1e-05', 42950)
    >>> cos, sin = rope_tables(head_dim=4, max_positions=3, theta="10000.0")
    >>> cos.tolist()[1], sin.tolist()[1]                # cos/sin(1), cos/sin(0.01) in Q.30
    ([580145183, 1073688137], [903522590, 10737239])
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, localcontext
from typing import Any

import numpy as np

from kolm_audit.errors import ArtifactError, UnsupportedModel
from kolm_audit.runtime import tables as tb
from kolm_audit.runtime.quantize import (
    QuantizedModel,
    eps_q32,
    nvfp4_tables,
    quantization_params,
    quantize_embedding,
    quantize_linear,
    quantize_norm,
)
from kolm_audit.runtime.tokenize import tokenizer_tensor

MODEL_TYPES = ("llama", "qwen2", "mistral")
MAX_DIM = 1 << 16          # core spec §4.3: K <= 2^16 keeps every linear accumulation inside its bound
MAX_HIDDEN = 1 << 14       # core spec §5.3: RMSNorm over H <= 2^14
MAX_HEAD_DIM = 256         # core spec §5.2: attention with D <= 256
MAX_POSITIONS = 1 << 16    # core spec §5.2: attention over T <= 2^16 keys (longer contexts are capped)
MAX_VOCAB = 1 << 22        # spec §10: sampling sums 1000 · V · 2^30 stay below 2^63
_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings")


def _int(config: Mapping[str, Any], name: str, *, default: int | None = None, file: str | None) -> int:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnsupportedModel("expected a positive integer", file=file, field=name, actual=repr(value))
    return value


def _rope_theta(config: Mapping[str, Any], *, file: str | None) -> str:
    """rope_theta as a decimal string; refuses any RoPE scaling (transformers 4.x and 5.x spellings)."""
    if config.get("rope_scaling") is not None:
        raise UnsupportedModel("RoPE scaling is not supported", file=file, field="rope_scaling",
                               expected="null", actual=repr(config["rope_scaling"]))
    params = config.get("rope_parameters")
    theta: Any = config.get("rope_theta", 10000.0)
    if params is not None:
        if not isinstance(params, Mapping):
            raise UnsupportedModel("expected an object", file=file, field="rope_parameters")
        extra = sorted(set(params) - {"rope_theta", "rope_type"})
        if params.get("rope_type", "default") != "default" or extra:
            raise UnsupportedModel("only default RoPE is supported", file=file, field="rope_parameters.rope_type",
                                   expected="default", actual=repr(params.get("rope_type")) + (
                                       f" with {extra}" if extra else ""))
        theta = params.get("rope_theta", theta)
    if isinstance(theta, bool) or not isinstance(theta, int | float) or theta <= 1:
        raise UnsupportedModel("bad rope_theta", file=file, field="rope_theta", actual=repr(theta))
    return repr(float(theta))


def _eos_ids(config: Mapping[str, Any], vocab: int, *, file: str | None) -> list[int]:
    eos = config.get("eos_token_id")
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
            raise UnsupportedModel("bad eos_token_id", file=file, field="eos_token_id", actual=repr(eos))
    return sorted(set(ids))


def llama_architecture(config: Mapping[str, Any], *, file: str | None = None) -> dict[str, Any]:
    """Validate a Llama/Qwen2/Mistral config and return the manifest ``architecture`` (no floats)."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedModel("not a Llama-family model", file=file, field="model_type",
                               expected=" | ".join(MODEL_TYPES), actual=repr(model_type))
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel("only SiLU MLPs are supported", file=file, field="hidden_act",
                               expected="silu", actual=repr(config.get("hidden_act")))
    if config.get("mlp_bias", False):
        raise UnsupportedModel("MLP biases are not supported", file=file, field="mlp_bias", expected="false")
    ints = {name: _int(config, name, file=file) for name in _INT_FIELDS}
    heads = ints["num_attention_heads"]
    kv_heads = _int(config, "num_key_value_heads", default=heads, file=file)
    head_dim = config.get("head_dim") or ints["hidden_size"] // heads
    if kv_heads > heads or heads % kv_heads:
        raise UnsupportedModel("attention heads must be a multiple of KV heads", file=file,
                               field="num_key_value_heads", actual=str(kv_heads))
    if not isinstance(head_dim, int) or head_dim % 2 or head_dim <= 0:
        raise UnsupportedModel("head_dim must be a positive even integer", file=file, field="head_dim",
                               actual=repr(head_dim))
    limits = (("hidden_size", ints["hidden_size"], MAX_HIDDEN),
              ("intermediate_size", ints["intermediate_size"], MAX_DIM), ("head_dim", head_dim, MAX_HEAD_DIM),
              ("num_attention_heads", heads * head_dim, MAX_DIM),
              ("vocab_size", ints["vocab_size"], MAX_VOCAB))
    for name, value, limit in limits:
        if value > limit:
            raise UnsupportedModel("dimension too large for kolm-int/1", file=file, field=name,
                                   expected=f"at most {limit}", actual=str(value))
    # Sliding-window attention equals full attention while sequences stay inside the window: cap the limit.
    max_len = min(ints["max_position_embeddings"], MAX_POSITIONS)
    window = config.get("sliding_window")
    uses_window = model_type == "mistral" or bool(config.get("use_sliding_window", False))
    if uses_window and window is not None:
        max_len = min(max_len, _int(config, "sliding_window", file=file))
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise UnsupportedModel("bad rms_norm_eps", file=file, field="rms_norm_eps", actual=repr(eps))
    vocab = ints["vocab_size"]
    attention_bias = bool(config.get("attention_bias", False))
    return {
        "family": "llama",
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": ints["hidden_size"],
        "intermediate_size": ints["intermediate_size"],
        "num_hidden_layers": ints["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_len,
        "rms_norm_eps": repr(float(eps)),
        "rms_norm_eps_q32": eps_q32(repr(float(eps))),
        "rope_theta": _rope_theta(config, file=file),
        "qkv_bias": model_type == "qwen2" or attention_bias,
        "o_bias": model_type == "llama" and attention_bias,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "eos_token_ids": _eos_ids(config, vocab, file=file),
    }


_ARCH_TYPES: dict[str, type | tuple[type, ...]] = {
    "family": str, "model_type": str, "vocab_size": int, "hidden_size": int, "intermediate_size": int,
    "num_hidden_layers": int, "num_attention_heads": int, "num_key_value_heads": int, "head_dim": int,
    "max_position_embeddings": int, "rms_norm_eps": str, "rms_norm_eps_q32": int, "rope_theta": str,
    "qkv_bias": bool, "o_bias": bool, "tie_word_embeddings": bool, "eos_token_ids": list,
}


def check_architecture(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a manifest ``architecture`` written by :func:`llama_architecture` (raises ArtifactError)."""
    for name, typ in _ARCH_TYPES.items():
        value = arch.get(name)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ArtifactError("bad Llama architecture field", field=f"architecture.{name}",
                                expected=getattr(typ, "__name__", str(typ)), actual=repr(value))
    hf_like = {**arch, "rms_norm_eps": float(arch["rms_norm_eps"]), "eos_token_id": arch["eos_token_ids"],
               "rope_theta": float(arch["rope_theta"]), "attention_bias": arch["o_bias"]}
    try:
        again = llama_architecture(hf_like)
    except UnsupportedModel as exc:
        raise ArtifactError(exc.message, field=f"architecture.{exc.field}", actual=exc.actual) from None
    for name in ("rms_norm_eps_q32", "head_dim", "max_position_embeddings"):
        if again[name] != arch[name] and not (name == "max_position_embeddings" and arch[name] < again[name]):
            raise ArtifactError("architecture fields disagree", field=f"architecture.{name}",
                                expected=str(again[name]), actual=str(arch[name]))
    return dict(arch)


# ---- tables (spec §2): computed exactly with decimal / integers -------------------------------------------

SIGMOID_LEN, SIGMOID_STEP_SHIFT = 4097, 9     # sigmoid on [-16, 16], step 2^-7 (2^9 in Q.16 units)
SIGMOID_X0 = -16 << 16                         # Q.16 x of entry 0
_PREC = 60
_ROPE_FRAC = 120                                # working precision of the RoPE recurrence (Python ints)


def _rnd_dec(value: Decimal, frac_bits: int) -> int:
    """rnd(value · 2^frac_bits) with round half up (the one rounding rule)."""
    return int((value * (1 << frac_bits) + Decimal("0.5")).to_integral_value(rounding="ROUND_FLOOR"))


def sigmoid_table() -> np.ndarray:
    """``tables.sigmoid``: rnd(2^30 / (1 + exp(16 - i/128))), i = 0..4096 (int32): σ(x), x = -16 + i/128."""
    with localcontext() as ctx:
        ctx.prec = _PREC
        vals = [_rnd_dec(1 / (1 + (-(Decimal(i) / 128 - 16)).exp()), 30) for i in range(SIGMOID_LEN)]
    return np.asarray(vals, dtype=np.int32)


def _cos_sin(x: Decimal) -> tuple[Decimal, Decimal]:
    """Taylor series of cos and sin for |x| <= 1 at the current decimal precision."""
    c, s, term, n = Decimal(0), Decimal(0), Decimal(1), 0
    eps = Decimal(10) ** -(_PREC + 2)
    while abs(term) > eps or n < 4:
        if n % 2 == 0:
            c += term if n % 4 == 0 else -term
        else:
            s += term if n % 4 == 1 else -term
        n += 1
        term = term * x / n
    return c, s


def rope_tables(*, head_dim: int, max_positions: int, theta: str) -> tuple[np.ndarray, np.ndarray]:
    """``tables.rope_cos`` / ``tables.rope_sin``: int32 [max_positions, head_dim/2], Q.30 cos/sin(p · ω_i).

    ``ω_i = theta^(-2i/head_dim)`` at 60 significant digits; rotation by ``ω_i`` in Q.120 Python integers
    (``c_{p+1} = rnd((c_p·C - s_p·S) / 2^120)``, ``s_{p+1} = rnd((s_p·C + c_p·S) / 2^120)``), each entry then
    ``rnd(c_p / 2^90)``. Deterministic on every machine (integers only after ω).
    """
    half = head_dim // 2
    one = 1 << _ROPE_FRAC
    cos = np.empty((max_positions, half), dtype=np.int64)
    sin = np.empty((max_positions, half), dtype=np.int64)
    with localcontext() as ctx:
        ctx.prec = _PREC
        base = Decimal(theta)
        for i in range(half):
            c1, s1 = _cos_sin(base ** (Decimal(-2 * i) / Decimal(head_dim)))
            big_c, big_s = _rnd_dec(c1, _ROPE_FRAC), _rnd_dec(s1, _ROPE_FRAC)
            c, s = one, 0
            col_c, col_s = [], []
            for _ in range(max_positions):
                col_c.append((c + (1 << 89)) >> 90)
                col_s.append((s + (1 << 89)) >> 90)
                c, s = ((c * big_c - s * big_s + (one >> 1)) >> _ROPE_FRAC,
                        (s * big_c + c * big_s + (one >> 1)) >> _ROPE_FRAC)
            cos[:, i], sin[:, i] = col_c, col_s
    return cos.astype(np.int32), sin.astype(np.int32)


def llama_tables(arch: Mapping[str, Any], *, scheme: str) -> dict[str, np.ndarray]:
    """Every ``tables.*`` tensor a Llama-family artifact carries."""
    cos, sin = rope_tables(head_dim=arch["head_dim"], max_positions=arch["max_position_embeddings"],
                           theta=arch["rope_theta"])
    out = {**tb.common_tables(), "tables.sigmoid": sigmoid_table(), "tables.rope_cos": cos,
           "tables.rope_sin": sin, "tables.attn_scale": tb.attn_scale(arch["head_dim"])}
    if scheme == "nvfp4":
        out.update(nvfp4_tables())
    return out


# ---- quantize_llama ---------------------------------------------------------------------------------------

_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def quantize_llama(ckpt: Any, *, scheme: str) -> QuantizedModel:
    """Quantize an HF Llama/Qwen2/Mistral ``*ForCausalLM`` checkpoint with ``scheme`` (int8 | int4 | nvfp4).

    Tensor names keep the HF names with the quantizer's suffixes (``model.layers.0.self_attn.q_proj.weight``,
    ``….mult``, ``….shift``, ``….bias``; norms ``….gamma``). A tied ``lm_head`` is quantized from the embedding.
    """
    quantization = quantization_params(scheme)
    cfg_file = str(ckpt.path / "config.json")
    arch = llama_architecture(ckpt.config, file=cfg_file)
    src = ckpt.tensors

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in src:
            raise UnsupportedModel("tensor missing from the checkpoint", file=str(ckpt.path), field=name)
        arr = np.asarray(src[name], dtype=np.float64)
        if arr.shape != shape:
            raise UnsupportedModel("tensor has the wrong shape", file=str(ckpt.path), field=name,
                                   expected=str(list(shape)), actual=str(list(arr.shape)))
        return arr

    h, inter, d = arch["hidden_size"], arch["intermediate_size"], arch["head_dim"]
    nq, nkv = arch["num_attention_heads"] * d, arch["num_key_value_heads"] * d
    shapes = {"self_attn.q_proj": (nq, h), "self_attn.k_proj": (nkv, h), "self_attn.v_proj": (nkv, h),
              "self_attn.o_proj": (h, nq), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
              "mlp.down_proj": (h, inter)}
    embed = get("model.embed_tokens.weight", (arch["vocab_size"], h))
    out: dict[str, np.ndarray] = dict(quantize_embedding(embed, "model.embed_tokens"))
    for i in range(arch["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name in _LINEARS:
            has_bias = arch["qkv_bias"] if name[-6:] in ("q_proj", "k_proj", "v_proj") else (
                arch["o_bias"] and name.endswith("o_proj"))
            bias = get(f"{p}{name}.bias", (shapes[name][0],)) if has_bias else None
            out.update(quantize_linear(get(f"{p}{name}.weight", shapes[name]), bias, p + name, scheme=scheme))
        out.update(quantize_norm(get(f"{p}input_layernorm.weight", (h,)), None, p + "input_layernorm"))
        out.update(quantize_norm(get(f"{p}post_attention_layernorm.weight", (h,)), None,
                                 p + "post_attention_layernorm"))
    out.update(quantize_norm(get("model.norm.weight", (h,)), None, "model.norm"))
    head = embed if arch["tie_word_embeddings"] else get("lm_head.weight", (arch["vocab_size"], h))
    out.update(quantize_linear(head, None, "lm_head", scheme=scheme))
    out.update(llama_tables(arch, scheme=scheme))
    out["tokenizer.json"] = tokenizer_tensor(ckpt.tokenizer_json)
    return QuantizedModel(architecture=arch, task={"kind": "generate", "labels": []}, quantization=quantization,
                          tensors=dict(sorted(out.items())))
