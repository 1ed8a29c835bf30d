"""Golden runs on real tiny int8 models (transformers config, fixed seed): a suite passes on its artifact, fails on
the right case with a readable difference on an artifact with one changed weight, is batch-invariant; deterministic
JUnit XML that junitparser reads with matching counts; bless never overwrites silently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import junitparser
import pytest
from _golden_fixtures import (
    CLASSIFY_TEXTS,
    GREEDY,
    PROMPTS,
    SAMPLING,
    bert_artifact,
    blessed_suite,
    changed_embedding,
    input_cases,
    llama_artifact,
    model,
    token_id,
)

from kolm_audit.errors import InputError
from kolm_audit.golden.bless import plan_bless, update_report
from kolm_audit.golden.junit import PIN_CASE, junit_xml
from kolm_audit.golden.runner import run_suite
from kolm_audit.golden.suite import Case
from kolm_audit.schemas import validate


@pytest.fixture(scope="module")
def cls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("golden-cls")
    art = bert_artifact(tmp)
    m = model(art)
    suite = blessed_suite(m, (*input_cases(CLASSIFY_TEXTS), Case(id="ids", ids=(2, 10, 11, 3))))
    changed, tensor = changed_embedding(art, tmp / "changed.kolm", token_id(m, "fox"))
    return {"tmp": tmp, "art": art, "model": m, "suite": suite, "changed": model(changed), "tensor": tensor}


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("golden-gen")
    art = llama_artifact(tmp)
    m = model(art)
    suite = blessed_suite(m, input_cases(PROMPTS, SAMPLING) + input_cases({"greedy": "w5 w6 w7"}, GREEDY),
                          name="tiny-gen")
    # a token of p4's prompt that no other case reads or generates: changing its row can only move p4
    others = {t for c in suite.cases if c.id != "p4" for t in [*m.tokenize([c.text])[0], *c.expected.output_ids]}
    token = next(t for t in m.tokenize([PROMPTS["p4"]])[0] if t not in others)
    changed, _ = changed_embedding(art, tmp / "changed.kolm", token)
    return {"model": m, "suite": suite, "changed": model(changed)}


def test_suite_passes_on_its_artifact_in_any_batch_size(cls: dict[str, Any]) -> None:
    runs = [run_suite(cls["suite"], cls["model"], batch_size=b) for b in (1, 2, 16)]
    assert all(r.passed and r.pin_ok for r in runs)
    assert runs[0].counts() == {"cases": 6, "passed": 6, "failed": 0, "unblessed": 0, "errors": 0}
    assert runs[0].to_json() == runs[1].to_json() == runs[2].to_json()
    validate(runs[0].to_json(), "golden-run")
    assert junit_xml(runs[0]) == junit_xml(runs[2])


def test_one_changed_weight_fails_the_right_case_with_a_readable_difference(cls: dict[str, Any]) -> None:
    result = run_suite(cls["suite"], cls["changed"])
    assert not result.passed and not result.pin_ok
    failed = {c.case_id: c for c in result.cases if not c.ok}
    assert list(failed) == ["fox"]                     # the only input containing the changed token's row
    kinds = [d.kind for d in failed["fox"].differences]
    assert kinds in (["label", "scores"], ["scores"])
    scores = failed["fox"].differences[-1]
    assert scores.detail["differing"] >= 1 and "scores moved" in scores.message
    text = result.text()
    assert "FAIL  fox" in text and "pinned to " + cls["suite"].artifact_digest in text
    assert "golden run FAILED: 5 passed, 1 failed" in text
    report = result.to_json()
    validate(report, "golden-run")
    assert report["verdict"] == "failed" and report["pin"]["ok"] is False


def test_generate_failure_names_the_first_divergent_token(gen: dict[str, Any]) -> None:
    assert run_suite(gen["suite"], gen["model"]).passed
    result = run_suite(gen["suite"], gen["changed"])
    failed = [c for c in result.cases if not c.ok]
    assert [c.case_id for c in failed] == ["p4"]
    tokens = failed[0].differences[0]
    position = tokens.detail["position"]
    assert tokens.kind == "tokens" and f"generated tokens diverge at output position {position}" in failed[0].explain()
    expected_ids = failed[0].expected.output_ids
    assert tokens.detail["context_ids"] == list(expected_ids[max(0, position - 8):position])
    assert tokens.detail["expected_text"] == gen["model"].tokenizer.decode(tokens.detail["expected_ids"])


def test_junit_xml_is_deterministic_and_junitparser_counts_match(cls: dict[str, Any], tmp_path: Path) -> None:
    result = run_suite(cls["suite"], cls["changed"])
    data = junit_xml(result)
    assert data == junit_xml(run_suite(cls["suite"], cls["changed"], batch_size=1))
    for word in (b"timestamp", b"hostname", b" time="):
        assert word not in data
    (tmp_path / "out.xml").write_bytes(data)
    xml = junitparser.JUnitXml.fromfile(str(tmp_path / "out.xml"))
    [suite] = list(xml)
    counts = result.counts()
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (counts["cases"] + 1, 2, 0, 0)
    props = {p.name: p.value for p in suite.properties()}
    assert props["artifact_digest"] == cls["changed"].digest and props["backend"] == "numpy"
    assert props["suite_pin"] == cls["suite"].artifact_digest and props["runtime"] == "kolm-int/1"
    cases = {c.name: c for c in suite}
    assert len(cases) == counts["cases"] + 1
    assert not cases[PIN_CASE].is_passed and not cases["fox"].is_passed and cases["loan"].is_passed
    [failure] = cases["fox"].result
    assert isinstance(failure, junitparser.Failure) and "scores moved" in failure.message


def test_runtime_refusal_is_an_error_case(cls: dict[str, Any]) -> None:
    too_long = Case(id="long", ids=tuple([2] + [10] * 200 + [3]))     # the tiny BERT has 64 positions
    suite = cls["suite"].with_cases((*cls["suite"].cases, too_long))
    result = run_suite(suite, cls["model"], batch_size=16)
    [bad] = [c for c in result.cases if not c.ok]
    assert bad.case_id == "long" and bad.status == "error" and bad.differences[0].kind == "runtime-error"
    assert result.counts()["errors"] == 1 and result.counts()["passed"] == 6
    assert b'<error type="runtime-error"' in junit_xml(result)


def test_bless_records_new_cases_and_refuses_silent_overwrites(cls: dict[str, Any]) -> None:
    m, suite = cls["model"], cls["suite"]
    grown = suite.with_cases((*suite.cases, Case(id="new-one", text="red car")))
    plan = plan_bless(grown, m, accept=(), accept_all=False)
    assert plan.writable and [c.case_id for c in plan.changes if c.kind == "new"] == ["new-one"]
    assert plan.suite.case("new-one").expected is not None
    # the same suite, blessed with the changed artifact: pinned elsewhere -> refused without --force
    with pytest.raises(InputError, match="pinned to another artifact") as exc:
        plan_bless(grown, cls["changed"], accept=(), accept_all=False)
    assert exc.value.exit_code == 2
    forced = plan_bless(suite, cls["changed"], accept=(), accept_all=False, force=True)
    assert not forced.writable and [c.case_id for c in forced.refused] == ["fox"]
    assert forced.suite.case("fox").expected == suite.case("fox").expected          # nothing changes silently
    assert "REFUSED" in forced.text(written=False) and "--accept fox" in forced.text(written=False)
    accepted = plan_bless(suite, cls["changed"], accept=("fox",), accept_all=False, force=True)
    assert accepted.writable and accepted.repinned_from == suite.artifact_digest
    assert accepted.suite.artifact_digest == cls["changed"].digest
    assert run_suite(accepted.suite, cls["changed"]).passed
    assert plan_bless(suite, cls["changed"], accept=(), accept_all=True, force=True).suite == accepted.suite
    with pytest.raises(InputError, match="not in the suite"):
        plan_bless(suite, m, accept=("nope",), accept_all=False)
    report = update_report(command="bless", suite=forced.suite, model=cls["changed"], signature="not checked",
                           written=False, changes=forced.changes, repinned_from=forced.repinned_from)
    assert report["counts"]["refused"] == 1 and report["written"] is False


def test_per_digest_suite_follows_an_artifact_name(cls: dict[str, Any]) -> None:
    m, changed = cls["model"], cls["changed"]
    suite = blessed_suite(m, input_cases(CLASSIFY_TEXTS), pinned=False)
    assert run_suite(suite, m).passed
    other = run_suite(suite, changed)                   # same name, new digest: nothing blessed for it yet
    assert other.pin_ok and {c.status for c in other.cases} == {"unblessed"}
    assert "no expectation for artifact " + changed.digest in other.cases[0].differences[0].message
    plan = plan_bless(suite, changed, accept=(), accept_all=False)
    assert plan.writable and {c.kind for c in plan.changes} == {"new"}
    both = plan.suite
    assert run_suite(both, m).passed and run_suite(both, changed).passed
    assert len(both.cases[0].expected_by_digest or {}) == 2
