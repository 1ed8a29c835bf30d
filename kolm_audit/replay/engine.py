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
from pathlib import Path
from typing import Any

from kolm_audit import __version__
from kolm_audit.artifact import Artifact, read_artifact, verify_artifact
from kolm_audit.artifact.manifest import gate_failed
from kolm_audit.canonical import digest_of, jcs
from kolm_audit.errors import Finding, InputError
from kolm_audit.log.source import LogSource, open_log_source
from kolm_audit.log.verify import unanchored_text, verify_log
from kolm_audit.model import Model
from kolm_audit.replay._examine import Context, Job, State, examine
from kolm_audit.replay.options import ReplayOptions
from kolm_audit.replay.report import (
    REPORT_SCHEMA,
    build_results,
    compare_output,
    error_text,
    reason_of,
)
from kolm_audit.replay.workers import Batch, Progress, ray_cluster, run_batches
from kolm_audit.runtime.ops import resolve_backend
from kolm_audit.schemas import validate
from kolm_audit.timefmt import format_time, now
from kolm_audit.trust import TrustPolicy

__all__ = ["ReplayOptions", "replay"]


def _used(model: Model | None, backend: str) -> tuple[str, str]:
    """(backend, device) the model actually runs on (informational)."""
    if model is None:
        return backend, "cuda" if backend == "cuda" else "cpu"
    return model.backend, model.device


def _check_artifact(path: Path, policy: TrustPolicy, st: State) -> tuple[Artifact | None, dict[str, Any]]:
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


def _check_log(src: LogSource, policy: TrustPolicy, options: ReplayOptions, st: State) -> dict[str, Any]:
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


def _batches(jobs: Sequence[Job], size: int) -> list[Batch]:
    groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[Job]] = {}
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
    st = State()
    art, art_info = _check_artifact(Path(artifact), policy, st)
    model = None
    if art is not None:
        try:
            model = Model.from_artifact(art, backend=backend)
        except Finding as exc:
            st.add(None, "artifact-invalid", error_text(exc), scope="artifact")
    ctx = Context(model=model, art=art, policy=policy, options=options)
    with open_log_source(log) as src:
        log_info = _check_log(src, policy, options, st)
        last = options.selection.max_index()
        for index, leaf in src.iter_leaves():
            if last is not None and index > last:
                break
            if options.selection.index_ok(index):
                examine(index, leaf, ctx, st)
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
