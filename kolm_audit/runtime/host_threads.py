"""The worker threads of the fused CPU backend: rows split between threads, and kernel calls run by several at once.

:class:`Workers` holds ``threads - 1`` worker threads next to the calling one (the kernels release the GIL). A
worker that finished a job spins for the next one (GIL released) for :data:`SPIN_NS`, then sleeps; a pool thread
woken from a sleep for each job started 50–100 µs late on this VM, ~180 times in a 32-prompt Llama prefill.
:meth:`Workers.rest` sends spinning workers to sleep before threads of their own (the crews' partners) run:

* :meth:`Workers.par` splits independent rows into ranges, one call each, on up to ``threads`` threads — for
  work of at least :data:`PAR_MIN` elements (below that, a thread's hand-over costs more than it saves);
* :meth:`Workers.parts` and :meth:`Workers.together` run one kernel call with every thread at once, each with its
  part index, meeting at the kernel's barriers (:mod:`~kolm_audit.runtime.cpu_sync`). One caller has the workers
  at a time (a second caller's ``par`` runs on its own thread alone; its ``together`` waits). A part that fails
  releases every barrier, so that the others finish, and its error is raised in the caller. From a worker thread a
  call is not split.

A forked child makes its own threads (its parent's are gone) and its own lock. No split changes an output: the
kernels' rows and parts are independent or meet at barriers.

Example::

    >>> import numpy as np
    >>> out = np.zeros(6, dtype=np.int64)
    >>> def fill(lo: int, hi: int) -> None:
    ...     out[lo:hi] = np.arange(lo, hi)
    >>> Workers(2).par(6, PAR_MIN, fill)
    >>> out.tolist()
    [0, 1, 2, 3, 4, 5]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np

from kolm_audit.runtime import cpu_sync as ks

PAR_MIN = 1 << 16               # elements below which one thread does the whole operation
NAME = "kolm-cpu"               # name prefix of the worker threads
SPIN_NS = 2_000_000             # how long a worker spins for its next job (its core kept) before it sleeps


def _rest() -> None:
    """The job that sends a worker to sleep at once (:meth:`Workers.rest`)."""


class _Spinner:
    """One worker thread running the jobs posted to it, one at a time. Job ``s`` is announced in ``flags[0]`` and
    reported done in ``flags[LINE]``; between jobs the thread waits in a spin loop with the GIL released
    (:func:`~kolm_audit.runtime.cpu_sync.wait_change`) for :data:`SPIN_NS`, then sleeps on a condition until the
    next post. A worker woken from a sleep for every job started each 50–100 µs late on this VM: a Llama prefill
    makes ~180 such hand-overs, which cost it its second thread's gain."""

    def __init__(self, name: str) -> None:
        self.flags = np.zeros(2 * ks.LINE, np.int64)                   # [job posted | job done] lines
        self.seq = 0
        self.job: tuple[Callable[..., None], tuple] = (_rest, ())
        self.error: BaseException | None = None
        self.sleeping = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def post(self, fn: Callable[..., None], *args: object) -> None:
        self.job, self.error = (fn, args), None
        self.seq += 1
        ks.post_flag(self.flags, 0, self.seq)
        if self.sleeping:                                 # read after the post: see the loop for why none is lost
            with self.cond:
                self.cond.notify()

    def wait(self) -> BaseException | None:
        """Until the last job posted is done; returns the error it raised (the poster raises it), if any."""
        ks.wait_reach(self.flags, ks.LINE, self.seq)
        error, self.error = self.error, None
        return error

    def _loop(self) -> None:
        seen, rest = 0, False
        while True:
            now = seen if rest else ks.wait_change(self.flags, 0, seen, SPIN_NS)
            if now == seen:                               # the poster reads `sleeping` after its post, and the GIL
                with self.cond:                           # orders the two threads' reads and writes: either it sees
                    self.sleeping = True                  # True and notifies, or this check sees its post
                    while int(self.flags[0]) == seen:
                        self.cond.wait()
                    self.sleeping = False
                now = int(self.flags[0])
            seen = now
            fn, args = self.job
            try:
                fn(*args)
            except BaseException as err:  # noqa: BLE001 - handed to the poster, which raises it (as futures do)
                self.error = err
            rest = fn is _rest
            self.job = (_rest, ())                        # drop the job's references before it is reported done
            del fn, args
            ks.post_flag(self.flags, ks.LINE, seen)


class Workers:
    """``threads - 1`` worker threads (started on first use) beside the calling thread."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.pool: list[_Spinner] | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _take(self, blocking: bool) -> list[_Spinner] | None:
        """Acquire the workers (their threads started on first use); ``None`` if another caller has them."""
        if self._pid != os.getpid():                          # a forked child: the parent's threads are gone, and
            self.pool, self._pid = None, os.getpid()          # its lock may have been held by one of them
            self._lock = threading.Lock()
        if not self._lock.acquire(blocking=blocking):
            return None
        if self.pool is None:
            self.pool = [_Spinner(f"{NAME}_{i}") for i in range(self.threads - 1)]
        return self.pool

    def _run(self, spinners: list[_Spinner], jobs: list[tuple], own: Callable[[], None]) -> None:
        """``jobs`` (``(fn, *args)`` each) on the first ``len(jobs)`` workers and ``own()`` on this thread, then
        the workers' release and the first error raised; the caller has taken the workers (:meth:`_take`)."""
        try:
            used = spinners[:len(jobs)]
            for spinner, (fn, *args) in zip(used, jobs, strict=True):
                spinner.post(fn, *args)
            try:
                own()
            finally:
                errors = [spinner.wait() for spinner in used]
            for error in errors:
                if error is not None:
                    raise error
        finally:
            self._lock.release()

    def par(self, rows: int, work: int, fn: Callable[[int, int], None]) -> None:
        """``fn(lo, hi)`` over row ranges covering ``[0, rows)``, on up to ``threads`` threads for large work (on
        this thread alone while another caller has the workers)."""
        n = min(self.threads, rows)
        if n <= 1 or work < PAR_MIN:
            fn(0, rows)
            return
        spinners = self._take(blocking=False)
        if spinners is None:
            fn(0, rows)
            return
        step = -(-rows // n)
        self._run(spinners, [(fn, lo, min(lo + step, rows)) for lo in range(step, rows, step)], lambda: fn(0, step))

    def rest(self) -> None:
        """Send workers still spinning for a next job to sleep now: before work of other threads (the crews'
        partners), with which they would share the cores. The next job wakes them."""
        if self.pool is None or self._pid != os.getpid() or not self._lock.acquire(blocking=False):
            return
        try:
            resting = [spinner for spinner in self.pool if not spinner.sleeping]
            for spinner in resting:
                spinner.post(_rest)
            for spinner in resting:                       # every job is waited for before the workers are let go,
                spinner.wait()                            # so that a post never replaces a job not yet taken
        finally:
            self._lock.release()

    def parts(self, most: int, work: int) -> int:
        """How many threads run one kernel call together: all of them (at most ``most``) for work of at least
        :data:`PAR_MIN`, else one; one from a worker thread."""
        n = min(self.threads, most)
        if n <= 1 or work < PAR_MIN or threading.current_thread().name.startswith(NAME):
            return 1
        return n

    def together(self, parts: int, fn: Callable[[int, np.ndarray], None]) -> None:
        """``fn(part, sync)`` for every part at the same time (part 0 on this thread; ``parts`` from
        :meth:`parts`; ``sync`` the call's fresh barrier flags)."""
        sync = ks.sync_flags(parts)

        def guarded(part: int) -> None:
            try:
                fn(part, sync)
            except BaseException:
                ks.release(sync)                              # the other parts run to their end, unused
                raise

        spinners = self._take(blocking=True) or []
        self._run(spinners, [(guarded, part) for part in range(1, parts)], lambda: guarded(0))
