"""``golden bless``: record what an artifact returns as the suite's expectations — new cases freely, changes only
when told case by case.

:func:`plan_bless` runs every case and sorts it into *new* (no expectation for this artifact yet: recorded),
*unchanged*, *changed* (recorded only when its id is in ``accept`` or with ``accept_all``) or *error* (the runtime
refused the input). A plan is all or nothing: :attr:`BlessPlan.writable` is false while any change is unaccepted
or any case errs, and then nothing is written — a suite never changes silently. A pinned suite run on another
artifact digest (or a per-digest suite on another artifact name) is refused (:class:`InputError`) unless
``force``: re-pinning is a decision, and every changed case still needs accepting. (A pinned suite that holds no
expectation yet — cases written by hand — is pinned to the artifact it is first blessed with.)

    >>> from kolm_audit.model import load
    >>> from kolm_audit.golden.suite import read_suite
    >>> plan = plan_bless(read_suite("suite.golden.json", canonical=False),
    ...                   load("model.kolm", require_signature=False), accept=(), accept_all=False)  # doctest: +SKIP
    >>> plan.writable, [c.case_id for c in plan.changes if c.kind == "new"]                       # doctest: +SKIP
    (True, ['new-case'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kolm_audit import __version__
from kolm_audit.errors import InputError, KolmError
from kolm_audit.golden.differences import Difference
from kolm_audit.golden.runner import compare, run_cases
from kolm_audit.golden.suite import Expected, Suite
from kolm_audit.schemas import validate

UPDATE_SCHEMA = "kolm.golden-update/1"
KINDS = ("new", "unchanged", "changed", "error")

__all__ = ["KINDS", "UPDATE_SCHEMA", "BlessPlan", "Change", "change_json", "count_changes", "plan_bless",
           "update_report"]


@dataclass(frozen=True)
class Change:
    """What blessing does to one case."""

    case_id: str
    kind: str                         # new | unchanged | changed | error
    accepted: bool
    before: Expected | None
    after: Expected | None
    differences: tuple[Difference, ...] = ()

    def line(self) -> str:
        if self.kind == "new":
            return f"  NEW       {self.case_id}: records {self.after.summary() if self.after else ''}"
        if self.kind == "error":
            return f"  ERROR     {self.case_id}: " + "; ".join(d.message for d in self.differences)
        verdict = "ACCEPTED " if self.accepted else "REFUSED  "
        head = f"  {verdict} {self.case_id}: expectation would change"
        return "\n".join([head, *(f"              {d.message}" for d in self.differences)])


def count_changes(changes: Sequence[Change]) -> dict[str, int]:
    """How many cases are new, unchanged, changed (accepted / refused) or refused by the runtime."""
    out = {k: 0 for k in ("new", "unchanged", "changed", "accepted", "refused", "errors")}
    for c in changes:
        out["errors" if c.kind == "error" else c.kind] += 1
        if c.kind == "changed":
            out["accepted" if c.accepted else "refused"] += 1
    return out


def change_json(change: Change) -> dict[str, Any]:
    return {"id": change.case_id, "kind": change.kind, "accepted": change.accepted,
            "before_digest": None if change.before is None else change.before.output_digest,
            "after_digest": None if change.after is None else change.after.output_digest,
            "differences": [d.to_json() for d in change.differences]}


@dataclass(frozen=True)
class BlessPlan:
    """The suite blessing would write, and why (or why not)."""

    suite: Suite                         # the suite as it would be written
    changes: tuple[Change, ...]
    repinned_from: str | None            # the old pin when re-pinning (force)
    renamed_from: str | None             # the old artifact name of a per-digest suite (force)

    @property
    def refused(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == "changed" and not c.accepted)

    @property
    def errors(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == "error")

    @property
    def writable(self) -> bool:
        return not self.refused and not self.errors

    def counts(self) -> dict[str, int]:
        return count_changes(self.changes)

    def text(self, *, written: bool) -> str:
        lines = [c.line() for c in self.changes if c.kind != "unchanged"]
        n = self.counts()
        if self.repinned_from is not None:
            lines.append(f"  re-pinned from {self.repinned_from} to {self.suite.artifact_digest}")
        if self.renamed_from is not None:
            lines.append(f"  artifact name {self.renamed_from!r} -> {self.suite.artifact_name!r}")
        summary = (f"{n['new']} new, {n['changed']} changed ({n['accepted']} accepted, {n['refused']} refused), "
                   f"{n['unchanged']} unchanged, {n['errors']} errors")
        if written:
            lines.append(f"golden bless: wrote {self.suite.path} — {summary}")
        elif self.writable:
            lines.append(f"golden bless: nothing to write — {summary}")
        else:
            why = []
            if self.refused:
                ids = " ".join(f"--accept {c.case_id}" for c in self.refused[:10])
                why.append(f"accept each change after review ({ids}{' …' if len(self.refused) > 10 else ''}, or "
                           "--accept-all)")
            if self.errors:
                why.append("fix or remove the cases the runtime refuses")
            lines.append(f"golden bless REFUSED, nothing written — {summary}; " + "; ".join(why))
        return "\n".join(lines)


def _check_target(suite: Suite, model: Any, *, force: bool) -> None:
    if suite.task != model.task:
        raise InputError("the suite is for another task than this artifact performs", file=str(suite.path),
                         field="task", expected=suite.task, actual=str(model.task))
    name = str(model.manifest["name"])
    vouches = any(c.expected is not None for c in suite.cases)     # a suite with no expectation pins nothing yet
    if suite.pinned and suite.artifact_digest != model.digest and vouches and not force:
        raise InputError("the suite is pinned to another artifact; refusing to bless it for this one",
                         file=str(suite.path), field="artifact.digest", expected=suite.artifact_digest,
                         actual=f"{model.digest} (after review, re-pin with --force; changed cases still need "
                                "--accept CASE_ID or --accept-all)")
    if not suite.pinned and suite.artifact_name != name and not force:
        raise InputError("the suite follows another artifact name; refusing to bless it for this one",
                         file=str(suite.path), field="artifact.name", expected=suite.artifact_name,
                         actual=f"{name!r} (after review, rename with --force)")


def plan_bless(suite: Suite, model: Any, *, accept: Sequence[str], accept_all: bool, force: bool = False,
               batch_size: int = 16) -> BlessPlan:
    """What blessing ``suite`` with ``model``'s outputs would write (see the module docstring)."""
    _check_target(suite, model, force=force)
    unknown = sorted(set(accept) - {c.id for c in suite.cases})
    if unknown:
        raise InputError("--accept names a case that is not in the suite", file=str(suite.path), field="--accept",
                         expected="a case id of the suite", actual=", ".join(unknown[:10]))
    outcomes = run_cases(model, suite.cases, task=suite.task, batch_size=batch_size)
    decode = model.tokenizer.decode
    changes, cases = [], []
    for case in suite.cases:
        before = suite.expectation(case, model.digest)
        result = compare(case, before, outcomes[case.id], artifact_digest=model.digest, decode=decode)
        actual = outcomes[case.id]
        if isinstance(actual, KolmError):
            changes.append(Change(case.id, "error", False, before, None, result.differences))
            cases.append(case)
        elif before is None:
            changes.append(Change(case.id, "new", True, None, actual))
            cases.append(suite.with_expectation(case, model.digest, actual))
        elif result.ok:
            changes.append(Change(case.id, "unchanged", True, before, before))
            cases.append(case)
        else:
            accepted = accept_all or case.id in accept
            changes.append(Change(case.id, "changed", accepted, before, actual, result.differences))
            cases.append(suite.with_expectation(case, model.digest, actual) if accepted else case)
    name = str(model.manifest["name"])
    repinned = suite.artifact_digest if suite.pinned and suite.artifact_digest != model.digest else None
    renamed = suite.artifact_name if not suite.pinned and suite.artifact_name != name else None
    new = suite.with_cases(cases, artifact_digest=model.digest if suite.pinned else None,
                           artifact_name=name if renamed is not None else None)
    return BlessPlan(suite=new, changes=tuple(changes), repinned_from=repinned, renamed_from=renamed)


def update_report(*, command: str, suite: Suite, model: Any, signature: str, written: bool,
                  changes: Sequence[Change], repinned_from: str | None = None,
                  log: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``kolm.golden-update/1`` report of ``golden bless`` / ``golden new`` (schema-valid)."""
    report: dict[str, Any] = {
        "schema": UPDATE_SCHEMA, "tool": {"name": "kolm-audit", "version": __version__}, "command": command,
        "suite": {"path": None if suite.path is None else str(suite.path), "name": suite.name,
                  "digest": suite.digest, "cases": len(suite.cases)},
        "artifact": {"path": None if getattr(model, "path", None) is None else str(model.path),
                     "name": str(model.manifest["name"]), "digest": model.digest, "signature": signature},
        "written": written, "repinned_from": repinned_from, "counts": count_changes(changes),
        "changes": [change_json(c) for c in changes if c.kind != "unchanged"], "log": log}
    validate(report, "golden-update")
    return report
