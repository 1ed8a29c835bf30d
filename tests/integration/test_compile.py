"""``kolm-audit compile`` / ``rebuild`` on a small version of the shipped loan-triage example (exact trainer).

One artifact is compiled in a fresh process (module fixture) and checked against: a second compile in another
process under different thread counts and CPU/BLAS switches (byte-identical file), features from the numpy
reference instead of torch (same digest), ``rebuild`` (identical), a recipe variant (gate fails: exit 1, nothing
written; rebuilding against it: mismatch with the tensor diff), and its provenance statement.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from _cli_fixtures import cli
from _compile_fixtures import small_recipe, to_toml

from kolm_audit.artifact import read_artifact
from kolm_audit.canonical import digest_of
from kolm_audit.compile.build import build
from kolm_audit.compile.provenance import provenance_path, read_provenance, verify_provenance
from kolm_audit.errors import SignatureError, TrustError
from kolm_audit.keys import generate_key, load_public_key, write_keypair
from kolm_audit.trust import TrustPolicy


def _compile_in_fresh_process(recipe: Path, out: Path, key: Path, *extra: str,
                              env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", "from kolm_audit.cli import main; main()", "compile", str(recipe),
                           "--out", str(out), "--key", str(key), "--json", *extra],
                          capture_output=True, text=True, timeout=900, check=False, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("compile")
    recipe = small_recipe(root / "recipe", train=32, eval_=10, probes=4)
    priv, pub = write_keypair(generate_key(key_type="ed25519"), root, name="artifact")
    report = _compile_in_fresh_process(recipe, root / "a.kolm", priv)
    return {"root": root, "recipe": recipe, "key": priv, "pub": pub, "art": root / "a.kolm", "report": report}


def test_two_compiles_in_separate_processes_and_environments_are_byte_identical(world) -> None:
    other = world["root"] / "b.kolm"
    env = {"ATEN_CPU_CAPABILITY": "default", "OPENBLAS_CORETYPE": "Haswell", "MKL_CBWR": "COMPATIBLE",
           "OMP_NUM_THREADS": "1", "KOLM_THREADS": "1"}
    report = _compile_in_fresh_process(world["recipe"], other, world["key"], "--threads", "1", env=env)
    assert report["artifact_digest"] == world["report"]["artifact_digest"]
    assert other.read_bytes() == world["art"].read_bytes()


class _Bars:
    """Records every progress bar compile opens: (description, total, units counted)."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    def __call__(self, desc: str, *, total: int, unit: str) -> _Bars:
        self.seen.append([desc, total, 0])
        return self

    def update(self, n: int = 1) -> None:
        self.seen[-1][2] += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


def test_features_from_the_numpy_reference_give_the_same_artifact(world) -> None:
    bars = _Bars()
    b = build(world["recipe"], backend="numpy", bars=bars)
    assert digest_of(b.manifest) == read_artifact(world["art"]).digest
    # progress: feature extraction, training and V each report every unit of work they do
    assert [d for d, _, _ in bars.seen] == ["features: train", "features: eval", "features: probes", "training",
                                            "verify (V)"]
    assert all(total == done > 0 for _, total, done in bars.seen)
    assert bars.seen[3][1] == b.manifest["provenance"]["build"]["steps"]


def test_the_manifest_records_inputs_trainer_and_kscore(world) -> None:
    m = read_artifact(world["art"]).manifest
    recipe = tomllib.loads(world["recipe"].read_text())
    prov = m["provenance"]
    assert prov["recipe"] == world["report"]["recipe"]["digest"]
    assert prov["data"] == {k: v["sha256"] for k, v in recipe["data"].items()}
    assert prov["base_model"]["files"] == recipe["base"]["files"] and prov["seed"] == recipe["seed"]
    assert prov["toolchain"] == {"kolm_audit": __import__("kolm_audit").__version__}
    assert prov["build"]["trainer"] == "exact" and prov["build"]["trainer_spec"] == "kolm.train-exact/1"
    assert prov["build"]["hyperparameters"]["learning_rate"] == "2"
    assert m["task"] == {"kind": "classify", "pooling": "mean", "labels": recipe["task"]["labels"]}
    assert "pooler.weight" not in m["tensors"] and m["tensors"]["classifier.weight"]["shape"] == [5, 384]
    k = m["kscore"]
    assert k["components"]["V"] == 1000 and k["inputs"]["V"] == {"identical": 10, "total": 10,
                                                                "backends": ["numpy", "cpu"], "batch_sizes": [1, 16]}
    assert k["gate"]["passed"] is True and m["created"] == recipe["created"]


def test_inspect_shows_the_kscore_and_gate(capsys, world) -> None:
    code, out, _ = cli(capsys, "inspect", world["art"])
    k = read_artifact(world["art"]).manifest["kscore"]
    assert code == 0 and f"K-score {k['k']}" in out and "gate passed" in out and "A " in out


def test_rebuild_in_a_fresh_process_is_identical(capsys, world) -> None:
    code, out, _ = cli(capsys, "rebuild", world["art"], "--recipe", world["recipe"], "--json")
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "identical" and doc["diff"] is None
    assert doc["original_digest"] == doc["rebuilt_digest"] == read_artifact(world["art"]).digest


def test_a_failing_gate_writes_nothing_and_names_the_component(capsys, world) -> None:
    doc = tomllib.loads(world["recipe"].read_text())
    doc["trainer"]["epochs"] = 2
    doc["kscore"]["budgets"]["latency_us"] = 1000             # ~20 ms estimated: L ≈ 50
    doc["kscore"]["gate"] = {"min_k": 999, "min_components": {"L": 500, "S": 0}}
    variant = world["recipe"].with_name("variant.toml")
    variant.write_text(to_toml(doc))
    out = world["root"] / "gated.kolm"
    code, stdout, _ = cli(capsys, "compile", variant, "--out", out, "--key", world["key"],
                          "--report", world["root"] / "gated.json")
    assert code == 1
    assert not out.exists() and not provenance_path(out).exists()
    assert "gate: FAILED" in stdout and re.search(r"L \d+ < 500; K \d+ < 999", stdout)
    assert "nothing written, nothing signed" in stdout
    report = json.loads((world["root"] / "gated.json").read_text())
    assert report["written"] is None and report["kscore"]["gate"]["failed"] == ["L", "k"]
    # rebuilding the first artifact from this other recipe: a mismatch, with the tensor-level diff
    code, stdout, _ = cli(capsys, "rebuild", world["art"], "--recipe", variant, "--json")
    res = json.loads(stdout)
    assert code == 1 and res["status"] == "mismatch" and res["environment_differences"] == []
    details = res["diff"]["details"]
    changed = {t["name"]: t for t in details["tensors"]["changed"]}
    assert set(changed) >= {"classifier.weight"} and changed["classifier.weight"]["differing"] > 0
    assert "$.provenance.recipe" in {p["path"] for p in details["manifest"]}


def test_the_provenance_statement(world) -> None:
    path = provenance_path(world["art"])
    digest = read_artifact(world["art"]).digest
    policy = TrustPolicy.from_public_key(load_public_key(world["pub"]), roles=("artifact",))
    prov, signers = verify_provenance(path, policy=policy, artifact_digest=digest)
    assert prov.subject_digest == digest and len(signers) == 1
    st = prov.statement
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert st["predicate"]["buildDefinition"]["externalParameters"]["recipe"]["digest"] == \
        world["report"]["recipe"]["digest"]
    deps = {d["name"] for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert {"base/model.safetensors", "data/train", "data/eval", "data/probes"} <= deps
    machine = prov.byproducts["build-machine"]
    assert machine["cpu_model"] and "cpu_flags" in machine
    assert prov.byproducts["measured-latency"]["backends"]
    with pytest.raises(SignatureError, match="another artifact"):
        verify_provenance(path, policy=policy, artifact_digest="sha256:" + "0" * 64)
    with pytest.raises(TrustError):
        verify_provenance(path, policy=TrustPolicy.from_public_key(generate_key().public_key()))
    tampered = world["root"] / "t.provenance.json"
    raw = json.loads(path.read_text())
    raw["payload"] = raw["payload"][:-8] + ("AAAAAAAA" if raw["payload"][-8:] != "AAAAAAAA" else "BBBBBBBB")
    tampered.write_text(json.dumps(raw, separators=(",", ":"), sort_keys=True) + "\n")
    with pytest.raises(SignatureError):
        verify_provenance(tampered, policy=policy)
    assert read_provenance(path).statement == st
