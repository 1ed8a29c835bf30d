"""Replay findings and the replay report (``kolm.replay-report/1``, schema ``schemas/replay-report.schema.json``).

:mod:`kolm_audit.replay.engine` re-runs receipts; this module says what a re-run *means*: it compares a receipt's
recorded response with the replayed one (first divergent token/position, digests, a short excerpt), and
assembles the report. The report has one deterministic part, ``results`` — identical (RFC 8785 bytes) on
every backend, batch size and worker count — and one informational part, ``environment``.

    >>> f = ReplayFinding(scope="receipt", reason="output-mismatch", index=3, receipt_id=None,
    ...                   message="replayed output differs", expected="sha256:" + "a" * 64,
    ...                   actual="sha256:" + "b" * 64, position=2)
    >>> f.to_json()["reason"], f.severity
    ('output-mismatch', 'error')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kolm_audit.canonical import digest_of
from kolm_audit.errors import KolmError, LogError, SignatureError, TrustError, Unsigned
from kolm_audit.runtime.digests import classification_digest, generation_digest

REPORT_SCHEMA = "kolm.replay-report/1"
SCOPES = ("artifact", "log", "receipt")
REASONS: dict[str, str] = {
    # reason -> what it means (docs/replay.md lists the same table)
    "output-mismatch": "the replayed output differs from the recorded one",
    "artifact-mismatch": "the receipt names another artifact digest than the one replayed",
    "artifact-invalid": "the artifact file is malformed or tampered with (digests, header, manifest)",
    "gate-failed": "the artifact's K-score gate failed: it should never have served decisions",
    "signature-invalid": "a signature does not verify, or the signed bytes were changed (receipt, artifact or "
                         "checkpoint)",
    "unsigned": "the artifact carries no signature at all: nobody vouched for it",
    "untrusted-signer": "signed, but not by a key the trust policy allows for this role, tenant and time",
    "log-inconsistent": "the log's tree, checkpoints or a receipt's position do not add up",
    "receipt-malformed": "the log leaf is not a well-formed signed receipt",
    "receipt-inconsistent": "the receipt's recorded output does not match its own output digest",
    "task-mismatch": "the receipt's task is not the artifact's task",
    "input-unavailable": "the recorded input ids are sealed and no usable tenant key was supplied",
    "runtime-refused": "the runtime refused the recorded input (e.g. a token id outside the vocabulary)",
    "tokenizer-drift": "today's tokenizer turns the recorded text into other ids than the recorded ones",
    "unanchored": "receipts at the end of the log that no signed checkpoint covers yet (not tamper-evident yet)",
    "erased": "the receipt's input was lawfully erased (its tenant's data key was shredded): not replayable",
}
SEVERITIES = ("error", "warning", "info")
# the severity of a reason unless the finding says otherwise (``unanchored`` is an error with --require-checkpointed)
DEFAULT_SEVERITY: dict[str, str] = {"tokenizer-drift": "warning", "unanchored": "warning", "erased": "info"}
EXCERPT_CHARS = 120
EXCERPT_TOKENS = 8


@dataclass(frozen=True)
class ReplayFinding:
    """One thing that did not check out (or, severity ``info``, a lawful reason a receipt was not replayed).

    ``severity`` defaults to the reason's (:data:`DEFAULT_SEVERITY`, else ``error``); only ``error`` findings
    make the verdict ``mismatch``.
    """

    scope: str
    reason: str
    message: str
    index: int | None = None
    receipt_id: str | None = None
    expected: str | None = None
    actual: str | None = None
    position: int | None = None
    excerpt: tuple[str, str] | None = None   # (expected, actual)
    severity: str = ""

    def __post_init__(self) -> None:
        if self.scope not in SCOPES or self.reason not in REASONS:
            raise ValueError(f"unknown finding {self.scope}/{self.reason}")
        if not self.severity:
            object.__setattr__(self, "severity", DEFAULT_SEVERITY.get(self.reason, "error"))
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def sort_key(self) -> tuple[int, int, str, str]:
        return (SCOPES.index(self.scope), -1 if self.index is None else self.index, self.reason, self.message)

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "reason": self.reason, "severity": self.severity, "index": self.index,
                "receipt_id": self.receipt_id, "message": self.message, "expected": self.expected,
                "actual": self.actual, "position": self.position,
                "excerpt": None if self.excerpt is None else {"expected": self.excerpt[0], "actual": self.excerpt[1]}}


def reason_of(exc: KolmError, *, default: str) -> str:
    """The finding reason of a verification error (the most specific first: both are SignatureErrors)."""
    if isinstance(exc, Unsigned):
        return "unsigned"
    if isinstance(exc, TrustError):
        return "untrusted-signer"
    if isinstance(exc, SignatureError):
        return "signature-invalid"
    if isinstance(exc, LogError):
        return "log-inconsistent"
    return default


def error_text(exc: KolmError) -> str:
    """An error's message and field, without the file path (paths are not part of ``results``)."""
    return f"{exc.field}: {exc.message}" if exc.field else exc.message


def _clip(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def first_divergence(expected: Sequence[Any], actual: Sequence[Any]) -> int | None:
    """First position where two sequences differ (a length difference counts), or None when equal."""
    for i, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            return i
    return None if len(expected) == len(actual) else min(len(expected), len(actual))


def _window(ids: Sequence[int], pos: int, decode: Callable[[Sequence[int]], str] | None) -> str:
    lo, hi = max(0, pos - EXCERPT_TOKENS), pos + EXCERPT_TOKENS
    part = [int(t) for t in ids[lo:hi]]
    shown = f"@{lo} ids {part}"
    if decode is not None:
        shown += f" text {decode(part)!r}"
    return _clip(shown)


def recorded_consistency(task: str, response: Mapping[str, Any]) -> str | None:
    """Recompute the receipt's output digest from its own recorded values (when they are readable).

    Returns a message when they disagree (an edited receipt that kept its old digest, or the reverse).
    """
    digest = response["output_digest"]
    if task == "embed":
        if response.get("embedding_digest") not in (None, digest):
            return "embedding_digest differs from output_digest"
        return None
    if task == "classify":
        label, scores = response.get("label"), response.get("scores")
        if isinstance(label, str) and isinstance(scores, list):
            own = classification_digest(label, scores)
            return None if own == digest else f"recorded label/scores hash to {own}, not to output_digest"
        return None
    ids, reason = response.get("output_ids"), response.get("finish_reason")
    if isinstance(ids, list) and isinstance(reason, str):
        own = generation_digest(ids, reason)
        return None if own == digest else f"recorded output_ids/finish_reason hash to {own}, not to output_digest"
    return None


def compare_output(*, index: int, receipt_id: str, task: str, response: Mapping[str, Any],
                   actual: Mapping[str, Any], decode: Callable[[Sequence[int]], str] | None) -> ReplayFinding | None:
    """An ``output-mismatch`` finding when the replayed output digest differs from the recorded one.

    ``response`` is the receipt's response with sealed fields opened where possible (sealed ones left as they
    are); ``actual`` the replayed result (``output_digest`` + the task's values).
    """
    expected_digest, actual_digest = response["output_digest"], actual["output_digest"]
    if expected_digest == actual_digest:
        return None
    position, excerpt = None, None
    detail = "replayed output digest differs from the recorded one"
    if task == "generate":
        rec_ids = response.get("output_ids")
        if isinstance(rec_ids, list):
            position = first_divergence(rec_ids, actual["output_ids"])
            if position is not None:
                excerpt = (_window(rec_ids, position, decode), _window(actual["output_ids"], position, decode))
                detail = (f"generated tokens diverge at output position {position} "
                          f"({len(rec_ids)} recorded, {len(actual['output_ids'])} replayed)")
            else:
                detail = (f"same tokens, finish reason differs (recorded {response.get('finish_reason')}, "
                          f"replayed {actual['finish_reason']})")
                excerpt = (str(response.get("finish_reason")), str(actual["finish_reason"]))
        else:
            detail += " (recorded output ids are sealed: no token position)"
    elif task == "classify":
        rec_scores, rec_label = response.get("scores"), response.get("label")
        if isinstance(rec_scores, list) and isinstance(rec_label, str):
            position = first_divergence(rec_scores, list(actual["scores"]))
            label_note = ("same label" if rec_label == actual["label"]
                          else f"label {rec_label!r} -> {actual['label']!r}")
            detail = f"classification differs: {label_note}; first differing score index {position}"
            excerpt = (_clip(f"label {rec_label!r} scores {rec_scores}"),
                       _clip(f"label {actual['label']!r} scores {list(actual['scores'])}"))
        else:
            detail += " (recorded label/scores are sealed)"
    else:
        detail = "embedding differs (receipts record the embedding's digest only: no element position)"
    return ReplayFinding(scope="receipt", reason="output-mismatch", index=index, receipt_id=receipt_id,
                         message=detail, expected=expected_digest, actual=actual_digest, position=position,
                         excerpt=excerpt)


def tokenizer_drift(*, index: int, receipt_id: str, text: str, recorded: Sequence[int], today: Sequence[int],
                    decode: Callable[[Sequence[int]], str] | None) -> ReplayFinding | None:
    """A warning when re-tokenizing the recorded text gives other ids than the recorded ones."""
    position = first_divergence(list(recorded), list(today))
    if position is None:
        return None
    return ReplayFinding(scope="receipt", reason="tokenizer-drift", index=index, receipt_id=receipt_id,
                         message=(f"re-tokenizing the recorded text gives other ids from input position {position} "
                                  f"({len(recorded)} recorded, {len(today)} today); replay used the recorded ids"),
                         expected=digest_of([int(t) for t in recorded]), actual=digest_of([int(t) for t in today]),
                         position=position,
                         excerpt=(_window(recorded, position, decode), _window(today, position, decode)))


@dataclass(frozen=True)
class ReceiptOutcome:
    """The per-receipt line of the report: ``matched``, ``mismatch``, or ``erased`` (lawfully not replayable)."""

    index: int
    receipt_id: str | None
    tenant: str | None
    task: str | None
    replayed: bool
    expected_digest: str | None
    actual_digest: str | None
    reasons: tuple[str, ...]
    erased: bool = False

    @property
    def status(self) -> str:
        if any(DEFAULT_SEVERITY.get(r, "error") == "error" for r in self.reasons):
            return "mismatch"
        if self.erased:
            return "erased"
        return "matched" if self.replayed else "mismatch"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "receipt_id": self.receipt_id, "tenant": self.tenant, "task": self.task,
                "status": self.status, "replayed": self.replayed, "expected_digest": self.expected_digest,
                "actual_digest": self.actual_digest, "reasons": sorted(set(self.reasons))}


def build_results(*, artifact: Mapping[str, Any], log: Mapping[str, Any], selection: Mapping[str, Any],
                  outcomes: Sequence[ReceiptOutcome], findings: Sequence[ReplayFinding],
                  signatures_verified: int) -> dict[str, Any]:
    """The deterministic ``results`` section (nothing here may depend on backend, batch size or workers).

    The verdict is ``mismatch`` exactly when there is an error-level finding; erased receipts (severity
    ``info``) and warnings leave it ``matched``.
    """
    ordered = sorted(findings, key=ReplayFinding.sort_key)
    errors = [f for f in ordered if f.severity == "error"]
    rows = sorted(outcomes, key=lambda o: o.index)
    by_reason: dict[str, int] = {}
    for f in ordered:
        by_reason[f.reason] = by_reason.get(f.reason, 0) + 1
    status = [o.status for o in rows]
    counts = {"receipts": len(rows), "signatures_verified": signatures_verified,
              "replayed": sum(o.replayed for o in rows), "matched": status.count("matched"),
              "mismatched": status.count("mismatch"), "erased": status.count("erased"),
              "errors": len(errors), "warnings": sum(f.severity == "warning" for f in ordered),
              "by_reason": dict(sorted(by_reason.items()))}
    return {"verdict": "mismatch" if errors else "matched", "artifact": dict(artifact), "log": dict(log),
            "selection": dict(selection), "counts": counts, "findings": [f.to_json() for f in ordered],
            "receipts": [o.to_json() for o in rows]}


def _shown(value: Any, absent: str = "(none)") -> str:
    return absent if value is None else str(value)


def summary_text(report: Mapping[str, Any], *, limit: int = 20) -> str:
    """A human summary: verdict and why, counts, then the first ``limit`` findings."""
    res = report["results"]
    c, env, art, log = res["counts"], report["environment"], res["artifact"], res["log"]
    errors = sorted({f["reason"] for f in res["findings"] if f["severity"] == "error"})
    head = "MATCHED" if res["verdict"] == "matched" else f"MISMATCH ({', '.join(errors)})"
    counted = [f"{c['replayed']} replayed", f"{c['mismatched']} not matching"]
    if c.get("erased"):
        counted.append(f"{c['erased']} erased: tenant key shredded, not replayable")
    counted.append(f"{c['warnings']} warning(s)")
    art_state = "verified" if art["verified"] else "NOT verified"
    lines = [f"replay {head}: {c['matched']}/{c['receipts']} receipts reproduced byte for byte ("
             + ", ".join(counted) + ")",
             f"  artifact {_shown(art['digest'], '(unreadable)')} ({art_state})",
             f"  log {log['origin']}: {log['size']} leaves, {'verified' if log['verified'] else 'NOT verified'}"
             + (f"; {log['unanchored']['count']} not covered by a signed checkpoint"
                if log.get("unanchored") else ""),
             f"  backend {env['backend']} on {env['device']}, batch size {env['batch_size']}, "
             f"{env['workers']} worker(s), {env['elapsed_ms']} ms",
             f"  results digest {report['results_digest']}"]
    for f in res["findings"][:limit]:
        where = f"#{f['index']}" if f["index"] is not None else f["scope"]
        pos = f" at position {f['position']}" if f["position"] is not None else ""
        lines.append(f"  {f['severity']}: {where} {f['reason']}{pos}: {f['message']}")
        if f["expected"] is not None or f["actual"] is not None:
            lines.append(f"      expected {_shown(f['expected'])}  actual {_shown(f['actual'])}")
        if f["excerpt"] is not None:
            lines.append(f"      recorded: {f['excerpt']['expected']}")
            lines.append(f"      replayed: {f['excerpt']['actual']}")
    if len(res["findings"]) > limit:
        lines.append(f"  ... {len(res['findings']) - limit} more finding(s) in the report")
    return "\n".join(lines)
