"""The shipped recipe builds, on this machine too, the very artifact its shipped golden suite is pinned to, and the
suite passes on it through the pytest plugin (``make demo`` runs the same suite with ``golden run``).

This is the compile promise checked where CI runs: the exact trainer's artifact digest does not depend on the
machine, its threads or its CPU features (docs/reproducibility.md), so a CI machine must build
``sha256:d995db18…`` — the digest recorded in ``examples/loan-triage/loan-triage.golden.json`` when the suite was
made from the demo's artifact — and every one of the suite's 200 decisions must come out byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _cli_fixtures import cli
from _golden_pytest import run_pytest

from kolm_audit.artifact import build_manifest, read_artifact, write_artifact
from kolm_audit.cli import main
from kolm_audit.examples import example_dir
from kolm_audit.golden.suite import read_suite

pytestmark = pytest.mark.slow      # the full shipped recipe: 1,500 training rows, V over 300 eval cases (minutes)

SUITE = example_dir("loan-triage") / "loan-triage.golden.json"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loan-triage")
    for args in (["keys", "generate", "--out", str(root / "keys"), "--type", "ecdsa-p256", "--name", "artifact"],
                 ["compile", str(example_dir("loan-triage") / "recipe.toml"), "--out", str(root / "model.kolm"),
                  "--key", str(root / "keys" / "artifact.pem"), "--json"]):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert int(done.value.code or 0) == 0, args
    return root / "model.kolm"


def test_the_shipped_recipe_builds_the_artifact_the_shipped_suite_is_pinned_to(compiled: Path) -> None:
    suite = read_suite(SUITE)
    assert len(suite.cases) == 200
    assert read_artifact(compiled).digest == suite.artifact_digest, (
        "the shipped recipe built another artifact than the one its golden suite pins: either the build is not "
        "reproducible here (a finding: compare with `kolm-audit diff`) or the recipe changed on purpose (then "
        "review `kolm-audit golden run` on the new artifact and re-bless)")


def test_the_shipped_suite_passes_through_the_plugin(compiled: Path, tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "--kolm-golden", SUITE, "--kolm-artifact", compiled, "-q", SUITE, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "201 passed" in proc.stdout          # 200 cases + the pin check


def test_one_unit_of_one_bias_fails_every_case_with_its_scores(compiled: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    original = read_artifact(compiled)
    m = original.manifest
    tensors = {n: np.asarray(a) for n, a in original.tensors.items()}
    tensors["classifier.bias"] = tensors["classifier.bias"] + np.int32(1)        # every score moves by one unit
    manifest = build_manifest(name=m["name"], version=m["version"], task=m["task"], architecture=m["architecture"],
                              quantization=m["quantization"], tensors=tensors, provenance=m["provenance"],
                              created=m["created"], kscore=m["kscore"])
    moved = write_artifact(tmp_path / "moved.kolm", manifest=manifest, tensors=tensors).path
    code, out, err = cli(capsys, "golden", "run", SUITE, "--artifact", moved, "--json")
    report = json.loads(out)
    assert code == 1, err
    assert not report["pin"]["ok"] and len(report["cases"]) == 200
    assert all(c["status"] == "failed" for c in report["cases"])
    assert {d["kind"] for d in report["cases"][0]["differences"]} >= {"scores"}
