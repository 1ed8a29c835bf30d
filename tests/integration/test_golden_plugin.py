"""The pytest plugin in a real pytest subprocess: each case an item with a readable failure, ``-n 2`` (pytest-xdist),
``--kolm-golden-update`` (refused under xdist, writes only new cases, fails on cases no test checks any more), and
loading through the ``pytest11`` entry point and ``-p`` at once."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from _golden_pytest import REPO, run_pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _golden_fixtures import (
    CLASSIFY_TEXTS,
    bert_artifact,
    blessed_suite,
    changed_embedding,
    input_cases,
    model,
    token_id,
)

from kolm_audit.golden.suite import read_suite

FIXTURE_TESTS = '''
def test_fox(kolm_golden):
    out = kolm_golden("t-fox", text="the fox is quick")
    assert out.label.startswith("label_")

def test_river(kolm_golden):
    kolm_golden("t-river", text="the river city")
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("golden-plugin")
    art = bert_artifact(tmp)
    m = model(art)
    suite = blessed_suite(m, input_cases(CLASSIFY_TEXTS), name="tiny").write(tmp / "tiny.golden.json")
    changed, _ = changed_embedding(art, tmp / "changed.kolm", token_id(m, "fox"))
    return {"art": art, "suite": suite, "changed": changed}


def _args(world: dict[str, Any], suite: Path, artifact: Path | None = None) -> list[object]:
    return ["--kolm-golden", suite, "--kolm-artifact", artifact or world["art"], "--kolm-backend", "numpy"]


def test_pyproject_declares_the_entry_point() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"kolm_golden": "kolm_audit.golden.pytest_plugin"}
    assert any(dep.startswith("junitparser") for dep in project["optional-dependencies"]["dev"])


def test_each_case_is_an_item_and_xdist_runs_them(world, tmp_path):
    proc = run_pytest(tmp_path, *_args(world, world["suite"]), "-n", "2", "-q", world["suite"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout                  # five cases and the artifact pin


def test_a_changed_weight_fails_the_right_item_readably(world, tmp_path):
    proc = run_pytest(tmp_path, *_args(world, world["suite"], world["changed"]), "-n", "2", tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = sorted(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FAILED "))
    suite = os.path.relpath(world["suite"], tmp_path)                      # outside this run's rootdir
    assert failed == [f"{suite}::[artifact]", f"{suite}::fox"], proc.stdout
    assert "golden case fox: FAILED" in proc.stdout and "scores moved" in proc.stdout
    assert "Traceback" not in proc.stdout and "pinned to" in proc.stdout


def test_update_mode(world, tmp_path):
    suite = tmp_path / "s.golden.json"
    suite.write_bytes(world["suite"].read_bytes())
    (tmp_path / "test_cases.py").write_text(FIXTURE_TESTS)
    args = [*_args(world, suite), "-q", tmp_path]
    proc = run_pytest(tmp_path, *args, "--kolm-golden-update", "-n", "2")
    assert proc.returncode == 4 and "refuses to run under pytest-xdist" in proc.stderr, proc.stdout + proc.stderr
    proc = run_pytest(tmp_path, *args)                # not recorded yet: the fixture fails, naming the way out
    assert proc.returncode == 1 and "record it with pytest --kolm-golden-update" in proc.stdout
    before = read_suite(suite)
    proc = run_pytest(tmp_path, *args, "--kolm-golden-update")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recorded 2 case(s)" in proc.stdout
    after = read_suite(suite)
    assert after.cases[: len(before.cases)] == before.cases                    # existing cases untouched
    assert [(c.id, dict(c.origin or {})) for c in after.cases[len(before.cases):]] == [
        ("t-fox", {"kind": "pytest", "test": "test_cases.py::test_fox"}),
        ("t-river", {"kind": "pytest", "test": "test_cases.py::test_river"})]
    proc = run_pytest(tmp_path, *args, "-n", "2")     # recorded cases are checked by their tests (not as items)
    assert proc.returncode == 0 and "8 passed" in proc.stdout, proc.stdout + proc.stderr
    (tmp_path / "test_cases.py").write_text(FIXTURE_TESTS.split("def test_river")[0])
    written = suite.read_bytes()
    proc = run_pytest(tmp_path, *args, "--kolm-golden-update")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "kolm-golden FAILED: 1 case(s)" in proc.stdout and "t-river" in proc.stdout
    assert suite.read_bytes() == written
    proc = run_pytest(tmp_path, *_args(world, suite, world["changed"]), "--kolm-golden-update", tmp_path)
    assert proc.returncode == 4 and "pinned to" in proc.stderr


def test_fixture_input_must_match_the_suite_case(world, tmp_path):
    (tmp_path / "test_clash.py").write_text('def test_clash(kolm_golden):\n    kolm_golden("fox", text="other")\n')
    proc = run_pytest(tmp_path, *_args(world, world["suite"]), "--kolm-golden-update", "-q", tmp_path)
    assert proc.returncode == 1 and "the test asks {'text': 'other'}" in proc.stdout, proc.stdout + proc.stderr
    assert read_suite(world["suite"]).case("fox").text == CLASSIFY_TEXTS["fox"]


@pytest.mark.slow   # plugin autoloading: every installed pytest plugin is imported, twice
def test_loading_through_the_entry_point_and_dash_p_registers_once(world, tmp_path):
    site = tmp_path / "site"
    dist = site / "kolm_golden_probe-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kolm-golden-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nkolm_golden = kolm_audit.golden.pytest_plugin\n")
    work = tmp_path / "work"
    work.mkdir()
    proc = run_pytest(work, *_args(world, world["suite"]), "-q", world["suite"], plugin=[], autoload=True,
                      extra_path=site)                 # what a user types: pytest --kolm-golden SUITE ...
    assert proc.returncode == 0 and "6 passed" in proc.stdout, proc.stdout + proc.stderr
    proc = run_pytest(work, *_args(world, world["suite"]), "--co", "-q", world["suite"], autoload=True,
                      extra_path=site)                 # entry point and -p module at once: registered once
    assert proc.returncode == 0 and "6 tests collected" in proc.stdout, proc.stdout + proc.stderr
