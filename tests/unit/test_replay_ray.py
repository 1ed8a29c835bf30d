"""Replay on Ray (optional extra ``kolm-audit[ray]``): a local Ray runs the same replay as the local executor and
gives byte-identical ``results``; only ``environment`` differs (it records where the workers ran).

Real components only: a tiny int8 BERT built with transformers, signed, receipts recorded by the Recorder, a real
local Ray (2 CPUs, no dashboard) started by a module fixture and shut down after it, and one CLI run in a fresh
process that starts and stops its own local Ray. Skipped, with the reason, where ``ray`` is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _replay_fixtures import bert_checkpoint, changed_weight, make_keys, quantize_signed, record

from kolm_audit.canonical import jcs
from kolm_audit.cli import main
from kolm_audit.errors import InputError
from kolm_audit.replay.engine import ReplayOptions, replay
from kolm_audit.schemas import validate

ray = pytest.importorskip("ray", reason="ray is not installed (optional extra: pip install 'kolm-audit[ray]')")

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[Any]:
    """A local Ray for this module's in-process tests; shut down after them."""
    if ray.is_initialized():   # a leftover from elsewhere in this worker process: start from a clean runtime
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("replay-ray")
    keys = make_keys(tmp / "keys")
    art = quantize_signed(bert_checkpoint(tmp / "hf"), tmp / "model.kolm", keys.vendor)
    changed, _, _ = changed_weight(art, tmp / "changed.kolm", keys.vendor)
    return {"tmp": tmp, "keys": keys, "art": art, "changed": changed, "log": record(art, tmp / "receipts.db", keys)}


def _run(world: dict[str, Any], artifact: Path, **options: Any) -> dict[str, Any]:
    report = replay(world["log"], artifact=artifact, policy=world["keys"].policy, options=ReplayOptions(**options))
    validate(report, "replay-report")
    return report


def test_ray_results_are_the_local_results_byte_for_byte(world: dict[str, Any], ray_runtime: Any) -> None:
    local = _run(world, world["art"], batch_size=4)
    on_ray = _run(world, world["art"], batch_size=3, workers=2, ray="local")
    assert local["results"]["verdict"] == "matched" and local["results"]["counts"]["matched"] == 10
    assert jcs(on_ray["results"]) == jcs(local["results"])
    assert on_ray["results_digest"] == local["results_digest"]
    env = on_ray["environment"]
    assert env["ray"] == {"requested": "local", "address": ray_runtime.get_runtime_context().gcs_address,
                          "nodes": 1, "cpus": 2, "actors": 2, "started_here": False,
                          "version": ray_runtime.__version__}
    assert "ray" not in local["environment"]
    assert ray_runtime.is_initialized()   # a runtime the replay did not start is left running


def test_ray_reports_the_same_mismatches(world: dict[str, Any], ray_runtime: Any) -> None:
    """A changed weight, replayed anyway: the same findings, excerpts and per-receipt digests from Ray actors on the
    numpy reference as from local workers on the default backend."""
    local = _run(world, world["changed"], replay_mismatched=True, workers=2)
    on_ray = _run(world, world["changed"], replay_mismatched=True, workers=2, batch_size=1, ray="auto",
                  backend="numpy")
    reasons = {f["reason"] for f in local["results"]["findings"]}
    assert local["results"]["verdict"] == "mismatch" and "artifact-mismatch" in reasons
    assert jcs(on_ray["results"]) == jcs(local["results"])
    assert on_ray["environment"]["ray"]["requested"] == "auto" and on_ray["environment"]["ray"]["actors"] == 2


def test_cli_ray_local_matches_the_local_report(world: dict[str, Any], tmp_path: Path) -> None:
    """``kolm-audit replay --ray local`` in a fresh process: starts its own local Ray, stops it, same results."""
    exe = shutil.which("kolm-audit", path=str(Path(sys.executable).parent))
    assert exe is not None
    args = ["replay", str(world["log"]), "--artifact", str(world["art"]), "--trust", str(world["keys"].trust)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([exe, *args, "--ray", "local", "--workers", "2", "--batch-size", "2", "--json"],
                          capture_output=True, text=True, env=env, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    on_ray = json.loads(proc.stdout)
    with pytest.raises(SystemExit) as exc:
        main([*args, "--report", str(tmp_path / "local.json")])
    assert exc.value.code == 0
    local = json.loads((tmp_path / "local.json").read_text())
    assert jcs(on_ray["results"]) == jcs(local["results"])
    ray_env = on_ray["environment"]["ray"]
    assert ray_env["started_here"] and ray_env["cpus"] == 2 and ray_env["nodes"] == 1 and ray_env["actors"] == 2


def test_empty_ray_address_is_bad_input() -> None:
    with pytest.raises(InputError):
        ReplayOptions(ray=" ")


def test_without_ray_installed_ray_is_bad_input(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)   # what `import ray` sees where the extra is not installed
    with pytest.raises(InputError, match=r"kolm-audit\[ray\]"):
        _run(world, world["art"], ray="local")
