"""The spin barrier of ``cpu_sync``: parts that run one kernel together see each other's writes after a barrier.

Threads exchange values through a shared array over many barriers (hypothesis: 2–4 parts, 1–300 rounds): after
barrier ``k`` every part reads what every other part wrote before it, never an older value; a released call
(:func:`release`) lets a part pass barriers its partners never reach, and the fused backend raises a failed
part's error instead of waiting; :func:`share` covers ``[0, n)`` in order.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from numba import njit

from kolm_audit.runtime.cpu_sync import barrier, release, share, sync_flags


@njit(nogil=True)
def _exchange(sync: np.ndarray, part: int, parts: int, box: np.ndarray, rounds: int, seen: np.ndarray) -> None:
    """Round ``i``: write ``i·parts + part`` into this part's slot, barrier, read every slot (expecting round
    ``i``'s values), barrier (nobody writes round ``i + 1`` before everyone has read round ``i``)."""
    for i in range(rounds):
        box[part] = i * parts + part
        barrier(sync, part, parts, 2 * i + 1)
        for other in range(parts):
            seen[part, i, other] = box[other]
        barrier(sync, part, parts, 2 * i + 2)


def _run_parts(parts: int, fn: object) -> None:
    threads = [threading.Thread(target=fn, args=(p,)) for p in range(1, parts)]
    for th in threads:
        th.start()
    fn(0)
    for th in threads:
        th.join(timeout=60)
        assert not th.is_alive()


@settings(max_examples=12, deadline=None)
@given(parts=st.integers(1, 4), rounds=st.integers(1, 300))
def test_every_part_reads_every_write_made_before_a_barrier(parts: int, rounds: int) -> None:
    sync, box = sync_flags(parts), np.full(parts, -1, np.int64)
    seen = np.full((parts, rounds, parts), -1, np.int64)
    _run_parts(parts, lambda p: _exchange(sync, p, parts, box, rounds, seen))
    want = np.arange(rounds)[:, None] * parts + np.arange(parts)[None, :]       # [rounds, parts]
    assert all(np.array_equal(seen[p], want) for p in range(parts))
    if parts > 1:                                                               # one part alone never waits
        assert sync.reshape(parts, -1)[:, 0].tolist() == [2 * rounds] * parts


def test_a_released_call_lets_a_part_pass_barriers_its_partner_never_reaches() -> None:
    """Part 1 of 2 never runs; once the flags are released, part 0 passes its 2·50 barriers and returns."""
    sync, box, seen = sync_flags(2), np.zeros(2, np.int64), np.zeros((2, 50, 2), np.int64)
    release(sync)
    _exchange(sync, 0, 2, box, 50, seen)
    assert seen[0, -1, 0] == 49 * 2


@given(n=st.integers(0, 500), parts=st.integers(1, 9))
def test_share_covers_the_range_in_order(n: int, parts: int) -> None:
    ranges = [share(n, p, parts) for p in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_a_failing_part_releases_its_partners_and_its_error_is_raised() -> None:
    """``Workers.together`` (a ``FusedCpuOps``'): part 1 fails before it reaches a barrier; part 0 (waiting there)
    is released and runs to its end, and the call raises part 1's error instead of waiting forever. Then a call
    that works."""
    from kolm_audit.runtime.cpu_fused import FusedCpuOps

    ops = FusedCpuOps(threads=2)
    box, seen = np.zeros(2, np.int64), np.zeros((2, 20, 2), np.int64)

    def fn(part: int, sync: np.ndarray) -> None:
        if part == 1:
            raise ValueError("part 1 failed")
        _exchange(sync, part, 2, box, 20, seen)

    with pytest.raises(ValueError, match="part 1 failed"):
        ops._workers.together(2, fn)
    ops._workers.together(2, lambda part, sync: _exchange(sync, part, 2, box, 20, seen))
    assert seen[1, -1].tolist() == [38, 39]
