"""Llama family: quantization, config refusals, input validation, accuracy against ``transformers`` floats."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _llama_fixtures import float_logits, tiny_config, tiny_model, write_checkpoint

from kolm_audit.compile import quantize_checkpoint
from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.compile.llama import llama_architecture, quantize_llama
from kolm_audit.errors import ArtifactError, RuntimeInputError, UnsupportedModel
from kolm_audit.runtime.models.llama import LlamaRuntime
from kolm_audit.runtime.weights import load_linear


def _runtime(ckpt_dir: Path, scheme: str) -> LlamaRuntime:
    qm = quantize_llama(read_hf_checkpoint(ckpt_dir), scheme=scheme)
    return LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, tensors=qm.tensors,
                        task=qm.task)


def _cosines(ours: list[np.ndarray], ref: np.ndarray) -> tuple[float, float]:
    """Mean cosine and top-1 agreement of integer Q.16 logits vs float logits, over every position."""
    o = np.concatenate(ours).astype(np.float64) / 65536                       # [N, V]
    r = ref.reshape(-1, ref.shape[-1]).astype(np.float64)                     # [N, V]
    cos = (o * r).sum(-1) / np.linalg.norm(o, axis=-1) / np.linalg.norm(r, axis=-1)
    return float(cos.mean()), float((o.argmax(-1) == r.argmax(-1)).mean())


@pytest.mark.parametrize(("family", "extra"), [("llama", {"attention_bias": True}), ("qwen2", {}),
                                                ("mistral", {}), ("llama", {"tie_word_embeddings": True})])
def test_every_family_tracks_transformers(tmp_path: Path, family: str, extra: dict[str, Any]) -> None:
    model = tiny_model(tiny_config(family=family, **extra), seed=3)
    rt = _runtime(write_checkpoint(model, tmp_path / "hf"), "int8")
    ids = np.random.default_rng(1).integers(0, 384, (3, 24)).tolist()
    cos, top1 = _cosines(rt.logits(ids), float_logits(model, ids).numpy())
    assert cos > 0.999 and top1 > 0.8


def test_quantized_tensors_are_integers_with_hf_names(tmp_path: Path) -> None:
    model = tiny_model(tiny_config(family="qwen2"), seed=4)
    ckpt = read_hf_checkpoint(write_checkpoint(model, tmp_path / "hf"))
    qm = quantize_checkpoint(ckpt, scheme="int4")                             # the dispatch reaches us
    assert qm.task == {"kind": "generate", "labels": []}
    assert qm.architecture["qkv_bias"] and not qm.architecture["o_bias"]
    assert all(a.dtype.kind in "iu" for a in qm.tensors.values())
    for name in ("model.layers.1.self_attn.q_proj.group_scale", "model.layers.0.self_attn.k_proj.bias",
                 "model.norm.gamma", "lm_head.weight", "tables.rope_cos", "tables.sigmoid", "tokenizer.json"):
        assert name in qm.tensors
    assert qm.tensors["tables.rope_cos"].shape == (256, 8)
    again = quantize_llama(ckpt, scheme="int4")
    assert all(np.array_equal(again.tensors[n], a) for n, a in qm.tensors.items())   # deterministic build


@pytest.mark.parametrize(("change", "field"), [
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "rope_parameters.rope_type"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"model_type": "gpt2"}, "model_type"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"head_dim": 15}, "head_dim"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"eos_token_id": 9999}, "eos_token_id"),
    ({"intermediate_size": 1 << 17}, "intermediate_size"),
    ({"hidden_size": 1 << 15, "head_dim": 128}, "hidden_size"),
    ({"head_dim": 512}, "head_dim"),
    ({"vocab_size": 1 << 23}, "vocab_size"),
])
def test_unsupported_config_fields_are_named(change: dict[str, Any], field: str) -> None:
    config = tiny_config().to_dict() | change
    with pytest.raises(UnsupportedModel) as err:
        llama_architecture(config, file="config.json")
    assert err.value.field == field


def test_sliding_window_caps_the_context() -> None:
    arch = llama_architecture(tiny_config(family="mistral", sliding_window=64).to_dict())
    assert arch["max_position_embeddings"] == 64
    arch = llama_architecture(tiny_config(family="qwen2", use_sliding_window=False, sliding_window=8).to_dict())
    assert arch["max_position_embeddings"] == 256
    arch = llama_architecture(tiny_config(max_pos=131072).to_dict())
    assert arch["max_position_embeddings"] == 65536                        # attention bound T <= 2^16


@pytest.fixture(scope="module")
def small_rt(tmp_path_factory: pytest.TempPathFactory) -> LlamaRuntime:
    model = tiny_model(tiny_config(max_pos=32), seed=5)
    return _runtime(write_checkpoint(model, tmp_path_factory.mktemp("hf")), "int8")


@pytest.mark.parametrize(("batch", "kwargs", "field"), [
    ([list(range(3, 36))], {}, "inputs[0]"),                                   # 33 > 32 positions
    ([[1, 2], []], {}, "inputs[1]"),
    ([[1, 384]], {}, "inputs[0][1]"),
    ([[1, -1]], {}, "inputs[0][1]"),
    ([[1, True]], {}, "inputs[0][1]"),
    ([[1], "ab"], {}, "inputs[1]"),
    ("ab", {}, "inputs"),
    ([[1]], {"max_new_tokens": 0}, "max_new_tokens"),
    ([[1]], {"max_new_tokens": 2.0}, "max_new_tokens"),
    ([[1]], {"temperature": 500}, "temperature"),                              # sampling without a seed
    ([[1]], {"seed": 1, "top_k": 0}, "top_k"),
    ([[1]], {"seed": 1, "top_p": 1001}, "top_p"),
    ([[1]], {"seed": -5}, "seed"),
    ([[1]], {"eos_ids": [400]}, "eos_ids"),
])
def test_bad_requests_name_the_field(small_rt: LlamaRuntime, batch: Any, kwargs: dict[str, Any],
                                     field: str) -> None:
    kw = {"max_new_tokens": 2} | kwargs
    with pytest.raises(RuntimeInputError) as err:
        small_rt.generate(batch, **kw)
    assert err.value.field == field


@pytest.mark.parametrize(("prompt", "continuation", "field"), [
    ("ab", [1], "prompt"), ([1], None, "continuation"), ([], [1, 2], "prompt"), ([1, 384], [], "inputs[0][1]"),
    ([1], [2, -1], "inputs[0][2]"), ([1] * 20, [2] * 13, "inputs[0]"),             # 33 > 32 positions
])
def test_cached_logits_name_the_bad_part(small_rt: LlamaRuntime, prompt: Any, continuation: Any, field: str) -> None:
    with pytest.raises(RuntimeInputError) as err:
        small_rt.cached_logits(prompt, continuation)
    assert err.value.field == field


def test_no_requests_give_no_results(small_rt: LlamaRuntime) -> None:
    assert small_rt.logits([]) == [] and small_rt.generate([], max_new_tokens=2) == []


def test_generation_stops_at_eos_length_and_context(small_rt: LlamaRuntime) -> None:
    prompt = [1, 7, 9]
    free = small_rt.generate([prompt], max_new_tokens=5, eos_ids=[])[0]
    assert free.finish_reason == "length" and len(free.output_ids) == 5
    stop = free.output_ids[2]
    cut = small_rt.generate([prompt], max_new_tokens=5, eos_ids=[stop])[0]
    assert cut.finish_reason == "eos"
    assert cut.output_ids == free.output_ids[: free.output_ids.index(stop) + 1]
    full = small_rt.generate([list(range(3, 30))], max_new_tokens=100, eos_ids=[])[0]
    assert full.finish_reason == "context" and len(full.output_ids) == 32 - 27


def _dequantized_copy(model: torch.nn.Module, tensors: dict[str, np.ndarray], scheme: str) -> torch.nn.Module:
    """The float model with every linear weight replaced by its quantized value ``W · mult / 2^shift``."""
    fq = copy.deepcopy(model)
    state = fq.state_dict()
    with torch.no_grad():
        for name, param in state.items():
            if name.endswith("proj.weight") or name == "lm_head.weight":
                lin = load_linear(tensors, name.removesuffix(".weight"), scheme=scheme)
                scale = lin.mult.astype(np.float64) / np.exp2(lin.shift.astype(np.float64))
                param.copy_(torch.tensor(lin.weight.astype(np.float64) * scale[:, None]))
    return fq


def test_accuracy_against_transformers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """int8: mean cosine of integer logits vs float logits >= 0.99 over 16 × 128 teacher-forced positions.

    Every scheme: the integer runtime tracks the float model *with the same quantized weights* (cosine >= 0.995),
    so what int4/NVFP4 lose against the float model is the weight quantization, not the integer forward.
    """
    config = tiny_config(vocab=512, hidden=256, layers=4, heads=8, kv_heads=2, intermediate=704, max_pos=256)
    model = tiny_model(config, seed=11)
    ckpt = read_hf_checkpoint(write_checkpoint(model, tmp_path / "hf"))
    ids = np.random.default_rng(12).integers(0, 512, (16, 128)).tolist()
    ref = float_logits(model, ids).numpy()                                    # [16, 128, 512] float32
    lines = []
    for scheme in ("int8", "int4", "nvfp4"):
        qm = quantize_llama(ckpt, scheme=scheme)
        rt = LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, tensors=qm.tensors)
        start = time.perf_counter()
        ours = rt.logits(ids)
        secs = time.perf_counter() - start
        cos, top1 = _cosines(ours, ref)
        cos_fq, top1_fq = _cosines(ours, float_logits(_dequantized_copy(model, dict(qm.tensors), scheme), ids).numpy())
        lines.append(f"{scheme}: vs float cosine {cos:.5f} top-1 {top1:.4f}; vs float with the same quantized "
                     f"weights cosine {cos_fq:.5f} top-1 {top1_fq:.4f}; prefill {16 * 128 / secs:.0f} tokens/s")
        assert cos_fq >= 0.995
        if scheme == "int8":
            assert cos >= 0.99
            assert top1 >= 0.9
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_artifact_round_trip_through_the_python_api(tmp_path: Path) -> None:
    """quantize → .kolm → kolm_audit.load → generate equals the runtime on the in-memory tensors."""
    import kolm_audit
    from kolm_audit.artifact import write_artifact
    from kolm_audit.compile.hf import import_checkpoint

    write_checkpoint(tiny_model(tiny_config(family="qwen2", tie_word_embeddings=True), seed=8), tmp_path / "hf")
    manifest, tensors = import_checkpoint(tmp_path / "hf", scheme="nvfp4")
    write_artifact(tmp_path / "m.kolm", manifest=manifest, tensors=tensors)
    model = kolm_audit.load(tmp_path / "m.kolm", require_signature=False)
    got = model.generate(["w5 w9 w17"], max_new_tokens=5, seed=3, temperature=900)
    got += model.generate([[1, 2, 3]], max_new_tokens=5, seed=3, temperature=900)
    rt = LlamaRuntime.from_tensors(architecture=manifest["architecture"], quantization=manifest["quantization"],
                                   tensors=tensors)
    want = rt.generate([[5, 9, 17], [1, 2, 3]], max_new_tokens=5, seed=3, temperature=900)
    assert [(g.output_ids, g.finish_reason) for g in got] == [tuple(w) for w in want]
    assert got[0].input_ids == (5, 9, 17)


def test_malformed_artifact_tensors_are_named(tmp_path: Path) -> None:
    qm = quantize_llama(read_hf_checkpoint(write_checkpoint(tiny_model(tiny_config(), seed=9), tmp_path / "hf")),
                        scheme="int8")
    bad = {
        "model.layers.1.post_attention_layernorm.gamma": None,                               # missing
        "model.layers.0.self_attn.k_proj.weight": np.zeros((16, 64), dtype=np.int8),        # wrong shape
        "tables.rope_cos": np.zeros((8, 8), dtype=np.int32),                                 # wrong length
        "model.embed_tokens.weight": np.zeros((384, 64), dtype=np.int16),                   # wrong dtype
        "model.embed_tokens.shift": np.full(384, 94, dtype=np.int32),                       # out of range
    }
    for name, arr in bad.items():
        tensors = {n: a for n, a in qm.tensors.items() if n != name}
        if arr is not None:
            tensors[name] = arr
        with pytest.raises(ArtifactError) as err:
            LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, tensors=tensors)
        assert err.value.field == f"tensors.{name}"
    # the real rows with shift 1 instead of ~24: beyond the int32 range of an activation (spec §3.1)
    tensors = {**qm.tensors, "model.embed_tokens.shift": np.ones(384, dtype=np.int32)}
    with pytest.raises(ArtifactError, match="embedding row outside the int32 range") as err:
        LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, tensors=tensors)
    assert err.value.field == "tensors.model.embed_tokens.mult" and "row 0" in str(err.value)
    with pytest.raises(ArtifactError) as err:
        LlamaRuntime.from_tensors(architecture={**qm.architecture, "rms_norm_eps_q32": 7}, quantization=qm.quantization,
                     tensors=qm.tensors)
    assert err.value.field == "architecture.rms_norm_eps_q32"
