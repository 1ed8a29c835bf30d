"""The numpy reference reproduces every BERT conformance vector of kolm-int/1 bit for bit.

Vectors and models live in ``golden/conformance/bert/`` (written once by ``golden/conformance/generate_bert.py``,
never regenerated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _conformance import conformance_model

from kolm_audit.canonical import loads_strict
from kolm_audit.model import Model, classification_digest, embedding_digest, input_digest
from kolm_audit.schemas import validate

ROOT = Path(__file__).resolve().parents[3] / "golden" / "conformance" / "bert"
VECTORS = sorted((ROOT / "vectors").glob("*.json"))


def _model(name: str) -> tuple[Model, str]:
    return conformance_model("bert", name)


def test_vectors_are_present_for_every_scheme_and_task() -> None:
    kinds = {tuple(p.stem.split("-")[:2]) for p in VECTORS}
    assert kinds == {(s, t) for s in ("int8", "int4", "nvfp4") for t in ("embed", "classify")}
    assert len(VECTORS) >= 48


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_reproduces_exactly(path: Path) -> None:
    vec = loads_strict(path.read_bytes(), file=str(path))
    validate(vec, "conformance-vector", source=str(path))
    model, model_digest = _model(vec["model"]["name"])
    assert model_digest == vec["model"]["digest"]
    ids = model.tokenize([vec["input"]["text"]])[0] if "text" in vec["input"] else vec["input"]["input_ids"]
    assert ids == vec["input_ids"] and input_digest(ids) == vec["input_digest"]
    if vec["task"] == "embed":
        got = model.embed([ids])[0]
        assert got.embedding.tolist() == vec["output"]["embedding"]
        assert got.output_digest == embedding_digest(np.array(vec["output"]["embedding"])) == vec["output_digest"]
    else:
        res = model.classify([ids])[0]
        assert (res.label, res.label_index, list(res.scores)) == (
            vec["output"]["label"], vec["output"]["label_index"], vec["output"]["scores"])
        assert res.output_digest == classification_digest(res.label, res.scores) == vec["output_digest"]


@pytest.mark.parametrize("scheme", ["int8", "int4", "nvfp4"])
def test_all_vectors_of_a_model_in_one_batch(scheme: str) -> None:
    vecs = [loads_strict(p.read_bytes()) for p in VECTORS if p.stem.startswith(f"{scheme}-embed")]
    model, _ = _model(f"tiny-bert-{scheme}")
    got = model.embed([v["input_ids"] for v in vecs])
    assert [g.output_digest for g in got] == [v["output_digest"] for v in vecs]
