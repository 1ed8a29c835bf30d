"""Decoding over static KV buffers (bucketed batch and length, dummy requests, masked unfilled positions) gives the
integers of the growing cache on every CPU backend; the CUDA-graph mode falls back to it off CUDA; buckets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from _conformance import conformance_model
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.runtime.decode import (
    BATCH_BUCKETS,
    DynamicSession,
    GraphPool,
    GraphSession,
    StaticSession,
    batch_bucket,
    length_bucket,
    open_session,
)
from kolm_audit.runtime.models.llama import LlamaRuntime
from kolm_audit.runtime.ops import get_ops

pytest.importorskip("torch")

PROMPTS = [[5, 9, 14, 3, 77, 41, 8], [200, 3], [17, 18, 19, 20, 21], [4]]


@given(st.integers(1, 5000))
def test_batch_bucket_is_the_smallest_bucket_that_holds_the_batch(b: int) -> None:
    size = batch_bucket(b)
    assert size >= b
    if b <= BATCH_BUCKETS[-1]:
        assert size in BATCH_BUCKETS and all(s < b for s in BATCH_BUCKETS if s < size)
    else:
        assert size % BATCH_BUCKETS[-1] == 0 and size - b < BATCH_BUCKETS[-1]


@given(st.integers(0, 1 << 17))
def test_length_bucket_is_a_power_of_two_that_holds_the_timeline(n: int) -> None:
    cap = length_bucket(n)
    assert cap >= max(n, 64) and cap & (cap - 1) == 0 and (cap == 64 or cap < 2 * n)


def _runtime(name: str, backend: str, fused: bool, decode: str) -> LlamaRuntime:
    """A runtime of a (cached) conformance model with its own decode mode (the cached one is left unchanged)."""
    model, _ = conformance_model("llama", name, backend, fused=fused)
    rt = copy.copy(model._rt)
    rt.decode, rt.graphs = decode, GraphPool(rt)
    return rt


@pytest.mark.parametrize(("backend", "fused"), [("numpy", True), ("cpu", False), ("cpu", True)])
@pytest.mark.parametrize("name", ["tiny-qwen2-int8", "tiny-llama-nvfp4"])
def test_static_and_graph_mode_generate_the_dynamic_cache_integers(backend: str, fused: bool, name: str) -> None:
    if backend == "cpu" and fused:
        pytest.importorskip("numba")
    kw = {"max_new_tokens": 6, "eos_ids": []}
    outs = {}
    for decode in ("dynamic", "static", "graphs"):
        rt = _runtime(name, backend, fused, decode)
        outs[decode] = (rt.generate(PROMPTS[:3], **kw),                       # 3 requests: bucket 4, 1 dummy
                        rt.generate(PROMPTS, seed=7, temperature=900, top_k=20, **kw),
                        rt.cached_logits(PROMPTS[0], [3, 4, 5]))
        assert type(open_session(rt, batch=3, max_len=8)) is {"dynamic": DynamicSession, "static": StaticSession,
                                                              "graphs": StaticSession}[decode]   # no CUDA here
    for decode in ("static", "graphs"):
        assert outs[decode][:2] == outs["dynamic"][:2]
        assert np.array_equal(outs[decode][2], outs["dynamic"][2])


def test_finished_requests_stay_as_dummies_and_never_change_the_others() -> None:
    rt = _runtime("tiny-llama-int8", "numpy", True, "static")
    alone = [rt.generate([p], max_new_tokens=5, eos_ids=[])[0] for p in PROMPTS]
    eos = sorted({alone[1].output_ids[1], alone[3].output_ids[0]})           # two requests finish early
    together = rt.generate(PROMPTS, max_new_tokens=5, eos_ids=eos)
    expect = [rt.generate([p], max_new_tokens=5, eos_ids=eos)[0] for p in PROMPTS]
    assert together == expect and {g.finish_reason for g in together} == {"eos", "length"}


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_static_buffers_grow_to_the_next_bucket_with_the_same_integers(data: st.DataObject) -> None:
    """A long request finishes early; the short one goes on until the left-padded timeline passes the 64 positions
    of the first length bucket (positions stay below the model's 64)."""
    rt = _runtime("tiny-qwen2-int4", "numpy", True, "static")
    long, short = (data.draw(st.lists(st.integers(3, 255), min_size=n, max_size=n)) for n in (40, 2))
    tokens = data.draw(st.lists(st.integers(3, 255), min_size=30, max_size=30))
    static, dynamic = StaticSession(rt, batch=2, max_len=1), DynamicSession(rt)   # static: capacity 64
    got = [static.prefill([long, short])]
    want = [dynamic.prefill([long, short])]
    for i, tok in enumerate(tokens):
        active = np.arange(2) if i < 4 else np.array([1])                     # the long request leaves
        step = np.full(active.size, tok)
        got.append(static.step(active, step))
        want.append(dynamic.step(active, step))
    assert static.cache.capacity == 128 and static.cache.length == 70
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def _rerun_capture(step):                                    # a CUDA graph stand-in: replay re-runs the step into
    out = step()                                             # the same output tensor (what a graph writes to)
    return (lambda: out.copy_(step())), out


@pytest.mark.parametrize("fused", [False, True])
def test_graph_sessions_reuse_their_buffers_and_inputs_with_the_same_integers(fused: bool) -> None:
    """The bookkeeping of CUDA-graph decoding on CPU: static inputs updated in place, one capture per bucket pair,
    KV buffers reused by a later session with stale positions beyond its own (masked), finished rows as dummies."""
    if fused:
        pytest.importorskip("numba")
    rt = _runtime("tiny-qwen2-int8", "cpu", fused, "static")
    rt.graphs = GraphPool(rt, capture=_rerun_capture)
    ref = _runtime("tiny-qwen2-int8", "numpy", True, "dynamic")
    for batch, steps in ((PROMPTS, 6), (PROMPTS[1:], 4), (PROMPTS[:2], 9)):   # buckets (4, 64), (4, 64), (2, 64)
        graph, dynamic = GraphSession(rt, batch=len(batch), max_len=16), DynamicSession(ref)
        got, want = graph.prefill(batch), dynamic.prefill(batch)
        assert np.array_equal(got, want)
        active = np.arange(len(batch))
        for i in range(steps):
            if i == 3:
                active, want = active[1:], want[1:]              # the first request leaves
            tokens = np.argmax(want, axis=1)
            got, want = graph.step(active, tokens), dynamic.step(active, tokens)
            assert np.array_equal(got, want)
    assert rt.graphs.captured == 2


def test_a_graph_session_off_cuda_is_never_opened() -> None:
    rt = _runtime("tiny-llama-int8", "cpu", False, "graphs")
    assert rt.ops.name == "cpu" and not isinstance(open_session(rt, batch=2, max_len=9), GraphSession)
    assert rt.graphs.captured == 0


def test_the_default_decode_mode_follows_the_backend() -> None:
    assert _runtime("tiny-llama-int8", "numpy", True, "dynamic").decode == "dynamic"
    assert getattr(get_ops("cpu", fused=False), "decode", "dynamic") == "dynamic"
