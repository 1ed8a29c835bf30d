"""``golden new --from-inputs``: a suite from a JSONL file of requests (the ``kolm-audit run`` input format).

Each non-blank line is a ``run-input`` document (``schemas/run-input.schema.json``): ``{"text": ...}`` or
``{"ids": [...]}``, an optional ``id`` (the case id; ``line-N`` when absent) and, for generators, decoding
parameters. Every case is run on the artifact and recorded as its expectation, pinned to the artifact's digest.

    >>> from kolm_audit.model import load
    >>> suite = suite_from_inputs("examples/demo/inputs.jsonl", load("model.kolm", require_signature=False),
    ...                           name="demo")                                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kolm_audit.canonical import loads_strict
from kolm_audit.errors import InputError, KolmError
from kolm_audit.golden.runner import run_cases
from kolm_audit.golden.suite import CASE_ID_RE, Case, Suite
from kolm_audit.receipts.document import Decoding
from kolm_audit.schemas import validate

__all__ = ["suite_from_inputs"]

_DECODING = ("max_new_tokens", "seed", "temperature", "top_k", "top_p")


def _case(doc: dict[str, Any], number: int, *, task: str, max_new_tokens: int) -> Case:
    params = {k: doc[k] for k in _DECODING if k in doc}
    if task != "generate" and params:
        raise InputError(f"decoding parameters apply to generate only; this artifact does {task}",
                         field=sorted(params)[0])
    rid = doc.get("id")
    if rid is not None and not CASE_ID_RE.match(rid):
        raise InputError("the id cannot be a case id", field="id",
                         expected="1-128 of A-Z a-z 0-9 . _ - (not starting with . _ -)", actual=repr(rid)[:80])
    ids = doc.get("ids")
    return Case(id=rid or f"line-{number}", text=doc.get("text"), ids=None if ids is None else tuple(ids),
                params=Decoding(**{"max_new_tokens": max_new_tokens, **params}) if task == "generate" else None)


def suite_from_inputs(path: str | Path, model: Any, *, name: str, max_new_tokens: int = 32,
                      batch_size: int = 16) -> Suite:
    """A suite pinned to ``model``'s artifact with one case per input line, expectations recorded."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read inputs ({exc.strerror})", file=str(path)) from None
    task = str(model.task)
    cases = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            doc = loads_strict(raw, file=str(path), error=InputError)
            validate(doc, "run-input", source=str(path), error=InputError)
            cases.append(_case(doc, number, task=task, max_new_tokens=max_new_tokens))
        except KolmError as exc:
            raise InputError(exc.message, file=str(path), field=f"line {number}" + (
                f": {exc.field}" if exc.field else ""), expected=exc.expected, actual=exc.actual) from None
    outcomes = run_cases(model, cases, task=task, batch_size=batch_size)
    recorded = []
    for case in cases:
        got = outcomes[case.id]
        if isinstance(got, KolmError):
            raise InputError(f"the runtime refuses this input: {got.message}", file=str(path), field=case.id)
        recorded.append(Case(id=case.id, text=case.text, ids=case.ids, params=case.params, expected=got))
    return Suite(name=name, task=task, artifact_name=str(model.manifest["name"]), artifact_digest=model.digest,
                 cases=tuple(recorded))
