"""Partner threads that stay inside one kernel call between the split calls they serve: a decoder's steps
(:class:`StepCrew`, one :func:`~kolm_audit.runtime.cpu_step.step_loop` call that lasts as long as the buffers it was
started with) and one-sentence BERT forwards (:class:`EncodeCrew`, partners that leave when calls stop coming).

A thread pool's worker sleeps between jobs and wakes ~0.1 ms after it is handed one on this VM, longer than a small
model's whole decoding step; a :class:`StepCrew` keeps its partner inside one kernel call that waits for the next
step in a mailbox (:mod:`~kolm_audit.runtime.cpu_step`). It owns the step's host inputs (tokens, positions, real
keys), the buffers both parts write and the logits, so that the partner's kernel sees them all step after step.
The host runs its part one step a call (:meth:`StepCrew.step`), or in greedy decoding many (:meth:`StepCrew.greedy`:
the kernel chooses each next token and posts the next step itself).
The caller stops it (:meth:`StepCrew.stop`) when the steps end or its buffers change; a crew that is dropped
instead is stopped when it is collected. If either part fails, every barrier is released (the other part runs to
the end of its step), the crew stops and the step raises (the partner's own error is printed by its thread); a
stopped crew runs nothing more.

Both crews' partner loops run on lent daemon threads that wait for the next loop between them (:class:`_Lenders`):
starting a thread per generation cost more than waking a waiting one.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable

import numpy as np

from kolm_audit.runtime import cpu_encode as ce
from kolm_audit.runtime import cpu_step as cs
from kolm_audit.runtime import cpu_sync as ks
from kolm_audit.runtime.host_threads import NAME

_NO_EOS = np.zeros(0, np.int64)


class _Loan:
    """One partner loop handed to a lent thread: ``done`` is set when it has ended."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.thread: threading.Thread | None = None             # the thread running it, once it has begun

    def wait(self) -> None:
        """Wait for the loop's end (not from the thread running it: a crew collected there stops its own loop)."""
        if self.thread is not threading.current_thread():
            self.done.wait()


class _Lenders:
    """Daemon threads that run one partner loop at a time and wait for the next between them (a new one when none
    waits). A thread started for each generation cost ~0.4 ms here — ``Thread.start`` waits for the GIL, which the
    new thread holds while numba handles the kernel's arguments — against ~0.1 ms to wake a waiting one. A thread
    is named after the loop it runs (``kolm-cpu-idle`` between loops); a forked child makes its own."""

    def __init__(self) -> None:
        self._idle: list[queue.SimpleQueue] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def lend(self, name: str, kernel: Callable[..., object], args: tuple, sync: np.ndarray,
             failed: list[bool]) -> _Loan:
        """Run ``kernel(*args)`` on a lent thread named ``name`` meanwhile; if it fails, ``failed`` says so and every
        barrier of ``sync`` is released (the host's part passes them; its call then fails), the error is printed
        and that thread ends."""
        loan = _Loan()
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()
            jobs = self._idle.pop() if self._idle else None
        if jobs is None:
            jobs = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(jobs,), name=f"{NAME}-idle", daemon=True).start()
        jobs.put((name, kernel, args, sync, failed, loan))
        return loan

    def _serve(self, jobs: queue.SimpleQueue) -> None:
        me = threading.current_thread()
        while True:
            name, kernel, args, sync, failed, loan = jobs.get()
            loan.thread, me.name = me, name
            ended = False
            try:
                kernel(*args)
                ended = True
            finally:
                me.name = f"{NAME}-idle"
                if ended:
                    with self._lock:
                        self._idle.append(jobs)
                else:
                    failed.append(True)
                    ks.release(sync)
                loan.done.set()


_LENDERS = _Lenders()


class StepCrew:
    """The steps of ``b`` requests over ``caches`` (one tuple of buffers per layer, capacity ``C`` rows) in ``parts``
    (1 or 2): with 2, a partner thread runs part 1 of every step; with 1 the host runs each step whole (a greedy
    run still in one call). ``operands``, ``scalars`` as for the decoder."""

    def __init__(self, *, operands: tuple, scalars: tuple[int, int, int, int], caches: tuple, b: int, vocab: int,
                 shared: tuple[np.ndarray, ...], parts: int = 2) -> None:
        if parts not in (1, 2):
            raise ValueError(f"a step crew runs a step in 1 or 2 parts, not {parts}")
        emb, g_first, stack, head, rsqrt, cos, sin, exp_pair, sig_pair = operands
        eps_q32, heads, scale_mult, scale_shift = scalars
        cap = caches[0][0].shape[2]
        self.caches, self.parts, self.seq = caches, parts, 0
        self.ids = np.zeros(b, np.int64)                                     # [B] the step's tokens
        self.pos = np.zeros((b, 1), np.int64)                                # [B,1] their positions
        self.key_ok = np.zeros((b, 1, 1, cap), np.bool_)                     # [B,1,1,C] real keys
        self.logits = np.empty((b, vocab), np.int32)                         # [B,V] int32 Q.16
        self.chosen = np.empty((cap, b), np.int64)                           # [C,B] tokens of greedy steps
        self.sync, self.box = ks.sync_flags(self.parts), cs.mailbox()
        # step_loop's arguments before and after (part, parts, sync, box, seen, steps, eos): the same for both parts
        self._head = (self.ids, emb, g_first, stack, caches, head, eps_q32, rsqrt, self.pos, cos, sin, heads,
                      self.key_ok, scale_mult, scale_shift, exp_pair, sig_pair)
        self._tail = (shared, self.logits, self.chosen)
        self._failed: list[bool] = []                                       # set by the partner before it releases
        self._pid = os.getpid()
        self._stopped = False
        self._finalizer: weakref.finalize | None = None
        if parts == 2:
            loan = _LENDERS.lend(f"{NAME}-step", cs.step_loop, self._args(1, 0, 0, _NO_EOS), self.sync,
                                 self._failed)                                      # holds no reference to self
            self._finalizer = weakref.finalize(self, StepCrew._halt, self.box, loan)

    def _args(self, part: int, seen: int, steps: int, eos: np.ndarray) -> tuple:
        """step_loop's arguments for ``part``: every step after ``seen`` (``steps`` 0), or the next ``steps`` at most
        (greedy after the first; ``eos`` int64 ends them)."""
        return (*self._head, part, self.parts, self.sync, self.box, seen, steps, eos, *self._tail)

    @staticmethod
    def _halt(box: np.ndarray, loan: _Loan) -> None:
        box[cs.STOP] = 1
        loan.wait()

    def fits(self, caches: tuple, b: int, parts: int) -> bool:
        """Whether this crew can run a step of ``b`` requests over ``caches`` in ``parts``: the same buffers it
        started with, in the process that started it (a forked child has no partner thread)."""
        return (not self._stopped and self._pid == os.getpid() and b == self.ids.shape[0] and parts == self.parts
                and all(a is c for old, new in zip(self.caches, caches, strict=True)
                        for a, c in zip(old, new, strict=True)))

    def step(self, ids: np.ndarray, pos: np.ndarray, key_ok: np.ndarray) -> np.ndarray:
        """Logits [B, V] int32 Q.16 of one step (``ids`` [B], ``pos`` [B], ``key_ok`` [B, t0 + 1] with the new
        key): part 0 here, part 1 on the partner; each layer's new cache row written."""
        self._host(ids, pos, key_ok, 1, _NO_EOS)
        return self.logits.copy()

    def greedy(self, ids: np.ndarray, pos: np.ndarray, key_ok: np.ndarray, steps: int, eos: np.ndarray
               ) -> np.ndarray:
        """Up to ``steps`` greedy steps from ``ids`` (arguments as for :meth:`step`; the caches must have room for
        ``steps`` rows), the next step's tokens chosen in the kernel; they end after a step in which a request's
        token is one of ``eos`` (int64). Returns the tokens chosen after each step run, int64 [s, B]."""
        if not 1 <= steps <= self.chosen.shape[0] - key_ok.shape[1] + 1:
            raise ValueError(f"greedy steps: 1 … {self.chosen.shape[0] - key_ok.shape[1] + 1} fit, asked {steps}")
        done = self._host(ids, pos, key_ok, steps, np.ascontiguousarray(eos, dtype=np.int64))
        return self.chosen[:done].copy()

    def _host(self, ids: np.ndarray, pos: np.ndarray, key_ok: np.ndarray, steps: int, eos: np.ndarray) -> int:
        """Post the first step and run the host's part of ``steps`` at most; returns the steps run."""
        if self._stopped:
            raise RuntimeError("this step crew was stopped")
        t0 = key_ok.shape[1] - 1
        self.ids[:] = ids
        self.pos[:, 0] = pos
        self.key_ok[:, 0, 0, :t0 + 1] = key_ok
        cs.post(self.box, t0, self.seq + 1)
        try:
            done = cs.step_loop(*self._args(0, self.seq, steps, eos))
        except BaseException:
            ks.release(self.sync)                                            # the partner finishes its step
            self.stop()
            raise
        self.seq += done
        if self._failed:
            self.stop()
            raise RuntimeError("the partner thread of a split decoding step failed (its error was printed)")
        return done

    def stop(self) -> None:
        """End the partner's loop and wait for it (its current step, if any, first)."""
        self._stopped = True
        if self._finalizer is not None:
            self._finalizer()


IDLE = 2_000_000                # ns a BERT partner waits for the next forward before it leaves


class EncodeCrew:
    """One-group BERT forwards (:func:`~kolm_audit.runtime.cpu_encode.encode_forward`) split into ``parts`` (>= 2):
    part 0 on the calling thread, each other part on a partner thread that waits for the next forward inside
    :func:`~kolm_audit.runtime.cpu_encode.encode_partner` and leaves after ``idle`` ns without one (default
    :data:`IDLE`) or when sent away (:meth:`dismiss`); a forward posted to a partner that has left lends it a
    thread again (:class:`_Lenders`). ``operands`` and ``scalars`` (heads, head size, ε, scale multiplier and
    shift) as for the kernel; the crew holds the inputs and buffers of up to ``rows`` packed rows. One forward at a
    time (a lock); a failing part fails the forward and stops the crew, as :meth:`stop` does; a crew that is
    dropped is stopped when it is collected."""

    def __init__(self, *, operands: tuple, scalars: tuple[int, int, int, int, int], parts: int, rows: int,
                 idle: int | None = None) -> None:
        if parts < 2:
            raise ValueError(f"an encode crew splits a forward into at least 2 parts, not {parts}")
        emb, add, g_emb, b_emb, stack, rsqrt, exp_pair, cdf_pair = operands
        heads, head_dim, eps_q32, scale_mult, scale_shift = scalars
        hid = emb[0].shape[1]
        self.operands, self.parts, self.rows = operands, parts, rows
        self.idle = IDLE if idle is None else idle
        self.seq, self.started = 0, 0                        # forwards posted; partner loops started
        self.ids, self.pos = np.zeros(rows, np.int64), np.zeros(rows, np.int64)          # [R] tokens, positions
        self.bounds = np.zeros(rows + 1, np.int64)                                         # [B+1] requests' rows
        self.shared = ce.split_buffers(rows, stack[0][0][0].shape[0], hid, stack[0][2][0].shape[0], parts)
        self.out = np.empty((rows, hid), np.int32)                                         # [R,H] shared
        self.sync, self.box = ks.sync_flags(parts), ce.mailbox(parts)
        self._head = (emb, add, g_emb, b_emb, stack, heads, head_dim, eps_q32, rsqrt, scale_mult, scale_shift,
                      exp_pair, cdf_pair)                   # the partner's operands (unboxed once a loan)
        self._consts = ce.encode_consts(operands, scalars)  # the host's (one pointer a call)
        self._per = ce.forward_barriers(len(stack))
        self._gone = np.zeros(parts, np.bool_)
        self._loans: list[_Loan] = []                                      # the partners' loops
        self._failed: list[bool] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._stopped = False
        self._finalizer = weakref.finalize(self, EncodeCrew._halt, self.box, self._loans)

    def fits(self, operands: tuple, parts: int) -> bool:
        """Whether this crew runs forwards of ``operands`` in ``parts``, in the process that made it (a forked child
        has none of its threads)."""
        return not self._stopped and self._pid == os.getpid() and parts == self.parts and operands is self.operands

    def run(self, ids: np.ndarray, pos: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """The final hidden states [N, H] int32 Q.16 of the packed rows ``ids`` [N] (``pos`` [N], requests ``bounds``
        [B+1] from 0, ``N <= rows``), every part run."""
        n, b = ids.shape[0], bounds.shape[0] - 1
        if n > self.rows:
            raise ValueError(f"an encode crew of {self.rows} rows was given {n}")
        with self._lock:
            if self._stopped:
                raise RuntimeError("this encode crew was stopped")
            self.ids[:n], self.pos[:n], self.bounds[:b + 1] = ids, pos, bounds
            self.seq += 1
            if ce.post(self.box, self.parts, n, b, self.seq, self._gone):          # partners that had left
                self._loans[:] = [loan for loan in self._loans if not loan.done.is_set()]
                for part in np.flatnonzero(self._gone):
                    self._start(int(part))
            try:
                ce.encode_forward(self.ids[:n], self.pos[:n], self.bounds[:b + 1], self._consts, 0, self.parts,
                                  self.sync, (self.seq - 1) * self._per, self.shared, self.out[:n])
            except BaseException:
                ks.release(self.sync)                        # the partners finish this forward
                self._stop()
                raise
            if self._failed:
                self._stop()
                raise RuntimeError("a partner thread of a split BERT forward failed (its error was printed)")
            return self.out[:n].copy()

    def dismiss(self) -> None:
        """Send the waiting partners away (before work of the thread pool, whose threads they would compete with
        for the cores); the next forward brings them back."""
        with self._lock:
            if not self._stopped and self._pid == os.getpid():
                ce.dismiss(self.box, self.parts, self.seq)

    def _start(self, part: int) -> None:
        """A lent thread for partner ``part``, its first forward the one just posted."""
        args = (self.ids, self.pos, self.bounds, *self._head, part, self.parts, self.sync, self.box, self.seq - 1,
                self.idle, self.shared, self.out)
        self._loans.append(_LENDERS.lend(f"{NAME}-encode-{part}", ce.encode_partner, args, self.sync, self._failed))
        self.started += 1

    @staticmethod
    def _halt(box: np.ndarray, loans: list[_Loan]) -> None:
        box[ce.STOP] = 1
        for loan in loans:
            loan.wait()

    def _stop(self) -> None:
        self._stopped = True
        self._finalizer()

    def stop(self) -> None:
        """End every partner's loop and wait for them (a forward under way first)."""
        with self._lock:
            self._stop()
