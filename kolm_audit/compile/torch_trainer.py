"""The float trainer (``trainer.kind = "torch"``, spec ``kolm.train-torch/1``): full fine-tune in torch on CPU.

Every weight of the BERT base and a linear head on its mean-pooled output are fine-tuned with AdamW in float32, in
a child process whose environment compile sets before torch starts: ``ATEN_CPU_CAPABILITY=default``,
``MKL_CBWR=COMPATIBLE``, ``ONEDNN_MAX_CPU_ISA=SSE41``, ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = the recipe's
``threads`` (default 1), ``PYTHONHASHSEED=0``, no GPU; inside, ``torch.manual_seed(seed)`` and
``torch.use_deterministic_algorithms(True)``; batches follow the exact trainer's counter-based order
(docs/training-spec.md §3). The fine-tuned weights are then quantized with the runtime's quantizer (float64
element-wise arithmetic, the same bytes for the same float32 input) into a ``task.pooling = "mean"`` classifier.

Promise: **the same artifact in the same recorded environment only.** Float training changes with the CPU's
instruction set, the BLAS kernels and the thread count (docs/reproducibility.md measures by how much); the
environment is recorded in ``provenance.build.environment`` (and the CPU in the provenance statement), and
``rebuild`` says ``environment-differs`` when it is not the same.

Example::

    >>> sorted(pinned_environment(threads=1))                        # doctest: +NORMALIZE_WHITESPACE
    ['ATEN_CPU_CAPABILITY', 'CUDA_VISIBLE_DEVICES', 'HF_HUB_OFFLINE', 'MKL_CBWR', 'MKL_NUM_THREADS',
     'OMP_NUM_THREADS', 'ONEDNN_MAX_CPU_ISA', 'PYTHONHASHSEED', 'TOKENIZERS_PARALLELISM', 'TRANSFORMERS_VERBOSITY']
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kolm_audit.compile.exact_math import decimal_fixed
from kolm_audit.compile.features import encoder
from kolm_audit.compile.hf import HFCheckpoint
from kolm_audit.compile.progress import no_bars
from kolm_audit.compile.quantize import quantize_linear
from kolm_audit.compile.trainer import TrainContext, Trained
from kolm_audit.errors import InputError

TRAIN_SPEC = "kolm.train-torch/1"
DEFAULTS = {"algorithm": "full", "optimizer": "adamw", "weight_decay": "0.01", "max_tokens": 128, "threads": 1}


def pinned_environment(*, threads: int) -> dict[str, str]:
    """The environment variables compile sets for the training process (before torch is imported there)."""
    return {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONHASHSEED": "0",
            "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error"}


def run_worker(module: str, job: Mapping[str, Any], *, folder: Path, environment: Mapping[str, str | None],
               recipe_file: str) -> dict[str, Any]:
    """Run ``python -m module folder/job.json`` with ``environment`` over this process's (``None`` unsets a
    variable) and return the JSON object the worker prints last. Every torch trainer starts its worker here."""
    (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = {**os.environ, **environment}
    env = {k: v for k, v in env.items() if v is not None}
    cmd = [sys.executable, "-m", module, str(folder / "job.json")]
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise InputError("the torch trainer failed (its error is printed above)", file=recipe_file,
                         field="trainer", actual=f"exit status {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.decode("utf-8").strip().splitlines()[-1])
    return result


def _settings(table: Mapping[str, Any], file: str) -> dict[str, Any]:
    s = {**DEFAULTS, **dict(table)}
    decimal_fixed(str(s["learning_rate"]), 32, field="trainer.learning_rate", low=1)     # a positive decimal
    decimal_fixed(str(s["weight_decay"]), 32, field="trainer.weight_decay")
    return s


class PinnedTorchTrainer:
    """What the torch trainers share: ``kind = "torch"`` and the pinned environment of their worker process.

    ``env_overrides`` replaces pinned variables, ``None`` unsets one (used only to measure what they change,
    bench/repro_matrix.py; the values used are what the manifest records)."""

    kind = "torch"

    def __init__(self, *, env_overrides: Mapping[str, str | None] | None = None) -> None:
        self.env_overrides = dict(env_overrides or {})

    def environment(self, threads: int) -> dict[str, str | None]:
        return {**pinned_environment(threads=threads), **self.env_overrides}


class TorchTrainer(PinnedTorchTrainer):
    """``trainer.kind = "torch"`` for ``task.kind = "classify"`` (see the module docstring)."""

    spec = TRAIN_SPEC

    def train(self, ctx: TrainContext) -> Trained:
        from kolm_audit import __version__

        recipe = ctx.recipe
        s = _settings(recipe.trainer, str(recipe.path))
        clock = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="kolm-torch-") as tmp:
            job = {"base_dir": str(recipe.base_path), "seed": recipe.seed, "labels": len(recipe.labels),
                   "train_ids": [list(x) for x in ctx.ids.train], "train_labels": list(ctx.data.train.labels),
                   "epochs": s["epochs"], "batch_size": s["batch_size"], "learning_rate": str(s["learning_rate"]),
                   "weight_decay": str(s["weight_decay"]), "max_tokens": s["max_tokens"],
                   "max_steps": s.get("max_steps"), "threads": s["threads"], "out": tmp,
                   "progress": ctx.bars is not no_bars}
            result = run_worker("kolm_audit.compile.torch_worker", job, folder=Path(tmp),
                                environment=self.environment(s["threads"]), recipe_file=str(recipe.path))
            from safetensors.numpy import load_file

            weights = load_file(str(Path(tmp) / "encoder.safetensors"))
            head = load_file(str(Path(tmp) / "head.safetensors"))
        train_ms = int((time.perf_counter() - clock) * 1000)
        tuned = HFCheckpoint(path=ctx.base.path, config=ctx.base.config, tensors=weights,
                             tokenizer_json=ctx.base.tokenizer_json, file_digests=ctx.base.file_digests)
        enc = encoder(tuned, scheme=recipe.scheme)
        head_q = quantize_linear(np.asarray(head["weight"], dtype=np.float64), np.asarray(head["bias"], np.float64),
                                 "classifier", scheme=recipe.scheme)
        environment = {**{k: v for k, v in self.environment(s["threads"]).items()
                          if k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")},
                       "threads": int(s["threads"]), **result["environment"]}
        build = {"trainer": self.kind, "trainer_spec": self.spec, "algorithm": s["algorithm"],
                 "hyperparameters": {k: s[k] for k in ("optimizer", "epochs", "batch_size", "learning_rate",
                                                        "weight_decay", "max_tokens") if k in s}
                 | ({"max_steps": s["max_steps"]} if "max_steps" in s else {}),
                 "steps": int(result["steps"]), "environment": environment,
                 "promise": "same recorded environment only"}
        toolchain = {"kolm_audit": __version__, **{k: str(result["environment"][k])
                                                    for k in ("python", "numpy", "torch", "transformers")}}
        return Trained(architecture=enc.architecture,
                       task={"kind": "classify", "pooling": "mean", "labels": list(recipe.labels)},
                       quantization=enc.quantization, tensors=dict(sorted({**enc.tensors, **head_q}.items())),
                       build=build, toolchain=toolchain,
                       promise="float training: the same artifact only in the same recorded environment "
                               "(provenance.build.environment); rebuild elsewhere says environment-differs",
                       machine={"runtime_backend": ctx.backend, "torch_cpu_capability": result["cpu_capability"]},
                       timings_ms={"train": train_ms})
