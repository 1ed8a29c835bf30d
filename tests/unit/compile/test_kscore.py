"""The K-score (docs/training-spec.md §8): per-mille components from counts, K, and the gate verdict."""

from __future__ import annotations

import numpy as np
import pytest

from kolm_audit.artifact.manifest import build_manifest, empty_provenance, gate_failed
from kolm_audit.compile import kscore as ks
from kolm_audit.errors import SchemaError

MINILM = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}


def _doc(**kw: object) -> dict:
    args: dict = dict(accuracy=(950, 1000), probes=(59, 60),
                      latency=ks.Latency(p95_tokens=40, macs=10**9, macs_per_second=10**11, budget_us=5_000),
                      cost=ks.Cost(total_macs=3 * 10**11, decisions=1000, price_per_tera_macs=1000,
                                   price_unit="micro-EUR", budget_per_1000=150),
                      verify=(1000, 1000), backends=("numpy", "cpu"), batch_sizes=(1, 16), min_k=0,
                      min_components={})
    args.update(kw)
    return ks.kscore(**args)


def test_components_are_the_documented_integers() -> None:
    doc = _doc()
    # L: estimate = ceil(1e9 * 1e6 / 1e11) = 10000 us > budget 5000 -> 500; C: cost = ceil(1000*3e11*1000/(1000*1e12))
    # = 300 per 1000 > budget 150 -> 500
    assert doc["components"] == {"A": 950, "S": 983, "L": 500, "C": 500, "V": 1000}
    assert doc["k"] == (400 * 950 + 150 * 983 + 150 * 500 + 150 * 500 + 150 * 1000) // 1000 == 827
    assert doc["inputs"]["L"]["estimate_us"] == 10_000 and doc["inputs"]["C"]["cost_per_1000"] == 300
    assert doc["weights"] == {"A": 400, "S": 150, "L": 150, "C": 150, "V": 150}
    assert doc["gate"] == {"min_k": 0, "min_components": {}, "passed": True, "failed": []}


def test_the_gate_names_every_failing_component_and_k() -> None:
    doc = _doc(min_k=900, min_components={"A": 960, "S": 950, "L": 400})
    assert doc["gate"]["passed"] is False and doc["gate"]["failed"] == ["A", "k"]
    assert ks.describe_failure(doc) == "A 950 < 960; K 827 < 900"


def test_v_below_1000_always_fails() -> None:
    doc = _doc(verify=(999, 1000))
    assert doc["components"]["V"] == 999 and doc["gate"]["failed"] == ["V"]
    assert "outputs differ between backends or batch sizes" in ks.describe_failure(doc)


def test_caps_zero_cost_and_no_probes() -> None:
    doc = _doc(probes=(0, 0), latency=ks.Latency(p95_tokens=1, macs=1, macs_per_second=10**12, budget_us=1),
               cost=ks.Cost(total_macs=10, decisions=1, price_per_tera_macs=0, price_unit="x", budget_per_1000=0))
    assert doc["components"]["S"] == 0 and doc["components"]["L"] == 1000 and doc["components"]["C"] == 1000


@pytest.mark.parametrize(("n", "index"), [(1, 0), (2, 1), (20, 18), (100, 94), (300, 284)])
def test_p95_is_the_nearest_rank(n: int, index: int) -> None:
    assert ks.p95_index(n) == index


def test_bert_macs_count_every_matrix_product() -> None:
    t = 10
    per_layer = t * (4 * 384 * 384 + 2 * 384 * 1536) + 2 * t * t * 384
    assert ks.bert_macs(MINILM, tokens=t, labels=5, pooling="mean") == 6 * per_layer + 5 * 384
    assert ks.bert_macs(MINILM, tokens=t, labels=5, pooling="cls-pooler") == 6 * per_layer + 5 * 384 + 384 * 384


def test_the_document_is_a_valid_manifest_kscore() -> None:
    for doc in (_doc(), _doc(min_k=900)):
        m = build_manifest(name="t", version="1", task={"kind": "classify", "labels": ["a", "b"]},
                           architecture={"family": "bert"}, quantization={"scheme": "int8"},
                           tensors={"w": np.zeros(2, np.int8)}, provenance=empty_provenance(),
                           created="2026-01-01T00:00:00Z", kscore=doc)
        assert gate_failed(m["kscore"]) is (not doc["gate"]["passed"])
    broken = _doc()
    broken["components"]["A"] = 1001
    with pytest.raises(SchemaError, match="1001"):
        build_manifest(name="t", version="1", task={"kind": "classify", "labels": ["a", "b"]},
                       architecture={"family": "bert"}, quantization={"scheme": "int8"},
                       tensors={"w": np.zeros(2, np.int8)}, provenance=empty_provenance(),
                       created="2026-01-01T00:00:00Z", kscore=broken)
