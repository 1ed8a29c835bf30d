"""``kolm-audit demo``: the whole flow on the shipped example, as ``make demo`` runs it.

CI runs the demo on a small version of the shipped loan-triage recipe (the same generator, base, trainer and
gate; fewer rows: ``--recipe``) and the shipped inputs, so the test stays cheap; ``make demo`` compiles the full
example (docs/benchmarks.md has its time).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _compile_fixtures import small_recipe

from kolm_audit.artifact import read_artifact
from kolm_audit.compile.provenance import read_provenance
from kolm_audit.examples import example_dir
from kolm_audit.log import open_log_source

EVIDENCE = {"keys", "trust.toml", "model.kolm", "model.kolm.sig", "model.kolm.provenance.json", "compile-report.json",
            "inputs.jsonl", "outputs.jsonl", "receipts.db", "report.json"}


def _demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from kolm_audit.cli import main; main()", "demo", "--workdir",
                           str(workdir), *extra], capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = small_recipe(tmp_path_factory.mktemp("recipe"), train=40, eval_=10, probes=4)
    workdir = tmp_path_factory.mktemp("demo")
    proc = _demo(workdir, "--recipe", str(recipe))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return workdir


def test_demo_leaves_its_evidence(demo_dir: Path) -> None:
    assert {p.name for p in demo_dir.iterdir()} >= EVIDENCE
    assert {p.name for p in (demo_dir / "keys").iterdir()} == {
        "artifact.pem", "artifact.pub", "receipt.pem", "receipt.pub", "checkpoint.pem", "checkpoint.pub"}


def test_demo_records_real_classification_decisions(demo_dir: Path) -> None:
    art = read_artifact(demo_dir / "model.kolm")
    m = art.manifest
    assert m["quantization"]["scheme"] == "int8" and m["task"]["kind"] == "classify"
    assert m["kscore"]["gate"]["passed"] is True and m["provenance"]["build"]["trainer"] == "exact"
    assert read_provenance(demo_dir / "model.kolm.provenance.json").subject_digest == art.digest
    shipped = (example_dir("loan-triage") / "inputs.jsonl").read_text().splitlines()
    inputs = (demo_dir / "inputs.jsonl").read_text().splitlines()
    outputs = [json.loads(line) for line in (demo_dir / "outputs.jsonl").read_text().splitlines()]
    assert inputs == shipped and len(outputs) == len(inputs) > 0
    assert all(o["task"] == "classify" and o["label"] in m["task"]["labels"] for o in outputs)
    assert len({o["label"] for o in outputs}) >= 3                      # it decides, not a constant
    src = open_log_source(demo_dir / "receipts.db")
    try:
        assert src.size() == len(inputs)
    finally:
        src.close()
    report = json.loads((demo_dir / "report.json").read_text())
    counts = report["results"]["counts"]
    assert counts["matched"] == counts["receipts"] == len(inputs)
    assert counts["mismatched"] == 0
    assert report["results"]["artifact"]["digest"] == art.digest


def test_demo_refuses_a_used_workdir_without_force(demo_dir: Path) -> None:
    proc = _demo(demo_dir)
    assert proc.returncode == 2
    assert "not empty" in proc.stderr
    assert "Traceback" not in proc.stderr
