"""The one-kernel BERT encoder (``cpu_encode.encode_forward``) gives the reference's integers.

Through the runtime, against :class:`NumpyOps`: packed batches of 1–5 requests (kernel calls counted), requests
grouped into calls of at most 64 rows on one and two threads, one group split into parts run by 2 and 3 threads
together, a request of 65 rows (composed), hidden states of every
position and classification logits, embeddings scaled to the int32 limits (saturating sums), and schemes whose
weights are not one int8 digit (declined: the composed forward runs).
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _bert_fixtures import tiny_config, tiny_model, tiny_vocab, write_checkpoint

from kolm_audit.compile import quantize_checkpoint
from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.runtime import cpu_encode as ce
from kolm_audit.runtime import cpu_gemv as cg
from kolm_audit.runtime import host_threads as ht
from kolm_audit.runtime.cpu_fused import FusedCpuOps, _row_groups
from kolm_audit.runtime.models.bert import BertRuntime

VOCAB = len(tiny_vocab())
ROWS = 64 if cg.GEMM else 4                      # the most packed rows one kernel call takes


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    model = tiny_model(tiny_config(max_pos=80, layers=2), seed=3)
    return quantize_checkpoint(read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf"))),
                               scheme=request.param)


def _runtimes(qm: Any, tensors: dict[str, np.ndarray] | None = None) -> tuple[BertRuntime, BertRuntime, str]:
    """(numpy reference, fused CPU) runtimes of ``qm`` (or of ``tensors`` in its place), and its scheme."""
    kw = {"architecture": qm.architecture, "quantization": qm.quantization, "task": qm.task,
          "tensors": tensors or qm.tensors}
    return (BertRuntime.from_tensors(**kw), BertRuntime.from_tensors(**kw, ops=FusedCpuOps(threads=1)),
            qm.quantization["scheme"])


@pytest.fixture(scope="module")
def pair(quantized: Any) -> tuple[BertRuntime, BertRuntime, str]:
    return _runtimes(quantized)


def _calls(scheme: str, rows: int) -> int:
    return 1 if scheme == "int8" and rows <= ROWS else 0


def _groups(scheme: str, lens: list[int]) -> int:
    """Kernel calls of one forward of requests of ``lens`` tokens, in that order (groups of at most ``ROWS``)."""
    if scheme != "int8" or max(lens) > ROWS:
        return 0
    return len(_row_groups(np.concatenate([[0], np.cumsum(lens)]), ROWS))


@settings(max_examples=10, deadline=None)
@given(batch=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20), min_size=1, max_size=5))
def test_packed_batches_equal_the_reference(pair: tuple[BertRuntime, BertRuntime, str],
                                            batch: list[list[int]]) -> None:
    ref, fast, scheme = pair
    with mock.patch.object(ce, "encode_forward", wraps=ce.encode_forward) as kernel:
        got_h, got_valid = fast.encode(batch)
        got_e = fast.embed(batch)
        got_c = fast.classify(batch)
    want_h, want_valid = ref.encode(batch)
    assert np.array_equal(got_valid, want_valid) and np.array_equal(got_h, want_h)
    assert all(np.array_equal(a, b) for a, b in zip(got_e, ref.embed(batch), strict=True))
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(got_c, ref.classify(batch), strict=True))
    lens = [len(seq) for seq in batch]
    assert kernel.call_count == 2 * _groups(scheme, lens) + _groups(scheme, sorted(lens))   # embed sorts


def test_requests_of_up_to_64_rows_go_in_groups_and_longer_ones_are_composed(
        pair: tuple[BertRuntime, BertRuntime, str]) -> None:
    """Requests of 40 + 24 rows: one kernel call; 40 + 25: two groups, two calls; one request of 65 rows: the
    composed forward. Each equals the reference."""
    ref, fast, scheme = pair
    rng = np.random.default_rng(8)
    for lens, calls in (([40, 24], 1), ([40, 25], 2), ([65], 0)):
        batch = [rng.integers(0, VOCAB, n).tolist() for n in lens]
        with mock.patch.object(ce, "encode_forward", wraps=ce.encode_forward) as kernel:
            got = fast.encode(batch)[0]
        assert np.array_equal(got, ref.encode(batch)[0])
        assert kernel.call_count == (calls if scheme == "int8" and max(lens) <= ROWS else 0)


def test_groups_split_between_two_threads_give_the_one_thread_integers(quantized: Any) -> None:
    """32 requests of 1–30 rows (many groups) on one and on two worker threads: the same integers as the
    reference, whichever thread ran a group."""
    ref, one, scheme = _runtimes(quantized)
    kw = {"architecture": quantized.architecture, "quantization": quantized.quantization, "task": quantized.task,
          "tensors": quantized.tensors}
    two = BertRuntime.from_tensors(**kw, ops=FusedCpuOps(threads=2))
    rng = np.random.default_rng(21)
    batch = [rng.integers(0, VOCAB, int(n)).tolist() for n in rng.integers(1, 31, 32)]
    with mock.patch.object(ce, "encode_forward", wraps=ce.encode_forward) as kernel:
        got_one, got_two = one.embed(batch), two.embed(batch)
    want = ref.embed(batch)
    assert all(np.array_equal(a, c) and np.array_equal(b, c) for a, b, c in zip(got_one, got_two, want, strict=True))
    if scheme == "int8" and cg.GEMM:
        assert kernel.call_count >= 2 * sum(map(len, batch)) // 64                  # ≥ 64-row groups, twice


@settings(max_examples=8, deadline=None)
@given(batch=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12), min_size=1, max_size=4),
       threads=st.sampled_from([2, 3]))
def test_one_group_split_into_parts_gives_the_reference_integers(quantized: Any, batch: list[list[int]],
                                                                 threads: int) -> None:
    """One group (at most 48 rows) run by 2 or 3 threads at once, each computing its rows and heads
    (``cpu_sync`` barriers between them; every call split, however small): one kernel call per part, the
    reference's hidden states. Parts may get no rows or no heads (1 row, 3 threads)."""
    ref, _, scheme = _runtimes(quantized)
    kw = {"architecture": quantized.architecture, "quantization": quantized.quantization, "task": quantized.task,
          "tensors": quantized.tensors}
    fast = BertRuntime.from_tensors(**kw, ops=FusedCpuOps(threads=threads))
    with mock.patch.object(ht, "PAR_MIN", 0), \
            mock.patch.object(ce, "encode_forward", wraps=ce.encode_forward) as kernel:
        got = fast.encode(batch)[0]
    assert np.array_equal(got, ref.encode(batch)[0])
    rows = sum(map(len, batch))
    if _groups(scheme, [len(seq) for seq in batch]) == 1:
        assert kernel.call_count == min(threads, rows)
        assert sorted(c.args[16] for c in kernel.call_args_list) == list(range(min(threads, rows)))


def test_embeddings_at_the_int32_limits_equal_the_reference(quantized: Any) -> None:
    """Word embedding rows of tokens 0–19 scaled to ``w · 2^24`` (up to ``-2^31`` and ``127 · 2^24``, the most an
    artifact may hold) and position rows of ``±2^30``: the embedding sums leave the int32 range and saturate; the
    hidden states equal the reference's."""
    tensors = dict(quantized.tensors)
    mult, shift = tensors["embeddings.word.mult"].copy(), tensors["embeddings.word.shift"].copy()
    mult[:20], shift[:20] = 1 << 25, 1
    position = tensors["embeddings.position"].copy()
    position[:8] = np.where(np.arange(position.shape[1]) % 2 == 0, 1 << 30, -(1 << 30))
    tensors["embeddings.word.mult"], tensors["embeddings.word.shift"] = mult, shift
    tensors["embeddings.position"] = position
    ref, fast, scheme = _runtimes(quantized, tensors)
    batch = [[3, 19, 0, 7, 12], [0, 1, 2]]
    word = ref.word_emb[0][:20].astype(np.int64) << 24                          # the scaled rows, Q.16
    sums = word[batch[0]] + position[:5].astype(np.int64) + tensors["embeddings.token_type"][0]
    assert (sums > (1 << 31) - 1).any() and (sums < -(1 << 31)).any()          # both limits are reached
    with mock.patch.object(ce, "encode_forward", wraps=ce.encode_forward) as kernel:
        got = fast.encode(batch)[0]
    assert np.array_equal(got, ref.encode(batch)[0])
    assert kernel.call_count == _calls(scheme, 8)
