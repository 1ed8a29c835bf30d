"""Build time of the Llama family: HF config import, the ``tables.*`` it needs, and ``quantize_llama``.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kolm_audit.compile import tables as tb
from kolm_audit.compile.quantize import (
    QuantizedModel,
    nvfp4_tables,
    quantize_embedding,
    quantize_linear,
    quantize_norm,
)
from kolm_audit.errors import UnsupportedModel, naming_file
from kolm_audit.runtime.fixedpoint import eps_q32
from kolm_audit.runtime.models.llama import LLAMA_MODEL_TYPES, MAX_POSITIONS, LlamaConfig
from kolm_audit.runtime.tokenize import tokenizer_tensor
from kolm_audit.runtime.weights import quantization_params

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
    """Validate a Llama/Qwen2/Mistral HF ``config.json`` and return the manifest ``architecture`` (no floats)."""
    model_type = config.get("model_type")
    if model_type not in LLAMA_MODEL_TYPES:
        raise UnsupportedModel("not a Llama-family model", file=file, field="model_type",
                               expected=" | ".join(LLAMA_MODEL_TYPES), actual=repr(model_type))
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel("only SiLU MLPs are supported", file=file, field="hidden_act",
                               expected="silu", actual=repr(config.get("hidden_act")))
    if config.get("mlp_bias", False):
        raise UnsupportedModel("MLP biases are not supported", file=file, field="mlp_bias", expected="false")
    ints = {name: _int(config, name, file=file) for name in _INT_FIELDS}
    heads = ints["num_attention_heads"]
    kv_heads = _int(config, "num_key_value_heads", default=heads, file=file)
    head_dim = config.get("head_dim") or ints["hidden_size"] // heads
    # Sliding-window attention equals full attention while sequences stay inside the window: cap the limit.
    max_len = min(ints["max_position_embeddings"], MAX_POSITIONS)
    window = config.get("sliding_window")
    uses_window = model_type == "mistral" or bool(config.get("use_sliding_window", False))
    if uses_window and window is not None:
        max_len = min(max_len, _int(config, "sliding_window", file=file))
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise UnsupportedModel("bad rms_norm_eps", file=file, field="rms_norm_eps", actual=repr(eps))
    attention_bias = bool(config.get("attention_bias", False))
    with naming_file(file):
        cfg = LlamaConfig(
            model_type=model_type, vocab_size=ints["vocab_size"], hidden_size=ints["hidden_size"],
            intermediate_size=ints["intermediate_size"], num_hidden_layers=ints["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=max_len,
            rms_norm_eps=repr(float(eps)), rms_norm_eps_q32=eps_q32(repr(float(eps))),
            rope_theta=_rope_theta(config, file=file), qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type == "llama" and attention_bias,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            eos_token_ids=tuple(_eos_ids(config, ints["vocab_size"], file=file)))
    return cfg.to_manifest()


def llama_tables(arch: Mapping[str, Any], *, scheme: str) -> dict[str, np.ndarray]:
    """Every ``tables.*`` tensor a Llama-family artifact carries."""
    cos, sin = tb.rope_tables(head_dim=arch["head_dim"], max_positions=arch["max_position_embeddings"],
                           theta=arch["rope_theta"])
    out = {**tb.common_tables(), "tables.sigmoid": tb.sigmoid_table(), "tables.rope_cos": cos,
           "tables.rope_sin": sin, "tables.attn_scale": tb.attn_scale(arch["head_dim"])}
    if scheme == "nvfp4":
        out.update(nvfp4_tables())
    return out


# ---- quantize_llama ---------------------------------------------------------------------------------------

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
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
        for name in LINEARS:
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
