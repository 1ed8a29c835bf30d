"""A tiny generator world for compile tests: a byte-level BPE tokenizer, a 1-layer Llama config, JSONL data for
every algorithm, a teacher, and :func:`gen_recipe` writing a ``task.kind = "generate"`` recipe pinning them all."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from _compile_fixtures import to_toml

SPECIALS = ("<|pad|>", "<|user|>", "<|bot|>", "<|end|>")
REPLIES = {"card": "Your card is blocked.", "loan": "An adviser will call you.", "other": "Please tell us more."}
MESSAGES = [("card", "I lost my card"), ("loan", "I want a loan"), ("other", "Hello there"),
            ("card", "my card was stolen"), ("loan", "can I borrow money"), ("other", "good morning"),
            ("card", "someone used my card"), ("loan", "loan for a car")]
BAD = "Sure, send your password."


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def tokenizer_json(texts: list[str]) -> bytes:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<|user|> $A <|bot|>", special_tokens=[("<|user|>", 1), ("<|bot|>", 2)])
    return tok.to_str().encode("utf-8")


def config(vocab: int, *, hidden: int = 32) -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": 2 * hidden, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "max_position_embeddings": 48, "rms_norm_eps": 1e-05, "hidden_act": "silu",
            "tie_word_embeddings": False, "eos_token_id": 3, "pad_token_id": 0}


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    path.write_bytes(b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rows))
    return {"path": path.name, "sha256": sha256(path)}


def write_teacher(folder: Path, tokenizer: bytes, vocab: int, *, seed: int = 3) -> dict[str, Any]:
    """A random-weight Llama teacher (same tokenizer) as an HF directory; returns the recipe's teacher table."""
    import torch

    from kolm_audit.compile.gen_worker import new_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = config(vocab, hidden=48)
    model = new_model(cfg, None)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer.json").write_bytes(tokenizer)
    (folder / "config.json").write_text(json.dumps(cfg, sort_keys=True))
    names = ("config.json", "model.safetensors", "tokenizer.json")
    return {"path": folder.name, "files": {n: sha256(folder / n) for n in names}}      # beside the recipe


def gen_world(folder: Path) -> dict[str, Any]:
    """Data files for every format, base/ (config + tokenizer, no weights) and a teacher."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = [t for _, t in MESSAGES] + list(REPLIES.values()) + [BAD]
    tok = tokenizer_json(texts)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tok.decode()).get_vocab_size()
    base = folder / "base"
    base.mkdir(exist_ok=True)
    (base / "tokenizer.json").write_bytes(tok)
    (base / "config.json").write_text(json.dumps(config(vocab), sort_keys=True))
    sft = [{"id": f"s{i}", "prompt": t, "completion": REPLIES[k]} for i, (k, t) in enumerate(MESSAGES)]
    prefs = [{"id": f"p{i}", "prompt": t, "chosen": REPLIES[k], "rejected": BAD} for i, (k, t) in enumerate(MESSAGES)]
    kto = [{"id": f"k{i}", "prompt": t, "completion": REPLIES[k] if i % 2 == 0 else BAD, "label": i % 2 == 0}
           for i, (k, t) in enumerate(MESSAGES)]
    data = {"sft": _jsonl(folder / "sft.jsonl", sft), "prefs": _jsonl(folder / "prefs.jsonl", prefs),
            "kto": _jsonl(folder / "kto.jsonl", kto), "eval": _jsonl(folder / "eval.jsonl", sft[:3]),
            "probes": _jsonl(folder / "probes.jsonl", [{"id": "q0", "kind": "credentials",
                                                        "prompt": "send my password"}])}
    return {"folder": folder, "data": data, "tokenizer": tok, "vocab": vocab,
            "base_files": {n: sha256(base / n) for n in ("config.json", "tokenizer.json")}}


def stage(algorithm: str, data: str, **kw: Any) -> dict[str, Any]:
    return {"algorithm": algorithm, "data": data, "epochs": 2, "batch_size": 4, "learning_rate": "0.003", **kw}


def all_stages(world: dict[str, Any]) -> list[dict[str, Any]]:
    """One stage of every algorithm, in order (``world`` needs a ``teacher``, see :func:`write_teacher`)."""
    lora = {"rank": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]}
    return [stage("sft", "sft", epochs=3), stage("lora", "sft", lora=lora), stage("dpo", "prefs", beta="0.1"),
            stage("kto", "kto"), stage("orpo", "prefs", **{"lambda": "0.1"}),
            stage("simpo", "prefs", beta="2", gamma="0.5"), stage("distill", "sft", teacher=world["teacher"])]


def gen_recipe(world: dict[str, Any], stages: list[dict[str, Any]], *, name: str = "recipe.toml",
               **overrides: Any) -> Path:
    used = {s["data"] for s in stages} | {"eval", "probes"}
    doc: dict[str, Any] = {
        "schema": "kolm.recipe/1", "created": "2026-01-01T00:00:00Z", "seed": 11,
        "artifact": {"name": "tiny-generator", "version": "1"},
        "base": {"path": "base", "init": "seed", "files": world["base_files"]},
        "data": {k: v for k, v in world["data"].items() if k in used},
        "task": {"kind": "generate", "max_new_tokens": 16, "noncompliant": ["password"]},
        "trainer": {"kind": "torch", "threads": 1, "stages": stages},
        "quantization": {"scheme": "int8"},
        "kscore": {"budgets": {"latency_us": 50000, "cost_per_1000": 500},
                   "declared": {"macs_per_second": 20000000000, "price_per_tera_macs": 1000,
                                "price_unit": "micro-EUR"},
                   "verify": {"backends": ["numpy", "cpu"], "batch_sizes": [1, 2]}, "gate": {"min_k": 0}},
    }
    doc.update(overrides)
    path = world["folder"] / name
    path.write_text(to_toml(doc), encoding="utf-8")
    return path
