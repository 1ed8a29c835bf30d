"""pytest plugin (entry point ``pytest11``: ``kolm_golden``): golden suites in the test runner QA already uses.

    pytest --kolm-golden golden/suites/demo.golden.json --kolm-artifact model.kolm [--kolm-backend numpy]

* Each case of each ``--kolm-golden`` suite is a test item (``SUITE::CASE_ID``), plus ``SUITE::[artifact]`` for
  the pin; a failure reads like ``kolm-audit golden run`` (label changed, first divergent token with context,
  embedding distance). Cases run batched, once per process; ``-n 2`` (pytest-xdist) works.
* The ``kolm_golden`` fixture records cases from test code, like a snapshot::

      def test_triage(kolm_golden):
          kolm_golden("stable-income", text="The applicant has a stable income.")

  A case the suite does not hold fails; with ``--kolm-golden-update`` it is recorded (new cases only: an
  existing expectation is never overwritten — that is ``kolm-audit golden bless --accept``). Cases a test once
  recorded (``origin.kind = "pytest"``) that no test checks any more fail an update run: unused expectations are
  a finding, not noise. ``--kolm-golden-update`` refuses to run under pytest-xdist (workers would race on the
  file) and on a suite pinned to another artifact.

The module stays cheap to import (kolm_audit is imported only once an option is used): it is loaded in every
pytest run of an environment that has kolm-audit installed. Loaded both through the entry point and with
``-p kolm_audit.golden.pytest_plugin``, it registers once (it blocks its other name on registration).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kolm_audit.golden.runner import CaseResult
    from kolm_audit.golden.suite import Case, Expected, Suite

ENTRY_POINT_NAME = "kolm_golden"
PIN_ITEM = "[artifact]"
_BACKENDS = ("auto", "numpy", "cpu", "cuda")

__all__ = ["ENTRY_POINT_NAME", "GoldenCheck", "GoldenFailure"]


class GoldenFailure(Exception):
    """A golden case did not return what its suite expects (the message is the readable difference)."""


def pytest_plugin_registered(plugin: object, plugin_name: str, manager: pytest.PytestPluginManager) -> None:
    """Register once: block the name we were *not* registered under (entry point vs ``-p module``)."""
    if plugin is not sys.modules[__name__]:
        return
    for other in (ENTRY_POINT_NAME, __name__):
        if other != plugin_name and not manager.has_plugin(other) and not manager.is_blocked(other):
            manager.set_blocked(other)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kolm-golden", "kolm-audit golden suites (docs/golden.md)")
    group.addoption("--kolm-golden", action="append", default=[], metavar="SUITE", dest="kolm_golden",
                    help="Run every case of this golden suite as a test item (repeatable).")
    group.addoption("--kolm-artifact", metavar="PATH", dest="kolm_artifact", default=None,
                    help="The .kolm artifact the golden suites run on.")
    group.addoption("--kolm-backend", dest="kolm_backend", default="auto", choices=_BACKENDS,
                    help="Runtime backend (outputs are the same bytes on every backend). Default: auto.")
    group.addoption("--kolm-trust", metavar="PATH", dest="kolm_trust", default=None,
                    help="Also verify the artifact's signature against this trust file.")
    group.addoption("--kolm-artifact-key", metavar="PATH", dest="kolm_artifact_key", default=None,
                    help="Also verify the artifact's signature against this public key.")
    group.addoption("--kolm-batch-size", type=int, default=16, dest="kolm_batch_size",
                    help="Cases per forward pass (speed only). Default: 16.")
    group.addoption("--kolm-golden-update", action="store_true", default=False, dest="kolm_golden_update",
                    help="Record cases the kolm_golden fixture checks that the suite does not hold yet (never "
                         "overwrites); fail on test-recorded cases no test checks any more. Not with -n.")


def _under_xdist(config: pytest.Config) -> bool:
    numprocesses = getattr(config.option, "numprocesses", None)
    return (bool(numprocesses) or bool(getattr(config.option, "tx", None)) or hasattr(config, "workerinput")
            or "PYTEST_XDIST_WORKER" in os.environ)


@dataclass
class _State:
    """Per-process state: suites, the loaded model, results so far, cases seen and recorded (update mode)."""

    config: pytest.Config
    suite_paths: tuple[Path, ...]
    artifact: Path
    backend: str
    batch_size: int
    update: bool
    suites: dict[Path, Suite] = field(default_factory=dict)
    results: dict[tuple[Path, str], CaseResult] = field(default_factory=dict)
    order: dict[Path, list[str]] = field(default_factory=dict)
    seen: dict[Path, set[str]] = field(default_factory=dict)
    recorded: dict[Path, dict[str, Case]] = field(default_factory=dict)    # update mode: written at the end
    unused: dict[Path, list[str]] = field(default_factory=dict)
    _model: Any = None
    _signature: str = "not checked"
    _load_error: Exception | None = None

    def suite(self, path: Path) -> Suite:
        from kolm_audit.golden.suite import read_suite

        if path not in self.suites:
            self.suites[path] = read_suite(path)
        return self.suites[path]

    def model(self) -> Any:
        """The artifact's model, loaded (and verified) once per process; a load error is re-raised each time."""
        if self._load_error is not None:
            raise self._load_error
        if self._model is None:
            import kolm_audit.model as kmodel
            from kolm_audit.errors import KolmError

            trust, key = self.config.option.kolm_trust, self.config.option.kolm_artifact_key
            try:
                self._model = kmodel.load(self.artifact, trust=trust, key=key, backend=self.backend,
                                          require_signature=trust is not None or key is not None)
            except KolmError as exc:
                self._load_error = exc
                raise
            self._signature = "verified" if trust is not None or key is not None else "not checked"
        return self._model

    def result(self, path: Path, case_id: str, upcoming: list[str]) -> CaseResult:
        """The result of one suite case; runs it with up to ``batch_size - 1`` of the ``upcoming`` ones (alone in
        an xdist worker, which cannot know which cases the other workers run)."""
        from kolm_audit.golden.runner import run_suite

        if (path, case_id) not in self.results:
            suite = self.suite(path)
            todo = [case_id] + [c for c in upcoming if c != case_id and (path, c) not in self.results]
            limit = 1 if hasattr(self.config, "workerinput") else self.batch_size
            chosen = [c for c in (suite.case(i) for i in todo[:limit]) if c is not None]
            run = run_suite(suite, self.model(), batch_size=self.batch_size, cases=chosen, signature=self._signature)
            for res in run.cases:
                self.results[(path, res.case_id)] = res
        return self.results[(path, case_id)]

    def pin(self, path: Path) -> tuple[bool, str]:
        from kolm_audit.golden.runner import run_suite

        run = run_suite(self.suite(path), self.model(), cases=())
        return run.pin_ok, run.pin_message()


_STATE = pytest.StashKey[_State]()


def _resolved(path: str) -> Path:
    return Path(path).resolve()


def pytest_configure(config: pytest.Config) -> None:
    suites = tuple(dict.fromkeys(_resolved(p) for p in config.option.kolm_golden))
    update = bool(config.option.kolm_golden_update)
    if not suites:
        if update or config.option.kolm_artifact:
            raise pytest.UsageError("--kolm-artifact and --kolm-golden-update need --kolm-golden SUITE")
        return
    if not config.option.kolm_artifact:
        raise pytest.UsageError("--kolm-golden needs --kolm-artifact model.kolm (the artifact to run the cases on)")
    missing = [str(p) for p in (*suites, _resolved(config.option.kolm_artifact)) if not p.is_file()]
    if missing:
        raise pytest.UsageError(f"--kolm-golden / --kolm-artifact: no such file: {', '.join(missing)}")
    if config.option.kolm_batch_size < 1:
        raise pytest.UsageError("--kolm-batch-size must be positive")
    if update and _under_xdist(config):
        raise pytest.UsageError("--kolm-golden-update refuses to run under pytest-xdist: parallel workers would race "
                                "on the suite file; run it without -n (or with -n 0)")
    state = _State(config=config, suite_paths=suites, artifact=_resolved(config.option.kolm_artifact),
                   backend=config.option.kolm_backend, batch_size=config.option.kolm_batch_size, update=update)
    if update:
        _check_update_target(state)
    config.stash[_STATE] = state
    for path in suites:   # collected like test files; the collection arguments drop duplicates and overlaps
        if str(path) not in config.args:
            config.args.append(str(path))


def _check_update_target(state: _State) -> None:
    """Update mode writes the suite: refuse up front when it is malformed or pinned to another artifact."""
    from kolm_audit.artifact.file import read_artifact
    from kolm_audit.errors import KolmError

    try:
        digest = read_artifact(state.artifact, check_tensors=False).digest
        for path in state.suite_paths:
            suite = state.suite(path)
            if suite.pinned and suite.artifact_digest != digest:
                raise pytest.UsageError(
                    f"--kolm-golden-update: {path} is pinned to {suite.artifact_digest}, not to this artifact "
                    f"({digest}); re-pin with kolm-audit golden bless --force after review")
    except KolmError as exc:
        raise pytest.UsageError(f"--kolm-golden-update: {exc}") from None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    state = parent.config.stash.get(_STATE, None)
    if state is None or file_path.resolve() not in state.suite_paths:
        return None
    rootpath = parent.config.rootpath
    if file_path.resolve().is_relative_to(rootpath.resolve()):
        return GoldenSuiteFile.from_parent(parent, path=file_path)
    # outside the rootdir pytest would name it "": name it by its relative path instead
    nodeid = os.path.relpath(file_path.resolve(), rootpath.resolve()).replace(os.sep, "/")
    return GoldenSuiteFile.from_parent(parent, path=file_path, nodeid=nodeid)


class GoldenSuiteFile(pytest.File):
    """A suite file: one item per case (cases recorded by tests are checked by those tests), one for the pin."""

    def collect(self) -> Iterator[pytest.Item]:
        state = self.config.stash[_STATE]
        suite = state.suite(self.path.resolve())
        yield GoldenPinItem.from_parent(self, name=PIN_ITEM)
        for case in suite.cases:
            if case.origin is None or case.origin.get("kind") != "pytest":
                yield GoldenCaseItem.from_parent(self, name=case.id)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from kolm_audit.errors import KolmError

        if isinstance(excinfo.value, KolmError):
            return f"golden suite {self.path}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)


class _GoldenItem(pytest.Item):
    def _state(self) -> _State:
        return self.config.stash[_STATE]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from kolm_audit.errors import KolmError

        if isinstance(excinfo.value, GoldenFailure | KolmError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"golden {self.name}"

    def _properties(self) -> None:
        model = self._state().model()
        self.user_properties.extend([("artifact_digest", model.digest), ("backend", str(model.backend))])


class GoldenPinItem(_GoldenItem):
    """The suite's pin: the artifact digest (or name) the suite vouches for."""

    def runtest(self) -> None:
        self._properties()
        ok, message = self._state().pin(self.path.resolve())
        if not ok:
            raise GoldenFailure(f"golden suite {self.path}: artifact pin FAILED: {message}")


class GoldenCaseItem(_GoldenItem):
    """One golden case."""

    def runtest(self) -> None:
        self._properties()
        state = self._state()
        path = self.path.resolve()
        if path not in state.order:   # this run's cases of the suite, in run order (after -k / -m selection)
            state.order[path] = [i.name for i in self.session.items
                                 if isinstance(i, GoldenCaseItem) and i.path.resolve() == path]
        result = state.result(path, self.name, state.order[path])
        if not result.ok:
            raise GoldenFailure(result.explain())


class GoldenCheck:
    """The ``kolm_golden`` fixture: ``kolm_golden(case_id, text=... | ids=..., [decoding], [suite=PATH])``."""

    def __init__(self, state: _State, nodeid: str) -> None:
        self._state = state
        self._nodeid = nodeid

    def _suite_path(self, suite: str | Path | None) -> Path:
        paths = self._state.suite_paths
        if suite is None:
            if len(paths) != 1:
                raise pytest.UsageError("several --kolm-golden suites: say which with kolm_golden(..., suite=PATH)")
            return paths[0]
        path = _resolved(str(suite))
        if path not in paths:
            raise pytest.UsageError(f"kolm_golden(suite={suite!r}) is not one of the --kolm-golden suites")
        return path

    def __call__(self, case_id: str, *, text: str | None = None, ids: list[int] | None = None,
                 max_new_tokens: int = 32, seed: int | None = None, temperature: int | None = None,
                 top_k: int | None = None, top_p: int | None = None, suite: str | Path | None = None) -> Expected:
        """Check (or, with ``--kolm-golden-update``, record) one case; returns the artifact's output."""
        from kolm_audit.errors import KolmError

        try:
            return self._check(case_id, text=text, ids=ids, suite=suite, decoding={
                "max_new_tokens": max_new_tokens, "seed": seed, "temperature": temperature, "top_k": top_k,
                "top_p": top_p})
        except KolmError as exc:
            raise GoldenFailure(f"golden case {case_id}: {exc}") from None

    def _check(self, case_id: str, *, text: str | None, ids: list[int] | None, suite: str | Path | None,
               decoding: dict[str, Any]) -> Expected:
        from kolm_audit.errors import KolmError
        from kolm_audit.golden.runner import compare, run_cases
        from kolm_audit.golden.suite import Case
        from kolm_audit.receipts.document import Decoding

        st = self._state
        path = self._suite_path(suite)
        doc = st.suite(path)
        model = st.model()
        params = Decoding(**decoding) if doc.task == "generate" else None
        case = Case(id=case_id, text=text, ids=None if ids is None else tuple(ids), params=params,
                    origin={"kind": "pytest", "test": self._nodeid})
        seen = st.seen.setdefault(path, set())
        if case_id in seen:
            raise GoldenFailure(f"golden case {case_id} is checked twice in this run (case ids are unique)")
        seen.add(case_id)
        existing = doc.case(case_id)
        if existing is not None and not existing.same_request(case):
            raise GoldenFailure(f"golden case {case_id}: the test asks {case.input} {case.params}, the suite "
                                f"{path.name} holds {existing.input} {existing.params}; change the case id, or edit "
                                "the suite (and bless it)")
        [actual] = run_cases(model, [case], task=doc.task).values()
        if isinstance(actual, KolmError):
            raise GoldenFailure(f"golden case {case_id}: the runtime refused the input: {actual}")
        expected = None if existing is None else doc.expectation(existing, model.digest)
        if expected is None and st.update:   # new: recorded at the end of the run (never an overwrite)
            st.recorded.setdefault(path, {})[case_id] = doc.with_expectation(existing or case, model.digest, actual)
            return actual
        if existing is None:
            raise GoldenFailure(f"golden case {case_id} is not in {path}; record it with pytest --kolm-golden-update")
        result = compare(existing, expected, actual, artifact_digest=model.digest, decode=model.tokenizer.decode)
        if not result.ok:
            raise GoldenFailure(result.explain())
        return actual


@pytest.fixture
def kolm_golden(request: pytest.FixtureRequest) -> GoldenCheck:
    """Check a case against the ``--kolm-golden`` suite (or record it with ``--kolm-golden-update``)."""
    state = request.config.stash.get(_STATE, None)
    if state is None:
        pytest.fail("the kolm_golden fixture needs pytest --kolm-golden SUITE --kolm-artifact model.kolm",
                    pytrace=False)
    return GoldenCheck(state, request.node.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Update mode: write recorded cases; fail the run on test-recorded cases no test checked."""
    state = session.config.stash.get(_STATE, None)
    if state is None or hasattr(session.config, "workerinput"):
        return
    for path in state.suite_paths:
        if path not in state.suites:
            continue
        suite = state.suites[path]
        made_by_tests = [c.id for c in suite.cases if c.origin is not None and c.origin.get("kind") == "pytest"]
        unused = [i for i in made_by_tests if i not in state.seen.get(path, set())]
        if unused and not _under_xdist(session.config):
            state.unused[path] = unused
        recorded = state.recorded.get(path, {})
        if state.update and recorded:
            new = [c for i, c in recorded.items() if suite.case(i) is None]
            suite.with_cases([recorded.get(c.id, c) for c in suite.cases] + new).write(path)
    if state.update and state.unused and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or hasattr(config, "workerinput"):
        return
    for path in state.suite_paths:
        recorded = state.recorded.get(path, {})
        if state.update and recorded:
            terminalreporter.write_line(f"kolm-golden: recorded {len(recorded)} case(s) in {path}: "
                                        + ", ".join(sorted(recorded)), green=True)
        unused = state.unused.get(path, [])
        if unused:
            verdict = "FAILED" if state.update else "warning"
            terminalreporter.write_line(
                f"kolm-golden {verdict}: {len(unused)} case(s) of {path} recorded by tests that no test checks any "
                f"more (remove them from the suite): " + ", ".join(unused), red=state.update, yellow=not state.update)
