"""The serve micro-batcher in-process: a real int8 tiny BERT, a real SQLite log, real keys. One batch is one log
transaction across tenants; a refused input fails only its own request; a full queue refuses at once; a
cancelled request never runs; closing drains the queue and signs the final checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from _replay_fixtures import bert_checkpoint, make_keys, quantize_signed

from kolm_audit.errors import RuntimeInputError
from kolm_audit.log.checkpoint import parse_checkpoint
from kolm_audit.log.db import ReceiptLog
from kolm_audit.log.verify import verify_log
from kolm_audit.model import Model
from kolm_audit.receipts.document import make_leaf_verifier, parse_leaf
from kolm_audit.receipts.recorder import Recorder, Request
from kolm_audit.serve.batcher import Batcher, BatchLimits, CheckpointPolicy
from kolm_audit.serve.problems import Overloaded, ShuttingDown, problem

TEXTS = ["the quick brown fox", "hello", "approve the loan", "deny it", "a signed receipt"]


class CountingLog(ReceiptLog):
    """The real log, counting its append transactions."""

    transactions = 0

    def append_many(self, builders: Sequence[Callable[[int], bytes]]) -> list[int]:
        type(self).transactions += 1
        return super().append_many(builders)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batcher")
    keys = make_keys(tmp / "keys")
    path = quantize_signed(bert_checkpoint(tmp / "hf"), tmp / "cls.kolm", keys.vendor)
    from kolm_audit.artifact import read_artifact

    return keys, Model.from_artifact(read_artifact(path))


def _batcher(setup, path: Path, **limits: int) -> tuple[Batcher, CountingLog]:
    keys, model = setup
    log = CountingLog.open(path, create=True)
    recorders = {t: Recorder(model, log, keys.receipt, tenant=t, operator="svc") for t in ("acme", "globex")}
    batcher = Batcher(model=model, log=log, recorders=recorders, limits=BatchLimits(**limits),
                      checkpoints=CheckpointPolicy(key=keys.log, every=1000, interval_s=3600))
    CountingLog.transactions = 0
    return batcher, log


def test_one_batch_is_one_transaction_across_tenants_with_the_bytes_of_running_alone(setup, tmp_path):
    keys, model = setup
    batcher, log = _batcher(setup, tmp_path / "r.db", max_batch=32, max_wait_ms=0)
    futures = [batcher.submit(("acme", "globex")[i % 2], [Request(text=t, id=f"r{i}")], ["$.text"])
               for i, t in enumerate(TEXTS)]
    futures.append(batcher.submit("globex", [Request(text="two"), Request(ids=(2, 5, 3))], ["$.input[0]",
                                                                                          "$.input[1]"]))
    batcher.start()                       # everything is queued before the writer looks: one batch
    done = [f.result(timeout=60) for f in futures]
    batcher.close()
    assert CountingLog.transactions == 1
    indices = sorted(r.log_index for recs in done for r in recs)
    assert indices == list(range(7))
    for text, [rec] in zip(TEXTS, done, strict=False):
        [alone] = model.classify([text])
        assert rec.result.output_digest == alone.output_digest and rec.result.scores == alone.scores
        receipt = parse_leaf(log.leaf(rec.log_index)).receipt
        assert receipt["receipt_id"] == rec.receipt_id and rec.leaf == log.leaf(rec.log_index)
    assert parse_leaf(done[1][0].leaf).receipt["tenant"] == "globex"
    assert parse_checkpoint(log.latest_checkpoint()).checkpoint.size == 7      # signed when it closed
    report = verify_log(log.path, policy=keys.policy, verify_leaf=make_leaf_verifier(keys.policy))
    assert report.leaves_checked == 7
    log.close()


def test_a_refused_input_fails_only_its_own_request(setup, tmp_path):
    batcher, log = _batcher(setup, tmp_path / "r.db", max_batch=32, max_wait_ms=0)
    good = batcher.submit("acme", [Request(text="fine")], ["$.text"])
    bad = batcher.submit("acme", [Request(text="ok"), Request(text="word " * 100)], ["$.input[0]", "$.input[1]"])
    oov = batcher.submit("globex", [Request(ids=(2, 10**6, 3))], ["$.ids"])
    also_good = batcher.submit("globex", [Request(text="also fine")], ["$.text"])
    batcher.start()
    assert len(good.result(timeout=60)) == len(also_good.result(timeout=60)) == 1
    with pytest.raises(RuntimeInputError) as exc:
        bad.result(timeout=60)
    assert exc.value.field == "$.input[1]" and "limit" in exc.value.message
    with pytest.raises(RuntimeInputError) as exc:
        oov.result(timeout=60)
    assert exc.value.field == "$.ids[1]"
    batcher.close()
    assert log.size() == 2 and CountingLog.transactions == 1          # nothing of the refused requests
    log.close()


def test_a_full_queue_refuses_at_once_and_a_cancelled_request_never_runs(setup, tmp_path):
    batcher, log = _batcher(setup, tmp_path / "r.db", max_batch=4, max_queue=3, max_wait_ms=0)
    first = batcher.submit("acme", [Request(text="a"), Request(text="b")], ["$.input[0]", "$.input[1]"])
    second = batcher.submit("acme", [Request(text="c")], ["$.text"])
    with pytest.raises(Overloaded) as exc:
        batcher.submit("acme", [Request(text="d")], ["$.text"])
    status, body, headers = problem(exc.value, instance="/v1/decisions")
    assert status == 503 and int(headers["Retry-After"]) == body["retry_after"] >= 1
    assert second.cancel()                # gave up while queued
    batcher.start()
    assert [r.request.text for r in first.result(timeout=60)] == ["a", "b"]
    batcher.close()
    assert second.cancelled() and log.size() == 2
    with pytest.raises(ShuttingDown):
        batcher.submit("acme", [Request(text="late")], ["$.text"])
    log.close()


def test_a_checkpoint_on_request_covers_everything_acknowledged(setup, tmp_path):
    batcher, log = _batcher(setup, tmp_path / "r.db", max_batch=2, max_wait_ms=0)
    batcher.start()
    done = [batcher.submit("acme", [Request(text=t)], ["$.text"]).result(timeout=60) for t in TEXTS]
    note = batcher.checkpoint_soon().result(timeout=60)
    assert parse_checkpoint(note).checkpoint.size == len(done) == log.size()
    assert batcher.ready
    batcher.close()
    assert not batcher.ready
    log.close()


@pytest.mark.parametrize(("limits", "field"), [({"max_batch": 0}, "max_batch"), ({"max_wait_ms": -1}, "max_wait_ms"),
                                               ({"max_queue": True}, "max_queue")])
def test_limits_are_checked(limits, field):
    from kolm_audit.errors import InputError

    with pytest.raises(InputError) as exc:
        BatchLimits(**limits)
    assert exc.value.field == field


def test_a_locked_log_is_a_503_and_the_writer_recovers(setup, tmp_path, monkeypatch):
    import sqlite3

    from kolm_audit.serve.problems import Unavailable

    monkeypatch.setattr("kolm_audit.log.db.BUSY_TIMEOUT_S", 0.2)
    batcher, log = _batcher(setup, tmp_path / "r.db", max_wait_ms=0)
    other = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")                     # another writer holds the lock
    batcher.start()
    with pytest.raises(Unavailable) as exc:
        batcher.submit("acme", [Request(text="blocked")], ["$.text"]).result(timeout=60)
    assert problem(exc.value, instance="/v1/decisions")[0] == 503
    other.execute("ROLLBACK")
    other.close()
    [rec] = batcher.submit("acme", [Request(text="later")], ["$.text"]).result(timeout=60)
    assert rec.log_index == 0 and log.size() == 1
    batcher.close()
    log.close()
