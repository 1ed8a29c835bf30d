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
from kolm_audit.log.source import open_log_source
from kolm_audit.log.verify import verify_log
from kolm_audit.model import Model
from kolm_audit.receipts.document import Decoding, parse_leaf
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
    name = str(getattr(model, "backend", backend))
    device = getattr(model, "device", None)
    return name, str(device) if device is not None else ("cuda" if "cuda" in name else "cpu")


# --- the auditor side ---------------------------------------------------------------------------------------


@dataclass
class _Job:
    index: int
    task: str
    ids: tuple[int, ...]
    kwargs: tuple[tuple[str, Any], ...]


@dataclass
class _State:
    findings: list[ReplayFinding] = field(default_factory=list)
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)
    jobs: list[_Job] = field(default_factory=list)
    views: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)   # index -> (receipt id, response)
    signatures: int = 0
    crypto: dict[str, TenantCrypto | None] = field(default_factory=dict)

    def add(self, index: int | None, reason: str, message: str, *, scope: str = "receipt",
            receipt_id: str | None = None, **kw: Any) -> None:
        self.findings.append(ReplayFinding(scope=scope, reason=reason, message=message, index=index,
                                           receipt_id=receipt_id, **kw))
        if index is not None and index in self.outcomes:
            self.outcomes[index]["reasons"].append(reason)


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


def _check_log(src: Any, policy: TrustPolicy, supplied: str | None, st: _State) -> dict[str, Any]:
    info: dict[str, Any] = {"origin": src.origin, "size": src.size(), "root_hash": None, "checkpoints": 0,
                            "latest_checkpoint_size": 0, "supplied_checkpoint_size": None, "verified": False}
    try:
        rep = verify_log(src, policy=policy, supplied_checkpoint=supplied, verify_leaf=None)
    except Finding as exc:
        st.add(None, reason_of(exc, default="log-inconsistent"), error_text(exc), scope="log",
               expected=exc.expected, actual=exc.actual)
        return info
    info.update(size=rep.size, root_hash=rep.root_hex, checkpoints=len(rep.checkpoints),
                latest_checkpoint_size=rep.latest_checkpoint_size, verified=True,
                supplied_checkpoint_size=None if rep.supplied_checkpoint is None else rep.supplied_checkpoint["size"])
    return info


def _crypto(st: _State, options: ReplayOptions, tenant: str) -> TenantCrypto | None:
    if tenant not in st.crypto:
        crypto = None
        if options.keystore is not None and tenant in options.keystore.tenants:
            crypto = options.keystore.tenant(tenant, kek=options.kek)
        st.crypto[tenant] = crypto
    return st.crypto[tenant]


def _open(value: Any, crypto: TenantCrypto | None, *, receipt_id: str, name: str) -> tuple[Any, str | None]:
    """(clear value or None, why not) of a possibly sealed receipt field."""
    if not is_sealed(value):
        return value, None
    if crypto is None:
        return None, "sealed, and no key store entry for this tenant was supplied"
    try:
        return crypto.open(value, receipt_id=receipt_id, field=name), None
    except KolmError as exc:
        return None, error_text(exc)


def _examine(index: int, leaf: bytes, *, model: Model | None, art: Artifact | None, policy: TrustPolicy,
             options: ReplayOptions, st: _State) -> None:
    try:
        signed = parse_leaf(leaf, field=f"leaf[{index}]")
    except Finding as exc:
        st.outcomes[index] = {"receipt_id": None, "tenant": None, "task": None, "reasons": [], "expected": None}
        digests = (exc.field or "").endswith(("output_digest", "input_digest"))   # edited, digest not fixed
        st.add(index, "receipt-inconsistent" if digests else "receipt-malformed", error_text(exc))
        return
    rec = signed.receipt
    if options.selection.needs_receipt and not options.selection.receipt_ok(rec):
        return
    rid, task, response = rec["receipt_id"], rec["task"], rec["response"]
    st.outcomes[index] = {"receipt_id": rid, "tenant": rec["tenant"], "task": task, "reasons": [],
                          "expected": response["output_digest"]}
    if rec["log_index"] != index:
        st.add(index, "log-inconsistent", "receipt names another log position than the one it sits at",
               receipt_id=rid, expected=str(index), actual=str(rec["log_index"]))
    try:
        verify_envelope(signed.envelope, policy, role="receipt", tenant=rec["tenant"], at=signed.end)
        st.signatures += 1
    except Finding as exc:
        st.add(index, reason_of(exc, default="signature-invalid"), error_text(exc), receipt_id=rid,
               expected=exc.expected, actual=exc.actual)
    crypto = _crypto(st, options, rec["tenant"])
    view = dict(response)
    for name in ("label", "scores", "output_ids"):
        if name in view:
            view[name], _ = _open(view[name], crypto, receipt_id=rid, name=f"response.{name}")
    problem = recorded_consistency(task, view)
    if problem is not None:
        st.add(index, "receipt-inconsistent", problem, receipt_id=rid, expected=response["output_digest"])
    st.views[index] = (rid, view)
    if art is None or model is None:
        return
    if rec["artifact"]["digest"] != art.digest:
        st.add(index, "artifact-mismatch", "receipt was made by another artifact", receipt_id=rid,
               expected=rec["artifact"]["digest"], actual=art.digest)
        if not options.replay_mismatched:
            return
    else:
        named = {k: rec["artifact"][k] for k in ("name", "version", "kscore")}
        own = {"name": art.manifest["name"], "version": art.manifest["version"], "kscore": art.manifest.get("kscore")}
        if named != own:
            st.add(index, "receipt-inconsistent", "receipt names this artifact's digest but another name, version "
                   "or K-score", receipt_id=rid, expected=str(own)[:200], actual=str(named)[:200])
    if task != model.task:
        st.add(index, "task-mismatch", f"receipt task {task} cannot run on a {model.task} artifact", receipt_id=rid,
               expected=model.task, actual=task)
        return
    ids, why = _open(rec["request"]["input_ids"], crypto, receipt_id=rid, name="request.input_ids")
    if ids is None:
        st.add(index, "input-unavailable", f"input ids cannot be read: {why}", receipt_id=rid)
        return
    ids = tuple(int(i) for i in ids)
    if input_digest(ids) != rec["request"]["input_digest"]:
        st.add(index, "receipt-inconsistent", "opened input ids do not match input_digest", receipt_id=rid,
               expected=rec["request"]["input_digest"], actual=input_digest(ids))
        return
    text, _ = _open(rec["request"]["text"], crypto, receipt_id=rid, name="request.text")
    if isinstance(text, str):
        try:
            today = model.tokenize([text])[0]
        except RuntimeInputError:
            today = None
        drift = None if today is None else tokenizer_drift(index=index, receipt_id=rid, text=text, recorded=ids,
                                                           today=today, decode=model.tokenizer.decode)
        if drift is not None:
            st.findings.append(drift)
            st.outcomes[index]["reasons"].append(drift.reason)
    kwargs: tuple[tuple[str, Any], ...] = ()
    if task == "generate":
        dec = dict(rec["decoding"] or {})
        dec.pop("strategy", None)
        try:
            kwargs = tuple(sorted(Decoding(**dec).kwargs().items()))
        except InputError as exc:
            st.add(index, "runtime-refused", error_text(exc), receipt_id=rid)
            return
    st.jobs.append(_Job(index=index, task=task, ids=ids, kwargs=kwargs))


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
    with open_log_source(log) as src:
        log_info = _check_log(src, policy, options.supplied_checkpoint, st)
        last = options.selection.max_index()
        for index, leaf in src.iter_leaves():
            if last is not None and index > last:
                break
            if options.selection.index_ok(index):
                _examine(index, leaf, model=model, art=art, policy=policy, options=options, st=st)
    if options.selection.filters and not st.outcomes and not any(f.index is not None for f in st.findings):
        # "replay receipt X" when X is not in this log must not read as "MATCHED 0/0"
        raise InputError("no receipt in this log matches the selection; nothing was replayed", file=str(log),
                         field="--select", actual=" ".join(options.selection.describe()))
    results: dict[int, dict[str, Any]] = {}
    ray_info = None
    if st.jobs and model is not None and art is not None:
        batches = _batches(st.jobs, options.batch_size)
        joined = nullcontext(None) if options.ray is None else ray_cluster(options.ray, workers=options.workers)
        with joined as cluster:
            results = run_batches(batches, model=model, artifact_path=str(art.path), digest=art.digest,
                                  backend=backend, workers=options.workers, progress=progress, cluster=cluster)
            if cluster is not None:
                ray_info = cluster.describe(actors=min(options.workers, len(batches)))
    used, device = _used(model, backend)
    tokens = 0
    for job in st.jobs:
        actual = results[job.index]
        outcome = st.outcomes[job.index]
        rid, view = st.views[job.index]
        if "error" in actual:
            st.add(job.index, "runtime-refused", actual["error"], receipt_id=rid)
            continue
        outcome["actual"] = actual["output_digest"]
        tokens += len(job.ids) + len(actual.get("output_ids", ()))
        mismatch = compare_output(index=job.index, receipt_id=rid, task=job.task, response=view, actual=actual,
                                  decode=None if model is None else model.tokenizer.decode)
        if mismatch is not None:
            st.findings.append(mismatch)
            outcome["reasons"].append(mismatch.reason)
    outcomes = [ReceiptOutcome(index=i, receipt_id=o["receipt_id"], tenant=o["tenant"], task=o["task"],
                               replayed="actual" in o, expected_digest=o["expected"], actual_digest=o.get("actual"),
                               reasons=tuple(o["reasons"])) for i, o in st.outcomes.items()]
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
