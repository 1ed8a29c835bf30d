"""What a trainer gets and gives back, and the registry of trainers by ``(task.kind, trainer.kind)``.

A trainer turns a checked recipe, its base checkpoint and its data (texts already tokenized and length-checked by
:mod:`kolm_audit.compile.build`) into the artifact's contents: architecture, task, quantization, integer tensors, the
``provenance.build`` settings and toolchain it records, and — when it can compute them without running the artifact
— the decisions the artifact will make on the eval and probe texts (the exact trainer can; they are then checked
against every backend by V). New algorithms (``task.kind = "generate"``) register here with their own trainer.

Example::

    >>> trainer_for("classify", "exact").spec
    'kolm.train-exact/1'
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kolm_audit.compile.data import TrainingData
from kolm_audit.compile.hf import HFCheckpoint
from kolm_audit.compile.progress import Bars
from kolm_audit.compile.recipe import Recipe
from kolm_audit.errors import ConfigError

Decision = tuple[int, tuple[int, ...]]          # (label index, Q.16 scores) — what a classifier reports


@dataclass(frozen=True)
class TokenizedData:
    """Token ids of every text compile feeds the model (train, eval, each probe variant) and the probe groups."""

    train: Sequence[Sequence[int]]
    eval: Sequence[Sequence[int]]
    probes: Sequence[Sequence[int]]
    probe_groups: Sequence[int]                # probe index of each entry of ``probes``


@dataclass(frozen=True)
class TrainContext:
    recipe: Recipe
    base: HFCheckpoint
    data: TrainingData
    ids: TokenizedData
    backend: str                               # runtime backend for features and checks (never changes a byte)
    threads: int | None
    bars: Bars


@dataclass(frozen=True)
class Trained:
    """A trainer's output: the artifact's contents and what the manifest and the provenance record about it."""

    architecture: Mapping[str, Any]
    task: Mapping[str, Any]
    quantization: Mapping[str, Any]
    tensors: Mapping[str, np.ndarray]
    build: Mapping[str, Any]                   # provenance.build entries (hashed: recomputable settings only)
    toolchain: Mapping[str, str]               # provenance.toolchain (versions that define the bytes)
    promise: str                               # what reproducibility the trainer promises (shown to the user)
    expected_eval: Sequence[Decision] | None = None
    expected_probes: Sequence[int] | None = None
    machine: Mapping[str, Any] = field(default_factory=dict)   # facts for the provenance statement only
    timings_ms: Mapping[str, int] = field(default_factory=dict)


class Trainer(Protocol):
    kind: str                                  # trainer.kind in the recipe
    spec: str                                  # the versioned specification it implements

    def train(self, ctx: TrainContext) -> Trained: ...


_TRAINERS: Mapping[tuple[str, str], str] = {
    ("classify", "exact"): "kolm_audit.compile.exact:ExactTrainer",
    ("classify", "torch"): "kolm_audit.compile.torch_trainer:TorchTrainer",
    ("generate", "torch"): "kolm_audit.compile.gen_trainer:GenerateTrainer",
}


def trainer_for(task: str, kind: str) -> Trainer:
    """The trainer for ``task.kind`` × ``trainer.kind`` (:class:`ConfigError` naming ``trainer.kind`` otherwise)."""
    target = _TRAINERS.get((task, kind))
    if target is None:
        known = sorted(k for t, k in _TRAINERS if t == task)
        raise ConfigError(f"no trainer {kind!r} for task {task!r}", field="trainer.kind",
                          expected=" | ".join(known) or "a supported task", actual=repr(kind))
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)()
