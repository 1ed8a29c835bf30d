"""``kolm-audit demo``: the whole flow on the shipped example, as ``make demo`` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kolm_audit.artifact import read_artifact
from kolm_audit.log import open_log_source

EVIDENCE = {"keys", "trust.toml", "model.kolm", "model.kolm.sig", "inputs.jsonl", "outputs.jsonl", "receipts.db",
            "report.json"}


def _demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from kolm_audit.cli import main; main()", "demo", "--workdir",
                           str(workdir), *extra], capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    proc = _demo(workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return workdir


def test_demo_leaves_its_evidence(demo_dir: Path) -> None:
    assert {p.name for p in demo_dir.iterdir()} >= EVIDENCE
    assert {p.name for p in (demo_dir / "keys").iterdir()} == {
        "artifact.pem", "artifact.pub", "receipt.pem", "receipt.pub", "checkpoint.pem", "checkpoint.pub"}


def test_demo_evidence_is_consistent(demo_dir: Path) -> None:
    art = read_artifact(demo_dir / "model.kolm")
    assert art.manifest["quantization"]["scheme"] == "int8"
    inputs = (demo_dir / "inputs.jsonl").read_text().splitlines()
    outputs = (demo_dir / "outputs.jsonl").read_text().splitlines()
    assert len(outputs) == len(inputs) > 0
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
