"""Replay: re-run every recorded decision of a receipt log on an artifact and prove it matches — or say where not.

:func:`replay` checks, in order, and never stops at the first finding:

1. the artifact — strict read, every tensor digest, a signature by a key trusted for role ``artifact``;
2. the log — leaves rehashed, tree rebuilt, every checkpoint (and one the auditor kept) checked
   (:func:`kolm_audit.log.verify.verify_log`);
3. each selected receipt — strict parse, its position in the log, its signature by a key trusted for role
   ``receipt`` and its tenant, that it names this artifact, that its recorded output hashes to its own digest;
4. re-runs each receipt from its recorded token ids and decoding parameters (seeded sampling included), in
   batches of any size, on any number of local worker processes or Ray actors (``ReplayOptions(ray=...)``) — the
   runtime is batch-invariant, so all of these are speed choices only — and compares output digests (first
   divergent token, excerpt); re-tokenizes readable recorded text and warns when today's tokenizer disagrees
   with the recorded ids.

The result is a ``kolm.replay-report/1`` document (:mod:`kolm_audit.replay.report`) whose ``results``
section is byte-identical on every backend, batch size, worker count and executor (local or Ray).

    >>> from kolm_audit.trust import TrustPolicy
    >>> report = replay("receipts.db", artifact="model.kolm", policy=TrustPolicy.load("trust.toml"),
    ...                 options=ReplayOptions(batch_size=32, workers=2))       # doctest: +SKIP
    >>> report["results"]["verdict"]                                          # doctest: +SKIP
    'matched'
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kolm_audit import __version__
from kolm_audit.artifact import Artifact, read_artifact, verify_artifact
from kolm_audit.artifact.manifest import gate_failed
from kolm_audit.canonical import digest_of, jcs
from kolm_audit.errors import Finding, InputError, KolmError, RuntimeInputError
from kolm_audit.log.source import LogSource, open_log_source
from kolm_audit.log.verify import unanchored_text, verify_log
from kolm_audit.model import Model
from kolm_audit.receipts.document import Decoding, SignedReceipt, parse_leaf
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore, TenantCrypto, is_sealed
from kolm_audit.replay.report import (
    REPORT_SCHEMA,
    ReceiptOutcome,
    ReplayFinding,
    build_results,
    compare_output,
    error_text,
    reason_of,
    recorded_consistency,
    tokenizer_drift,
)
from kolm_audit.replay.selection import Selection
from kolm_audit.replay.workers import Batch, Progress, ray_cluster, run_batches
from kolm_audit.runtime.digests import input_digest
from kolm_audit.runtime.ops import BACKENDS, resolve_backend
from kolm_audit.schemas import validate
from kolm_audit.timefmt import format_time, now
from kolm_audit.trust import TrustPolicy, verify_envelope

__all__ = ["ReplayOptions", "replay"]


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay. Nothing here may change ``results`` — only how fast they come."""

    backend: str = "auto"
    batch_size: int = 32
    workers: int = 1
    selection: Selection = field(default_factory=Selection)
    supplied_checkpoint: str | None = None     # a checkpoint note the auditor kept
    keystore: KeyStore | None = None           # tenant key store, to open sealed ids / text
    kek: KeyEncryptionKey | None = None
    replay_mismatched: bool = False            # also re-run receipts that name another artifact
    ray: str | None = None                     # run the workers as Ray actors: local | auto | a cluster address
    require_checkpointed: bool = False         # receipts no signed checkpoint covers are an error, not a warning

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError("unknown backend", field="--backend", expected=" | ".join(BACKENDS), actual=self.backend)
        for name in ("batch_size", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer", field=f"--{name.replace('_', '-')}",
                                 actual=repr(value))
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise InputError("a Ray address is needed", field="--ray", expected="local | auto | ADDRESS",
                             actual=repr(self.ray))
        if self.keystore is not None and self.kek is None:
            raise InputError("a key store needs its key-encryption key", field="--kek-file/--kek-env")


def _used(model: Model | None, backend: str) -> tuple[str, str]:
    """(backend, device) the model actually runs on (informational)."""
    if model is None:
        return backend, "cuda" if backend == "cuda" else "cpu"
    return model.backend, model.device


# --- the auditor side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One decision to re-run: its log index, task, recorded input ids and decoding keyword arguments."""

    index: int
    task: str
    ids: tuple[int, ...]
    kwargs: tuple[tuple[str, Any], ...]


@dataclass
class _Examined:
    """What the examination of one selected log leaf established (becomes a :class:`ReceiptOutcome`)."""

    index: int
    receipt_id: str | None = None
    tenant: str | None = None
    task: str | None = None
    expected: str | None = None                                  # the recorded output digest
    view: dict[str, Any] = field(default_factory=dict)           # the response, sealed fields opened where possible
    reasons: list[str] = field(default_factory=list)
    erased: bool = False
    job: _Job | None = None
    actual: str | None = None                                    # the replayed output digest

    def outcome(self) -> ReceiptOutcome:
        return ReceiptOutcome(index=self.index, receipt_id=self.receipt_id, tenant=self.tenant, task=self.task,
                              replayed=self.actual is not None, erased=self.erased, expected_digest=self.expected,
                              actual_digest=self.actual, reasons=tuple(self.reasons))


class _Stop(Exception):
    """A step found why this receipt goes no further (its finding is already recorded)."""


@dataclass
class _State:
    findings: list[ReplayFinding] = field(default_factory=list)
    examined: dict[int, _Examined] = field(default_factory=dict)
    signatures: int = 0
    crypto: dict[str, TenantCrypto | None] = field(default_factory=dict)

    def add(self, index: int | None, reason: str, message: str, *, scope: str = "receipt",
            receipt_id: str | None = None, **kw: Any) -> None:
        found = ReplayFinding(scope=scope, reason=reason, message=message, index=index, receipt_id=receipt_id, **kw)
        self.findings.append(found)
        if index is not None and index in self.examined:
            self.examined[index].reasons.append(reason)

    def flag(self, ex: _Examined, reason: str, message: str, **kw: Any) -> None:
        """A finding about the receipt under examination."""
        self.add(ex.index, reason, message, receipt_id=ex.receipt_id, **kw)


@dataclass(frozen=True)
class _Context:
    """What every examination step may read."""

    model: Model | None
    art: Artifact | None
    policy: TrustPolicy
    options: ReplayOptions


def _check_artifact(path: Path, policy: TrustPolicy, st: _State) -> tuple[Artifact | None, dict[str, Any]]:
    info: dict[str, Any] = {"digest": None, "name": None, "version": None, "task": None, "verified": False,
                            "signers": []}
    verified = None
    try:
        verified = verify_artifact(path, policy=policy)
        info.update(verified=True, signers=sorted({s.key_id for s in verified.signers}))
    except Finding as exc:
        st.add(None, reason_of(exc, default="artifact-invalid"), error_text(exc), scope="artifact",
               expected=exc.expected, actual=exc.actual)
    try:
        art = read_artifact(path, check_tensors=verified is None)
    except Finding:
        return None, info   # unreadable or tampered: the finding is already recorded
    if verified is not None and art.digest != verified.artifact_digest:
        raise InputError("the artifact changed while it was being verified", file=str(path))
    info.update(digest=art.digest, name=art.manifest["name"], version=art.manifest["version"],
                task=art.manifest["task"].get("kind"))
    if gate_failed(art.manifest.get("kscore")):
        st.add(None, "gate-failed", "the manifest's K-score gate failed", scope="artifact",
               actual=jcs(art.manifest["kscore"]).decode("utf-8")[:200])
    return art, info


def _check_log(src: LogSource, policy: TrustPolicy, options: ReplayOptions, st: _State) -> dict[str, Any]:
    info: dict[str, Any] = {"origin": src.origin, "size": src.size(), "root_hash": None, "checkpoints": 0,
                            "latest_checkpoint_size": 0, "supplied_checkpoint_size": None, "verified": False,
                            "unanchored": None}
    try:
        rep = verify_log(src, policy=policy, supplied_checkpoint=options.supplied_checkpoint, verify_leaf=None)
    except Finding as exc:
        st.add(None, reason_of(exc, default="log-inconsistent"), error_text(exc), scope="log",
               expected=exc.expected, actual=exc.actual)
        return info
    info.update(size=rep.size, root_hash=rep.root_hex, checkpoints=len(rep.checkpoints),
                latest_checkpoint_size=rep.latest_checkpoint_size, verified=True,
                supplied_checkpoint_size=None if rep.supplied_checkpoint is None else rep.supplied_checkpoint["size"])
    if rep.unanchored is not None:
        first, last = rep.unanchored
        info["unanchored"] = {"count": last - first + 1, "first_index": first, "last_index": last}
        st.add(None, "unanchored", unanchored_text(first, last), scope="log",
               severity="error" if options.require_checkpointed else "warning",
               expected=f"a signed checkpoint of size {rep.size}",
               actual=f"latest at size {rep.latest_checkpoint_size}")
    return info


def _crypto(st: _State, options: ReplayOptions, tenant: str) -> TenantCrypto | None:
    if tenant not in st.crypto:
        crypto = None
        if options.keystore is not None and tenant in options.keystore.tenants:
            crypto = options.keystore.tenant(tenant, kek=options.kek)
        st.crypto[tenant] = crypto
    return st.crypto[tenant]


@dataclass(frozen=True)
class _Opened:
    """A possibly sealed receipt field: its clear value, or why it cannot be read (``erased``: key shredded)."""

    value: Any
    why: str | None = None
    erased: bool = False


def _open(value: Any, crypto: TenantCrypto | None, *, receipt_id: str, name: str) -> _Opened:
    if not is_sealed(value):
        return _Opened(value)
    if crypto is None:
        return _Opened(None, "sealed, and no key store entry for this tenant was supplied")
    if value["key_id"] in crypto.shredded:
        return _Opened(None, f"erased: the tenant's data key {value['key_id']} was shredded", erased=True)
    try:
        return _Opened(crypto.open(value, receipt_id=receipt_id, field=name))
    except KolmError as exc:
        return _Opened(None, error_text(exc))


# --- examining one receipt: numbered steps, each records its findings or stops the examination ---------------

def _step1_parse(index: int, leaf: bytes, st: _State) -> SignedReceipt:
    """1. The leaf is a canonical, schema-valid, signed receipt envelope."""
    try:
        return parse_leaf(leaf, field=f"leaf[{index}]")
    except Finding as exc:
        st.examined[index] = _Examined(index=index)
        digests = (exc.field or "").endswith(("output_digest", "input_digest"))   # edited, digest not fixed
        st.add(index, "receipt-inconsistent" if digests else "receipt-malformed", error_text(exc))
        raise _Stop from None


def _step2_position(ex: _Examined, rec: Mapping[str, Any], st: _State) -> None:
    """2. The receipt names the log position it sits at."""
    if rec["log_index"] != ex.index:
        st.flag(ex, "log-inconsistent", "receipt names another log position than the one it sits at",
                expected=str(ex.index), actual=str(rec["log_index"]))


def _step3_signature(ex: _Examined, signed: SignedReceipt, ctx: _Context, st: _State) -> None:
    """3. A key trusted for role ``receipt`` and the receipt's tenant signed it, valid at the decision's time."""
    try:
        verify_envelope(signed.envelope, ctx.policy, role="receipt", tenant=ex.tenant, at=signed.end)
        st.signatures += 1
    except Finding as exc:
        st.flag(ex, reason_of(exc, default="signature-invalid"), error_text(exc), expected=exc.expected,
                actual=exc.actual)


def _step4_recorded_output(ex: _Examined, rec: Mapping[str, Any], crypto: TenantCrypto | None, st: _State) -> None:
    """4. The recorded output (opened where sealed and a key is at hand) hashes to its own output digest."""
    ex.view = dict(rec["response"])
    for name in ("label", "scores", "output_ids"):
        if name in ex.view:
            ex.view[name] = _open(ex.view[name], crypto, receipt_id=rec["receipt_id"], name=f"response.{name}").value
    problem = recorded_consistency(rec["task"], ex.view)
    if problem is not None:
        st.flag(ex, "receipt-inconsistent", problem, expected=ex.expected)


def _step5_names_this_artifact(ex: _Examined, rec: Mapping[str, Any], art: Artifact, ctx: _Context,
                               st: _State) -> None:
    """5. The receipt names the replayed artifact: its digest, and then its name, version and K-score."""
    if rec["artifact"]["digest"] != art.digest:
        st.flag(ex, "artifact-mismatch", "receipt was made by another artifact", expected=rec["artifact"]["digest"],
                actual=art.digest)
        if not ctx.options.replay_mismatched:
            raise _Stop
        return
    named = {k: rec["artifact"][k] for k in ("name", "version", "kscore")}
    own = {"name": art.manifest["name"], "version": art.manifest["version"], "kscore": art.manifest.get("kscore")}
    if named != own:
        st.flag(ex, "receipt-inconsistent", "receipt names this artifact's digest but another name, version or "
                "K-score", expected=str(own)[:200], actual=str(named)[:200])


def _step6_task(ex: _Examined, model: Model, st: _State) -> None:
    """6. The artifact performs the receipt's task."""
    if ex.task != model.task:
        st.flag(ex, "task-mismatch", f"receipt task {ex.task} cannot run on a {model.task} artifact",
                expected=model.task, actual=ex.task)
        raise _Stop


def _step7_input(ex: _Examined, rec: Mapping[str, Any], crypto: TenantCrypto | None, st: _State) -> tuple[int, ...]:
    """7. The recorded input ids can be read and hash to the recorded input digest (lawfully erased: stop)."""
    opened = _open(rec["request"]["input_ids"], crypto, receipt_id=rec["receipt_id"], name="request.input_ids")
    if opened.erased:
        ex.erased = True
        st.flag(ex, "erased", f"not replayable: {opened.why}")
        raise _Stop
    if opened.value is None:
        st.flag(ex, "input-unavailable", f"input ids cannot be read: {opened.why}")
        raise _Stop
    ids = tuple(int(i) for i in opened.value)
    if input_digest(ids) != rec["request"]["input_digest"]:
        st.flag(ex, "receipt-inconsistent", "opened input ids do not match input_digest",
                expected=rec["request"]["input_digest"], actual=input_digest(ids))
        raise _Stop
    return ids


def _step8_tokenizer(ex: _Examined, rec: Mapping[str, Any], ids: tuple[int, ...], model: Model,
                     crypto: TenantCrypto | None, st: _State) -> None:
    """8. Today's tokenizer turns readable recorded text into the recorded ids (a warning when not)."""
    text = _open(rec["request"]["text"], crypto, receipt_id=rec["receipt_id"], name="request.text").value
    if not isinstance(text, str):
        return
    try:
        today = model.tokenize([text])[0]
    except RuntimeInputError:
        return
    drift = tokenizer_drift(index=ex.index, receipt_id=ex.receipt_id, text=text, recorded=ids, today=today,
                            decode=model.tokenizer.decode)
    if drift is not None:
        st.findings.append(drift)
        ex.reasons.append(drift.reason)


def _step9_job(ex: _Examined, rec: Mapping[str, Any], ids: tuple[int, ...], st: _State) -> None:
    """9. The recorded decoding parameters make a valid request: queue the re-run."""
    kwargs: tuple[tuple[str, Any], ...] = ()
    if ex.task == "generate":
        dec = dict(rec["decoding"] or {})
        dec.pop("strategy", None)
        try:
            kwargs = tuple(sorted(Decoding(**dec).kwargs().items()))
        except InputError as exc:
            st.flag(ex, "runtime-refused", error_text(exc))
            raise _Stop from None
    ex.job = _Job(index=ex.index, task=str(ex.task), ids=ids, kwargs=kwargs)


def _examine(index: int, leaf: bytes, ctx: _Context, st: _State) -> None:
    """Run the examination steps on one log leaf; every finding lands in ``st``, never stops the replay."""
    try:
        signed = _step1_parse(index, leaf, st)
        rec = signed.receipt
        if ctx.options.selection.needs_receipt and not ctx.options.selection.receipt_ok(rec):
            return
        ex = st.examined[index] = _Examined(index=index, receipt_id=rec["receipt_id"], tenant=rec["tenant"],
                                            task=rec["task"], expected=rec["response"]["output_digest"])
        crypto = _crypto(st, ctx.options, rec["tenant"])
        _step2_position(ex, rec, st)
        _step3_signature(ex, signed, ctx, st)
        _step4_recorded_output(ex, rec, crypto, st)
        if ctx.art is None or ctx.model is None:
            return
        _step5_names_this_artifact(ex, rec, ctx.art, ctx, st)
        _step6_task(ex, ctx.model, st)
        ids = _step7_input(ex, rec, crypto, st)
        _step8_tokenizer(ex, rec, ids, ctx.model, crypto, st)
        _step9_job(ex, rec, ids, st)
    except _Stop:
        return


def _batches(jobs: Sequence[_Job], size: int) -> list[Batch]:
    groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[_Job]] = {}
    for job in sorted(jobs, key=lambda j: j.index):
        groups.setdefault((job.task, job.kwargs), []).append(job)
    out = []
    for (task, kwargs), members in groups.items():
        members.sort(key=lambda j: (len(j.ids), j.index))   # similar lengths together: less padding, same results
        for i in range(0, len(members), size):
            out.append((task, kwargs, [(j.index, j.ids) for j in members[i:i + size]]))
    return out


def _environment(*, requested: str, backend: str, device: str, options: ReplayOptions, started: float,
                 replayed: int, tokens: int, ray: dict[str, Any] | None) -> dict[str, Any]:
    import numpy

    elapsed = max(time.perf_counter() - started, 1e-9)
    env: dict[str, Any] = {
        "backend": backend, "backend_requested": requested, "device": device, "batch_size": options.batch_size,
        "workers": options.workers, "elapsed_ms": int(elapsed * 1000), "replayed_tokens": tokens,
        "receipts_per_s": f"{replayed / elapsed:.1f}", "tokens_per_s": f"{tokens / elapsed:.1f}",
        "finished": format_time(now()), "cpu_count": os.cpu_count() or 0,
        "versions": {"kolm_audit": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                     "platform": platform.platform()}}
    if options.ray is not None:   # where the workers ran (informational, like everything here)
        env["ray"] = ray or {"requested": options.ray, "address": None, "nodes": 0, "cpus": 0, "actors": 0,
                             "started_here": False, "version": None}
    return env


def replay(log: str | Path, *, artifact: str | Path, policy: TrustPolicy, options: ReplayOptions | None = None,
           progress: Progress | None = None, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Replay ``log`` (database or bundle) on ``artifact``; return the schema-valid replay report.

    Raises only :class:`~kolm_audit.errors.InputError` (unreadable inputs, bad options); every finding is
    in the report (``results.verdict`` is ``"mismatch"`` when there is any error-level finding).
    """
    options = options or ReplayOptions()
    started = time.perf_counter()
    backend = resolve_backend(options.backend)
    st = _State()
    art, art_info = _check_artifact(Path(artifact), policy, st)
    model = None
    if art is not None:
        try:
            model = Model.from_artifact(art, backend=backend)
        except Finding as exc:
            st.add(None, "artifact-invalid", error_text(exc), scope="artifact")
    ctx = _Context(model=model, art=art, policy=policy, options=options)
    with open_log_source(log) as src:
        log_info = _check_log(src, policy, options, st)
        last = options.selection.max_index()
        for index, leaf in src.iter_leaves():
            if last is not None and index > last:
                break
            if options.selection.index_ok(index):
                _examine(index, leaf, ctx, st)
    if options.selection.filters and not st.examined and not any(f.index is not None for f in st.findings):
        # "replay receipt X" when X is not in this log must not read as "MATCHED 0/0"
        raise InputError("no receipt in this log matches the selection; nothing was replayed", file=str(log),
                         field="--select", actual=" ".join(options.selection.describe()))
    jobs = [ex.job for ex in st.examined.values() if ex.job is not None]
    results: dict[int, dict[str, Any]] = {}
    ray_info = None
    if jobs and model is not None and art is not None:
        batches = _batches(jobs, options.batch_size)
        joined = nullcontext(None) if options.ray is None else ray_cluster(options.ray, workers=options.workers)
        with joined as cluster:
            results = run_batches(batches, model=model, artifact_path=str(art.path), digest=art.digest,
                                  backend=backend, workers=options.workers, progress=progress, cluster=cluster)
            if cluster is not None:
                ray_info = cluster.describe(actors=min(options.workers, len(batches)))
    used, device = _used(model, backend)
    tokens = 0
    for job in jobs:
        actual = results[job.index]
        ex = st.examined[job.index]
        if "error" in actual:
            st.flag(ex, "runtime-refused", actual["error"])
            continue
        ex.actual = actual["output_digest"]
        tokens += len(job.ids) + len(actual.get("output_ids", ()))
        mismatch = compare_output(index=job.index, receipt_id=ex.receipt_id, task=job.task, response=ex.view,
                                  actual=actual, decode=None if model is None else model.tokenizer.decode)
        if mismatch is not None:
            st.findings.append(mismatch)
            ex.reasons.append(mismatch.reason)
    outcomes = [ex.outcome() for ex in st.examined.values()]
    selection = {"filters": options.selection.describe(), "replay_mismatched_artifact": options.replay_mismatched}
    res = build_results(artifact=art_info, log=log_info, selection=selection, outcomes=outcomes,
                        findings=st.findings, signatures_verified=st.signatures)
    report = {"schema": REPORT_SCHEMA, "tool": {"name": "kolm-audit", "version": __version__},
              "inputs": {"log": str(log), "artifact": str(artifact), **dict(inputs or {})},
              "results": res, "results_digest": digest_of(res),
              "environment": _environment(requested=options.backend, backend=used, device=device, options=options,
                                          started=started, replayed=len(results), tokens=tokens,
                                          ray=ray_info)}
    jcs(report)   # no floats anywhere
    validate(report, "replay-report")
    return report
