"""Build time of the BERT family: HF config import, task detection and ``quantize_bert``.

Anything the runtime does not implement is refused with :class:`UnsupportedModel` naming the field; floats appear
only here (reading the checkpoint). The runtime side is :mod:`kolm_audit.runtime.models.bert`.

Example::

    >>> bert_architecture({"model_type": "bert", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
    ...     "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
    ...     "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12})["layer_norm_eps"]
    '1e-12'
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
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.models.bert import BertConfig
from kolm_audit.runtime.tokenize import tokenizer_tensor
from kolm_audit.runtime.weights import quantization_params

_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")


def bert_architecture(config: Mapping[str, Any], *, file: str | None = None) -> dict[str, Any]:
    """HF BERT ``config.json`` → the manifest ``architecture`` object (integers and strings only)."""
    if config.get("model_type") != "bert":
        raise UnsupportedModel("not a BERT config", file=file, field="model_type", expected="bert",
                               actual=repr(config.get("model_type")))
    checks = {"hidden_act": ("gelu",), "position_embedding_type": ("absolute",), "is_decoder": (False,),
              "add_cross_attention": (False,)}
    defaults = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False,
                "add_cross_attention": False}
    for name, allowed in checks.items():
        value = config.get(name, defaults[name])
        if value not in allowed:
            raise UnsupportedModel("unsupported value", file=file, field=name, expected=" | ".join(map(str, allowed)),
                                   actual=repr(value))
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps < 1:
        raise UnsupportedModel("expected a small non-negative number", file=file, field="layer_norm_eps",
                               actual=repr(eps))
    pad = config.get("pad_token_id", 0)
    ints = {name: config.get(name, 2 if name == "type_vocab_size" else None) for name in _INTS}
    with naming_file(file):
        cfg = BertConfig(**ints, layer_norm_eps=repr(float(eps)), layer_norm_eps_q32=fp.eps_q32(repr(float(eps))),
                         pad_token_id=pad if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0 else 0)
    return cfg.to_manifest()


def _bert_task(config: Mapping[str, Any], has_head: bool, *, file: str | None) -> dict[str, Any]:
    if not has_head:
        return {"kind": "embed", "pooling": "mean", "labels": []}
    problem = config.get("problem_type")
    if problem not in (None, "single_label_classification"):
        raise UnsupportedModel("only single-label classification is supported", file=file, field="problem_type",
                               actual=repr(problem))
    id2label = config.get("id2label") or {}
    n = int(config.get("num_labels", len(id2label) or 2))
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]  # type: ignore[call-overload]
    if n < 2:
        raise UnsupportedModel("a classifier needs at least 2 labels", file=file, field="num_labels", actual=str(n))
    return {"kind": "classify", "pooling": "cls-pooler", "labels": labels}


def quantize_bert(ckpt: Any, *, scheme: str) -> QuantizedModel:
    """Quantize an HF BERT checkpoint (``BertModel`` or ``BertForSequenceClassification``) with ``scheme``."""
    cfg_file = str(ckpt.path / "config.json")
    arch = bert_architecture(ckpt.config, file=cfg_file)
    src = ckpt.tensors
    p = "bert." if "bert.embeddings.word_embeddings.weight" in src else ""

    def get(name: str) -> np.ndarray:
        if name not in src:
            raise UnsupportedModel("tensor missing from the checkpoint", file=str(ckpt.path), field=name)
        return np.asarray(src[name], dtype=np.float64)

    has_head = "classifier.weight" in src
    task = _bert_task(ckpt.config, has_head, file=cfg_file)
    out: dict[str, np.ndarray] = {}
    out.update(quantize_embedding(get(f"{p}embeddings.word_embeddings.weight"), "embeddings.word"))
    out["embeddings.position"] = _q16(get(f"{p}embeddings.position_embeddings.weight"), "embeddings.position")
    out["embeddings.token_type"] = _q16(get(f"{p}embeddings.token_type_embeddings.weight"), "embeddings.token_type")
    out.update(quantize_norm(get(f"{p}embeddings.LayerNorm.weight"), get(f"{p}embeddings.LayerNorm.bias"),
                             "embeddings.ln"))
    for i in range(arch["num_hidden_layers"]):
        h, o = f"{p}encoder.layer.{i}.", f"layers.{i}."
        for src_name, dst in (("attention.self.query", "attn.q"), ("attention.self.key", "attn.k"),
                              ("attention.self.value", "attn.v"), ("attention.output.dense", "attn.o"),
                              ("intermediate.dense", "ffn.up"), ("output.dense", "ffn.down")):
            out.update(quantize_linear(get(f"{h}{src_name}.weight"), get(f"{h}{src_name}.bias"), o + dst,
                                       scheme=scheme))
        out.update(quantize_norm(get(f"{h}attention.output.LayerNorm.weight"),
                                 get(f"{h}attention.output.LayerNorm.bias"), o + "attn_ln"))
        out.update(quantize_norm(get(f"{h}output.LayerNorm.weight"), get(f"{h}output.LayerNorm.bias"), o + "ffn_ln"))
    if has_head:
        out.update(quantize_linear(get(f"{p}pooler.dense.weight"), get(f"{p}pooler.dense.bias"), "pooler",
                                   scheme=scheme))
        out.update(quantize_linear(get("classifier.weight"), get("classifier.bias"), "classifier", scheme=scheme))
    out.update(tb.bert_tables())
    out["tables.attn_scale"] = tb.attn_scale(arch["hidden_size"] // arch["num_attention_heads"])
    if scheme == "nvfp4":
        out.update(nvfp4_tables())
    out["tokenizer.json"] = tokenizer_tensor(ckpt.tokenizer_json)
    return QuantizedModel(architecture=arch, task=task, quantization=quantization_params(scheme),
                          tensors=dict(sorted(out.items())))


def _q16(values: np.ndarray, name: str) -> np.ndarray:
    q = fp.to_fixed(values, fp.ACT_FRAC_BITS)
    if np.any(np.abs(q) > fp.INT32_MAX):
        raise UnsupportedModel("value outside the Q.16 int32 range", field=name)
    return q.astype(np.int32)
