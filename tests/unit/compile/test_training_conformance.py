"""The reference implementation reproduces every ``kolm.train-exact/1`` conformance vector exactly.

Vectors live in ``golden/training/vectors/`` (written once by ``golden/training/generate.py``, never regenerated):
docs/training-spec.md §3 (draws, epoch orders), §5.1 (decimals), §4–§5 (steps, with saturation), §6 (heads) and
complete small training runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kolm_audit.canonical import digest, loads_canonical
from kolm_audit.compile import exact_math as em
from kolm_audit.compile.exact import ExactParams, train_head
from kolm_audit.compile.tables import exp_table
from kolm_audit.schemas import validate

ROOT = Path(__file__).resolve().parents[3] / "golden" / "training" / "vectors"
VECTORS = sorted(ROOT.glob("*.json"))


def _load(path: Path) -> dict:
    doc = loads_canonical(path.read_bytes().removesuffix(b"\n"), file=str(path))
    validate(doc, "training-vector", source=str(path))
    return doc


def _head(w: np.ndarray) -> dict[str, list]:
    return {name.split(".")[1]: a.astype(np.int64).tolist() for name, a in sorted(em.int8_head(w).items())}


def test_every_kind_is_covered_and_saturation_is_exercised() -> None:
    kinds = {_load(p)["kind"] for p in VECTORS}
    assert kinds == {"draw", "order", "decimal", "step", "head", "train"}
    steps = [_load(p) for p in VECTORS if p.stem.startswith("step-")]
    assert any(em.W_LIMIT in np.abs(np.array(s["output"]["w"])) for s in steps)
    assert any(em.V_LIMIT in np.abs(np.array(s["output"]["v"])) for s in steps)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_reproduces_exactly(path: Path) -> None:
    vec = _load(path)
    inp, want = vec["input"], vec["output"]
    kind = vec["kind"]
    if kind == "draw":
        assert str(em.draw_u64(inp["seed"], inp["purpose"].encode(), *inp["counters"])) == want["u64"]
    elif kind == "order":
        assert em.epoch_order(inp["seed"], inp["epoch"], inp["n"]).tolist() == want["order"]
    elif kind == "decimal":
        assert em.decimal_fixed(inp["text"], inp["frac_bits"], field="t") == want["value"]
    elif kind == "step":
        w, v, x = (np.array(inp[k], dtype=np.int64) for k in ("w", "v", "x"))
        y = np.array(inp["y"], dtype=np.int64)
        xa = em.augment(x)
        assert em.logits(w, xa).tolist() == want["logits"]
        g = em.gradient(w, xa, y, exp_table().astype(np.int64))
        assert g.tolist() == want["gradient"]
        w2, v2 = em.sgd_momentum(w, v, g, lr=inp["lr_q16"], momentum=inp["momentum_q16"], decay=inp["decay_q32"])
        assert (w2.tolist(), v2.tolist()) == (want["w"], want["v"])
    elif kind == "head":
        assert _head(np.array(inp["w"], dtype=np.int64)) == want
    else:
        params = ExactParams.from_table({"kind": "exact", **inp["trainer"]})
        run = train_head(np.array(inp["x"]), np.array(inp["y"]), labels=inp["labels"], params=params,
                         seed=inp["seed"])
        assert run.steps == want["steps"] and list(run.epoch_correct) == want["epoch_correct"]
        assert run.weights.tolist() == want["w"]
        head = em.int8_head(run.weights)
        assert _head(run.weights) == want["head"]
        assert {n: digest(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
                for n, a in sorted(head.items())} == want["head_sha256"]
