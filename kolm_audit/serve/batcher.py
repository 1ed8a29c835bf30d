"""Micro-batching of decisions: a bounded queue, one writer thread, one durable log transaction per batch.

HTTP handlers :meth:`Batcher.submit` a *group* (the decisions of one request, one tenant) and await its future.
The writer thread (never the event loop) waits for the first group, then up to ``max_wait_ms`` for more, takes
groups up to ``max_batch`` decisions, checks each input against the artifact's limits (a refused input fails only
its own group), runs every tenant's decisions through that tenant's :class:`Recorder` and appends all receipts
with :func:`append_prepared` in **one** transaction. Futures are resolved only after that commit: nothing is
acknowledged before it is durable. Outputs never depend on the batch a request lands in (``kolm-int/1`` is exact
integer arithmetic, docs/runtime-spec.md), which the tests check with concurrent clients.

The queue is bounded (``max_queue`` decisions): a full queue refuses at once (:class:`Overloaded`, a 503 with a
``Retry-After``) instead of growing a backlog. A group that has not started when its caller gives up is cancelled
and never runs; one that has started always completes and is recorded. Checkpoints are signed on this thread too
(the log has one writer): every ``every`` receipts, ``interval_s`` after the first unsigned one, on request
(:meth:`Batcher.checkpoint_soon`) and when the batcher closes, after draining the queue.

    >>> limits = BatchLimits(max_batch=16, max_wait_ms=2, max_queue=256)
    >>> limits.max_batch
    16
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from kolm_audit.errors import InputError, KolmError, RuntimeInputError
from kolm_audit.keys import PrivateKey
from kolm_audit.log.db import ReceiptLog
from kolm_audit.model import Model
from kolm_audit.receipts.recorder import Prepared, Recorded, Recorder, Request, append_prepared
from kolm_audit.serve.problems import Overloaded, ShuttingDown, Unavailable

_LOG = logging.getLogger("kolm_audit.serve")


def _int_in(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError("integer out of range", field=name, expected=f"{low}..{high}", actual=repr(value)[:40])


@dataclass(frozen=True)
class BatchLimits:
    """How decisions are batched: at most ``max_batch`` per model run and transaction, at most ``max_wait_ms``
    spent waiting for more once one is queued, at most ``max_queue`` queued (more are refused with a 503)."""

    max_batch: int = 32
    max_wait_ms: int = 2
    max_queue: int = 1024

    def __post_init__(self) -> None:
        _int_in(self.max_batch, "max_batch", 1, 100_000)
        _int_in(self.max_wait_ms, "max_wait_ms", 0, 60_000)   # 0: no waiting for company
        _int_in(self.max_queue, "max_queue", 1, 10_000_000)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the writer signs a checkpoint with ``key`` (Ed25519): every ``every`` receipts, and ``interval_s``
    after the oldest receipt no checkpoint covers yet."""

    key: PrivateKey
    every: int = 1000
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.key.key_type != "ed25519":
            raise InputError("log checkpoints are C2SP signed notes: they need an Ed25519 key", field="checkpoint_key",
                             expected="ed25519", actual=self.key.key_type)
        _int_in(self.every, "checkpoint_every", 1, 10**9)
        if not 0 < self.interval_s <= 86_400:
            raise InputError("checkpoint interval out of range", field="checkpoint_interval_s",
                             expected="0 < seconds <= 86400", actual=str(self.interval_s))


@dataclass(eq=False)
class _Group:
    """The decisions of one HTTP request: admitted, batched, appended and answered together."""

    tenant: str
    requests: tuple[Request, ...]
    fields: tuple[str, ...]                     # each request's input field, for error messages ("$.input[2]")
    future: Future[list[Recorded]] = field(default_factory=Future)


class Batcher:
    """The bounded queue and the writer thread over ``log`` (the thread is the log's only writer)."""

    def __init__(self, *, model: Model, log: ReceiptLog, recorders: Mapping[str, Recorder], limits: BatchLimits,
                 checkpoints: CheckpointPolicy,
                 on_commit: Callable[[Sequence[tuple[str, Recorded]]], None] | None = None) -> None:
        self._model = model
        self._log = log
        self._recorders = dict(recorders)
        self.limits = limits
        self._policy = checkpoints
        self._on_commit = on_commit
        self._cond = threading.Condition()
        self._queue: deque[_Group] = deque()
        self._queued = 0
        self._closing = False
        self._waiters: list[Future[str]] = []
        self._since_checkpoint = 0
        self._unsigned_since = 0.0
        self._rate = 0.0                         # decisions per second of recent batches (for Retry-After)
        self.fault: KolmError | None = None      # a checkpoint the log refused: the server is not ready
        self._thread = threading.Thread(target=self._loop, name="kolm-serve-writer", daemon=True)

    # --- the event-loop side ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._thread.is_alive() and not self._closing and self.fault is None

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, tenant: str, requests: Sequence[Request], fields: Sequence[str]) -> Future[list[Recorded]]:
        """Queue one group; its future gets the recorded decisions (in order) once they are durable."""
        if tenant not in self._recorders:
            raise InputError("no recorder for this tenant", field="tenant", actual=tenant)
        group = _Group(tenant=tenant, requests=tuple(requests), fields=tuple(fields))
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new decisions", retry_after=5)
            if self._queued + len(group.requests) > self.limits.max_queue:
                raise Overloaded(f"the decision queue is full ({self._queued} of {self.limits.max_queue} queued)",
                                 retry_after=self._retry_after())
            self._queue.append(group)
            self._queued += len(group.requests)
            self._cond.notify()
        return group.future

    def checkpoint_soon(self) -> Future[str]:
        """A future for a checkpoint note covering every receipt appended before this call."""
        waiter: Future[str] = Future()
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down", retry_after=5)
            self._waiters.append(waiter)
            self._cond.notify()
        return waiter

    def close(self, timeout: float | None = None) -> None:
        """Stop intake, run every queued group, sign a final checkpoint, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _retry_after(self) -> int:
        rate = self._rate if self._rate > 0 else 1.0
        return max(1, min(60, math.ceil(self._queued / rate)))

    # --- the writer thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            groups = self._next()
            if groups is None:
                break
            if groups:
                self._run(groups)
            self._maybe_checkpoint()
        self._maybe_checkpoint(final=True)
        with self._cond:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set_exception(ShuttingDown("the server shut down before the checkpoint", retry_after=5))

    def _due_in(self) -> float | None:
        """Seconds until a time-based checkpoint is due (None: nothing unsigned)."""
        if not self._since_checkpoint:
            return None
        return self._unsigned_since + self._policy.interval_s - time.monotonic()

    def _next(self) -> list[_Group] | None:
        """The next batch (``[]``: no batch, but a checkpoint may be due; ``None``: closed and drained)."""
        limits = self.limits
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                due = self._due_in()
                if self._waiters or (due is not None and due <= 0):
                    return []
                self._cond.wait(due)
            deadline = time.monotonic() + limits.max_wait_ms / 1000
            while self._queued < limits.max_batch and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            groups: list[_Group] = []
            taken = 0
            while self._queue and (not groups or taken + len(self._queue[0].requests) <= limits.max_batch):
                group = self._queue.popleft()
                taken += len(group.requests)
                groups.append(group)
            self._queued -= taken
            return groups

    def _check(self, group: _Group) -> None:
        """The runtime's own limits (context length, vocabulary), per request, before anything runs."""
        for request, name in zip(group.requests, group.fields, strict=True):
            try:
                self._model.check_inputs([request.text] if request.text is not None else [list(request.ids or ())])
            except RuntimeInputError as exc:
                inner = (exc.field or "").removeprefix("inputs[0]")
                raise RuntimeInputError(exc.message, field=name + inner, expected=exc.expected,
                                        actual=exc.actual) from None

    def _prepare(self, groups: list[_Group]) -> list[tuple[list[_Group], Prepared]]:
        """One prepared batch per tenant; if the runtime refuses something, each group alone (the culprit fails)."""
        by_tenant: dict[str, list[_Group]] = {}
        for group in groups:
            by_tenant.setdefault(group.tenant, []).append(group)
        try:
            return [(members, self._recorders[tenant].prepare([r for g in members for r in g.requests]))
                    for tenant, members in by_tenant.items()]
        except RuntimeInputError:
            if len(groups) == 1:
                raise
        out = []
        for group in groups:
            try:
                out.append(([group], self._recorders[group.tenant].prepare(list(group.requests))))
            except RuntimeInputError as exc:
                group.future.set_exception(exc)
        return out

    def _run(self, groups: list[_Group]) -> None:
        live = [g for g in groups if g.future.set_running_or_notify_cancel()]   # a cancelled group never runs
        ready = []
        for group in live:
            try:
                self._check(group)
                ready.append(group)
            except KolmError as exc:
                group.future.set_exception(exc)
        if not ready:
            return
        started = time.monotonic()
        try:
            prepared = self._prepare(ready)
            done = append_prepared(self._log, [p for _, p in prepared])
        except KolmError as exc:
            if isinstance(exc, InputError) and not isinstance(exc, RuntimeInputError):   # e.g. the log is locked
                _LOG.error("receipt log refused a batch: %s", exc)
                exc = Unavailable(f"the receipt log refused the batch: {exc.message}", retry_after=5)
            for group in ready:
                if not group.future.done():
                    group.future.set_exception(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must fail these requests, never the writer thread
            _LOG.exception("decision batch failed")
            for group in ready:
                if not group.future.done():
                    group.future.set_exception(exc)
            return
        count = sum(len(results) for results in done)
        elapsed = max(time.monotonic() - started, 1e-6)
        self._rate = count / elapsed if self._rate == 0 else 0.8 * self._rate + 0.2 * count / elapsed
        if not self._since_checkpoint:
            self._unsigned_since = time.monotonic()
        self._since_checkpoint += count
        if self._on_commit is not None:
            self._on_commit([(members[0].tenant, r) for (members, _), results in zip(prepared, done, strict=True)
                             for r in results])
        for (members, _), results in zip(prepared, done, strict=True):
            pos = 0
            for group in members:
                group.future.set_result(results[pos:pos + len(group.requests)])
                pos += len(group.requests)

    def _maybe_checkpoint(self, *, final: bool = False) -> None:
        with self._cond:
            waiters = list(self._waiters)
        due = self._due_in()
        if not (waiters or self._since_checkpoint >= self._policy.every or (due is not None and due <= 0)
                or (final and self._since_checkpoint)):
            return
        try:
            note = self._log.checkpoint(self._policy.key) if self._since_checkpoint else self._latest()
        except KolmError as exc:
            _LOG.error("checkpoint refused: %s", exc)
            self.fault = exc
            note = None
        with self._cond:
            self._waiters = [w for w in self._waiters if w not in waiters]
        for waiter in waiters:
            if note is None:
                waiter.set_exception(self.fault or ShuttingDown("no checkpoint"))
            else:
                waiter.set_result(note)
        if note is not None:
            self._since_checkpoint = 0

    def _latest(self) -> str:
        note = self._log.latest_checkpoint()
        return note if note is not None else self._log.checkpoint(self._policy.key)
