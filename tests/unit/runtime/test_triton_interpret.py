"""The Triton kernels of the CUDA backend compute the reference's integers: checked on CPU tensors in Triton's
interpreter (``TRITON_INTERPRET=1``, set before Triton is imported, hence a subprocess), with the launches per layer
counted; and every kernel compiles ahead of time for an H100/H200 (sm_90) with Triton's own ``ptxas``. Skipped
without Triton. The same kernels run on a GPU through ``bench/gpu_check.py`` (every conformance vector)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _run(script: str, *args: str, interpret: bool) -> tuple[list[dict[str, object]], subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "TRITON_DEFAULT_FP_FUSION": "0"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], proc


def test_triton_kernels_match_the_reference_in_the_interpreter() -> None:
    lines, proc = _run("_triton_interpret_check.py", "0", interpret=True)
    results = [r for r in lines if "check" in r]
    assert results, proc.stderr[-2000:]
    failed = [r["check"] for r in results if not r["ok"]]
    assert not failed and proc.returncode == 0, (failed, proc.stderr[-2000:])
    assert len(results) == 28
    counts = {r["launches"]: r["counts"] for r in lines if "launches" in r}
    assert sum(counts["llama decode"].values()) == 11 and sum(counts["bert"].values()) == 11
    print("\n".join(f"launches per layer, {name}: {r['per_layer']}" for r in lines if "launches" in r
                    for name in [r["launches"]]))


def test_triton_kernels_compile_for_sm90_without_a_gpu() -> None:
    results, proc = _run("_triton_compile_check.py", interpret=False)
    assert results, proc.stderr[-2000:]
    failed = [(r["check"], r.get("error")) for r in results if not r["ok"]]
    assert not failed and proc.returncode == 0, failed
    assert len(results) >= 20
