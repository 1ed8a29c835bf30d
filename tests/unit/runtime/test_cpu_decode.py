"""The in-kernel int8 products (``cpu_gemv``) and the one-kernel decoder layer of a decoding step (``cpu_decode``)
give the reference's integers.

The products against exact integer matrix products and ``torch._int_mm`` for every remainder of ``K`` modulo 32
(the ``vpdpbusd`` blocks and the 16-bit tail), weights at -128 and 127, activations at ±127 and zero rows, on the
VNNI path and on the portable one. The decoder layer of :class:`FusedCpuOps` against the numpy reference through
the runtime: cached steps and generation at 1–4 rows (the one-kernel path, counted) and 5 (the composed path), a
residual stream at the int32 limits (saturating sums), the last layer (no next norm), a cache grown from an older
view (copied, the newer one untouched), and a scheme whose weights are not one int8 digit (declined).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _fused_fixtures import I32_MAX, I32_MIN, seeds
from _llama_fixtures import tiny_config, tiny_model, write_checkpoint

from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.compile.llama import quantize_llama
from kolm_audit.runtime import cpu_decode as cd
from kolm_audit.runtime import cpu_gemv as cg
from kolm_audit.runtime.cpu_fused import FusedCpuOps
from kolm_audit.runtime.decode import KVCache
from kolm_audit.runtime.models.llama import LlamaRuntime

VOCAB, LIMIT = 384, 64


def _gemv_case(rng: np.random.Generator, rows: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = rng.integers(-127, 128, (rows, k)).astype(np.int8)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    q[0], w[0] = 127, -128
    if n > 1:
        w[1] = 127
    if rows > 1:
        q[1] = -127
    if rows > 2:
        q[2] = 0
    return q, w, q.astype(np.int64) @ w.astype(np.int64).T


@settings(max_examples=60, deadline=None)
@given(seed=seeds, rows=st.integers(1, 4), n=st.integers(1, 40),
       k=st.sampled_from([1, 8, 31, 32, 33, 95, 96, 128, 129, 160, 255, 704, 1408]))
def test_gemv_rows_equal_the_exact_product_and_int_mm(seed: int, rows: int, n: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    q, w, want = _gemv_case(rng, rows, n, k)
    acc = np.empty((rows, n), np.int32)
    cg.gemv_rows(q, w, cg.weight_sums(w), acc)
    assert np.array_equal(acc, want)
    if k >= 8:
        assert np.array_equal(torch._int_mm(torch.from_numpy(q), torch.from_numpy(w).t()).numpy(), want)


def test_gemv_rows_at_the_largest_sums() -> None:
    """``K = 2^14`` columns of 127·(-128): the int32 accumulator's largest magnitude this layer shape reaches."""
    k = 1 << 14
    q, w = np.full((2, k), 127, np.int8), np.full((3, k), -128, np.int8)
    q[1] = -127
    w[2] = 127
    acc = np.empty((2, 3), np.int32)
    cg.gemv_rows(q, w, cg.weight_sums(w), acc)
    assert np.array_equal(acc, q.astype(np.int64) @ w.astype(np.int64).T)


def test_gemv_rows_portable_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop of 16-bit products that runs on CPUs without VNNI (interpreted here: the compiled kernel on a VNNI
    machine takes the VNNI path), with the weight sums it is given (zeros)."""
    monkeypatch.setattr(cg, "VNNI", False)
    rng = np.random.default_rng(2)
    for k in (1, 33, 64):
        q, w, want = _gemv_case(rng, 3, 5, k)
        acc = np.empty((3, 5), np.int32)
        cg._gemv_rows.py_func(q, w, cg.weight_sums(w), np.empty(q.size, np.uint8), acc)
        assert np.array_equal(acc, want) and not cg.weight_sums(w).any()


# ---- the decoder layer of a decoding step, through the runtime ------------------------------------------------

@pytest.fixture(scope="module", params=["int8", "nvfp4"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[LlamaRuntime,
                                                                                            LlamaRuntime, str]:
    """(numpy reference, fused CPU) runtimes of one tiny grouped-query checkpoint, and its scheme."""
    model = tiny_model(tiny_config(max_pos=LIMIT, heads=4, kv_heads=2), seed=11)
    qm = quantize_llama(read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf"))),
                        scheme=request.param)
    kw = {"architecture": qm.architecture, "quantization": qm.quantization, "tensors": qm.tensors}
    return LlamaRuntime.from_tensors(**kw), LlamaRuntime.from_tensors(**kw, ops=FusedCpuOps()), request.param


@settings(max_examples=8, deadline=None)
@given(data=st.data(), batch=st.integers(1, 5))
def test_steps_and_generation_equal_the_reference(pair: tuple[LlamaRuntime, LlamaRuntime, str],
                                                  data: st.DataObject, batch: int) -> None:
    ref, fast, scheme = pair
    prompts = data.draw(st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20), min_size=batch,
                                 max_size=batch))
    cont = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=5))
    with mock.patch.object(cd, "decoder_layer", wraps=cd.decoder_layer) as kernel:
        got = fast.cached_logits(prompts[0], cont)
        gens = fast.generate(prompts, max_new_tokens=4, eos_ids=[])
    assert np.array_equal(got, ref.cached_logits(prompts[0], cont))
    assert [g.output_ids for g in gens] == [g.output_ids for g in ref.generate(prompts, max_new_tokens=4, eos_ids=[])]
    layers = fast.cfg.num_hidden_layers
    one_kernel = layers * (len(cont) + (3 if batch <= 4 else 0))        # cached steps + generation's 3 steps
    assert kernel.call_count == (one_kernel if scheme == "int8" else 0)


def _block_on(rt: LlamaRuntime, i: int, x: np.ndarray, cache: KVCache) -> tuple[np.ndarray, np.ndarray | None]:
    """Layer ``i`` of one decoding step (one new token per request) on residual rows ``x`` [B, 1, H]."""
    ops = rt.ops
    host = rt._prepare(np.zeros((x.shape[0], 1), np.int64), np.ones((x.shape[0], 1), bool), cache)
    dev = {name: ops.mask(a) if name == "mask" else ops.const(a) for name, a in host.items()}
    xt = ops.const(x).to(torch.int32) if isinstance(ops, FusedCpuOps) else ops.const(x)
    h = rt._norm(xt, f"model.layers.{i}.input_layernorm")
    xo, ho = rt._block(i, xt, h, cache, pos=dev["pos"], mask=dev["mask"], slot=dev["slot"], key_len=dev["key_len"])
    return ops.numpy(xo), None if ho is None else ops.numpy(ho)


@pytest.mark.parametrize("layer", [0, 1])
def test_a_layer_at_the_int32_limits_equals_the_reference(pair: tuple[LlamaRuntime, LlamaRuntime, str],
                                                          layer: int) -> None:
    """Residual rows at ±2^31 (the sums saturate) through the first layer (norm for the next one) and the last
    (no norm); the outputs, the next norm and the grown cache equal the reference's."""
    ref, fast, _ = pair
    rng = np.random.default_rng(layer)
    prompts = [rng.integers(0, VOCAB, 9).tolist(), rng.integers(0, VOCAB, 4).tolist()]
    caches = [rt._prefill(prompts, all_logits=False)[1] for rt in (ref, fast)]
    x = rng.integers(-(1 << 20), 1 << 20, (2, 1, ref.cfg.hidden_size))
    x[0, 0, ::2], x[1, 0, ::3] = I32_MAX, I32_MIN
    with mock.patch.object(cd, "decoder_layer", wraps=cd.decoder_layer) as kernel:
        got = _block_on(fast, layer, x, caches[1])
    want = _block_on(ref, layer, x, caches[0])
    assert np.array_equal(got[0], want[0])
    assert (got[1] is None) == (want[1] is None) == (layer == 1)
    if want[1] is not None:
        assert np.array_equal(got[1], want[1])
    for a, b in ((caches[0].keys[layer], caches[1].keys[layer]), (caches[0].values[layer], caches[1].values[layer])):
        assert np.array_equal(fast.ops.numpy(b), a)
    assert kernel.call_count == (1 if pair[2] == "int8" else 0)


def test_growing_an_older_cache_view_copies(pair: tuple[LlamaRuntime, LlamaRuntime, str]) -> None:
    """Two continuations from one cache: the second grows a view that is no longer the newest, so it copies; the
    first continuation's cache is untouched and each equals the reference."""
    ref, fast, _ = pair
    prompt = [5, 17, 99, 3]

    def two_branches(rt: LlamaRuntime) -> list[np.ndarray]:
        _, cache = rt._prefill([prompt], all_logits=False)
        one = np.ones((1, 1), bool)
        outs = [rt._step(np.array([[42]]), one, cache, all_logits=False)]   # the cache's keys: a grown view
        branches = []
        for tok in (7, 250):                    # the second branch grows the view the first one already grew
            branch = KVCache(list(cache.keys), list(cache.values), cache.key_ok.copy(), cache.pos.copy())
            outs.append(rt._step(np.array([[tok]]), one, branch, all_logits=False))
            branches.append(branch)
        return outs + [rt.ops.numpy(c.keys[i]) for c in (cache, *branches) for i in range(len(c.keys))]

    for got, want in zip(two_branches(fast), two_branches(ref), strict=True):
        assert np.array_equal(got, want)
