"""Properties of both torch CPU backends (plain :class:`TorchOps` and the fused :class:`FusedCpuOps`): batching and
padding change nothing, the KV cache equals recomputation, and every integer equals the numpy reference
(hypothesis over random batch compositions)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from _llama_fixtures import generations_alone_and_batched, tiny_config, tiny_model, write_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.compile.llama import QuantizedModel, quantize_llama
from kolm_audit.runtime.models.bert import BertRuntime
from kolm_audit.runtime.models.llama import LlamaRuntime
from kolm_audit.runtime.torch_backend import TorchOps

VOCAB, LIMIT = 384, 48
prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12)
BERT_ROOT = Path(__file__).resolve().parents[3] / "golden" / "conformance" / "bert" / "models"


def _fused_ops() -> TorchOps:
    from kolm_audit.runtime.cpu_fused import FusedCpuOps

    return FusedCpuOps()


OPS: dict[str, Callable[[], TorchOps]] = {"unfused": lambda: TorchOps(device="cpu"), "fused": _fused_ops}
VARIANTS = ["unfused", pytest.param("fused", marks=pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                                                      reason="numba is not installed"))]


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> QuantizedModel:
    """One quantized Qwen2-style model per scheme, shared by both CPU variants."""
    model = tiny_model(tiny_config(family="qwen2", max_pos=LIMIT), seed=7)
    return quantize_llama(read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf"))),
                          scheme=request.param)


@pytest.fixture(scope="module", params=VARIANTS)
def pair(request: pytest.FixtureRequest, quantized: QuantizedModel) -> tuple[LlamaRuntime, LlamaRuntime]:
    """(torch CPU runtime of the variant, numpy runtime) over the same quantized model."""
    kw = {"architecture": quantized.architecture, "quantization": quantized.quantization, "tensors": quantized.tensors}
    ops = OPS[request.param]()
    assert type(ops).__name__ == {"unfused": "TorchOps", "fused": "FusedCpuOps"}[request.param]
    return LlamaRuntime.from_tensors(**kw, ops=ops), LlamaRuntime.from_tensors(**kw)


@settings(max_examples=10, deadline=None)
@given(prompt=prompts, continuation=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6))
def test_kv_cached_decoding_equals_full_recomputation(pair: tuple[LlamaRuntime, LlamaRuntime], prompt: list[int],
                                                      continuation: list[int]) -> None:
    rt, ref_rt = pair
    cached = rt.cached_logits(prompt, continuation)                           # [1+n, V]
    full = rt.logits([prompt + continuation])[0]                              # [len, V]
    assert np.array_equal(cached, full[len(prompt) - 1:])
    assert np.array_equal(full, ref_rt.logits([prompt + continuation])[0])    # torch == numpy reference


@settings(max_examples=10, deadline=None)
@given(batch=st.lists(prompts, min_size=1, max_size=4), extra=st.lists(prompts, max_size=4),
       seed=st.none() | st.integers(0, 2**53 - 1), data=st.data())
def test_each_request_is_the_same_alone_or_in_any_batch(pair: tuple[LlamaRuntime, LlamaRuntime],
                                                        batch: list[list[int]], extra: list[list[int]],
                                                        seed: int | None, data: st.DataObject) -> None:
    rt, ref_rt = pair
    alone, kw = generations_alone_and_batched(rt, batch, extra, seed, data)
    assert ref_rt.generate(batch, **kw) == alone                              # numpy reference, batched


@cache
def _bert(scheme: str, variant: str) -> BertRuntime:
    doc = json.loads((BERT_ROOT / f"tiny-bert-{scheme}.json").read_text())
    tensors = load_file(str(BERT_ROOT / f"tiny-bert-{scheme}.safetensors"))
    return BertRuntime.from_tensors(architecture=doc["architecture"], quantization=doc["quantization"],
                                    task=doc["task"], tensors=tensors, ops=OPS[variant]())


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=10, deadline=None)
@given(scheme=st.sampled_from(["int8", "nvfp4"]),
       batch=st.lists(st.lists(st.integers(0, 137), min_size=1, max_size=20), min_size=1, max_size=6),
       data=st.data())
def test_bert_outputs_do_not_depend_on_the_batch(variant: str, scheme: str, batch: list[list[int]],
                                                 data: st.DataObject) -> None:
    rt = _bert(scheme, variant)
    order = data.draw(st.permutations(range(len(batch))))
    shuffled = [batch[i] for i in order]
    emb = rt.embed(shuffled)
    cls = rt.classify(shuffled)
    for pos, i in enumerate(order):
        assert np.array_equal(emb[pos], rt.embed([batch[i]])[0])
        alone_label, alone_logits = rt.classify([batch[i]])[0]
        assert alone_label == cls[pos][0] and np.array_equal(alone_logits, cls[pos][1])
