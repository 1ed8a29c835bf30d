"""The fused CPU backend's worker threads (``host_threads``): rows split between spinning workers.

A worker runs the jobs posted to it and between them spins for ``SPIN_NS`` with the GIL released, then sleeps until
the next post; ``rest()`` sends it to sleep at once. Checked: every row range runs once whatever the worker's state
(spinning, asleep, just sent to rest), a worker's error is raised in the caller and the worker goes on, two callers
at once both get their rows (one of them alone), and parts run together meet at their barriers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("numba")

from kolm_audit.runtime import host_threads as ht


def _eventually(done: Callable[[], bool], seconds: float = 20) -> bool:
    """Whether ``done()`` becomes true within ``seconds`` (threads on a loaded machine may run late)."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.002)
    return bool(done())


def _fill(workers: ht.Workers, rows: int) -> tuple[np.ndarray, set[str]]:
    """``par`` over ``rows`` rows: each row written with its index once; the names of the threads that ran."""
    out, names = np.full(rows, -1, np.int64), set()

    def fill(lo: int, hi: int) -> None:
        assert (out[lo:hi] == -1).all()
        out[lo:hi] = np.arange(lo, hi)
        names.add(threading.current_thread().name)

    workers.par(rows, ht.PAR_MIN, fill)
    return out, names


@pytest.mark.parametrize("threads", [2, 3])
def test_rows_run_once_on_spinning_sleeping_and_rested_workers(monkeypatch: pytest.MonkeyPatch,
                                                               threads: int) -> None:
    monkeypatch.setattr(ht, "SPIN_NS", 20_000_000)                          # 20 ms of spinning after a job
    workers = ht.Workers(threads)
    for _ in range(3):                                                      # back to back: workers spinning
        out, names = _fill(workers, 10)
        assert out.tolist() == list(range(10)) and len(names) == threads
    assert workers.pool is not None and not any(s.sleeping for s in workers.pool)
    assert _eventually(lambda: all(s.sleeping for s in workers.pool))       # asleep after SPIN_NS
    out, names = _fill(workers, 10)                                         # woken by the post
    assert out.tolist() == list(range(10)) and len(names) == threads
    monkeypatch.setattr(ht, "SPIN_NS", 600_000_000_000)                     # would spin ten minutes …
    _fill(workers, 10)
    _fill(workers, 10)                                                      # (the long wait now under way)
    workers.rest()                                                          # … but rest() sends them to sleep
    assert _eventually(lambda: all(s.sleeping for s in workers.pool), seconds=5)
    out, _ = _fill(workers, 10)
    assert out.tolist() == list(range(10))
    workers.rest()


def test_a_workers_error_is_raised_in_the_caller_and_the_worker_goes_on() -> None:
    workers = ht.Workers(2)

    def fail_above(lo: int, hi: int) -> None:
        if lo > 0:
            raise ValueError(f"rows {lo}-{hi}")

    with pytest.raises(ValueError, match="rows 3-6"):
        workers.par(6, ht.PAR_MIN, fail_above)
    out, names = _fill(workers, 6)
    assert out.tolist() == list(range(6)) and len(names) == 2
    workers.rest()


def test_two_callers_at_once_both_get_every_row() -> None:
    """A second caller while the workers are taken runs its rows alone on its own thread."""
    workers = ht.Workers(2)
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(2)

    def caller(i: int) -> None:
        start.wait()
        for _ in range(50):
            out, _ = _fill(workers, 64)
            assert out.tolist() == list(range(64))
        results[i] = out

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [0, 1]
    workers.rest()


def test_parts_run_together_meet_at_their_barriers() -> None:
    """``together``: each part writes its slot, then (after a barrier) reads every other part's."""
    from numba import njit

    from kolm_audit.runtime import cpu_sync as ks

    @njit(nogil=True)
    def exchange(sync: np.ndarray, part: int, parts: int, box: np.ndarray, seen: np.ndarray) -> None:
        box[part] = part + 100
        ks.barrier(sync, part, parts, 1)
        for other in range(parts):
            seen[part, other] = box[other]

    workers = ht.Workers(3)
    box, seen = np.zeros(3, np.int64), np.zeros((3, 3), np.int64)
    workers.together(3, lambda part, sync: exchange(sync, part, 3, box, seen))
    assert (seen == np.array([100, 101, 102])).all()
    workers.rest()


def test_a_worker_keeps_no_reference_to_the_job_it_ran() -> None:
    """A finished job is dropped by its worker (a kept closure would keep, say, a dropped decoder and its partner
    thread alive until the next job)."""
    import gc
    import weakref

    class Job:
        def __call__(self, lo: int, hi: int) -> None:
            pass

    workers = ht.Workers(2)
    job = Job()
    gone = weakref.ref(job)
    workers.par(4, ht.PAR_MIN, job)
    del job
    gc.collect()
    assert gone() is None
    workers.rest()
