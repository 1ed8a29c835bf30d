"""Record decisions of an embedded runtime: run the model, append one signed receipt per decision.

For services that embed :func:`kolm_audit.load` in-process. Each call runs one batch through the model and
appends its receipts in one log transaction (durable before the call returns); a checkpoint is signed every
``checkpoint_every`` receipts and on :meth:`Recorder.close`.

A service with several tenants (``kolm_audit.serve``) keeps one Recorder per tenant over one model and one log:
:meth:`Recorder.prepare` runs a tenant's requests and builds their receipts without appending them, and
:func:`append_prepared` appends the receipts of several prepared batches in **one** log transaction.

    >>> import kolm_audit
    >>> from kolm_audit.log import ReceiptLog
    >>> model = kolm_audit.load("model.kolm", trust="trust.toml")            # doctest: +SKIP
    >>> log = ReceiptLog.open("receipts.db", create=True)                    # doctest: +SKIP
    >>> with Recorder(model, log, receipt_key, tenant="acme", operator="svc",
    ...               checkpoint_key=log_key, checkpoint_every=1000) as rec:  # doctest: +SKIP
    ...     done = rec.record_classify(["is this spam?"])
    ...     done[0].log_index, done[0].result.label
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kolm_audit.artifact.manifest import gate_failed
from kolm_audit.errors import GateFailed, InputError, RuntimeInputError
from kolm_audit.keys import PrivateKey
from kolm_audit.log.checkpoint import require_note_key
from kolm_audit.model import Model
from kolm_audit.receipts.document import Decision, Decoding, ReceiptContext, receipt_builder
from kolm_audit.receipts.privacy import TenantCrypto
from kolm_audit.timefmt import now


class _Log(Protocol):
    def append_many(self, builders: Sequence[Callable[[int], bytes]]) -> list[int]: ...
    def checkpoint(self, key: PrivateKey) -> str: ...


@dataclass(frozen=True)
class Request:
    """One decision to make: a text or token ids, an optional client id/caller, decoding for generate."""

    text: str | None = None
    ids: tuple[int, ...] | None = None
    id: str | None = None
    caller: str | None = None
    decoding: Decoding | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.ids is None):
            raise InputError("a request has either text or ids", field="text|ids", expected="exactly one of them")
        if self.text is not None and not self.text.strip():
            raise InputError("empty text: there is nothing to decide on", field="text",
                             expected="a text with at least one non-space character", actual=repr(self.text)[:40])
        if self.ids is not None:
            object.__setattr__(self, "ids", tuple(self.ids))
            bad = [i for i in self.ids if isinstance(i, bool) or not isinstance(i, int) or i < 0]
            if bad:
                raise RuntimeInputError("token ids must be non-negative integers", field="ids",
                                        actual=repr(bad[0])[:40])


@dataclass(frozen=True)
class Recorded:
    """A model result with the receipt that records it."""

    request: Request
    result: Any
    log_index: int
    receipt_id: str
    start: datetime
    end: datetime
    leaf: bytes = b""   # the log leaf: JCS bytes of the signed receipt envelope


@dataclass(frozen=True)
class _Run:
    index: int          # position in the prepared batch
    result: Any
    decoding: Decoding | None
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Prepared:
    """Requests run through the model with their receipts ready to append (:func:`append_prepared`)."""

    recorder: Recorder
    requests: tuple[Request, ...]
    runs: tuple[_Run, ...]                                  # in request order
    builders: tuple[Callable[[int], bytes], ...]
    receipt_ids: tuple[str, ...]


class Recorder:
    """Run ``model`` and record every decision in ``log`` as a receipt signed by ``key``."""

    def __init__(self, model: Model, log: _Log, key: PrivateKey, *, tenant: str, operator: str,
                 privacy: TenantCrypto | None = None, checkpoint_key: PrivateKey | None = None,
                 checkpoint_every: int | None = None) -> None:
        if checkpoint_every is not None and checkpoint_every < 1:
            raise InputError("checkpoint interval must be positive", field="checkpoint_every",
                             actual=str(checkpoint_every))
        if checkpoint_key is not None:
            require_note_key(checkpoint_key, field="checkpoint_key")
        manifest = model.manifest
        if gate_failed(manifest.get("kscore")):
            raise GateFailed("the artifact's K-score gate failed; refusing to record decisions with it",
                             field="manifest.kscore", actual=str(manifest.get("kscore"))[:200])
        self.model = model
        self.log = log
        self.task: str = manifest["task"]["kind"]
        self.context = ReceiptContext(
            tenant=tenant, operator=operator, artifact_digest=model.digest, artifact_name=manifest["name"],
            artifact_version=manifest["version"], kscore=manifest.get("kscore"), backend=str(model.backend),
            key=key, crypto=privacy)
        self.checkpoint_key = checkpoint_key
        self.checkpoint_every = checkpoint_every
        self.recorded = 0
        self._since_checkpoint = 0

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the three tasks ---------------------------------------------------------------------------

    def record_embed(self, inputs: Sequence[str] | Sequence[Sequence[int]], *,
                     request_ids: Sequence[str] | None = None, caller: str | None = None) -> list[Recorded]:
        return self.record(_requests(inputs, request_ids, caller, None), task="embed")

    def record_classify(self, inputs: Sequence[str] | Sequence[Sequence[int]], *,
                        request_ids: Sequence[str] | None = None, caller: str | None = None) -> list[Recorded]:
        return self.record(_requests(inputs, request_ids, caller, None), task="classify")

    def record_generate(self, inputs: Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 32,
                        seed: int | None = None, temperature: int | None = None, top_k: int | None = None,
                        top_p: int | None = None, request_ids: Sequence[str] | None = None,
                        caller: str | None = None) -> list[Recorded]:
        decoding = Decoding(max_new_tokens=max_new_tokens, seed=seed, temperature=temperature, top_k=top_k,
                            top_p=top_p)
        return self.record(_requests(inputs, request_ids, caller, decoding), task="generate")

    def record(self, requests: Sequence[Request], *, task: str | None = None) -> list[Recorded]:
        """Run ``requests`` (one batch; generate requests grouped by decoding parameters) and append their
        receipts in one transaction. Returns them in request order."""
        prepared = self.prepare(requests, task=task)
        if not prepared.requests:
            return []
        [done] = append_prepared(self.log, [prepared])
        return done

    def prepare(self, requests: Sequence[Request], *, task: str | None = None) -> Prepared:
        """Run ``requests`` through the model and build their signed receipts, appending nothing: the log index
        is only known inside the append transaction (:func:`append_prepared`)."""
        task = task or self.task
        if task != self.task:
            raise InputError(f"this artifact does {self.task}, not {task}", field="task", expected=self.task,
                             actual=task)
        if not requests:
            return Prepared(recorder=self, requests=(), runs=(), builders=(), receipt_ids=())
        ids = self._token_ids(requests)
        groups: dict[Decoding | None, list[int]] = {}
        for i, req in enumerate(requests):
            decoding = req.decoding
            if task == "generate" and decoding is None:
                decoding = Decoding()
            elif task != "generate" and decoding is not None:
                raise InputError("decoding parameters apply to generate only", field="decoding")
            groups.setdefault(decoding, []).append(i)
        runs: list[_Run] = []
        for decoding, members in groups.items():
            batch = [ids[i] for i in members]
            start = now()
            if task == "embed":
                results = self.model.embed(batch)
            elif task == "classify":
                results = self.model.classify(batch)
            else:
                assert decoding is not None
                results = self.model.generate(batch, **decoding.kwargs())
            end = now()
            runs.extend(_Run(i, r, decoding, start, end) for i, r in zip(members, results, strict=True))
        runs.sort(key=lambda run: run.index)
        builders, receipt_ids = [], []
        for run in runs:
            req = requests[run.index]
            decision = Decision.from_result(run.result, task=task, input_text=req.text, request_id=req.id,
                                            caller=req.caller, decoding=run.decoding)
            rid = str(uuid.uuid4())
            receipt_ids.append(rid)
            builders.append(receipt_builder(self.context, decision, start=run.start, end=run.end, receipt_id=rid))
        return Prepared(recorder=self, requests=tuple(requests), runs=tuple(runs), builders=tuple(builders),
                        receipt_ids=tuple(receipt_ids))

    def _appended(self, count: int) -> None:
        self.recorded += count
        self._since_checkpoint += count
        if self.checkpoint_every is not None and self._since_checkpoint >= self.checkpoint_every:
            self.checkpoint()

    def _token_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        texts = [r.text for r in requests if r.text is not None]
        tokenized = iter(self.model.tokenize(texts) if texts else [])
        return [list(r.ids) if r.ids is not None else list(next(tokenized)) for r in requests]

    def checkpoint(self) -> str | None:
        """Sign a checkpoint now (no-op without a checkpoint key); returns the note."""
        if self.checkpoint_key is None:
            return None
        note = self.log.checkpoint(self.checkpoint_key)
        self._since_checkpoint = 0
        return note

    def close(self) -> None:
        """Final checkpoint when anything was recorded since the last one (the log stays open: caller's)."""
        if self._since_checkpoint:
            self.checkpoint()


def append_prepared(log: _Log, prepared: Sequence[Prepared]) -> list[list[Recorded]]:
    """Append the receipts of ``prepared`` batches (of one or several recorders over ``log``) in ONE log
    transaction: all are durable when this returns, or none was appended. One list of results per batch."""
    for p in prepared:
        if p.recorder.log is not log:
            raise InputError("a prepared batch of a recorder over another log", field="prepared",
                             expected="recorders over the log appended to")
    leaves: dict[int, bytes] = {}

    def keep(build: Callable[[int], bytes]) -> Callable[[int], bytes]:
        def wrapped(index: int) -> bytes:
            leaves[index] = leaf = build(index)
            return leaf
        return wrapped

    indices = log.append_many([keep(b) for p in prepared for b in p.builders])
    out, pos = [], 0
    for p in prepared:
        mine = indices[pos:pos + len(p.builders)]
        pos += len(p.builders)
        out.append([Recorded(request=p.requests[run.index], result=run.result, log_index=index, receipt_id=rid,
                             start=run.start, end=run.end, leaf=leaves[index])
                    for run, index, rid in zip(p.runs, mine, p.receipt_ids, strict=True)])
    for p in prepared:
        p.recorder._appended(len(p.builders))
    return out


def _requests(inputs: Sequence[str] | Sequence[Sequence[int]], request_ids: Sequence[str] | None,
              caller: str | None, decoding: Decoding | None) -> list[Request]:
    if request_ids is not None and len(request_ids) != len(inputs):
        raise InputError("one request id per input", field="request_ids", expected=str(len(inputs)),
                         actual=str(len(request_ids)))
    out = []
    for i, item in enumerate(inputs):
        rid = None if request_ids is None else request_ids[i]
        if isinstance(item, str):
            out.append(Request(text=item, id=rid, caller=caller, decoding=decoding))
        else:
            out.append(Request(ids=tuple(item), id=rid, caller=caller, decoding=decoding))
    return out
