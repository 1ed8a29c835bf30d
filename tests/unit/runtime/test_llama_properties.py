"""Properties of the integer Llama runtime: the KV cache changes nothing, batching and padding change nothing,
seeded sampling replays exactly."""

from __future__ import annotations

import numpy as np
import pytest
from _llama_fixtures import generations_alone_and_batched, tiny_config, tiny_model, write_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.compile.llama import quantize_llama
from kolm_audit.runtime.models import llama as llama_model
from kolm_audit.runtime.models.llama import PREFILL_GROUP, LlamaRuntime

VOCAB, LIMIT = 384, 48
prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12)


@pytest.fixture(scope="module", params=["int8", "nvfp4"])
def rt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LlamaRuntime:
    model = tiny_model(tiny_config(family="qwen2", max_pos=LIMIT), seed=7)
    qm = quantize_llama(read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf"))),
                        scheme=request.param)
    return LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, tensors=qm.tensors)


@settings(max_examples=12, deadline=None)
@given(prompt=prompts, continuation=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6))
def test_kv_cached_decoding_equals_full_recomputation(rt: LlamaRuntime, prompt: list[int],
                                                      continuation: list[int]) -> None:
    cached = rt.cached_logits(prompt, continuation)                           # [1+n, V]
    full = rt.logits([prompt + continuation])[0]                              # [len, V]
    assert np.array_equal(cached, full[len(prompt) - 1:])


@settings(max_examples=10, deadline=None)
@given(batch=st.lists(prompts, min_size=1, max_size=4), extra=st.lists(prompts, max_size=3),
       seed=st.none() | st.integers(0, 2**53 - 1), data=st.data())
def test_each_request_is_the_same_alone_or_in_any_batch(rt: LlamaRuntime, batch: list[list[int]],
                                                        extra: list[list[int]], seed: int | None,
                                                        data: st.DataObject) -> None:
    generations_alone_and_batched(rt, batch, extra, seed, data)


@settings(max_examples=4, deadline=None)
@given(batch=st.lists(prompts, min_size=PREFILL_GROUP + 1, max_size=2 * PREFILL_GROUP + 3),
       seed=st.none() | st.integers(0, 2**53 - 1))
def test_a_prefill_in_groups_changes_nothing(rt: LlamaRuntime, batch: list[list[int]], seed: int | None) -> None:
    """More prompts than ``PREFILL_GROUP``: the prefill runs in groups sorted by length and their caches are
    merged; every generation equals the one of a single padded batch and the request's alone."""
    kw = {"max_new_tokens": 3, "eos_ids": [2], "seed": seed, "temperature": None if seed is None else 900}
    grouped = rt.generate(batch, **kw)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(llama_model, "PREFILL_GROUP", 1 << 20)
        assert rt.generate(batch, **kw) == grouped
    for seq, got in zip(batch[:4], grouped, strict=False):
        assert rt.generate([seq], **kw)[0] == got


@settings(max_examples=6, deadline=None)
@given(batch=st.lists(prompts, min_size=1, max_size=3))
def test_teacher_forced_logits_do_not_depend_on_the_batch(rt: LlamaRuntime, batch: list[list[int]]) -> None:
    together = rt.logits(batch)
    for seq, got in zip(batch, together, strict=True):
        assert np.array_equal(rt.logits([seq])[0], got)


def test_sampling_replays_and_depends_on_the_seed(rt: LlamaRuntime) -> None:
    prompt = [[5, 17, 33, 9]]
    kw = {"max_new_tokens": 8, "eos_ids": [], "temperature": 1500, "top_k": 64}
    a = rt.generate(prompt, seed=1, **kw)[0]
    assert rt.generate(prompt, seed=1, **kw)[0] == a
    others = {rt.generate(prompt, seed=s, **kw)[0].output_ids for s in range(2, 7)}
    assert len(others | {a.output_ids}) > 1                                   # the seed matters
    greedy = rt.generate(prompt, max_new_tokens=8, eos_ids=[])[0]
    cold = rt.generate(prompt, seed=9, max_new_tokens=8, eos_ids=[], temperature=1, top_k=1)[0]
    assert cold == greedy                                                     # top_k=1 is greedy
