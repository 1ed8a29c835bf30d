"""CI runs our own golden suite (``golden/suites/demo-minilm.golden.json``) through the pytest plugin on the demo's
int8 all-MiniLM-L6-v2 (built here by ``golden/suites/demo_artifact.py``), and checks that one changed int8 weight
fails exactly the case whose input reads that weight, with the embedding distance."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from _cli_fixtures import cli
from _golden_pytest import REPO, run_pytest

from kolm_audit.golden.suite import read_suite

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _golden_fixtures import changed_embedding, model

SUITE = REPO / "golden" / "suites" / "demo-minilm.golden.json"

pytestmark = pytest.mark.slow     # quantizes the real MiniLM (~4 s) and runs it in a pytest subprocess


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("demo_artifact", REPO / "golden" / "suites" / "demo_artifact.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _builder().build(tmp_path_factory.mktemp("golden-demo") / "demo-minilm.kolm")


def test_our_demo_suite_passes_through_the_plugin(demo, tmp_path):
    suite = read_suite(SUITE)
    assert model(demo).digest == suite.artifact_digest, (
        "the demo artifact changed: review `kolm-audit golden run` on it, then re-bless (golden/suites/"
        "demo_artifact.py says how)")
    proc = run_pytest(tmp_path, "--kolm-golden", SUITE, "--kolm-artifact", demo, "--kolm-backend", "numpy",
                      "--junitxml", tmp_path / "pytest.xml", "-q", SUITE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(suite.cases) + 1} passed" in proc.stdout


def test_one_changed_weight_fails_exactly_the_case_that_reads_it(demo, tmp_path, capsys):
    suite = read_suite(SUITE)
    m = model(demo)
    target = suite.case("case-002")                       # "... renovate a family home in Lyon."
    assert target is not None and target.text is not None
    others = {t for c in suite.cases if c.id != target.id
              for t in (c.ids if c.ids is not None else m.tokenize([c.text])[0])}
    token = next(t for t in m.tokenize([target.text])[0] if t not in others)
    changed, tensor = changed_embedding(demo, tmp_path / "changed.kolm", token)
    code, out, err = cli(capsys, "golden", "run", SUITE, "--artifact", changed, "--backend", "numpy", "--json",
                         "--junit", tmp_path / "junit.xml")
    assert code == 1, err
    report = json.loads(out)
    failed = [c for c in report["cases"] if c["status"] != "passed"]
    assert [c["id"] for c in failed] == ["case-002"] and not report["pin"]["ok"]
    [diff] = failed[0]["differences"]
    assert diff["kind"] == "embedding" and diff["detail"]["l2_distance"] != "0.000000"
    assert tensor == "embeddings.word.weight"
