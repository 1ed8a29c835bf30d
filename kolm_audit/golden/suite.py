"""The golden suite document (``kolm.golden-suite/1``): strict reader, canonical writer.

A suite names the artifact it vouches for and lists cases: an id, an input (text or token ids), decoding
parameters for generators, and what the artifact must return — the output digest of ``docs/runtime-spec.md`` §8
plus the values it hashes (embedding, label and scores, or output ids with their decoded text), so a failure can
say *how* the output moved. Two forms (``schemas/golden-suite.schema.json``, guide: ``docs/golden.md``):

* **pinned** — ``artifact.digest`` is set; each case has at most one ``expected``;
* **per digest** — ``artifact.digest`` is absent; each case has ``expected_by_digest`` (artifact digest →
  expectation), for a suite that follows one artifact name through several builds.

On disk a suite is its RFC 8785 (JCS) bytes and one newline; :func:`read_suite` rejects anything else (a suite
edited by hand is rewritten canonically by ``kolm-audit golden bless``, which reads with ``canonical=False``).
Beyond the schema the reader checks that every expected output digest is the digest of the values beside it,
that an ids input matches its input digest, and that case ids are unique.

    >>> import tempfile, pathlib
    >>> case = Case(id="hello", text="hello world")
    >>> suite = Suite(name="demo", task="embed", artifact_name="m", artifact_digest="sha256:" + "ab" * 32,
    ...               cases=(case,))
    >>> path = suite.write(pathlib.Path(tempfile.mkdtemp()) / "demo.golden.json")
    >>> read_suite(path).cases[0].id
    'hello'
    >>> path.read_bytes()[:30]
    b'{"artifact":{"digest":"sha256:'
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kolm_audit._atomic import write_atomic
from kolm_audit.canonical import DIGEST_RE, digest, jcs, loads_strict
from kolm_audit.errors import ConfigError, InputError, naming_file
from kolm_audit.receipts.document import Decoding
from kolm_audit.runtime import SPEC
from kolm_audit.runtime.digests import classification_digest, embedding_digest, generation_digest, input_digest
from kolm_audit.schemas import validate

SUITE_SCHEMA = "kolm.golden-suite/1"
TASKS = ("embed", "classify", "generate")
CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")

__all__ = ["SUITE_SCHEMA", "TASKS", "Case", "Expected", "Suite", "params_json", "read_suite"]


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class Expected:
    """What one case must return on one artifact: digests plus the readable values they hash."""

    task: str
    input_digest: str
    output_digest: str
    embedding: tuple[int, ...] | None = None       # embed: Q.16 values
    label: str | None = None                       # classify
    scores: tuple[int, ...] | None = None          # classify: Q.16 logits
    output_ids: tuple[int, ...] | None = None      # generate
    finish_reason: str | None = None               # generate
    text: str | None = None                        # generate: output ids decoded (readable, not hashed)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError("unknown task", field="task", expected=" | ".join(TASKS), actual=repr(self.task))
        for name in ("input_digest", "output_digest"):
            if not isinstance(getattr(self, name), str) or not DIGEST_RE.match(getattr(self, name)):
                raise ConfigError("malformed digest", field=name, expected="sha256:<64 lowercase hex>",
                                  actual=repr(getattr(self, name))[:80])
        needs = {"embed": ("embedding",), "classify": ("label", "scores"),
                 "generate": ("output_ids", "finish_reason", "text")}[self.task]
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise ConfigError(f"a {self.task} expectation needs {', '.join(missing)}", field=missing[0])
        own = self.recomputed_digest()
        if own != self.output_digest:
            raise ConfigError("output_digest is not the digest of the expected values beside it "
                              "(docs/runtime-spec.md §8)", field="output_digest", expected=own,
                              actual=self.output_digest)

    def recomputed_digest(self) -> str:
        """The output digest of the values this expectation holds."""
        if self.task == "embed":
            return embedding_digest(self.embedding or ())
        if self.task == "classify":
            return classification_digest(str(self.label), self.scores or ())
        return generation_digest(self.output_ids or (), str(self.finish_reason))

    @classmethod
    def from_result(cls, task: str, result: Any) -> Expected:
        """From a runtime result (``EmbedResult`` / ``ClassifyResult`` / ``GenerateResult``)."""
        common = {"task": task, "input_digest": result.input_digest, "output_digest": result.output_digest}
        if task == "embed":
            return cls(**common, embedding=_ints(result.embedding.reshape(-1).tolist()))
        if task == "classify":
            return cls(**common, label=str(result.label), scores=_ints(result.scores))
        return cls(**common, output_ids=_ints(result.output_ids), finish_reason=str(result.finish_reason),
                   text=str(result.text))

    @classmethod
    def from_json(cls, task: str, doc: Mapping[str, Any]) -> Expected:
        values: dict[str, Any] = {"task": task, "input_digest": doc["input_digest"],
                                  "output_digest": doc["output_digest"]}
        for name in ("embedding", "scores", "output_ids"):
            if name in doc:
                values[name] = _ints(doc[name])
        for name in ("label", "finish_reason", "text"):
            if name in doc:
                values[name] = doc[name]
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"input_digest": self.input_digest, "output_digest": self.output_digest}
        if self.task == "embed":
            doc["embedding"] = list(self.embedding or ())
        elif self.task == "classify":
            doc.update(label=self.label, scores=list(self.scores or ()))
        else:
            doc.update(output_ids=list(self.output_ids or ()), finish_reason=self.finish_reason, text=self.text)
        return doc

    def summary(self) -> str:
        """A short readable form: the label, the start of the generated text, or the embedding's size."""
        if self.task == "classify":
            return f"label {self.label!r}"
        if self.task == "generate":
            text = self.text or ""
            shown = text if len(text) <= 60 else text[:59] + "…"
            return f"{len(self.output_ids or ())} tokens ({self.finish_reason}) {shown!r}"
        return f"embedding of {len(self.embedding or ())} values"


def params_json(decoding: Decoding) -> dict[str, Any]:
    """A generate case's ``params`` (the decoding parameters, without the derived ``strategy``)."""
    return {"max_new_tokens": decoding.max_new_tokens, "seed": decoding.seed, "temperature": decoding.temperature,
            "top_k": decoding.top_k, "top_p": decoding.top_p}


@dataclass(frozen=True)
class Case:
    """One golden case: an input, decoding parameters (generate only), and what is expected of it."""

    id: str
    text: str | None = None
    ids: tuple[int, ...] | None = None
    params: Decoding | None = None
    expected: Expected | None = None                              # pinned suites
    expected_by_digest: Mapping[str, Expected] | None = None     # per-digest suites
    origin: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not CASE_ID_RE.match(self.id):
            raise ConfigError("invalid case id", field="id", expected="1-128 of A-Z a-z 0-9 . _ - (not starting "
                              "with . _ -)", actual=repr(self.id)[:80])
        if (self.text is None) == (self.ids is None):
            raise ConfigError("a case has exactly one input: a text or token ids", field="input")
        if self.ids is not None:
            object.__setattr__(self, "ids", _ints(self.ids))
            if not self.ids:
                raise ConfigError("token ids must not be empty", field="input.ids")
        if self.expected is not None and self.expected_by_digest is not None:
            raise ConfigError("a case has expected (pinned suite) or expected_by_digest (per-digest suite), "
                              "not both", field="expected")
        if self.expected_by_digest is not None:
            object.__setattr__(self, "expected_by_digest", MappingProxyType(dict(sorted(
                self.expected_by_digest.items()))))
        if self.origin is not None:
            object.__setattr__(self, "origin", MappingProxyType(dict(self.origin)))
        for exp in self.expectations():
            if self.ids is not None and exp.input_digest != input_digest(self.ids):
                raise ConfigError("expected input_digest is not the digest of the case's token ids",
                                  field="expected.input_digest", expected=input_digest(self.ids),
                                  actual=exp.input_digest)

    def expectations(self) -> tuple[Expected, ...]:
        if self.expected is not None:
            return (self.expected,)
        return tuple((self.expected_by_digest or {}).values())

    @property
    def input(self) -> dict[str, Any]:
        return {"text": self.text} if self.text is not None else {"ids": list(self.ids or ())}

    def same_request(self, other: Case) -> bool:
        """Whether two cases ask the artifact the same thing (input and decoding parameters)."""
        return (self.text, self.ids, self.params) == (other.text, other.ids, other.params)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "input": self.input}
        if self.params is not None:
            doc["params"] = params_json(self.params)
        if self.expected is not None:
            doc["expected"] = self.expected.to_json()
        if self.expected_by_digest is not None:
            doc["expected_by_digest"] = {d: e.to_json() for d, e in self.expected_by_digest.items()}
        if self.origin is not None:
            doc["origin"] = dict(self.origin)
        return doc


@dataclass(frozen=True)
class Suite:
    """A golden suite. Immutable: :meth:`with_cases` returns a new suite; :meth:`write` stores it canonically."""

    name: str
    task: str
    artifact_name: str
    artifact_digest: str | None          # None: per-digest suite
    cases: tuple[Case, ...] = ()
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cases", tuple(self.cases))
        _validate(self.to_json(), source=None)   # the rules of a suite read from disk (params only on generate
        # cases, one form of expectation: pinned or per digest), then what a schema cannot say
        seen: set[str] = set()
        for case in self.cases:
            if case.id in seen:
                raise ConfigError("duplicate case id", field=f"cases: {case.id}", expected="unique case ids")
            seen.add(case.id)

    @property
    def pinned(self) -> bool:
        return self.artifact_digest is not None

    def case(self, case_id: str) -> Case | None:
        return self._by_id.get(case_id)

    @functools.cached_property
    def _by_id(self) -> dict[str, Case]:
        return {c.id: c for c in self.cases}

    def expectation(self, case: Case, artifact_digest: str) -> Expected | None:
        """What ``case`` must return on the artifact with ``artifact_digest`` (None: not blessed for it).

        A pinned suite has one expectation per case, whatever artifact runs it (the pin is checked apart)."""
        if self.pinned:
            return case.expected
        return (case.expected_by_digest or {}).get(artifact_digest)

    def with_cases(self, cases: Sequence[Case], *, artifact_digest: str | None = None,
                   artifact_name: str | None = None) -> Suite:
        """A copy with other cases (and, for re-pinning, another artifact digest/name)."""
        return replace(self, cases=tuple(cases),
                       artifact_digest=self.artifact_digest if artifact_digest is None else artifact_digest,
                       artifact_name=self.artifact_name if artifact_name is None else artifact_name)

    def with_expectation(self, case: Case, artifact_digest: str, expected: Expected) -> Case:
        """``case`` carrying ``expected`` for ``artifact_digest`` (in this suite's form)."""
        if self.pinned:
            return replace(case, expected=expected)
        return replace(case, expected_by_digest={**(case.expected_by_digest or {}), artifact_digest: expected})

    def to_json(self) -> dict[str, Any]:
        artifact: dict[str, Any] = {"name": self.artifact_name}
        if self.artifact_digest is not None:
            artifact["digest"] = self.artifact_digest
        return {"schema": SUITE_SCHEMA, "name": self.name, "runtime": SPEC, "task": self.task, "artifact": artifact,
                "cases": [c.to_json() for c in self.cases]}

    def canonical_bytes(self) -> bytes:
        """The file's bytes: RFC 8785 (JCS) and one newline."""
        return self._bytes

    @functools.cached_property
    def _bytes(self) -> bytes:        # computed once: large suites take seconds to canonicalize
        return jcs(self.to_json()) + b"\n"

    @property
    def digest(self) -> str:
        """sha256 of :meth:`canonical_bytes` (named in run reports and JUnit properties)."""
        return digest(self.canonical_bytes())

    def write(self, path: str | Path) -> Path:
        """Write atomically (temp file, fsync, rename)."""
        return write_atomic(path, self.canonical_bytes(), what="suite")


def _where(doc: Any, index: int) -> str:
    """``cases[3] (id 'x')``: a case named by its position and, when readable, its id."""
    cases = doc.get("cases") if isinstance(doc, dict) else None
    case = cases[index] if isinstance(cases, list) and index < len(cases) else None
    cid = case.get("id") if isinstance(case, dict) else None
    return f"cases[{index}]" + (f" (id {cid!r})" if isinstance(cid, str) else "")


_CASE_PATH = re.compile(r"^\$\.cases\[(\d+)\]")


def _validate(doc: Any, *, source: str | None) -> None:
    """Schema validation whose error names the failing case by id, not only by position."""
    try:
        validate(doc, "golden-suite", source=source, error=ConfigError)
    except ConfigError as exc:
        m = _CASE_PATH.match(exc.field or "")
        if m is None:
            raise
        rest = (exc.field or "")[m.end():].lstrip(".")
        where = _where(doc, int(m.group(1))) + (f": {rest}" if rest else "")
        raise ConfigError(exc.message, file=exc.file, field=where, expected=exc.expected,
                          actual=exc.actual) from None


def _case(doc: Mapping[str, Any], task: str) -> Case:
    params = None
    if "params" in doc:
        params = Decoding(**doc["params"])
    expected = None if "expected" not in doc else Expected.from_json(task, doc["expected"])
    by_digest = None
    if "expected_by_digest" in doc:
        by_digest = {d: Expected.from_json(task, e) for d, e in doc["expected_by_digest"].items()}
    inp = doc["input"]
    return Case(id=doc["id"], text=inp.get("text"), ids=None if "ids" not in inp else _ints(inp["ids"]),
                params=params, expected=expected, expected_by_digest=by_digest, origin=doc.get("origin"))


def parse_suite(data: bytes, *, source: str, canonical: bool = True) -> Suite:
    """A suite from its file bytes (see :func:`read_suite`)."""
    doc = loads_strict(data, file=source, error=ConfigError)
    _validate(doc, source=source)
    cases = []
    for i, raw in enumerate(doc["cases"]):
        try:
            cases.append(_case(raw, doc["task"]))
        except InputError as exc:   # a value rule the schema cannot state: name the case
            field_ = _where(doc, i) + (f": {exc.field}" if exc.field else "")
            raise ConfigError(exc.message, file=source, field=field_, expected=exc.expected,
                              actual=exc.actual) from None
    with naming_file(source):
        suite = Suite(name=doc["name"], task=doc["task"], artifact_name=doc["artifact"]["name"],
                      artifact_digest=doc["artifact"].get("digest"), cases=tuple(cases), path=Path(source))
    if canonical and suite.canonical_bytes() != data:
        raise ConfigError("suite is not in canonical form (RFC 8785 bytes and one newline)", file=source,
                          expected="the bytes kolm-audit writes: `kolm-audit golden bless SUITE --artifact A` "
                                   "rewrites a hand-edited suite canonically")
    return suite


def read_suite(path: str | Path, *, canonical: bool = True) -> Suite:
    """Read a suite strictly: strict JSON, schema, digests consistent, unique ids and — with ``canonical`` — the
    exact bytes :meth:`Suite.write` produces. Every error is a :class:`~kolm_audit.errors.ConfigError` (exit 2)
    naming the file and the case."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read suite ({exc.strerror})", file=str(path)) from None
    return parse_suite(data, source=str(path), canonical=canonical)
