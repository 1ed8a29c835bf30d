"""Llama-family HF ``config.json`` → the integer-only ``architecture`` object of a ``.kolm`` manifest.

Covers Llama, Qwen2 (q/k/v bias) and Mistral configs. Anything that would change the forward pass and that
the runtime does not implement is refused with :class:`UnsupportedModel` naming the field.

Example::

    >>> arch = llama_architecture({"model_type": "llama", "vocab_size": 384, "hidden_size": 64,
    ...     "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-05,
    ...     "hidden_act": "silu", "eos_token_id": 2})
    >>> arch["head_dim"], arch["eos_token_ids"], arch["rms_norm_eps"]
    (16, [2], '1e-05')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kolm_audit.errors import UnsupportedModel

MODEL_TYPES = ("llama", "qwen2", "mistral")
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
    # Sliding-window attention equals full attention while sequences stay inside the window: cap the limit.
    max_len = ints["max_position_embeddings"]
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
        "rope_theta": _rope_theta(config, file=file),
        "qkv_bias": model_type == "qwen2" or attention_bias,
        "o_bias": model_type == "llama" and attention_bias,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "eos_token_ids": _eos_ids(config, vocab, file=file),
    }
