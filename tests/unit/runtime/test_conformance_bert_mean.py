"""Every backend reproduces the conformance vectors of the mean-pooled classifier head (spec §6.4) bit for bit.

Vectors and models live in ``golden/conformance/bert-mean/`` (written once by
``golden/conformance/generate_bert_mean.py``, never regenerated). Each vector is checked alone on the numpy
reference and both torch CPU variants, and all vectors of a model in one batch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from _conformance import conformance_model

from kolm_audit.canonical import loads_strict
from kolm_audit.errors import KolmError
from kolm_audit.model import Model
from kolm_audit.runtime.digests import classification_digest, input_digest
from kolm_audit.schemas import validate

ROOT = Path(__file__).resolve().parents[3] / "golden" / "conformance" / "bert-mean"
VECTORS = sorted((ROOT / "vectors").glob("*.json"))
BACKENDS = ["numpy", "cpu-unfused",
            pytest.param("cpu-fused", marks=pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                                               reason="numba is not installed"))]


def _model(name: str, backend: str) -> tuple[Model, str]:
    device, _, variant = backend.partition("-")
    return conformance_model("bert-mean", name, device, fused=variant != "unfused")


def test_vectors_cover_every_scheme() -> None:
    assert {p.stem.split("-")[0] for p in VECTORS} == {"int8", "int4", "nvfp4"}
    assert len(VECTORS) == 30
    labels = {loads_strict(p.read_bytes())["output"]["label"] for p in VECTORS}
    assert len(labels) >= 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_reproduces_exactly(path: Path, backend: str) -> None:
    vec = loads_strict(path.read_bytes(), file=str(path))
    validate(vec, "conformance-vector", source=str(path))
    model, model_digest = _model(vec["model"]["name"], backend)
    assert model_digest == vec["model"]["digest"]
    assert model.manifest["task"]["pooling"] == "mean"
    ids = model.tokenize([vec["input"]["text"]])[0] if "text" in vec["input"] else vec["input"]["input_ids"]
    assert ids == vec["input_ids"] and input_digest(ids) == vec["input_digest"]
    res = model.classify([ids])[0]
    assert (res.label, res.label_index, list(res.scores)) == (
        vec["output"]["label"], vec["output"]["label_index"], vec["output"]["scores"])
    assert res.output_digest == classification_digest(res.label, res.scores) == vec["output_digest"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", ["int8", "int4", "nvfp4"])
def test_all_vectors_of_a_model_in_one_batch(scheme: str, backend: str) -> None:
    vecs = [loads_strict(p.read_bytes()) for p in VECTORS if p.stem.startswith(f"{scheme}-")]
    model, _ = _model(f"tiny-bert-mean-{scheme}", backend)
    got = model.classify([v["input_ids"] for v in vecs])
    assert [g.output_digest for g in got] == [v["output_digest"] for v in vecs]


def test_the_mean_head_needs_no_pooler_and_refuses_unknown_heads() -> None:
    from safetensors.numpy import load_file

    from kolm_audit.errors import UnsupportedModel
    from kolm_audit.runtime.models.bert import BertRuntime

    tensors = load_file(str(ROOT / "models" / "tiny-bert-mean-int8.safetensors"))
    assert not any(name.startswith("pooler.") for name in tensors)
    model, _ = _model("tiny-bert-mean-int8", "numpy")
    m = model.manifest
    with pytest.raises(UnsupportedModel, match="classification head") as err:
        BertRuntime.from_tensors(architecture=m["architecture"], quantization=m["quantization"],
                                 task={**m["task"], "pooling": "first-token"}, tensors=tensors)
    assert err.value.field == "task.pooling"
    with pytest.raises(KolmError, match="pooler"):     # the cls-pooler head needs the pooler tensors
        BertRuntime.from_tensors(architecture=m["architecture"], quantization=m["quantization"],
                                 task={**m["task"], "pooling": "cls-pooler"}, tensors=tensors)
