"""Decoding steps split between two threads by output columns (``cpu_step``) with the partner kept in its kernel
between steps (``host_crew.StepCrew``) give the reference's integers, and the partner never outlives its steps.

Through the runtime on two threads (every step split: ``PAR_MIN`` 0): generation at 1–4 requests and cached
logits equal the numpy reference's, one host call of the step kernel a step; a generation that outgrows the
caches' first 64 rows (the crew restarts on the new buffers) and drops a finished request (likewise); at the end
of a session, when a decoder is dropped, and when either part fails, the partner thread ends (a failure raises).
"""

from __future__ import annotations

import gc
import threading
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _llama_fixtures import tiny_config, tiny_model, write_checkpoint

from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.compile.llama import quantize_llama
from kolm_audit.runtime import cpu_step as cs
from kolm_audit.runtime import host_decoder as hd
from kolm_audit.runtime import host_threads as ht
from kolm_audit.runtime.cpu_fused import FusedCpuOps
from kolm_audit.runtime.models.llama import LlamaRuntime

VOCAB = 384


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A grouped-query int8 checkpoint (96 positions): the keyword arguments of ``LlamaRuntime.from_tensors``."""
    model = tiny_model(tiny_config(max_pos=96, heads=4, kv_heads=2), seed=23)
    qm = quantize_llama(read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf"))), scheme="int8")
    return {"architecture": qm.architecture, "quantization": qm.quantization, "tensors": qm.tensors}


@pytest.fixture(scope="module")
def pair(artifact: dict[str, Any]) -> tuple[LlamaRuntime, LlamaRuntime]:
    """(numpy reference, fused CPU on two threads) runtimes of the checkpoint."""
    return LlamaRuntime.from_tensors(**artifact), LlamaRuntime.from_tensors(**artifact, ops=FusedCpuOps(threads=2))


@pytest.fixture(autouse=True)
def split_everything() -> Any:
    with mock.patch.object(ht, "PAR_MIN", 0):
        yield


def _partners() -> list[threading.Thread]:
    return [th for th in threading.enumerate() if th.name == f"{ht.NAME}-step"]


@settings(max_examples=8, deadline=None)
@given(data=st.data(), batch=st.integers(1, 4))
def test_split_steps_equal_the_reference(pair: tuple[LlamaRuntime, LlamaRuntime], data: st.DataObject,
                                         batch: int) -> None:
    ref, fast = pair
    prompts = data.draw(st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20), min_size=batch,
                                 max_size=batch))
    cont = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=5))
    with mock.patch.object(cs, "step_loop", wraps=cs.step_loop) as kernel:
        got = fast.cached_logits(prompts[0], cont)
        gens = fast.generate(prompts, max_new_tokens=4, eos_ids=[])
    assert np.array_equal(got, ref.cached_logits(prompts[0], cont))
    assert [g.output_ids for g in gens] == [g.output_ids for g in ref.generate(prompts, max_new_tokens=4, eos_ids=[])]
    host = [c.args[22] for c in kernel.call_args_list if c.args[17] == 0]      # part 0: the host's, steps asked
    assert host == [1] * len(cont) + [3]               # one call a cached step; the greedy tokens after the first: one
    assert not _partners()                                                      # the sessions stopped theirs


def test_split_steps_outgrow_the_cache_and_drop_finished_requests(pair: tuple[LlamaRuntime, LlamaRuntime]) -> None:
    """Three requests for up to 70 tokens: the caches need more than their first 64 rows and request 0 meets its EOS
    id after a few steps; the crew restarts on the smaller batch; every output equals the reference's."""
    ref, fast = pair
    prompts = [[5, 9, 14, 3, 77], [200, 3], [17, 18, 19, 20, 21, 22, 23, 24, 25]]
    outs = [g.output_ids for g in ref.generate(prompts, max_new_tokens=70, eos_ids=[])]
    eos = [next(t for k, t in enumerate(outs[0]) if k >= 3 and t not in outs[0][:k] and t not in outs[1][:k + 1]
                and t not in outs[2][:k + 1])]                         # request 0's alone, after a few steps
    want = ref.generate(prompts, max_new_tokens=70, eos_ids=eos)
    assert 3 < len(want[0].output_ids) < min(len(want[1].output_ids), len(want[2].output_ids))
    with mock.patch.object(hd, "StepCrew", wraps=hd.StepCrew) as crews:
        got = fast.generate(prompts, max_new_tokens=70, eos_ids=eos)
    assert got == want
    assert crews.call_count >= 2
    assert not _partners()


def _decoder(fast: LlamaRuntime) -> Any:
    _, cache = fast._prefill([[5, 9, 11], [7]], all_logits=False)
    decoder = fast._decoder(cache)
    assert decoder is not None
    return decoder


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_greedy_steps_in_one_call_equal_steps_one_at_a_time(pair: tuple[LlamaRuntime, LlamaRuntime],
                                                           data: st.DataObject) -> None:
    """``CpuDecoder.greedy``: one host call of the step kernel runs the steps, choosing each row's next token itself
    (the largest logit, lowest id on ties); it ends after ``steps`` or after the first step that chose an EOS id,
    and leaves the decoder where as many single steps would (the next step's logits are equal)."""
    tokens, steps = np.array([3, 250]), data.draw(st.integers(1, 12))
    one = _decoder(pair[1])
    want = []
    for _ in range(steps):
        tokens = np.argmax(one.step(tokens), axis=1)
        want.append(tokens)
    eos = np.array(data.draw(st.lists(st.sampled_from(np.concatenate(want).tolist()), max_size=2)), np.int64)
    stop = next((i + 1 for i, row in enumerate(want) if np.isin(row, eos).any()), steps)
    run = _decoder(pair[1])
    with mock.patch.object(cs, "step_loop", wraps=cs.step_loop) as kernel:
        got = run.greedy(np.array([3, 250]), steps, eos)
    assert np.array_equal(got, np.stack(want[:stop]))
    assert [c.args[22] for c in kernel.call_args_list if c.args[17] == 0] == [steps]
    more = _decoder(pair[1])
    for row in [np.array([3, 250]), *want[:stop - 1]]:
        more.step(row)
    assert np.array_equal(more.step(want[stop - 1]), run.step(got[-1]))
    for decoder in (one, run, more):
        decoder.close()
    assert not _partners()


def test_greedy_runs_on_one_thread_in_one_call(pair: tuple[LlamaRuntime, LlamaRuntime],
                                               artifact: dict[str, Any]) -> None:
    """On one thread a greedy generation of at most ``FEW_ROWS`` requests runs its steps in one call of the step
    kernel too (one part, no partner thread), and equals the reference; sampling takes one call a step."""
    one = LlamaRuntime.from_tensors(**artifact, ops=FusedCpuOps(threads=1))
    prompts = [[5, 9, 14, 3, 77], [200, 3]]
    with mock.patch.object(cs, "step_loop", wraps=cs.step_loop) as kernel:
        got = one.generate(prompts, max_new_tokens=12, eos_ids=[])
        assert not _partners()
    assert got == pair[0].generate(prompts, max_new_tokens=12, eos_ids=[])
    assert [(c.args[17], c.args[18], c.args[22]) for c in kernel.call_args_list] == [(0, 1, 11)]
    sampled = {"seed": 7, "temperature": 900, "top_k": 20}
    assert (one.generate(prompts, max_new_tokens=5, eos_ids=[], **sampled)
            == pair[0].generate(prompts, max_new_tokens=5, eos_ids=[], **sampled))


@settings(max_examples=50, deadline=None)
@given(row=st.lists(st.integers(-3, 3), min_size=1, max_size=300))
def test_the_kernels_greedy_choice_is_the_first_largest(row: list[int]) -> None:
    assert cs._greedy(np.array(row, np.int32)) == int(np.argmax(row))


def test_a_dropped_decoder_stops_its_partner(pair: tuple[LlamaRuntime, LlamaRuntime]) -> None:
    decoder = _decoder(pair[1])
    assert decoder.step(np.array([1, 2])).shape == (2, VOCAB)
    assert len(_partners()) == 1
    del decoder
    gc.collect()
    assert not _partners()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")   # the partner's, printed
@pytest.mark.parametrize("failing", [0, 1])
def test_a_failing_part_fails_the_step_and_ends_the_partner(pair: tuple[LlamaRuntime, LlamaRuntime],
                                                            failing: int) -> None:
    """Part ``failing`` raises before its step: the other part passes every barrier (released), the step raises
    (the host's own error, or that its partner failed) and the partner thread ends."""
    decoder = _decoder(pair[1])
    real = cs.step_loop

    def step_loop(*args: Any) -> int:
        if args[17] == failing:
            raise MemoryError("no room")
        return real(*args)

    with mock.patch.object(cs, "step_loop", step_loop), \
            pytest.raises(MemoryError if failing == 0 else RuntimeError, match=r"no room|partner thread"):
        decoder.step(np.array([1, 2]))
    assert not _partners()
    decoder.close()
