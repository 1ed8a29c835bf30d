"""The exact trainer (``trainer.kind = "exact"``, spec ``kolm.train-exact/1``, docs/training-spec.md).

The base stays frozen and runs on the exact runtime; its mean-pooled Q.16 features are the same bytes on every
backend. A linear classification head on those features is trained with integers only
(:mod:`kolm_audit.compile.exact_math`): Q.24 master weights from zero, the runtime's integer softmax, integer
cross-entropy gradients, SGD with momentum, shuffling from a counter-based SHA-256 stream keyed by the seed. The
trained head becomes the runtime's int8 ``classifier`` (``task.pooling = "mean"``, docs/runtime-spec.md §6.4).
Promise: the same artifact bytes on any machine, backend, thread count and BLAS.

Example::

    >>> import numpy as np
    >>> p = ExactParams.from_table({"kind": "exact", "epochs": 3, "batch_size": 2, "learning_rate": "1"})
    >>> x = np.array([[1 << 16, 0], [0, 1 << 16], [60000, 1000], [2000, 70000]])
    >>> run = train_head(x, np.array([0, 1, 0, 1]), labels=2, params=p, seed=7)
    >>> run.steps, run.epoch_correct[-1]
    (6, 4)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kolm_audit.compile import exact_math as em
from kolm_audit.compile.features import Featurizer, encoder
from kolm_audit.compile.progress import Bars, no_bars
from kolm_audit.compile.tables import exp_table
from kolm_audit.compile.trainer import TrainContext, Trained
from kolm_audit.errors import ConfigError, UnsupportedModel, naming_file
from kolm_audit.runtime.reference import linear
from kolm_audit.runtime.weights import load_linear


@dataclass(frozen=True, kw_only=True)
class ExactParams:
    """The exact trainer's hyper-parameters as exact integers (decimal strings of the recipe → fixed point)."""

    epochs: int
    batch_size: int
    learning_rate: int             # Q.16
    momentum: int                  # Q.16
    weight_decay: int              # Q.32
    schedule: str                  # "constant" | "linear"
    optimizer: str = "sgd-momentum"
    text: Mapping[str, str] | None = None     # the recipe's decimal strings, recorded as written

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= em.MAX_BATCH or self.epochs < 1:
            raise ConfigError("epochs >= 1 and 1 <= batch_size <= 4096", field="trainer")
        if self.schedule not in ("constant", "linear") or self.optimizer != "sgd-momentum":
            raise ConfigError("unknown schedule or optimizer", field="trainer",
                              expected="schedule constant | linear, optimizer sgd-momentum")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> ExactParams:
        """From the recipe's ``[trainer]`` table (already schema-checked); fields not given take the defaults."""
        text = {"learning_rate": str(table["learning_rate"]), "momentum": str(table.get("momentum", "0.9")),
                "weight_decay": str(table.get("weight_decay", "0"))}
        return cls(epochs=int(table["epochs"]), batch_size=int(table["batch_size"]),
                   learning_rate=em.decimal_fixed(text["learning_rate"], em.LR_FRAC, field="trainer.learning_rate",
                                                  low=1, high=em.MAX_LR),
                   momentum=em.decimal_fixed(text["momentum"], em.MOMENTUM_FRAC, field="trainer.momentum",
                                             high=(1 << em.MOMENTUM_FRAC) - 1),
                   weight_decay=em.decimal_fixed(text["weight_decay"], em.DECAY_FRAC, field="trainer.weight_decay",
                                                 high=(1 << em.DECAY_FRAC) - 1),
                   schedule=str(table.get("schedule", "linear")), optimizer=str(table.get("optimizer", "sgd-momentum")),
                   text=text)

    def to_manifest(self) -> dict[str, Any]:
        """The settings as recorded in ``provenance.build.hyperparameters`` (integers and strings only)."""
        return {"optimizer": self.optimizer, "epochs": self.epochs, "batch_size": self.batch_size,
                "schedule": self.schedule, "learning_rate_q16": self.learning_rate, "momentum_q16": self.momentum,
                "weight_decay_q32": self.weight_decay, **dict(self.text or {})}


@dataclass(frozen=True)
class HeadRun:
    """The result of :func:`train_head`: Q.24 master weights ``[L, K+1]`` (bias last) and what happened."""

    weights: np.ndarray
    steps: int
    epoch_correct: tuple[int, ...]         # train examples predicted right per epoch (before each update)


def train_head(x: np.ndarray, y: np.ndarray, *, labels: int, params: ExactParams, seed: int,
               bars: Bars = no_bars) -> HeadRun:
    """Train the head on Q.16 features ``x`` [N, K] with label indexes ``y`` [N] (docs/training-spec.md §5)."""
    xa = em.augment(x)                                                  # [N,K+1] Q.16, bias column 2^16
    y = np.asarray(y, dtype=np.int64)
    n = xa.shape[0]
    table = exp_table().astype(np.int64)
    w = np.zeros((labels, xa.shape[1]), dtype=np.int64)                 # [L,K+1] Q.24 master weights
    v = np.zeros_like(w)                                                # [L,K+1] Q.24 momentum
    per_epoch = -(-n // params.batch_size)
    total = params.epochs * per_epoch
    step = 0
    history = []
    bar = bars("training", total=total, unit="step")
    try:
        for epoch in range(params.epochs):
            order = em.epoch_order(seed, epoch, n)
            correct = 0
            for start in range(0, n, params.batch_size):
                idx = order[start:start + params.batch_size]
                xb, yb = xa[idx], y[idx]                                # [B,K+1] Q.16, [B]
                correct += int(np.sum(np.argmax(em.logits(w, xb), axis=1) == yb))
                g = em.gradient(w, xb, yb, table)                       # [L,K+1] Q.24
                lr = em.learning_rate(params.learning_rate, step, total, params.schedule)
                w, v = em.sgd_momentum(w, v, g, lr=lr, momentum=params.momentum, decay=params.weight_decay)
                step += 1
                bar.update(1)
            history.append(correct)
            bar.set_postfix_str(f"epoch {epoch + 1}: {correct}/{n} right")
    finally:
        bar.close()
    return HeadRun(weights=w, steps=step, epoch_correct=tuple(history))


def head_logits(head: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Q.16 logits ``[N, L]`` of the int8 head on Q.16 features: exactly the runtime's ``linear`` of §6.4."""
    return linear(np.asarray(x, dtype=np.int64), load_linear(head, "classifier", scheme="int8"))


def predictions(logits: np.ndarray) -> list[tuple[int, tuple[int, ...]]]:
    """(label index with lowest-index ties, Q.16 scores) of each row, as the runtime reports a decision."""
    return [(int(np.argmax(row)), tuple(int(v) for v in row.astype(np.int32).tolist())) for row in logits]


def probe_agreement(labels: Sequence[int], groups: Sequence[int]) -> int:
    """How many probe groups got one label for all their variants (``groups[i]`` = probe of variant ``i``)."""
    seen: dict[int, set[int]] = {}
    for label, group in zip(labels, groups, strict=True):
        seen.setdefault(group, set()).add(label)
    return sum(len(s) == 1 for s in seen.values())


class ExactTrainer:
    """``trainer.kind = "exact"`` for ``task.kind = "classify"`` (see the module docstring)."""

    kind = "exact"
    spec = em.TRAIN_SPEC

    def train(self, ctx: TrainContext) -> Trained:
        from kolm_audit import __version__

        recipe = ctx.recipe
        if recipe.scheme != "int8":
            raise UnsupportedModel("the exact trainer builds int8 artifacts", file=str(recipe.path),
                                   field="quantization.scheme", expected="int8", actual=recipe.scheme)
        with naming_file(str(recipe.path)):
            params = ExactParams.from_table(recipe.trainer)
        clock = time.perf_counter()
        enc = encoder(ctx.base, scheme="int8")
        feats = Featurizer(enc, backend=ctx.backend, threads=ctx.threads)
        x_train = feats.embed(ctx.ids.train, bars=ctx.bars, desc="features: train")   # [N,H] int32 Q.16
        x_eval = feats.embed(ctx.ids.eval, bars=ctx.bars, desc="features: eval")
        x_probe = feats.embed(ctx.ids.probes, bars=ctx.bars, desc="features: probes")
        features_ms = int((time.perf_counter() - clock) * 1000)
        clock = time.perf_counter()
        with naming_file(str(recipe.path)):
            run = train_head(x_train, np.asarray(ctx.data.train.labels), labels=len(recipe.labels), params=params,
                             seed=recipe.seed, bars=ctx.bars)
        head = em.int8_head(run.weights)
        train_ms = int((time.perf_counter() - clock) * 1000)
        expected_probes = [d[0] for d in predictions(head_logits(head, x_probe))] if len(x_probe) else []
        build = {"trainer": self.kind, "trainer_spec": self.spec, "hyperparameters": params.to_manifest(),
                 "steps": run.steps, "features": "mean-pooled Q.16 embeddings of the frozen int8 base (kolm-int/1)",
                 "train_correct_last_epoch": run.epoch_correct[-1]}
        return Trained(architecture=enc.architecture,
                       task={"kind": "classify", "pooling": "mean", "labels": list(recipe.labels)},
                       quantization=enc.quantization, tensors=dict(sorted({**enc.tensors, **head}.items())),
                       build=build, toolchain={"kolm_audit": __version__},
                       promise="exact: the same artifact bytes on any machine, backend and thread count",
                       expected_eval=predictions(head_logits(head, x_eval)), expected_probes=expected_probes,
                       machine={"feature_backend": feats.backend, "feature_threads": feats.model.threads},
                       timings_ms={"features": features_ms, "train": train_ms})
