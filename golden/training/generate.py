"""Generate the conformance vectors of ``kolm.train-exact/1`` (docs/training-spec.md §11). Run ONCE; refuses to
overwrite.

    python golden/training/generate.py

Writes ``golden/training/vectors/<kind>-<nn>.json`` (``kolm.training-vector/1``): random draws and epoch orders
(§3), decimal → fixed point (§5.1), single gradient + optimizer steps including saturation (§4–§5), head conversions
(§6) and complete small training runs (§5.2 + §6). Inputs come from a seeded numpy generator (only to *choose*
inputs; the outputs are computed by the reference implementation). Vectors of a released spec version are never
regenerated: ``tests/unit/compile/test_training_conformance.py`` checks that the reference still reproduces them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kolm_audit.canonical import digest, jcs  # noqa: E402
from kolm_audit.compile import exact_math as em  # noqa: E402
from kolm_audit.compile.exact import ExactParams, train_head  # noqa: E402
from kolm_audit.compile.tables import exp_table  # noqa: E402

OUT = Path(__file__).resolve().parent / "vectors"
SEED = 20261202


def _ints(a: np.ndarray) -> list:
    return np.asarray(a).astype(np.int64).tolist()


def head_sha256(head: dict[str, np.ndarray]) -> dict[str, str]:
    """sha256 of each head tensor's little-endian bytes (as a manifest records them)."""
    return {n: digest(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
            for n, a in sorted(head.items())}


def step_output(w: np.ndarray, v: np.ndarray, x: np.ndarray, y: np.ndarray, lr: int, mu: int,
                decay: int) -> dict:
    xa = em.augment(x)
    g = em.gradient(w, xa, y, exp_table().astype(np.int64))          # §4's G, before the decay term of §5.2
    w2, v2 = em.sgd_momentum(w, v, g, lr=lr, momentum=mu, decay=decay)
    return {"logits": _ints(em.logits(w, xa)), "gradient": _ints(g), "w": _ints(w2), "v": _ints(v2)}


def vectors() -> dict[str, dict]:
    rng = np.random.default_rng(SEED)
    out: dict[str, dict] = {}

    def add(kind: str, section: str, inp: dict, outp: dict) -> None:
        n = sum(1 for k in out if k.startswith(kind + "-"))
        vid = f"{kind}-{n:02d}"
        out[vid] = {"schema": "kolm.training-vector/1", "spec": em.TRAIN_SPEC, "id": vid, "kind": kind,
                    "section": section, "input": inp, "output": outp}

    for seed, purpose, counters in ((0, "shuffle", [0, 0]), (7, "shuffle", [3, 12]),
                                    ((1 << 53) - 1, "shuffle", [1, 2]), (42, "other", [])):
        add("draw", "§3", {"seed": seed, "purpose": purpose, "counters": counters},
            {"u64": str(em.draw_u64(seed, purpose.encode(), *counters))})
    for seed, epoch, n in ((0, 0, 10), (20260101, 3, 17), (7, 0, 1)):
        add("order", "§3", {"seed": seed, "epoch": epoch, "n": n}, {"order": em.epoch_order(seed, epoch, n).tolist()})
    for text, bits in (("0.9", 16), ("2", 16), ("0.0001", 32), ("1e-3", 16), ("0.5", 16), ("3.14159", 24),
                       ("0.00000762939453125", 16)):
        add("decimal", "§5.1", {"text": text, "frac_bits": bits},
            {"value": em.decimal_fixed(text, bits, field="vector")})
    for labels, k, b, scale, lr, mu, decay in ((2, 3, 4, 1 << 16, 1 << 16, 58982, 0),
                                              (3, 8, 5, 1 << 18, 131072, 58982, 429497),
                                              (4, 5, 1, (1 << 21) - 1, 1 << 20, 65535, 0),
                                              (5, 16, 7, 1 << 15, 6554, 0, 4294967295)):
        x = rng.integers(-scale, scale, size=(b, k), endpoint=True)
        w = rng.integers(-(1 << 27), 1 << 27, size=(labels, k + 1))
        v = rng.integers(-(1 << 33), 1 << 33, size=(labels, k + 1))
        y = rng.integers(0, labels, size=b)
        add("step", "§4-§5", {"w": _ints(w), "v": _ints(v), "x": _ints(x), "y": _ints(y), "lr_q16": lr,
                              "momentum_q16": mu, "decay_q32": decay}, step_output(w, v, x, y, lr, mu, decay))
    # saturation: weights and momentum at their limits
    w = np.full((2, 3), em.W_LIMIT, dtype=np.int64)
    w[1] = -em.W_LIMIT
    v = np.full((2, 3), em.V_LIMIT, dtype=np.int64)
    x = np.array([[(1 << 21) - 1, -(1 << 21) + 1]], dtype=np.int64)
    add("step", "§4-§5 saturation", {"w": _ints(w), "v": _ints(v), "x": _ints(x), "y": [1], "lr_q16": 1 << 20,
                                     "momentum_q16": 65535, "decay_q32": 0},
        step_output(w, v, x, np.array([1]), 1 << 20, 65535, 0))
    for w in (rng.integers(-(1 << 28), 1 << 28, size=(3, 9)), np.array([[0, 0, 0, 5], [1 << 24, -(1 << 23), 7, -9]]),
              rng.integers(-(1 << 30) + 1, 1 << 30, size=(5, 33))):
        head = em.int8_head(np.asarray(w, dtype=np.int64))
        add("head", "§6", {"w": _ints(w)}, {n.split(".")[1]: _ints(a) for n, a in sorted(head.items())})
    for n, k, labels, scale, trainer, seed in (
            (24, 6, 3, 1 << 16, {"epochs": 3, "batch_size": 5, "learning_rate": "2", "momentum": "0.9",
                                 "weight_decay": "0", "schedule": "linear"}, 1),
            (40, 16, 5, 1 << 17, {"epochs": 4, "batch_size": 8, "learning_rate": "0.5", "momentum": "0.5",
                                  "weight_decay": "0.001", "schedule": "constant"}, 20260101),
            (9, 4, 2, 1 << 20, {"epochs": 2, "batch_size": 4, "learning_rate": "16", "momentum": "0.99",
                                "weight_decay": "0", "schedule": "linear"}, 99)):
        centers = rng.integers(-scale, scale, size=(labels, k))
        y = rng.integers(0, labels, size=n)
        x = np.clip(centers[y] + rng.integers(-scale // 2, scale // 2, size=(n, k)), -(1 << 21) + 1, (1 << 21) - 1)
        params = ExactParams.from_table({"kind": "exact", **trainer})
        run = train_head(x, y, labels=labels, params=params, seed=seed)
        head = em.int8_head(run.weights)
        add("train", "§5.2 + §6", {"x": _ints(x), "y": _ints(y), "labels": labels, "seed": seed, "trainer": trainer},
            {"steps": run.steps, "epoch_correct": list(run.epoch_correct), "w": _ints(run.weights),
             "head": {name.split(".")[1]: _ints(a) for name, a in sorted(head.items())},
             "head_sha256": head_sha256(head)})
    return out


def main() -> int:
    plan = {OUT / f"{vid}.json": jcs(doc) + b"\n" for vid, doc in vectors().items()}
    existing = [p for p in plan if p.exists()]
    if existing:
        print(f"refusing to overwrite {len(existing)} existing training vectors (first: {existing[0]});"
              " vectors of a released spec are never regenerated", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for path, data in plan.items():
        path.write_bytes(data)
    print(f"wrote {len(plan)} vectors under {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
