"""``bench/bench_runtime.py`` runs end to end at a tiny size on CPU, and its ~1B configuration is what the issue asks
(built on the meta device: nothing allocated)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import bench_runtime


def test_the_benchmark_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_runtime.main(["--layers", "1", "--hidden", "64", "--vocab", "128", "--batches", "1,2", "--new", "2",
                               "--prompt", "6", "--repeat", "1", "--skip-numpy", "--skip-minilm"]) == 0
    out = capsys.readouterr().out
    paths = re.search(r"llama gemm paths: (.*)", out)
    assert out.count("ratio") == 4 and paths
    assert "cpu_decode one kernel: 5 products" in paths[1]     # the decoding steps (1 layer: 4 products + LM head)
    assert "ours 0/2" in out                                  # alone vs batched: the same integers


def test_the_benchmark_reports_the_composed_products_on_one_thread(capsys: pytest.CaptureFixture[str]) -> None:
    """On one thread the prefill is composed (on several it runs as one split kernel): its products' paths are
    reported with their shapes."""
    threads = torch.get_num_threads()
    try:
        assert bench_runtime.main(["--layers", "1", "--hidden", "64", "--vocab", "128", "--batches", "2", "--new",
                                   "2", "--prompt", "6", "--repeat", "1", "--skip-numpy", "--skip-minilm",
                                   "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)                        # the bench sets torch's threads for the process
    paths = re.search(r"llama gemm paths: (.*)", capsys.readouterr().out)
    assert paths and re.search(r"(int_mm|cpu_gemv (rows|tiles)) K=", paths[1])


def test_the_1b_preset_is_the_issue_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_runtime.main(["--preset", "1b", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Llama 16 x 2048, heads 32/8 (head dim 64), inter 5632, vocab 32000: 852,559,872 parameters" in out
    assert "batches 1,8,32,128" in out
    assert "down_proj: bf16_fp32 K=5632 as 8 chunks of 704" in out
