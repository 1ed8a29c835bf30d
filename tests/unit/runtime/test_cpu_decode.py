"""The in-kernel int8 products (``cpu_gemv``) and the one-kernel decoder layers of a decoding step (``cpu_decode``)
give the reference's integers.

The products against exact integer matrix products and ``torch._int_mm`` for every remainder of ``K`` modulo 32
(the ``vpdpbusd`` blocks and the 16-bit tail), weights at -128 and 127, activations at ±127 and zero rows, on the
VNNI path and on the portable one; the packed tiles of more rows likewise at every remainder of their blocks. The
decoder layers of :class:`FusedCpuOps` against the numpy reference through the runtime: cached steps and generation
at 1–6 rows (the one-kernel path, counted; above 4 rows only with the packed tiles), 64 and 65 rows, a
residual stream at the int32 limits (saturating sums), a cache grown from an older view (copied, the newer one
untouched), a prefill split between 2 and 3 threads (one kernel call per part), and a scheme whose weights are
not one int8 digit (declined).
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from _fused_fixtures import seeds
from _llama_fixtures import tiny_config, tiny_model, write_checkpoint

from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.compile.llama import quantize_llama
from kolm_audit.runtime import cpu_decode as cd
from kolm_audit.runtime import cpu_gemv as cg
from kolm_audit.runtime import cpu_step as cs
from kolm_audit.runtime import host_threads as ht
from kolm_audit.runtime.cpu_fused import FusedCpuOps
from kolm_audit.runtime.decode import KVCache
from kolm_audit.runtime.host_decoder import KVBundle
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


@pytest.mark.skipif(not cg.GEMM, reason="the packed tiles need AVX-512 VNNI")
@settings(max_examples=60, deadline=None)
@given(seed=seeds, rows=st.integers(1, 70), n=st.sampled_from([1, 15, 63, 64, 65, 130, 200]),
       k=st.sampled_from([1, 3, 4, 5, 32, 255, 256, 257, 511, 704, 1408]))
def test_packed_tiles_equal_the_exact_product_and_int_mm(seed: int, rows: int, n: int, k: int) -> None:
    """Every remainder of rows mod ``_MR``, of ``N`` mod ``PANEL``, of ``K`` mod 4 and mod ``_KC`` (blocks)."""
    rng = np.random.default_rng(seed)
    q, w, want = _gemv_case(rng, rows, n, k)
    wp, psum = cg.pack_weights(w)
    acc = np.full((rows, n), 7, np.int32)
    cg.matmul_rows(q, w, cg.weight_sums(w), wp, psum, acc)
    assert np.array_equal(acc, want)
    if k >= 8 and rows > 16:
        assert np.array_equal(torch._int_mm(torch.from_numpy(q), torch.from_numpy(w).t()).numpy(), want)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, rows=st.sampled_from([1, 4, 5, 16, 24, 33]), n=st.sampled_from([1, 63, 64, 130, 200]),
       k=st.sampled_from([4, 64, 257, 384]), cut=st.tuples(st.floats(0, 1), st.floats(0, 1)), aligned=st.booleans())
def test_a_span_of_columns_equals_those_columns_of_the_whole_product(seed: int, rows: int, n: int, k: int,
                                                                     cut: tuple[float, float], aligned: bool) -> None:
    """``matmul_cols`` (a split forward's share of a product): spans starting on a panel or inside one, ending
    inside one or at ``N``, empty; few rows (weight rows outermost) and many (the packed tiles)."""
    rng = np.random.default_rng(seed)
    q, w, want = _gemv_case(rng, rows, n, k)
    c0, c1 = sorted(int(f * n) for f in cut)
    if aligned:
        c0 -= c0 % cg.PANEL
    acc = np.full((rows, c1 - c0), 7, np.int32)
    cg.matmul_cols(q, w, cg.weight_sums(w), *cg.pack_weights(w), c0, c1, acc)
    assert np.array_equal(acc, want[:, c0:c1])


@pytest.mark.skipif(not cg.GEMM, reason="the packed tiles need AVX-512 VNNI")
def test_packed_tiles_at_the_largest_sums_and_their_layout() -> None:
    """``K = 2^14`` columns of ±127·(-128) over 9 rows (two full tiles and one row); and the packed layout
    ``wp[p, k4, c, j] = W[p·PANEL + c, 4·k4 + j]`` with zeros past ``N`` and ``K``."""
    k = 1 << 14
    q, w = np.full((9, k), 127, np.int8), np.full((3, k), -128, np.int8)
    q[1::2] = -127
    w[2] = 127
    acc = np.empty((9, 3), np.int32)
    cg.matmul_rows(q, w, cg.weight_sums(w), *cg.pack_weights(w), acc)
    assert np.array_equal(acc, q.astype(np.int64) @ w.astype(np.int64).T)
    w = np.arange(70 * 6, dtype=np.int64).reshape(70, 6).astype(np.int8)
    wp, psum = cg.pack_weights(w)
    panels = wp.reshape(2, 2, cg.PANEL, 4)                               # [ceil(70/64), ceil(6/4), PANEL, 4]
    assert panels[1, 1, 5, 1] == w[cg.PANEL + 5, 5] and panels[0, 0, 3, 2] == w[3, 2]
    assert not panels[:, 1, :, 2:].any() and not panels[1, :, 70 - cg.PANEL:].any()
    assert np.array_equal(psum, 128 * w.astype(np.int64).sum(axis=1))


def test_the_intrinsics_emit_nothing_without_the_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled for a CPU without VNNI (the flags off), a kernel that inlines the intrinsics asks LLVM for no
    ``vpdpbusd`` (which would fail instruction selection there); with the flags on (this machine) it does."""
    import numba
    from numba import njit

    def ir_of(vnni: bool) -> str:
        monkeypatch.setattr(cg, "VNNI", vnni)
        monkeypatch.setattr(cg, "GEMM", vnni)

        @njit
        def uses_all(u: np.ndarray, w: np.ndarray, out: np.ndarray) -> int:
            cg._dot4_vnni(u, w, 0, 64, 64, out)
            cg._tile_vnni(u, 64, 0, 0, w, 0, 64, 0, out, 0)
            return cg._dot_vnni(u, w, 0, 64)

        args = (np.zeros(256, np.uint8), np.zeros(4096, np.int8), np.zeros(256, np.int32))
        uses_all.compile(tuple(numba.typeof(a) for a in args))
        return "\n".join(uses_all.inspect_llvm().values())

    assert "vpdpbusd" not in ir_of(False)
    if cg.GEMM:
        assert "vpdpbusd" in ir_of(True)


# ---- the decoder layer of a decoding step, through the runtime ------------------------------------------------

@pytest.fixture(scope="module", params=["int8", "nvfp4"])
def quantized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One tiny grouped-query checkpoint, quantized with the parameter's scheme."""
    model = tiny_model(tiny_config(max_pos=LIMIT, heads=4, kv_heads=2), seed=11)
    return quantize_llama(read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf"))),
                          scheme=request.param)


def _runtimes(qm: Any, tensors: dict[str, np.ndarray] | None = None) -> tuple[LlamaRuntime, LlamaRuntime, str]:
    """(numpy reference, fused CPU on one thread: kernel calls are counted) runtimes of ``qm`` (or of ``tensors`` in
    its place), and its scheme."""
    kw = {"architecture": qm.architecture, "quantization": qm.quantization, "tensors": tensors or qm.tensors}
    return (LlamaRuntime.from_tensors(**kw), LlamaRuntime.from_tensors(**kw, ops=FusedCpuOps(threads=1)),
            qm.quantization["scheme"])


@pytest.fixture(scope="module")
def pair(quantized: Any) -> tuple[LlamaRuntime, LlamaRuntime, str]:
    return _runtimes(quantized)


@settings(max_examples=8, deadline=None)
@given(data=st.data(), batch=st.integers(1, 6))
def test_steps_and_generation_equal_the_reference(pair: tuple[LlamaRuntime, LlamaRuntime, str],
                                                  data: st.DataObject, batch: int) -> None:
    ref, fast, scheme = pair
    prompts = data.draw(st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20), min_size=batch,
                                 max_size=batch))
    cont = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=5))
    with mock.patch.object(cd, "decode_forward", wraps=cd.decode_forward) as kernel, \
            mock.patch.object(cs, "step_loop", wraps=cs.step_loop) as greedy:
        got = fast.cached_logits(prompts[0], cont)
        gens = fast.generate(prompts, max_new_tokens=4, eos_ids=[])
    assert np.array_equal(got, ref.cached_logits(prompts[0], cont))
    assert [g.output_ids for g in gens] == [g.output_ids for g in ref.generate(prompts, max_new_tokens=4, eos_ids=[])]
    # cached steps one call each; the generation's 3 steps in one call of cpu_step's kernel for at most FEW_ROWS
    # requests, else one call each (as one kernel up to 64 rows)
    one_kernel = len(cont) + (3 if cg.FEW_ROWS < batch <= (64 if cg.GEMM else 4) else 0)
    assert kernel.call_count == (one_kernel if scheme == "int8" else 0)
    assert greedy.call_count == (1 if scheme == "int8" and batch <= cg.FEW_ROWS else 0)


def test_a_batch_of_more_than_64_rows_is_composed(pair: tuple[LlamaRuntime, LlamaRuntime, str]) -> None:
    """Steps of 65 rows are not run as one kernel (the composed forward runs) and equal the reference; 64 are."""
    ref, fast, scheme = pair
    rng = np.random.default_rng(4)
    for batch, calls in ((65, 0), (64, 2 if cg.GEMM else 0)):
        prompts = [rng.integers(0, VOCAB, int(n)).tolist() for n in rng.integers(1, 6, batch)]
        with mock.patch.object(cd, "decode_forward", wraps=cd.decode_forward) as kernel:
            gens = fast.generate(prompts, max_new_tokens=3, eos_ids=[])
        assert [g.output_ids for g in gens] == [g.output_ids for g in ref.generate(prompts, max_new_tokens=3,
                                                                                    eos_ids=[])]
        assert kernel.call_count == (calls if scheme == "int8" else 0)


def test_a_residual_stream_at_the_int32_limits_equals_the_reference(quantized: Any) -> None:
    """Token embeddings scaled to the int32 limits (``mult = 2^25``, ``shift = 1``: rows of tokens 0–19 are
    ``w · 2^24``, up to ``-2^31`` and ``127 · 2^24``, the most an artifact may hold), so the residual sums saturate
    in every layer of every step; the logits equal the reference's and the one-kernel steps ran."""
    tensors = dict(quantized.tensors)
    mult, shift = tensors["model.embed_tokens.mult"].copy(), tensors["model.embed_tokens.shift"].copy()
    mult[:20], shift[:20] = 1 << 25, 1
    tensors["model.embed_tokens.mult"], tensors["model.embed_tokens.shift"] = mult, shift
    ref, fast, scheme = _runtimes(quantized, tensors)
    prompt, cont = [3, 19, 0, 7, 200], [1, 2, 300, 18]
    with mock.patch.object(cd, "decode_forward", wraps=cd.decode_forward) as kernel:
        got = fast.cached_logits(prompt, cont)
    assert np.array_equal(got, ref.cached_logits(prompt, cont))
    assert kernel.call_count == (len(cont) if scheme == "int8" else 0)


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


@pytest.mark.parametrize("nr", [3, 6])
def test_attention_block_portable_path_equals_the_vnni_one(monkeypatch: pytest.MonkeyPatch, nr: int) -> None:
    """The attention block's score dot products: ``vpdpbusd`` (compiled here; 6 query rows: the packed tiles) and
    the 16-bit product loop of CPUs without VNNI (interpreted) give the same context rows, for a head size with a
    16-bit tail (``D = 40``), masked keys and rows that visit fewer keys."""
    from kolm_audit.compile.tables import attn_scale, exp_table
    from kolm_audit.runtime import cpu_attention as ka
    from kolm_audit.runtime.cpu_kernels import pair_table

    rng = np.random.default_rng(5)
    tp, d = 9, 40
    qq, kq = rng.integers(-127, 128, (nr, d)).astype(np.int8), rng.integers(-127, 128, (tp, d)).astype(np.int8)
    qq[0], kq[0] = 127, -127
    mq, mk = rng.integers(1 << 6, 1 << 9, nr), rng.integers(1 << 6, 1 << 9, tp)   # softmax not one-hot
    eq, ek = np.zeros(nr, np.int64), np.zeros(tp, np.int64)
    v = rng.integers(-(1 << 20), 1 << 20, (tp, d)).astype(np.int32)
    ok = rng.random((nr, tp)) < 0.7
    ok[:, 0] = True
    kend = np.array([tp, 5, 1, 7, tp, 2][:nr], np.int64)
    sm, ss = (int(x) for x in attn_scale(d))
    pair = pair_table(exp_table().astype(np.int64))

    def run(fn: Any) -> tuple[np.ndarray, np.ndarray]:
        scratch = ka._scratch(nr, tp, d)
        fn(qq, mq, eq, nr, kq, mk, ek, 0, v, ok, kend, sm, ss, pair, *scratch)
        return scratch[0][:tp], scratch[-1]                            # row 0's dot products; the context rows

    fast = run(ka._attend_block)
    monkeypatch.setattr(ka, "VNNI", False)
    monkeypatch.setattr(ka, "GEMM", False)
    portable = run(ka._attend_block.py_func)
    assert np.array_equal(fast[0], qq[0].astype(np.int64) @ kq.astype(np.int64).T)
    assert np.array_equal(portable[0], fast[0]) and np.array_equal(portable[1], fast[1])


def test_kernel_disk_caches_are_keyed_on_every_kernel_module() -> None:
    """A kernel inlines helpers from other modules; its disk cache entry must go stale when any of them changes
    (numba alone checks only the kernel's own file), so its stamp carries the digest of every ``cpu_*.py``."""
    from kolm_audit.runtime import cpu_attention as ka
    from kolm_audit.runtime import cpu_kernels as kn

    for kernel in (cd.decode_forward, cg.gemv_rows, ka.cached_attention, kn.quantize_rows):
        assert kernel._cache._cache_file._source_stamp[1] == kn._sources_digest()


def test_steps_after_a_prefill_in_groups_equal_the_reference(pair: tuple[LlamaRuntime, LlamaRuntime, str]) -> None:
    """Nine prompts (a prefill in two groups, caches merged, without the int8 key memo), then three of them
    decoded (one-kernel steps on the merged cache) equal the reference."""
    ref, fast, _ = pair
    rng = np.random.default_rng(9)
    prompts = [rng.integers(0, VOCAB, int(n)).tolist() for n in rng.integers(1, 30, 9)]
    outs = []
    for rt in (ref, fast):
        logits, cache = rt._prefill(prompts, all_logits=False)
        cache = cache.select(np.array([7, 0, 4]), rt.ops)
        rows = [logits]
        for tok in (11, 300):
            rows.append(rt._step(np.full((3, 1), tok), np.ones((3, 1), bool), cache, all_logits=False))
        outs.append(rows)
    for got, want in zip(outs[1], outs[0], strict=True):
        assert np.array_equal(got, want)


# ---- the host-side decoder of a generation (host_decoder.CpuDecoder) ------------------------------------------

@pytest.fixture(scope="module")
def long_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[LlamaRuntime, LlamaRuntime]:
    """(numpy reference, fused CPU) runtimes of an int8 checkpoint with room for 96 positions."""
    model = tiny_model(tiny_config(max_pos=96, heads=4, kv_heads=2), seed=5)
    qm = quantize_llama(read_hf_checkpoint(write_checkpoint(model, tmp_path_factory.mktemp("hf96"))), scheme="int8")
    ref, fast, _ = _runtimes(qm)
    return ref, fast


def test_the_host_decoder_grows_drops_finished_requests_and_equals_the_reference(
        long_pair: tuple[LlamaRuntime, LlamaRuntime]) -> None:
    """Three requests sampled for up to 70 tokens (sampling takes one step a call; greedy runs go through
    ``cpu_step``'s kernel, ``test_cpu_step.py``): the caches outgrow their first 64 rows (the bundles copy into
    larger ones), a request that meets its EOS id leaves the batch (the others' rows are taken), and every output,
    finish reason and step (one kernel call each) equals the reference's."""
    ref, fast = long_pair
    prompts = [[5, 9, 14, 3, 77], [200, 3], [17, 18, 19, 20, 21, 22, 23, 24, 25]]
    sampled = {"seed": 11, "temperature": 800, "top_k": 40}
    free = ref.generate(prompts, max_new_tokens=70, eos_ids=[], **sampled)
    eos = [free[1].output_ids[10]]                                     # request 1 stops by its 11th token
    want = ref.generate(prompts, max_new_tokens=70, eos_ids=eos, **sampled)
    assert min(len(g.output_ids) for g in want) < max(len(g.output_ids) for g in want)   # someone finished early
    assert max(len(p) + len(g.output_ids) for p, g in zip(prompts, want, strict=True)) > 64
    with mock.patch.object(cd, "decode_forward", wraps=cd.decode_forward) as kernel:
        got = fast.generate(prompts, max_new_tokens=70, eos_ids=eos, **sampled)
    assert got == want
    assert kernel.call_count == max(len(g.output_ids) for g in want) - 1    # one step a new token after the first


def test_the_host_decoder_refuses_a_step_of_the_wrong_shape(long_pair: tuple[LlamaRuntime, LlamaRuntime]) -> None:
    _, fast = long_pair
    _, cache = fast._prefill([[5, 9], [7]], all_logits=False)
    decoder = fast._decoder(cache)
    assert decoder is not None
    with pytest.raises(ValueError, match=r"one token per request: expected shape \(2,\)"):
        decoder.step(np.array([1, 2, 3]))
    assert decoder.step(np.array([1, 2])).shape == (2, VOCAB)


def test_the_host_decoder_splits_a_steps_requests_between_two_threads(quantized: Any) -> None:
    """Six requests on two worker threads: each step is two kernel calls (three requests each, in parallel), and
    the generation equals the reference's."""
    ref, _, scheme = _runtimes(quantized)
    kw = {"architecture": quantized.architecture, "quantization": quantized.quantization,
          "tensors": quantized.tensors}
    two = LlamaRuntime.from_tensors(**kw, ops=FusedCpuOps(threads=2))
    rng = np.random.default_rng(13)
    prompts = [rng.integers(0, VOCAB, int(n)).tolist() for n in rng.integers(1, 20, 6)]
    with mock.patch.object(cd, "decode_forward", wraps=cd.decode_forward) as kernel:
        got = two.generate(prompts, max_new_tokens=5, eos_ids=[])
    assert got == ref.generate(prompts, max_new_tokens=5, eos_ids=[])
    if scheme == "int8":
        assert kernel.call_count == 2 * 4                                       # 4 steps after the prefill
        assert sorted({c.args[0].shape[0] for c in kernel.call_args_list}) == [3]


@settings(max_examples=8, deadline=None)
@given(data=st.data(), batch=st.integers(1, 3), threads=st.sampled_from([2, 3]))
def test_a_prefill_split_between_threads_equals_the_reference(quantized: Any, data: st.DataObject, batch: int,
                                                              threads: int) -> None:
    """A prefill of at most 60 rows on 2 or 3 threads: one kernel call per part, run at once (``cpu_sync``
    barriers; every prefill split, however small), each part its rows and query heads (4 heads: with 3 parts one
    has a single head; 2 KV heads); the logits of every position (``logits``) and the generation after it (only
    the last position's logits, ``last``) equal the reference's."""
    ref, _, scheme = _runtimes(quantized)
    kw = {"architecture": quantized.architecture, "quantization": quantized.quantization,
          "tensors": quantized.tensors}
    fast = LlamaRuntime.from_tensors(**kw, ops=FusedCpuOps(threads=threads))
    prompts = data.draw(st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20), min_size=batch,
                                 max_size=batch))
    with mock.patch.object(ht, "PAR_MIN", 0), \
            mock.patch.object(cd, "decode_forward", wraps=cd.decode_forward) as kernel:
        got = fast.logits(prompts)
        calls = kernel.call_args_list[:]
        gens = fast.generate(prompts, max_new_tokens=3, eos_ids=[])
    assert all(np.array_equal(a, b) for a, b in zip(got, ref.logits(prompts), strict=True))
    assert [g.output_ids for g in gens] == [g.output_ids for g in ref.generate(prompts, max_new_tokens=3, eos_ids=[])]
    if scheme == "int8" and cg.GEMM:
        rows = batch * max(map(len, prompts))                                   # left-padded
        parts = min(threads, rows)
        assert sorted(c.args[19] for c in calls) == list(range(parts)) if parts > 1 else not calls
        assert all(c.args[18] is False for c in calls)                          # every position's logits


def test_a_split_prefill_hands_the_cache_to_the_decoder(quantized: Any) -> None:
    """After a prefill split between two threads, the host decoder continues on the bundles it wrote (no copy) and
    the cached logits of a continuation equal the reference's."""
    ref, _, scheme = _runtimes(quantized)
    kw = {"architecture": quantized.architecture, "quantization": quantized.quantization,
          "tensors": quantized.tensors}
    fast = LlamaRuntime.from_tensors(**kw, ops=FusedCpuOps(threads=2))
    rng = np.random.default_rng(17)
    prompt, cont = rng.integers(0, VOCAB, 40).tolist(), rng.integers(0, VOCAB, 6).tolist()
    with mock.patch.object(ht, "PAR_MIN", 0), \
            mock.patch.object(KVBundle, "_holding", wraps=KVBundle._holding) as copies, \
            mock.patch.object(cd, "decode_forward", wraps=cd.decode_forward) as kernel:
        got = fast.cached_logits(prompt, cont)
    assert np.array_equal(got, ref.cached_logits(prompt, cont))
    if scheme == "int8" and cg.GEMM:
        assert kernel.call_count == 2                   # two parts; the steps split by columns (test_cpu_step)
        assert copies.call_count == 0
