"""Compile benchmark: the shipped loan-triage example, exact integer head vs a float baseline on the same features.

    python bench/bench_compile.py [--recipe examples/loan-triage/recipe.toml] [--skip-compile]

1. ``kolm-audit compile`` of the recipe in a fresh process (wall time, the phase timings of its report, K-score).
2. The same frozen features (the int8 base on the exact runtime, extracted once here), then on them:
   the exact trainer (integer SGD + int8 head: the artifact's decisions), the same SGD-with-momentum loop in float64
   numpy, and scikit-learn's ``LogisticRegression`` (L-BFGS, default C=1) on the raw and on standardized features —
   accuracy on the eval split of each, the difference in points, and the training-time ratio to scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kolm_audit.compile import exact_math as em  # noqa: E402
from kolm_audit.compile.build import tokenize_data  # noqa: E402
from kolm_audit.compile.data import load_data  # noqa: E402
from kolm_audit.compile.exact import ExactParams, head_logits, train_head  # noqa: E402
from kolm_audit.compile.features import Featurizer, encoder, load_base  # noqa: E402
from kolm_audit.compile.recipe import load_recipe  # noqa: E402


def compile_once(recipe: Path) -> dict:
    from kolm_audit.keys import generate_key, write_keypair

    with tempfile.TemporaryDirectory() as tmp:
        key, _ = write_keypair(generate_key(key_type="ed25519"), Path(tmp), name="k")
        clock = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "from kolm_audit.cli import main; main()", "compile",
                               str(recipe), "--out", f"{tmp}/m.kolm", "--key", str(key), "--json"],
                              capture_output=True, text=True, check=False, env=dict(os.environ))
        wall = time.perf_counter() - clock
    if proc.returncode not in (0, 1):
        raise SystemExit(proc.stderr)
    report = json.loads(proc.stdout)
    report["wall_s"] = wall
    return report


def float_sgd(x: np.ndarray, y: np.ndarray, xe: np.ndarray, *, labels: int, params: ExactParams, seed: int
              ) -> np.ndarray:
    """The exact trainer's algorithm (same order, zero init, momentum, linear decay) in float64: eval predictions."""
    xa = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w = np.zeros((labels, xa.shape[1]))
    v = np.zeros_like(w)
    lr, mu = params.learning_rate / 2**16, params.momentum / 2**16
    steps = params.epochs * -(-len(x) // params.batch_size)
    t = 0
    for epoch in range(params.epochs):
        order = em.epoch_order(seed, epoch, len(x))
        for start in range(0, len(x), params.batch_size):
            idx = order[start:start + params.batch_size]
            z = xa[idx] @ w.T
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            v = mu * v + p.T @ xa[idx] / len(idx)
            rate = lr * (steps - t) / steps if params.schedule == "linear" else lr
            w -= rate * v
            t += 1
    return np.argmax(np.concatenate([xe, np.ones((len(xe), 1))], axis=1) @ w.T, axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "examples" / "loan-triage" / "recipe.toml")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--backend", default="cpu")
    args = parser.parse_args()
    if not args.skip_compile:
        rep = compile_once(args.recipe)
        k = rep["kscore"]
        print(f"compile {args.recipe.name}: {rep['wall_s']:.1f} s wall (fresh process), phases {rep['timings_ms']} ms")
        print(f"  K {k['k']} {k['components']} gate passed: {k['gate']['passed']}  digest {rep['artifact_digest']}")
    recipe = load_recipe(args.recipe)
    data = load_data(recipe)
    base = load_base(recipe)
    ids = tokenize_data(base, data)
    clock = time.perf_counter()
    feats = Featurizer(encoder(base, scheme="int8"), backend=args.backend)
    x, xe = feats.embed(ids.train), feats.embed(ids.eval)
    print(f"features ({feats.backend}): {len(ids.train) + len(ids.eval)} texts, "
          f"{sum(map(len, ids.train)) + sum(map(len, ids.eval))} tokens, {time.perf_counter() - clock:.1f} s")
    y, ye = np.array(data.train.labels), np.array(data.eval.labels)
    params = ExactParams.from_table(recipe.trainer)
    clock = time.perf_counter()
    run = train_head(x, y, labels=len(recipe.labels), params=params, seed=recipe.seed)
    exact_s = time.perf_counter() - clock
    head = em.int8_head(run.weights)
    acc_exact = float(np.mean(np.argmax(head_logits(head, xe), axis=1) == ye))
    acc_master = float(np.mean(np.argmax(em.logits(run.weights, em.augment(xe)), axis=1) == ye))
    acc_float_sgd = float(np.mean(float_sgd(x / 2**16, y, xe / 2**16, labels=len(recipe.labels), params=params,
                                            seed=recipe.seed) == ye))
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clock = time.perf_counter()
    raw = LogisticRegression(max_iter=5000).fit(x / 2**16, y)
    sk_s = time.perf_counter() - clock
    acc_raw = float(raw.score(xe / 2**16, ye))
    std = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x / 2**16, y)
    acc_std = float(std.score(xe / 2**16, ye))
    n = len(ye)
    print(f"eval accuracy on {n} held-out messages (train {len(y)}):")
    print(f"  exact trainer, int8 head (the artifact)      {acc_exact:.4f}")
    print(f"  exact trainer, Q.24 master weights           {acc_master:.4f}")
    print(f"  same SGD loop in float64                     {acc_float_sgd:.4f}")
    print(f"  scikit-learn LogisticRegression (raw)        {acc_raw:.4f}")
    print(f"  scikit-learn LogisticRegression (standard.)  {acc_std:.4f}")
    best = max(acc_raw, acc_std)
    print(f"  exact - best float baseline: {100 * (acc_exact - best):+.2f} points (target within 2)")
    print(f"training time: exact {exact_s:.2f} s ({run.steps} steps) vs scikit-learn {sk_s:.2f} s: "
          f"ratio {exact_s / sk_s:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
