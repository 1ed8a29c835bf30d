"""``kolm-audit demo``: the whole flow on the shipped example, as ``make demo`` runs it.

CI runs the demo on a small version of the shipped loan-triage recipe (the same generator, base, trainer and
gate; fewer rows: ``--recipe``) and the first shipped inputs (``--inputs``), so the test stays cheap;
``make demo`` compiles the full example and runs all 200 inputs (docs/benchmarks.md has its time).
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
            "inputs.jsonl", "outputs.jsonl", "receipts.db", "report.json", "binder.pdf", "binder.pdf.sig", "evidence"}


def _demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from kolm_audit.cli import main; main()", "demo", "--workdir",
                           str(workdir), *extra], capture_output=True, text=True, timeout=1500, check=False)


N_INPUTS = 16


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    recipe = small_recipe(tmp_path_factory.mktemp("recipe"), train=40, eval_=10, probes=4)
    inputs = tmp_path_factory.mktemp("inputs") / "inputs.jsonl"
    shipped = (example_dir("loan-triage") / "inputs.jsonl").read_text().splitlines(keepends=True)
    inputs.write_text("".join(shipped[:N_INPUTS]))
    workdir = tmp_path_factory.mktemp("demo")
    proc = _demo(workdir, "--recipe", str(recipe), "--inputs", str(inputs))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return workdir, proc.stdout


@pytest.fixture(scope="module")
def demo_dir(demo_run: tuple[Path, str]) -> Path:
    return demo_run[0]


def test_the_shipped_inputs_are_about_200_requests() -> None:
    rows = [json.loads(line) for line in (example_dir("loan-triage") / "inputs.jsonl").read_text().splitlines()]
    assert len(rows) == 200 and len({r["id"] for r in rows}) == 200 and all(r["text"].strip() for r in rows)


def test_demo_leaves_its_evidence(demo_dir: Path) -> None:
    assert {p.name for p in demo_dir.iterdir()} >= EVIDENCE
    assert {p.name for p in (demo_dir / "keys").iterdir()} == {
        "artifact.pem", "artifact.pub", "receipt.pem", "receipt.pub", "checkpoint.pem", "checkpoint.pub",
        "binder.pem", "binder.pub"}


def test_demo_records_real_classification_decisions(demo_dir: Path) -> None:
    art = read_artifact(demo_dir / "model.kolm")
    m = art.manifest
    assert m["quantization"]["scheme"] == "int8" and m["task"]["kind"] == "classify"
    assert m["kscore"]["gate"]["passed"] is True and m["provenance"]["build"]["trainer"] == "exact"
    assert read_provenance(demo_dir / "model.kolm.provenance.json").subject_digest == art.digest
    shipped = (example_dir("loan-triage") / "inputs.jsonl").read_text().splitlines()[:N_INPUTS]
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


def test_demo_ends_with_a_verified_binder_holding_the_evidence(demo_run: tuple[Path, str]) -> None:
    demo_dir, stdout = demo_run
    assert f"The audit binder: {demo_dir / 'binder.pdf'}" in stdout
    # the listing names the evidence, not SQLite's transient side files
    listing = stdout[stdout.index("Evidence in"):]
    assert "receipts.db-wal" not in listing and "receipts.db-shm" not in listing and "binder.pdf" in listing
    report = json.loads((demo_dir / "report.json").read_text())
    assert json.loads((demo_dir / "evidence" / "report.json").read_text()) == report
    src = open_log_source(demo_dir / "evidence" / "log")
    try:
        assert src.size() == N_INPUTS
    finally:
        src.close()
    text = subprocess.run(["pdftotext", str(demo_dir / "binder.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert read_artifact(demo_dir / "model.kolm").digest.removeprefix("sha256:")[:16] in text.replace("\n", "")


def test_demo_refuses_a_used_workdir_without_force(demo_dir: Path) -> None:
    proc = _demo(demo_dir)
    assert proc.returncode == 2
    assert "not empty" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_generator_demo_records_replies_and_replays_them(tmp_path: Path) -> None:
    # the bank-replies flow on a tiny generator recipe (the shipped one takes minutes: test_bank_replies.py)
    from _gen_fixtures import MESSAGES, gen_recipe, gen_world, stage

    world = gen_world(tmp_path / "gen")
    recipe = gen_recipe(world, [stage("sft", "sft", epochs=3)], name="sft.toml")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"id": f"m{i}", "text": t}) + "\n" for i, (_, t) in enumerate(MESSAGES[:3])))
    workdir = tmp_path / "demo"
    proc = _demo(workdir, "--example", "bank-replies", "--recipe", str(recipe), "--inputs", str(inputs))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--max-new-tokens 48" in proc.stdout and "golden run" not in proc.stdout
    outputs = [json.loads(line) for line in (workdir / "outputs.jsonl").read_text().splitlines()]
    assert len(outputs) == 3 and all(o["task"] == "generate" for o in outputs)
    counts = json.loads((workdir / "report.json").read_text())["results"]["counts"]
    assert counts["matched"] == counts["receipts"] == 3
    assert (workdir / "binder.pdf").is_file() and (workdir / "evidence" / "log").is_dir()

