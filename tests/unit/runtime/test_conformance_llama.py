"""The numpy reference reproduces every Llama-family conformance vector of kolm-int/1 bit for bit.

Vectors and models live in ``golden/conformance/llama/`` (written once by
``golden/conformance/generate_llama.py``, never regenerated).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _conformance import conformance_model

from kolm_audit.canonical import loads_strict
from kolm_audit.model import Model, generation_digest, input_digest

ROOT = Path(__file__).resolve().parents[3] / "golden" / "conformance" / "llama"
VECTORS = sorted((ROOT / "vectors").glob("*.json"))
PARAM_KEYS = ("seed", "temperature", "top_k", "top_p")


def _model(name: str) -> tuple[Model, str]:
    return conformance_model("llama", name)


def test_vectors_cover_every_model_scheme_and_decoding_mode() -> None:
    vecs = [loads_strict(p.read_bytes()) for p in VECTORS]
    names = {f"tiny-{m}-{s}" for m in ("llama", "qwen2") for s in ("int8", "int4", "nvfp4")}
    assert {v["model"]["name"] for v in vecs} == names
    modes = {v["id"][len(v["model"]["name"]) + 1:-3] for v in vecs}
    assert modes == {"greedy", "sample-a", "sample-b"}
    assert len(VECTORS) == 90
    assert {v["output"]["finish_reason"] for v in vecs} == {"eos", "length", "context"}
    assert all(p.stat().st_size < 300_000 for p in (ROOT / "models").iterdir())


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_reproduces_exactly(path: Path) -> None:
    vec = loads_strict(path.read_bytes())
    model, model_digest = _model(vec["model"]["name"])
    assert model_digest == vec["model"]["digest"]
    ids = model.tokenize([vec["input"]["text"]])[0] if "text" in vec["input"] else vec["input"]["input_ids"]
    assert ids == vec["input_ids"] and input_digest(ids) == vec["input_digest"]
    p = vec["params"]
    res = model.generate([ids], max_new_tokens=p["max_new_tokens"], **{k: p[k] for k in PARAM_KEYS})[0]
    assert (list(res.output_ids), res.finish_reason) == (vec["output"]["output_ids"], vec["output"]["finish_reason"])
    assert res.output_digest == generation_digest(res.output_ids, res.finish_reason) == vec["output_digest"]


@pytest.mark.parametrize("name", [f"tiny-{m}-{s}" for m in ("llama", "qwen2") for s in ("int8", "int4", "nvfp4")])
def test_all_vectors_of_a_model_in_one_batch(name: str) -> None:
    vecs = [loads_strict(p.read_bytes()) for p in VECTORS if p.stem.startswith(name + "-")]
    model, _ = _model(name)
    for mode in {v["id"][len(name) + 1:-3] for v in vecs}:
        group = [v for v in vecs if v["id"][len(name) + 1:-3] == mode]
        p = group[0]["params"]
        got = model.generate([v["input_ids"] for v in reversed(group)], max_new_tokens=p["max_new_tokens"],
                             **{k: p[k] for k in PARAM_KEYS})
        assert [g.output_digest for g in reversed(got)] == [v["output_digest"] for v in group]
