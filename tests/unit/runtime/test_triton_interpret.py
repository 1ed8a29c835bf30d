"""The Triton kernels of the CUDA backend compute the reference's integers: checked on CPU tensors in Triton's
interpreter (``TRITON_INTERPRET=1``, set before Triton is imported, hence a subprocess). Skipped without Triton.
The same kernels run compiled on a GPU through ``bench/gpu_check.py`` (every conformance vector)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_triton_interpret_check.py")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("seed", [0])
def test_triton_kernels_match_the_reference_in_the_interpreter(seed: int) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(seed)], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert results, proc.stderr[-2000:]
    failed = [r["check"] for r in results if not r["ok"]]
    assert not failed and proc.returncode == 0, (failed, proc.stderr[-2000:])
    assert len(results) == 11
