"""Run a golden suite on an artifact: every case batched, every output compared byte for byte (by digest).

:func:`run_suite` tokenizes text inputs with the artifact's own tokenizer, runs the cases in batches (generate
cases grouped by decoding parameters, similar lengths together — the runtime is batch-invariant, so batching is a
speed choice only), and compares each output digest and input digest with the case's expectation for this
artifact. A case *passes* when both digests match, *fails* when they differ (with readable
:mod:`~kolm_audit.golden.differences`), is *unblessed* when the suite holds no expectation for this artifact, and
is an *error* when the runtime refuses its input. The suite's pin is checked apart: a pinned suite run on another
artifact digest (or a per-digest suite on another artifact name) fails the run even when every output matches.

The result is a :class:`RunResult`; :meth:`RunResult.to_json` is the ``kolm.golden-run/1`` report
(``schemas/golden-run.schema.json``) that ``kolm-audit golden run --json`` prints.

    >>> from kolm_audit.model import load
    >>> from kolm_audit.golden.suite import read_suite
    >>> result = run_suite(read_suite("golden/suites/demo-minilm.golden.json"),
    ...                    load("model.kolm", require_signature=False))       # doctest: +SKIP
    >>> result.passed                                                       # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kolm_audit import __version__
from kolm_audit.errors import InputError, KolmError, RuntimeInputError
from kolm_audit.golden.differences import (
    Decode,
    Difference,
    classify_differences,
    embedding_differences,
    generate_differences,
    input_difference,
)
from kolm_audit.golden.suite import Case, Expected, Suite
from kolm_audit.receipts.document import Decoding
from kolm_audit.runtime import SPEC
from kolm_audit.schemas import validate

RUN_SCHEMA = "kolm.golden-run/1"
STATUSES = ("passed", "failed", "unblessed", "error")
Progress = Callable[[int], None]
Outcome = Expected | KolmError
_LABELS = {"passed": "PASS", "failed": "FAIL", "unblessed": "UNBLESSED", "error": "ERROR"}

__all__ = ["RUN_SCHEMA", "STATUSES", "CaseResult", "RunResult", "compare", "run_cases", "run_suite"]


@dataclass(frozen=True)
class CaseResult:
    """The verdict on one case."""

    case_id: str
    status: str
    expected: Expected | None
    actual: Expected | None
    differences: tuple[Difference, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def headline(self) -> str:
        """One line: the first difference, or what passed."""
        if self.ok:
            return self.actual.summary() if self.actual is not None else ""
        return "; ".join(d.message for d in self.differences[:2]) if self.differences else self.status

    def explain(self) -> str:
        """Every difference, one per line (what a failing test or JUnit failure shows)."""
        lines = [f"golden case {self.case_id}: {self.status.upper()}"]
        lines.extend(f"  {d.kind}: {d.message}" for d in self.differences)
        if self.expected is not None:
            lines.append(f"  expected {self.expected.output_digest} ({self.expected.summary()})")
        if self.actual is not None:
            lines.append(f"  actual   {self.actual.output_digest} ({self.actual.summary()})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.case_id, "status": self.status,
                "expected_digest": None if self.expected is None else self.expected.output_digest,
                "actual_digest": None if self.actual is None else self.actual.output_digest,
                "summary": None if self.actual is None else self.actual.summary(),
                "differences": [d.to_json() for d in self.differences]}


def compare(case: Case, expected: Expected | None, actual: Outcome, *, artifact_digest: str,
            decode: Decode | None = None) -> CaseResult:
    """The verdict on ``case`` given its expectation (None: unblessed) and what the artifact returned."""
    if isinstance(actual, KolmError):
        return CaseResult(case.id, "error", expected, None,
                          (Difference("runtime-error", f"the runtime refused the input: {actual}",
                                      {"error": type(actual).__name__, "message": str(actual)}),))
    if expected is None:
        return CaseResult(case.id, "unblessed", None, actual, (Difference(
            "no-expectation", f"no expectation for artifact {artifact_digest} (record it with kolm-audit golden "
            "bless)", {"artifact_digest": artifact_digest}),))
    diffs: list[Difference] = []
    if expected.input_digest != actual.input_digest:
        diffs.append(input_difference(expected.input_digest, actual.input_digest))
    if expected.output_digest != actual.output_digest:
        if actual.task == "embed":
            diffs += embedding_differences(expected.embedding or (), actual.embedding or ())
        elif actual.task == "classify":
            diffs += classify_differences(str(expected.label), expected.scores or (), str(actual.label),
                                          actual.scores or ())
        else:
            diffs += generate_differences(expected.output_ids or (), str(expected.finish_reason),
                                          actual.output_ids or (), str(actual.finish_reason), decode=decode)
    return CaseResult(case.id, "failed" if diffs else "passed", expected, actual, tuple(diffs))


def _call(model: Any, task: str, batch: list[list[int]], params: Decoding | None) -> list[Any]:
    if task == "embed":
        return list(model.embed(batch))
    if task == "classify":
        return list(model.classify(batch))
    assert params is not None  # a generate suite's cases all carry params (checked by Suite)
    return list(model.generate(batch, **params.kwargs()))


def run_cases(model: Any, cases: Sequence[Case], *, task: str, batch_size: int = 16,
              progress: Progress | None = None) -> dict[str, Outcome]:
    """What ``model`` returns for each case, by case id: an :class:`Expected` (the actual output in the
    suite's form) or the :class:`~kolm_audit.errors.RuntimeInputError` the runtime raised for that case alone."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    out: dict[str, Outcome] = {}
    jobs: dict[Decoding | None, list[tuple[Case, list[int]]]] = {}
    for case in cases:
        try:
            ids = list(case.ids) if case.ids is not None else model.tokenize([case.text])[0]
        except RuntimeInputError as exc:
            out[case.id] = exc
            continue
        jobs.setdefault(case.params, []).append((case, ids))
    for params, members in jobs.items():
        members.sort(key=lambda m: len(m[1]))            # similar lengths together: less padding, same results
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            try:
                results = _call(model, task, [ids for _, ids in chunk], params)
            except RuntimeInputError:
                results = None
            for i, (case, ids) in enumerate(chunk):
                if results is None:           # something in this batch was refused: find it, keep the rest
                    try:
                        [result] = _call(model, task, [ids], params)
                    except RuntimeInputError as exc:
                        out[case.id] = exc
                        continue
                else:
                    result = results[i]
                out[case.id] = Expected.from_result(task, result)
            if progress is not None:
                progress(len(chunk))
    return out


@dataclass(frozen=True)
class RunResult:
    """A suite run on one artifact: the pin check and one :class:`CaseResult` per case (suite order)."""

    suite: Suite
    artifact_name: str
    artifact_digest: str
    artifact_path: str | None
    backend: str
    signature: str            # "verified" | "not checked"
    cases: tuple[CaseResult, ...]

    @property
    def pin_ok(self) -> bool:
        if self.suite.pinned:
            return self.suite.artifact_digest == self.artifact_digest
        return self.suite.artifact_name == self.artifact_name

    def pin_message(self) -> str:
        if self.suite.pinned:
            if self.pin_ok:
                return f"the suite is pinned to this artifact ({self.artifact_digest})"
            return (f"the suite is pinned to {self.suite.artifact_digest}; this artifact is {self.artifact_digest} "
                    "(after review, re-pin with: kolm-audit golden bless SUITE --artifact ARTIFACT --force)")
        if self.pin_ok:
            return f"the suite follows artifact name {self.artifact_name!r}"
        return (f"the suite follows artifact name {self.suite.artifact_name!r}; this artifact is named "
                f"{self.artifact_name!r}")

    def counts(self) -> dict[str, int]:
        counts = {"cases": len(self.cases)} | {s: 0 for s in STATUSES}
        for c in self.cases:
            counts[c.status] += 1
        return {"cases": counts["cases"], "passed": counts["passed"], "failed": counts["failed"],
                "unblessed": counts["unblessed"], "errors": counts["error"]}

    @property
    def passed(self) -> bool:
        return self.pin_ok and all(c.ok for c in self.cases)

    def to_json(self) -> dict[str, Any]:
        """The ``kolm.golden-run/1`` report (schema-valid; integers and strings only)."""
        report = {
            "schema": RUN_SCHEMA, "tool": {"name": "kolm-audit", "version": __version__},
            "suite": {"path": None if self.suite.path is None else str(self.suite.path), "name": self.suite.name,
                      "digest": self.suite.digest, "task": self.suite.task,
                      "artifact": {"name": self.suite.artifact_name, "digest": self.suite.artifact_digest}},
            "artifact": {"path": self.artifact_path, "name": self.artifact_name, "digest": self.artifact_digest,
                         "signature": self.signature},
            "runtime": SPEC, "backend": self.backend,
            "pin": {"ok": self.pin_ok, "message": self.pin_message()},
            "counts": self.counts(), "verdict": "passed" if self.passed else "failed",
            "cases": [c.to_json() for c in self.cases]}
        validate(report, "golden-run")
        return report

    def text(self, *, show_passed: bool = True) -> str:
        """The human report: one line per case, the pin, a verdict."""
        lines = [f"golden run: suite {self.suite.name} ({len(self.cases)} {self.suite.task} cases) on "
                 f"{self.artifact_name} {self.artifact_digest} (backend {self.backend}, signature {self.signature})"]
        for c in self.cases:
            if c.ok:
                if show_passed:
                    lines.append(f"  PASS  {c.case_id}")
                continue
            lines.append(f"  {_LABELS[c.status]:<5} {c.case_id}")
            lines.extend(f"          {d.message}" for d in c.differences)
        lines.append(f"  {'PIN  ' if self.pin_ok else 'FAIL '} artifact: {self.pin_message()}")
        n = self.counts()
        lines.append(f"golden run {'PASSED' if self.passed else 'FAILED'}: {n['passed']} passed, {n['failed']} "
                     f"failed, {n['unblessed']} unblessed, {n['errors']} errors of {n['cases']} cases"
                     + ("" if self.pin_ok else "; artifact pin FAILED"))
        return "\n".join(lines)


def run_suite(suite: Suite, model: Any, *, batch_size: int = 16, progress: Progress | None = None,
              signature: str = "not checked", cases: Sequence[Case] | None = None) -> RunResult:
    """Run ``suite`` (or only ``cases`` of it) on a loaded :class:`~kolm_audit.model.Model`."""
    task = str(model.task)
    if task != suite.task:
        raise InputError("the suite is for another task than this artifact performs", file=str(suite.path or ""),
                         field="task", expected=suite.task, actual=task)
    chosen = suite.cases if cases is None else tuple(cases)
    actual = run_cases(model, chosen, task=task, batch_size=batch_size, progress=progress)
    decode = model.tokenizer.decode
    results = tuple(compare(c, suite.expectation(c, model.digest), actual[c.id], artifact_digest=model.digest,
                            decode=decode) for c in chosen)
    path = getattr(model, "path", None)
    return RunResult(suite=suite, artifact_name=str(model.manifest["name"]), artifact_digest=model.digest,
                     artifact_path=None if path is None else str(path), backend=str(model.backend),
                     signature=signature, cases=results)
