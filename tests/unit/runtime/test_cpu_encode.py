"""The one-kernel BERT encoder (``cpu_encode.encode_forward``) gives the reference's integers.

Through the runtime, against :class:`NumpyOps`: packed batches of 1–5 requests (kernel calls counted), requests
grouped into calls of at most 64 rows on one and two threads, one group split into parts run by 2 and 3 threads
together (the host's part and partner threads of an ``EncodeCrew``: partners that stay between calls, leave when
calls stop coming and come back, and end when a part fails), a request of 65 rows (composed), hidden states of every
position and classification logits, embeddings scaled to the int32 limits (saturating sums), and schemes whose
weights are not one int8 digit (declined: the composed forward runs).
"""

from __future__ import annotations

import threading
import time
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

import itertools

from _bert_fixtures import tiny_config, tiny_model, tiny_vocab, write_checkpoint
from numba import njit

from kolm_audit.compile import quantize_checkpoint
from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.runtime import cpu_encode as ce
from kolm_audit.runtime import cpu_gemv as cg
from kolm_audit.runtime import cpu_sync as ks
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import host_crew as hc
from kolm_audit.runtime import host_threads as ht
from kolm_audit.runtime.cpu_fused import _ROW_COST, FusedCpuOps, _balanced_runs, _row_groups
from kolm_audit.runtime.models.bert import BertRuntime

VOCAB = len(tiny_vocab())
ROWS = 64 if cg.GEMM else 4                      # the most packed rows one kernel call takes


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    model = tiny_model(tiny_config(max_pos=80, layers=2), seed=3)
    return quantize_checkpoint(read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf"))),
                               scheme=request.param)


def _kw(qm: Any) -> dict[str, Any]:
    return {"architecture": qm.architecture, "quantization": qm.quantization, "task": qm.task, "tensors": qm.tensors}


def _runtimes(qm: Any, tensors: dict[str, np.ndarray] | None = None) -> tuple[BertRuntime, BertRuntime, str]:
    """(numpy reference, fused CPU) runtimes of ``qm`` (or of ``tensors`` in its place), and its scheme."""
    kw = {**_kw(qm), "tensors": tensors or qm.tensors}
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
    two = BertRuntime.from_tensors(**_kw(quantized), ops=FusedCpuOps(threads=2))
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
    (``cpu_sync`` barriers between them; every call split, however small): part 0 in one kernel call on this
    thread, each other part once on its partner thread, the reference's hidden states (a single row is not
    split)."""
    ref, _, scheme = _runtimes(quantized)
    fast = BertRuntime.from_tensors(**_kw(quantized), ops=FusedCpuOps(threads=threads))
    with mock.patch.object(ht, "PAR_MIN", 0), \
            mock.patch.object(ce, "encode_forward", wraps=ce.encode_forward) as kernel:
        got = fast.encode(batch)[0]
    assert np.array_equal(got, ref.encode(batch)[0])
    parts = min(threads, sum(map(len, batch)))
    if _groups(scheme, [len(seq) for seq in batch]) == 1:
        assert kernel.call_count == 1 and kernel.call_args.args[4] == 0                   # part 0
        crew = fast.ops._encode_crew
        if parts > 1:                                # a partner marks its forward done just after the last barrier
            assert crew.parts == parts and _eventually(lambda: all(ce.done(crew.box, p) == 1 for p in range(1, parts)))
            crew.stop()
        else:
            assert crew is None


def _partners() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"{ht.NAME}-encode")]


def _eventually(done: Any, seconds: float = 20) -> bool:
    """Whether ``done()`` becomes true within ``seconds`` (threads on a loaded machine may run late)."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.005)
    return bool(done())


def _wait_for_no_partner() -> None:
    assert _eventually(lambda: not _partners())


@pytest.mark.parametrize("idle", [1, 1 << 50])
def test_partners_stay_between_calls_or_leave_and_come_back(quantized: Any, idle: int) -> None:
    """Five one-sentence forwards on two threads. With partners that wait ``2^50`` ns between calls (13 days): one
    partner loop runs all five, and stopping the crew ends it. With partners that leave after 1 ns (each call waits
    until it has left): every forward starts a new loop, and none is left after the last. Every forward gives the
    reference's hidden states."""
    ref, _, scheme = _runtimes(quantized)
    if scheme != "int8" or not cg.GEMM:
        pytest.skip("one-kernel forwards of this size need the int8 scheme and the packed tiles")
    fast = BertRuntime.from_tensors(**_kw(quantized), ops=FusedCpuOps(threads=2))
    rng = np.random.default_rng(5)
    batches = [[rng.integers(0, VOCAB, int(n)).tolist()] for n in rng.integers(8, 30, 5)]
    got = []
    with mock.patch.object(ht, "PAR_MIN", 0), mock.patch.object(hc, "IDLE", idle):
        for batch in batches:
            got.append(fast.encode(batch)[0])
            box = fast.ops._encode_crew.box
            assert idle > 1 or _eventually(lambda box=box: box[ks.LINE + ce.JOB] == ce.GONE)
    crew = fast.ops._encode_crew
    assert all(np.array_equal(g, ref.encode(batch)[0]) for g, batch in zip(got, batches, strict=True))
    assert crew.seq == 5 and _eventually(lambda: ce.done(crew.box, 1) == 5)
    if idle > 1:
        assert crew.started == 1 and _partners()
        crew.stop()
        assert not _partners()
    else:
        assert crew.started == 5
        _wait_for_no_partner()
        crew.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")   # the partner's, printed
@pytest.mark.parametrize("failing", ["host", "partner"])
def test_a_failing_part_fails_the_forward_and_ends_the_partner(quantized: Any, failing: str) -> None:
    """A part raises before its forward: the other passes every barrier (released), the forward raises (the host's
    own error, or that its partner failed), the crew is stopped and its partner ends; the next call makes a new
    crew and gives the reference's integers."""
    ref, _, scheme = _runtimes(quantized)
    if scheme != "int8" or not cg.GEMM:
        pytest.skip("one-kernel forwards of this size need the int8 scheme and the packed tiles")
    fast = BertRuntime.from_tensors(**_kw(quantized), ops=FusedCpuOps(threads=2))
    batch = [[3, 1, 4, 1, 5, 9, 2, 6]]

    def fail(*args: Any) -> None:
        raise MemoryError("no room")

    name = "encode_forward" if failing == "host" else "encode_partner"
    with mock.patch.object(ht, "PAR_MIN", 0), mock.patch.object(ce, name, fail), \
            pytest.raises(MemoryError if failing == "host" else RuntimeError, match=r"no room|partner thread"):
        fast.encode(batch)
    crew = fast.ops._encode_crew
    _wait_for_no_partner()
    with mock.patch.object(ht, "PAR_MIN", 0):
        got = fast.encode(batch)[0]
    assert fast.ops._encode_crew is not crew and np.array_equal(got, ref.encode(batch)[0])
    fast.ops._encode_crew.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        crew.run(np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([0, 1]))


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


def test_partners_sent_away_before_pool_work_come_back(quantized: Any) -> None:
    """A one-sentence forward (its partner stays: ``2^50`` ns), then a batch of three groups (the pool's threads run
    it): the partner is sent away first and leaves; the next one-sentence forward starts a new one. Every forward
    gives the reference's integers."""
    ref, _, scheme = _runtimes(quantized)
    if scheme != "int8" or not cg.GEMM:
        pytest.skip("one-kernel forwards of this size need the int8 scheme and the packed tiles")
    fast = BertRuntime.from_tensors(**_kw(quantized), ops=FusedCpuOps(threads=2))
    rng = np.random.default_rng(6)
    one, many = [rng.integers(0, VOCAB, 20).tolist()], [rng.integers(0, VOCAB, 50).tolist() for _ in range(3)]
    with mock.patch.object(ht, "PAR_MIN", 0), mock.patch.object(hc, "IDLE", 1 << 50):
        got = [fast.encode(one)[0]]
        crew = fast.ops._encode_crew
        assert crew.started == 1 and _partners()
        got.append(fast.encode(many)[0])
        _wait_for_no_partner()
        got.append(fast.encode(one)[0])
    assert fast.ops._encode_crew is crew and crew.started == 2 and _eventually(lambda: ce.done(crew.box, 1) == 2)
    for g, batch in zip(got, [one, many, one], strict=True):
        assert np.array_equal(g, ref.encode(batch)[0])
    crew.stop()
    assert not _partners()


@pytest.mark.parametrize(("held", "gone"), [(0, False), (ce.LEAVE, False), (ce.GONE, True)])
def test_a_post_reaches_a_waiting_or_sent_away_partner_and_reports_a_gone_one(held: int, gone: bool) -> None:
    """``post`` of forward 1 to a partner whose JOB holds 0 (waiting), LEAVE (sent away, not yet left: kept) or GONE
    (left: reported, its JOB set for the thread that replaces it); ``dismiss`` sends away only a partner waiting
    for the forward after the given one."""
    box, seen = ce.mailbox(2), np.zeros(2, np.bool_)
    box[ks.LINE + ce.JOB] = held
    left = ce.post(box, 2, 7, 1, 1, seen)
    assert left == int(gone) and box[ks.LINE + ce.JOB] == 1 and bool(seen[1]) is gone
    assert (box[ce.ROWS], box[ce.REQUESTS]) == (7, 1)
    ce.dismiss(box, 2, 0)
    assert box[ks.LINE + ce.JOB] == 1
    ce.dismiss(box, 2, 1)
    assert box[ks.LINE + ce.JOB] == ce.LEAVE


@settings(max_examples=60, deadline=None)
@given(lens=st.lists(st.integers(1, 64), min_size=1, max_size=40), parts=st.integers(1, 3))
def test_balanced_runs_cover_the_requests_in_order_and_cut_where_the_work_is_halved(lens: list[int],
                                                                                    parts: int) -> None:
    """Runs are consecutive groups of at most 64 rows covering every request once, in order, at most ``parts`` of
    them; with two, the larger run's work is the least any one cut gives (work ``n·(n + _ROW_COST)`` a request)."""
    bounds = np.concatenate([[0], np.cumsum(lens)])
    runs = _balanced_runs(bounds, ROWS, parts)
    flat = [group for run in runs for group in run]
    assert 1 <= len(runs) <= parts and all(runs)
    assert flat[0][0] == 0 and flat[-1][1] == len(lens)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(flat))
    assert all(first < end and bounds[end] - bounds[first] <= ROWS for first, end in flat)
    if parts == 2 and len(lens) >= 2:
        work = np.concatenate([[0], np.cumsum([n * (n + _ROW_COST) for n in lens])])
        best = min(max(work[i], work[-1] - work[i]) for i in range(1, len(lens)))
        cut = runs[1][0][0] if len(runs) == 2 else len(lens)
        assert max(work[cut], work[-1] - work[cut]) == best


@settings(max_examples=40, deadline=None)
@given(lens=st.lists(st.integers(1, 70), min_size=1, max_size=6), hid=st.integers(1, 40), seed=st.integers(0, 99),
       extreme=st.booleans())
def test_mean_pool_is_the_rdiv_mean_of_each_request(lens: list[int], hid: int, seed: int, extreme: bool) -> None:
    """The kernel's §6.3 mean equals ``rdiv(Σ rows, n)`` of the reference, rows at the int32 limits included (sums
    of up to 70 rows of ``±2^31``; ties of the rounding where ``n`` is even)."""
    rng = np.random.default_rng(seed)
    bounds = np.concatenate([[0], np.cumsum(lens)])
    lo, hi = (-(1 << 31), (1 << 31) - 1) if extreme else (-7, 8)
    x = rng.integers(lo, hi, (int(bounds[-1]), hid), endpoint=True).astype(np.int32)
    if extreme:
        x[::3] = rng.choice(np.array([-(1 << 31), (1 << 31) - 1], np.int64), x[::3].shape)
    out = np.empty((len(lens), hid), np.int64)
    ce.mean_pool(x, bounds, out)
    want = fp.rdiv(np.add.reduceat(x.astype(np.int64), bounds[:-1], axis=0), np.diff(bounds)[:, None])
    assert np.array_equal(out, want)


def test_the_kernel_constants_are_made_once_per_operands_and_scalars(quantized: Any) -> None:
    """The host's kernel call takes the constants as one ``EncodeConsts`` (its fields the operands and scalars),
    made once and reused while the same operands and scalars come back; other scalars make new ones."""
    if quantized.quantization["scheme"] != "int8":
        pytest.skip("only one-digit int8 weights run the one-kernel forward")
    _, fast, _ = _runtimes(quantized)
    ops = fast.ops
    fast.embed([[1, 2, 3]])
    found, scalars, row_macs, path, consts = ops._facts_memo
    stack = found[4]
    assert row_macs == sum(lin[0].size for layer in stack for lin in layer[:4]) and f"{4 * len(stack)} products" in path
    *held, layers = _consts_fields(consts)
    assert tuple(held) == scalars and len(layers) == len(stack)
    assert all(np.array_equal(a, b) for a, b in zip(layers[0][0], stack[0][0], strict=True))
    fast.embed([[4, 5]])
    assert ops._facts_memo[4] is consts
    other = (scalars[0], scalars[1], scalars[2] + 1, scalars[3], scalars[4])
    assert _consts_fields(ops._encode_facts(found, other)[2])[2] == scalars[2] + 1
    assert ops._facts_memo[4] is not consts


@njit
def _consts_fields(c: Any) -> tuple:
    return c.nh, c.d, c.eps_q32, c.scale_mult, c.scale_shift, c.layers
