"""Tiny BERT checkpoints built with ``transformers`` from a config (random weights, fixed seed).

Shared by the ``test_bert*.py`` tests and ``golden/conformance/generate_bert.py``. Each call writes a real
HF-format directory (config.json, model.safetensors, tokenizer.json) that ``kolm_audit.compile.hf`` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from _random_weights import randomize_
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, BertModel

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS_TEXT = ("the a an of to and in is was for on with as by at from it this that be are were not or but "
               "model file log audit replay receipt signed integer exact byte hash key trust decision output input "
               "token vendor regulator device batch every same year later bank loan credit risk approve deny "
               "good bad quick brown fox jumps over lazy dog red blue green house car tree river city")
WORDS = _WORDS_TEXT.split()
PIECES = ["##s", "##ed", "##ing", "##er", "##ly", "##est"]


def tiny_vocab() -> dict[str, int]:
    tokens = SPECIAL + WORDS + PIECES + list("abcdefghijklmnopqrstuvwxyz.,!?") + [f"##{c}" for c in
                                                                                   "abcdefghijklmnopqrstuvwxyz"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def tiny_tokenizer_json() -> bytes:
    """A BERT-style WordPiece tokenizer (lower-casing, [CLS] … [SEP]) over :func:`tiny_vocab`."""
    vocab = tiny_vocab()
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    return tok.to_str().encode()


def tiny_config(*, hidden: int = 32, layers: int = 2, heads: int = 4, intermediate: int = 64, max_pos: int = 64,
                labels: int = 3, **extra: Any) -> BertConfig:
    kwargs: dict[str, Any] = dict(
        vocab_size=len(tiny_vocab()), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=max_pos, type_vocab_size=2, hidden_act="gelu",
        layer_norm_eps=1e-12, num_labels=labels, pad_token_id=0,
        id2label={i: f"label_{chr(97 + i)}" for i in range(labels)},
        label2id={f"label_{chr(97 + i)}": i for i in range(labels)})
    kwargs.update(extra)
    return BertConfig(**kwargs)


def tiny_model(config: BertConfig, *, seed: int = 0, init_std: float = 0.1, head: bool = True) -> torch.nn.Module:
    """A float32 BERT with seeded random weights (LayerNorm gains and biases randomised too)."""
    torch.manual_seed(seed)
    model = (BertForSequenceClassification(config) if head else BertModel(config)).to(torch.float32).eval()
    return randomize_(model, seed=seed, init_std=init_std, is_norm_gain=lambda name: "LayerNorm.weight" in name)


def write_checkpoint(model: torch.nn.Module, out_dir: Path) -> Path:
    """Save ``model`` as an HF directory (safetensors + config.json + tokenizer.json)."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "tokenizer.json").write_bytes(tiny_tokenizer_json())
    return out_dir


def float_hidden(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Float reference last hidden state [T, H] of one sequence."""
    bert = model.bert if hasattr(model, "bert") else model
    with torch.no_grad():
        return bert(torch.tensor([ids], dtype=torch.long)).last_hidden_state[0].float()
