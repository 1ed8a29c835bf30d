"""The torch backends reproduce every conformance vector of kolm-int/1 (BERT and Llama) bit for bit.

Same vectors and models as ``test_conformance_bert.py`` / ``test_conformance_llama.py`` (golden, never
regenerated), run through :class:`kolm_audit.model.Model` on both CPU variants — ``cpu-fused``
(:class:`~kolm_audit.runtime.cpu_fused.FusedCpuOps`, what ``backend="cpu"`` picks when numba is installed; skipped
without numba) and ``cpu-unfused`` (plain :class:`~kolm_audit.runtime.torch_backend.TorchOps`) — and on ``cuda``
where a GPU is visible (marked ``gpu``, skipped otherwise). Each model is built once per variant.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from _conformance import conformance_model

from kolm_audit.canonical import loads_strict
from kolm_audit.model import Model

ROOT = Path(__file__).resolve().parents[3] / "golden" / "conformance"
BERT = sorted((ROOT / "bert" / "vectors").glob("*.json"))
LLAMA = sorted((ROOT / "llama" / "vectors").glob("*.json"))
PARAM_KEYS = ("seed", "temperature", "top_k", "top_p")
DEVICES = [
    pytest.param("cpu-fused", marks=pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                                       reason="numba is not installed")),
    "cpu-unfused",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]


def _model(family: str, name: str, backend: str) -> Model:
    """``backend``: ``cpu-fused`` | ``cpu-unfused`` | ``cuda`` (one cached model each)."""
    device, _, variant = backend.partition("-")
    return conformance_model(family, name, device, fused=variant != "unfused")[0]


def _check(vec: dict, backend: str) -> None:
    family = "bert" if vec["model"]["name"].startswith("tiny-bert") else "llama"
    model = _model(family, vec["model"]["name"], backend)
    ids = vec["input_ids"]
    if vec["task"] == "embed":
        got = model.embed([ids])[0]
        assert got.embedding.tolist() == vec["output"]["embedding"]
        assert got.output_digest == vec["output_digest"]
    elif vec["task"] == "classify":
        res = model.classify([ids])[0]
        assert (res.label, list(res.scores)) == (vec["output"]["label"], vec["output"]["scores"])
        assert res.output_digest == vec["output_digest"]
    else:
        p = vec["params"]
        res = model.generate([ids], max_new_tokens=p["max_new_tokens"], **{k: p[k] for k in PARAM_KEYS})[0]
        assert list(res.output_ids) == vec["output"]["output_ids"]
        assert res.output_digest == vec["output_digest"]


@pytest.mark.parametrize("backend", DEVICES)
@pytest.mark.parametrize("path", BERT + LLAMA, ids=lambda p: p.stem)
def test_vector_reproduces_exactly(path: Path, backend: str) -> None:
    _check(loads_strict(path.read_bytes()), backend)


@pytest.mark.parametrize("backend", DEVICES)
@pytest.mark.parametrize("scheme", ["int8", "int4", "nvfp4"])
def test_bert_vectors_in_one_batch(scheme: str, backend: str) -> None:
    for task in ("embed", "classify"):
        vecs = [loads_strict(p.read_bytes()) for p in BERT if p.stem.startswith(f"{scheme}-{task}")]
        model = _model("bert", f"tiny-bert-{scheme}", backend)
        run = model.embed if task == "embed" else model.classify
        got = run([v["input_ids"] for v in reversed(vecs)])
        assert [g.output_digest for g in reversed(got)] == [v["output_digest"] for v in vecs]


@pytest.mark.parametrize("backend", DEVICES)
@pytest.mark.parametrize("name", [f"tiny-{m}-{s}" for m in ("llama", "qwen2") for s in ("int8", "int4", "nvfp4")])
def test_llama_vectors_in_one_batch(name: str, backend: str) -> None:
    vecs = [loads_strict(p.read_bytes()) for p in LLAMA if p.stem.startswith(name + "-")]
    model = _model("llama", name, backend)
    for mode in ("greedy", "sample-a", "sample-b"):
        group = [v for v in vecs if v["id"][len(name) + 1:-3] == mode]
        p = group[0]["params"]
        got = model.generate([v["input_ids"] for v in reversed(group)], max_new_tokens=p["max_new_tokens"],
                             **{k: p[k] for k in PARAM_KEYS})
        assert [g.output_digest for g in reversed(got)] == [v["output_digest"] for v in group]


def test_every_vector_is_covered() -> None:
    assert len(BERT) >= 48 and len(LLAMA) == 90
