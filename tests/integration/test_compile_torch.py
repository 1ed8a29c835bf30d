"""The float trainer (``trainer.kind = "torch"``): pinned, reproducible in the same environment, and honest about it.

A tiny full fine-tune (two optimizer steps on short sequences) is compiled once; ``rebuild`` in a fresh process
must give the identical artifact here, and an artifact that records another environment must be reported as
``environment-differs`` (a byte difference with the same recorded environment stays a ``mismatch``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _cli_fixtures import cli
from _compile_fixtures import small_recipe

from kolm_audit.artifact import build_manifest, read_artifact, sign_artifact, write_artifact
from kolm_audit.compile.build import compile_recipe
from kolm_audit.compile.rebuild import compare
from kolm_audit.compile.torch_trainer import pinned_environment
from kolm_audit.keys import generate_key

pytest.importorskip("torch")
pytest.importorskip("transformers")

TRAINER = {"kind": "torch", "epochs": 1, "batch_size": 4, "learning_rate": "0.0001", "max_tokens": 16,
           "max_steps": 2, "threads": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("torch")
    recipe = small_recipe(root / "recipe", train=16, eval_=6, probes=2, trainer=TRAINER)
    key = generate_key(key_type="ed25519")
    result = compile_recipe(recipe, out=root / "t.kolm", key=key)
    assert result.passed
    return {"root": root, "recipe": recipe, "key": key, "art": root / "t.kolm"}


def test_the_manifest_records_the_pinned_environment(world) -> None:
    m = read_artifact(world["art"]).manifest
    build = m["provenance"]["build"]
    assert build["trainer"] == "torch" and build["trainer_spec"] == "kolm.train-torch/1" and build["steps"] == 2
    env = build["environment"]
    pins = pinned_environment(threads=1)
    assert {k: env[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")} == {
        k: pins[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    assert env["threads"] == env["torch_threads"] == 1 and env["deterministic_algorithms"] is True
    assert {"torch", "transformers", "numpy", "python", "kolm_audit"} <= set(m["provenance"]["toolchain"])
    assert m["task"]["pooling"] == "mean" and m["kscore"]["components"]["V"] == 1000


def test_same_environment_rebuild_is_identical_and_another_environment_is_named(capsys, world) -> None:
    kept = world["root"] / "rebuilt.kolm"
    code, out, _ = cli(capsys, "rebuild", world["art"], "--recipe", world["recipe"], "--keep", kept, "--json")
    assert code == 0 and json.loads(out)["status"] == "identical"
    original, rebuilt = read_artifact(world["art"]), read_artifact(kept)

    def variant(name: str, environment: dict[str, Any]) -> Path:
        m = original.manifest
        tensors = {n: np.asarray(a) for n, a in original.tensors.items()}
        tensors["classifier.bias"] = tensors["classifier.bias"] + np.int32(1)     # float results moved
        prov = {**m["provenance"], "build": {**m["provenance"]["build"], "environment": environment}}
        manifest = build_manifest(name=m["name"], version=m["version"], task=m["task"],
                                  architecture=m["architecture"], quantization=m["quantization"], tensors=tensors,
                                  provenance=prov, created=m["created"], kscore=m["kscore"])
        path = world["root"] / name
        write_artifact(path, manifest=manifest, tensors=tensors)
        sign_artifact(path, world["key"])
        return path

    env = original.manifest["provenance"]["build"]["environment"]
    elsewhere = read_artifact(variant("elsewhere.kolm", {**env, "torch": "2.0.0+cpu", "threads": 4}))
    res = compare(elsewhere, rebuilt, recipe=world["recipe"])
    assert res.status == "environment-differs"
    assert {d["name"] for d in res.environment_differences} == {"torch", "threads"}
    assert "classifier.bias" in {t["name"] for t in res.diff["details"]["tensors"]["changed"]}
    same_env = read_artifact(variant("moved.kolm", env))
    assert compare(same_env, rebuilt, recipe=world["recipe"]).status == "mismatch"
