"""Tiny Llama-family checkpoints built with ``transformers`` from a config (random weights, fixed seed).

Shared by the ``test_llama*.py`` tests and ``golden/conformance/generate_llama.py``. Each call writes a real
HF-format directory (config.json, model.safetensors, tokenizer.json) that ``kolm_audit.compile.hf`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from _random_weights import randomize_
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

_FAMILIES: dict[str, tuple[Any, Any]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny_config(*, family: str = "llama", vocab: int = 384, hidden: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int = 2, intermediate: int = 160, max_pos: int = 256, **extra: Any) -> Any:
    config_cls, _ = _FAMILIES[family]
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    if family == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(extra)
    return config_cls(**kwargs)


def tiny_model(config: Any, *, seed: int = 0, init_std: float = 0.05) -> torch.nn.Module:
    """A float32 model with seeded random weights (norm gains and biases randomised too, so they matter)."""
    _, model_cls = _FAMILIES[config.model_type]
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    return randomize_(model, seed=seed, init_std=init_std, is_norm_gain=lambda name: name.endswith("norm.weight"))


def tiny_tokenizer_json(vocab: int) -> bytes:
    """A word-level tokenizer whose token ``i`` is the word ``w{i}`` (ids 0-2: <unk>, <s>, </s>)."""
    words = {"<unk>": 0, "<s>": 1, "</s>": 2}
    words.update({f"w{i}": i for i in range(3, vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str().encode()


def write_checkpoint(model: torch.nn.Module, out_dir: Path) -> Path:
    """Save ``model`` as an HF directory (safetensors + config.json + tokenizer.json)."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "tokenizer.json").write_bytes(tiny_tokenizer_json(model.config.vocab_size))
    json.loads((out_dir / "config.json").read_text())  # must be valid JSON
    return out_dir


def float_logits(model: torch.nn.Module, ids: list[list[int]]) -> torch.Tensor:
    """Float reference logits [B, T, V] of equal-length sequences."""
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float()


def generations_alone_and_batched(rt: Any, batch: list[list[int]], extra: list[list[int]], seed: int | None,
                                  data: st.DataObject) -> tuple[list[Any], dict[str, Any]]:
    """Generate each prompt of ``batch`` alone and inside a shuffled batch with ``extra`` prompts (other lengths,
    so other padding); assert both agree and return the lone results and the decoding arguments used."""
    kw: dict[str, Any] = {"max_new_tokens": 4, "eos_ids": [2]}
    if seed is not None:
        kw |= {"seed": seed, "temperature": data.draw(st.integers(200, 3000)),
               "top_k": data.draw(st.none() | st.integers(1, 50)), "top_p": data.draw(st.none() | st.integers(1, 1000))}
    alone = [rt.generate([p], **kw)[0] for p in batch]
    mixed = batch + extra
    order = data.draw(st.permutations(range(len(mixed))))
    together = rt.generate([mixed[i] for i in order], **kw)
    by_index = {i: together[pos] for pos, i in enumerate(order)}
    assert [by_index[i] for i in range(len(batch))] == alone
    return alone, kw
