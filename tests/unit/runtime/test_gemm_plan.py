"""The GEMM of each linear layer is chosen from the shapes and the device, recorded, and refused when its exactness
is not proven (``kolm_audit.runtime.gemm_plan``; capabilities are injected, so the CUDA choices are checked here
without a GPU), and every plan that runs on CPU gives the reference's integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.errors import InputError
from kolm_audit.runtime.gemm_plan import PATHS, GemmCaps, check_runtime, plan_gemm
from kolm_audit.runtime.reference import IntLinear, linear
from kolm_audit.runtime.torch_backend import TorchOps

H100 = GemmCaps(device="cuda", int_mm=True, bf16_fp32=True, fp32_exact=True, int_mm_multiple=8, int_mm_min_rows=16)
OLD_GPU = GemmCaps(device="cuda", int_mm=False, bf16_fp32=False, fp32_exact=False)
CPU = GemmCaps(device="cpu", int_mm=True, bf16_fp32=False, fp32_exact=True)


def test_the_1b_layers_on_a_cuda_device_take_bf16_in_equal_chunks_below_2_24() -> None:
    shapes = {"qkv": (2048, 3072), "o": (2048, 2048), "gate_up": (2048, 11264), "down": (5632, 2048),
              "lm_head": (2048, 32000)}
    plans = {name: plan_gemm(k=k, n=n, digits=1, dmax=127, caps=H100) for name, (k, n) in shapes.items()}
    assert {p.path for p in plans.values()} == {"bf16_fp32"}
    assert (plans["qkv"].chunk, plans["qkv"].chunks) == (1024, 2)
    assert (plans["down"].chunk, plans["down"].chunks) == (704, 8)           # 5632 = 8 · 704, 704·127² < 2^24
    assert all(p.bound < 1 << 24 and p.chunk * p.chunks == p.k for p in plans.values())
    assert "bf16_fp32 K=5632 as 8 chunks of 704" in plans["down"].description


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 1 << 16), n=st.integers(1, 5000), digits=st.integers(1, 3), dmax=st.integers(0, 128),
       caps=st.sampled_from([H100, OLD_GPU, CPU]), prefer=st.sampled_from(["auto", "int_mm,bf16_fp32,fp32,fp64"]),
       max_chunk=st.none() | st.integers(1, 4096))
def test_every_chosen_plan_is_proven_exact(k: int, n: int, digits: int, dmax: int, caps: GemmCaps, prefer: str,
                                           max_chunk: int | None) -> None:
    try:
        plan = plan_gemm(k=k, n=n, digits=digits, dmax=dmax, caps=caps, prefer=prefer, max_chunk=max_chunk)
    except InputError as exc:                              # only a chunk cap that breaks the bound is refused
        assert max_chunk is not None and "not proven exact" in exc.message
        return
    assert plan.path in PATHS and plan.chunk * plan.chunks == k
    assert plan.bound == plan.chunk * 127 * dmax < plan.limit
    assert max_chunk is None or plan.chunk <= max_chunk
    if plan.path == "int_mm" and caps.device == "cuda":
        assert k % 8 == 0 and (n * digits) % 8 == 0 and plan.pad_rows == 17
    if plan.path == "fp32":
        assert caps.fp32_exact


def test_a_required_path_that_cannot_run_or_is_not_exact_is_refused() -> None:
    with pytest.raises(InputError, match="_int_mm is not available"):
        plan_gemm(k=64, n=64, digits=1, dmax=127, caps=OLD_GPU, prefer="int_mm")
    with pytest.raises(InputError, match="multiples of 8"):
        plan_gemm(k=100, n=64, digits=1, dmax=127, caps=H100, prefer="int_mm")
    with pytest.raises(InputError, match="not trusted for K=4"):
        plan_gemm(k=4, n=64, digits=1, dmax=127, caps=CPU, prefer="int_mm")
    with pytest.raises(InputError, match="fp32 is not proven exact") as exc:
        plan_gemm(k=64, n=64, digits=1, dmax=127, caps=OLD_GPU, prefer="fp32")
    assert "allow_tf32" in exc.value.message
    with pytest.raises(InputError, match=r"chunk of 2048 columns gives partial sums up to 33,292,288 >= 2\^24"):
        plan_gemm(k=2048, n=8, digits=1, dmax=128, caps=H100, prefer="bf16_fp32", max_chunk=2048)
    with pytest.raises(InputError, match="unknown GEMM path"):
        plan_gemm(k=64, n=64, digits=1, dmax=127, caps=H100, prefer="tf32")
    with pytest.raises(InputError, match="no exact GEMM path") as exc:
        plan_gemm(k=100, n=64, digits=1, dmax=127, caps=H100, prefer="int_mm,int_mm")
    assert "multiples of 8" in str(exc.value.actual)


def test_a_preference_order_falls_back_per_layer_and_auto_follows_the_device() -> None:
    assert plan_gemm(k=100, n=64, digits=1, dmax=127, caps=H100, prefer="int_mm,bf16_fp32").path == "bf16_fp32"
    assert plan_gemm(k=128, n=64, digits=1, dmax=127, caps=H100, prefer="int_mm,bf16_fp32").path == "int_mm"
    assert plan_gemm(k=64, n=64, digits=1, dmax=127, caps=OLD_GPU).path == "fp64"
    assert plan_gemm(k=7, n=64, digits=1, dmax=127, caps=CPU).path == "fp32"       # _int_mm only from K = 8
    no_int_mm = GemmCaps(device="cpu", int_mm=False, bf16_fp32=False, fp32_exact=True)
    assert plan_gemm(k=384, n=64, digits=1, dmax=127, caps=no_int_mm).path == "fp32"  # _int_mm not exact here
    assert plan_gemm(k=8, n=64, digits=1, dmax=127, caps=CPU).path == "int_mm"


def test_an_fp32_plan_is_refused_once_tf32_or_a_lower_precision_is_enabled() -> None:
    plan = plan_gemm(k=64, n=8, digits=1, dmax=127, caps=CPU, prefer="fp32")
    check_runtime(plan, fp32_exact=True)
    with pytest.raises(InputError, match="no longer at full precision"):
        check_runtime(plan, fp32_exact=False)
    check_runtime(plan_gemm(k=64, n=8, digits=1, dmax=127, caps=H100), fp32_exact=False)   # bf16: unaffected


def _layer(rng: np.random.Generator, n: int, k: int, wmax: int) -> IntLinear:
    w = rng.integers(-wmax, wmax + 1, (n, k))
    return IntLinear(weight=w, wmax=int(np.abs(w).max()), mult=rng.integers(1 << 30, 1 << 31, n),
                     shift=rng.integers(30, 60, n), bias=rng.integers(-(1 << 20), 1 << 20, n))


@pytest.mark.parametrize(("gemm", "max_chunk", "wmax", "chunks"), [
    ("auto", None, 127, 1), ("fp32", 16, 127, 3), ("fp32", 7, 40000, 8), ("fp64", None, 40000, 1),
    ("int_mm", 24, 127, 2)])
def test_each_cpu_plan_gives_the_reference_integers_and_is_recorded(gemm: str, max_chunk: int | None, wmax: int,
                                                                    chunks: int) -> None:
    rng = np.random.default_rng(3)
    lin, x = _layer(rng, 12, 48, wmax), rng.integers(-(1 << 24), 1 << 24, (5, 48))
    ops = TorchOps(device="cpu", gemm=gemm, max_chunk=max_chunk)
    prepared = ops.prepare_linear(lin)
    assert np.array_equal(ops.numpy(ops.linear(ops.const(x), prepared)), linear(x, lin))
    assert list(ops.gemm_paths) == [prepared.plan.description] and sum(ops.gemm_paths.values()) == 1
    assert prepared.plan.chunks == chunks                                   # 48 = 8 chunks of 6 under a cap of 7


def test_the_backend_refuses_an_fp32_layer_after_the_matmul_precision_is_lowered() -> None:
    rng = np.random.default_rng(4)
    ops = TorchOps(device="cpu", gemm="fp32")
    lin = ops.prepare_linear(_layer(rng, 4, 16, 127))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with pytest.raises(InputError, match="no longer at full precision"):
            ops.linear(ops.const(rng.integers(-99, 99, (2, 16))), lin)
    finally:
        torch.set_float32_matmul_precision(before)
    with pytest.raises(InputError, match="bf16 GEMM with fp32 output"):
        TorchOps(device="cpu", gemm="bf16_fp32").prepare_linear(_layer(rng, 4, 16, 127))


def _saturating_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What oneDNN's int8 GEMM does without VNNI (measured): the activations shifted to u8 (``a + 128``), pairs of
    u8·s8 products summed in saturating int16 (``vpmaddubsw``), then the shift compensated in int32."""
    x, y = a.to(torch.int32) + 128, b.to(torch.int32)
    k = x.shape[1] - x.shape[1] % 2
    pairs = (x[:, 0:k:2, None] * y[None, 0:k:2, :] + x[:, 1:k:2, None] * y[None, 1:k:2, :]).clamp(-32768, 32767)
    rest = x[:, k:] @ y[k:, :] if x.shape[1] % 2 else 0
    return (pairs.sum(dim=1) + rest - 128 * y.sum(dim=0, keepdim=True)).to(torch.int32)


def test_an_inexact_int_mm_is_detected_and_the_layer_runs_on_an_exact_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without VNNI ``torch._int_mm`` returns wrong sums; the backend must notice and not use it."""
    monkeypatch.setattr(torch, "_int_mm", _saturating_int_mm)
    rng = np.random.default_rng(5)
    ops = TorchOps(device="cpu")
    assert not ops.gemm_caps().int_mm
    lin, x = _layer(rng, 16, 384, 127), rng.integers(-(1 << 24), 1 << 24, (4, 384))
    prepared = ops.prepare_linear(lin)
    assert prepared.plan.path == "fp32"
    assert np.array_equal(ops.numpy(ops.linear(ops.const(x), prepared)), linear(x, lin))
    with pytest.raises(InputError):
        TorchOps(device="cpu", gemm="int_mm").prepare_linear(lin)


def test_without_vnni_the_cpu_backend_stays_exact() -> None:
    """The real thing, in a fresh process: oneDNN limited to AVX2 (no VNNI) makes ``torch._int_mm`` inexact."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from kolm_audit.runtime.reference import IntLinear, linear\n"
        "from kolm_audit.runtime.ops import get_ops\n"
        "rng = np.random.default_rng(7)\n"
        "w = rng.integers(-127, 128, (32, 384))\n"
        "lin = IntLinear(weight=w, wmax=127, mult=rng.integers(1 << 30, 1 << 31, 32), shift=rng.integers(30, 60, 32),"
        " bias=rng.integers(-99, 99, 32))\n"
        "x = rng.integers(-(1 << 24), 1 << 24, (8, 384))\n"
        "for fused in (True, False):\n"
        "    ops = get_ops('cpu', fused=fused)\n"
        "    assert np.array_equal(ops.numpy(ops.linear(ops.const(x), ops.prepare_linear(lin))), linear(x, lin))\n"
        "print('exact')\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "exact", proc.stderr[-2000:]
