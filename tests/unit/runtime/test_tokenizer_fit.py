"""A tokenizer that can produce ids beyond the model's vocabulary is refused at build and at load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from _bert_fixtures import tiny_config, tiny_model, tiny_vocab, write_checkpoint

from kolm_audit.compile import quantize_checkpoint
from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.errors import UnsupportedModel
from kolm_audit.model import Model
from kolm_audit.runtime.tokenize import Tokenizer, check_tokenizer_fits, tokenizer_tensor


def _wordlevel(n: int) -> bytes:
    vocab = {f"t{i}": i for i in range(n)}
    return json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
                       "pre_tokenizer": {"type": "Whitespace"}}).encode()


def test_check_tokenizer_fits_boundary() -> None:
    tok = Tokenizer(_wordlevel(10))
    check_tokenizer_fits(tok, vocab_size=10)
    check_tokenizer_fits(tok, vocab_size=12)        # padded embedding tables are fine
    with pytest.raises(UnsupportedModel) as err:
        check_tokenizer_fits(tok, vocab_size=9, file="m.kolm")
    assert err.value.field == "tokenizer.json" and "10 tokens" in str(err.value)


def test_quantize_and_load_refuse_a_tokenizer_larger_than_the_vocab(tmp_path: Path) -> None:
    ckpt = read_hf_checkpoint(write_checkpoint(tiny_model(tiny_config(), seed=3), tmp_path / "hf"))
    too_big = dataclasses.replace(ckpt, tokenizer_json=_wordlevel(len(tiny_vocab()) + 5))
    with pytest.raises(UnsupportedModel, match="no embedding"):
        quantize_checkpoint(too_big, scheme="int8")
    qm = quantize_checkpoint(ckpt, scheme="int8")
    manifest = {"runtime": "kolm-int/1", "architecture": qm.architecture, "task": qm.task,
                "quantization": qm.quantization}
    tensors = dict(qm.tensors)
    Model(manifest=manifest, digest="sha256:" + "0" * 64, tensors=tensors)   # the real tokenizer fits
    tensors["tokenizer.json"] = tokenizer_tensor(_wordlevel(len(tiny_vocab()) + 5))
    with pytest.raises(UnsupportedModel, match="no embedding"):
        Model(manifest=manifest, digest="sha256:" + "0" * 64, tensors=tensors)
