"""The worker threads of the fused CPU backend: rows split between threads, and kernel calls run by several at once.

:class:`Workers` holds ``threads - 1`` worker threads next to the calling one (the kernels release the GIL):

* :meth:`Workers.par` splits independent rows into ranges, one call each, on up to ``threads`` threads — for
  work of at least :data:`PAR_MIN` elements (below that, a thread's hand-over costs more than it saves);
* :meth:`Workers.parts` and :meth:`Workers.together` run one kernel call with every thread at once, each with its
  part index, meeting at the kernel's barriers (:mod:`~kolm_audit.runtime.cpu_sync`). One such call at a time:
  two callers' parts interleaved in the queue could each hold a worker waiting at a barrier for a partner queued
  behind the other's. A part that fails releases every barrier, so that the others finish, and its error is
  raised. From a worker thread a call is not split (its partners could be queued behind the job it runs).

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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kolm_audit.runtime import cpu_sync as ks

PAR_MIN = 1 << 16               # elements below which one thread does the whole operation
NAME = "kolm-cpu"               # name prefix of the worker threads


class Workers:
    """``threads - 1`` worker threads (started on first use) beside the calling thread."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        if self.pool is None or self._pid != os.getpid():     # a forked child: the parent's threads are gone
            self.pool = ThreadPoolExecutor(max_workers=max(1, self.threads - 1), thread_name_prefix=NAME)
            self._pid = os.getpid()
            self._lock = threading.Lock()                     # the parent's may have been held by one of them
        return self.pool

    def par(self, rows: int, work: int, fn: Callable[[int, int], None]) -> None:
        """``fn(lo, hi)`` over row ranges covering ``[0, rows)``, on up to ``threads`` threads for large work."""
        n = min(self.threads, rows)
        if n <= 1 or work < PAR_MIN:
            fn(0, rows)
            return
        step = -(-rows // n)
        futures = [self._executor().submit(fn, lo, min(lo + step, rows)) for lo in range(step, rows, step)]
        fn(0, step)
        for f in futures:
            f.result()

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

        pool = self._executor()
        with self._lock:
            futures = [pool.submit(guarded, part) for part in range(1, parts)]
            try:
                guarded(0)
            finally:
                for f in futures:
                    f.exception()                             # waits; an error of its own is raised below
            for f in futures:
                f.result()
