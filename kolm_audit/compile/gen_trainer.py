"""The generator trainer (``task.kind = "generate"``, ``trainer.kind = "torch"``, spec ``kolm.train-generate/1``).

The recipe's ``[[trainer.stages]]`` run in order on one Llama-family model (HF ``LlamaForCausalLM``, float32) in a
child process (:mod:`kolm_audit.compile.gen_worker`) started by the float trainer's launcher
(:func:`kolm_audit.compile.torch_trainer.run_worker`) with the same pinned environment
(:func:`kolm_audit.compile.torch_trainer.pinned_environment`). Each stage names its ``algorithm`` (sft, lora, dpo,
kto, orpo, simpo, distill: docs/compile.md), its data entry and its hyper-parameters. The trained weights are
quantized with the runtime's Llama quantizer (:func:`kolm_audit.compile.llama.quantize_llama`); LoRA adapters are
merged into the weights before that.

Checked here, before the worker starts (exit 2 naming the field): decimals, a LoRA target that names no module, a
teacher whose pinned files, tokenizer or vocabulary differ from the student's.

Promise: **the same artifact in the same recorded environment only** (float training; docs/reproducibility.md).

Example::

    >>> GenerateTrainer().spec
    'kolm.train-generate/1'
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kolm_audit.compile.exact_math import decimal_fixed
from kolm_audit.compile.features import check_pins
from kolm_audit.compile.gen_data import Encoder, GenerateData
from kolm_audit.compile.hf import HFCheckpoint, read_hf_checkpoint
from kolm_audit.compile.llama import LINEARS, llama_architecture, quantize_llama
from kolm_audit.compile.progress import Bars, no_bars
from kolm_audit.compile.recipe import Recipe
from kolm_audit.compile.torch_trainer import PinnedTorchTrainer, run_worker
from kolm_audit.compile.trainer import Trained
from kolm_audit.errors import ConfigError, InputError

TRAIN_SPEC = "kolm.train-generate/1"
_DECIMALS = ("learning_rate", "weight_decay", "beta", "gamma", "lambda", "desirable_weight", "undesirable_weight",
             "temperature", "sft_weight")
_POSITIVE = ("learning_rate", "temperature")


@dataclass(frozen=True)
class GenerateContext:
    recipe: Recipe
    base: HFCheckpoint
    architecture: Mapping[str, Any]
    data: GenerateData
    encoder: Encoder
    bars: Bars = no_bars


def module_names(architecture: Mapping[str, Any]) -> list[str]:
    """The names of every linear module of the Llama model (LoRA targets match a suffix of one)."""
    layers = range(int(architecture["num_hidden_layers"]))
    return [f"model.layers.{i}.{n}" for i in layers for n in LINEARS] + ["lm_head"]


def _check_lora(lora: Mapping[str, Any], architecture: Mapping[str, Any], *, file: str, where: str) -> None:
    names = module_names(architecture)
    for j, target in enumerate(lora["targets"]):
        if not any(n == target or n.endswith("." + target) for n in names):
            raise ConfigError("the LoRA target names no linear module of the model", file=file,
                              field=f"{where}.lora.targets[{j}]",
                              expected="a suffix of a module name: " + " | ".join(n.split(".", 3)[-1] for n in
                                                                               names[:len(LINEARS)]) + " | lm_head",
                              actual=repr(target))


def _teacher(stage: Mapping[str, Any], ctx: GenerateContext, where: str) -> str:
    """Check the distillation teacher (pinned files, same tokenizer, same vocabulary); returns its folder."""
    recipe, file = ctx.recipe, str(ctx.recipe.path)
    path = Path(stage["teacher"]["path"])
    path = path if path.is_absolute() else recipe.path.parent / path
    teacher = read_hf_checkpoint(path)
    check_pins(teacher, stage["teacher"]["files"], recipe_file=file, field=f"{where}.teacher.files")
    arch = llama_architecture(teacher.config, file=str(path / "config.json"))
    if json.loads(teacher.tokenizer_json) != json.loads(ctx.base.tokenizer_json):
        raise InputError("the teacher's tokenizer differs from the student's: their logits are not over the same "
                         "tokens", file=str(path / "tokenizer.json"), field=f"{where}.teacher",
                         expected=f"the tokenizer of {ctx.recipe.base_path / 'tokenizer.json'}")
    if arch["vocab_size"] != ctx.architecture["vocab_size"]:
        raise InputError("the teacher's vocabulary size differs from the student's", file=str(path / "config.json"),
                         field="vocab_size", expected=str(ctx.architecture["vocab_size"]),
                         actual=str(arch["vocab_size"]))
    return str(path)


def _stage_job(ctx: GenerateContext, i: int, stage: Mapping[str, Any]) -> dict[str, Any]:
    where, file = f"trainer.stages[{i}]", str(ctx.recipe.path)
    for name in _DECIMALS:
        if name in stage:
            decimal_fixed(str(stage[name]), 32, field=f"{where}.{name}", low=1 if name in _POSITIVE else 0)
    job = {k: v for k, v in stage.items() if k not in ("lora", "teacher")}
    if stage["algorithm"] == "lora":
        _check_lora(stage["lora"], ctx.architecture, file=file, where=where)
        job["lora"] = {"rank": stage["lora"]["rank"], "alpha": stage["lora"]["alpha"],
                       "targets": list(stage["lora"]["targets"])}
    if stage["algorithm"] == "distill":
        job["teacher_dir"] = _teacher(stage, ctx, where)
        job["teacher_files"] = dict(stage["teacher"]["files"])             # recorded in provenance.build
    rows = ctx.encoder.rows(ctx.data.files[str(stage["data"])])
    job["rows"] = rows
    per_epoch = -(-len(rows) // int(stage["batch_size"]))
    job["total_steps"] = min(int(stage.get("max_steps") or 10**9), int(stage["epochs"]) * per_epoch)
    return job


class GenerateTrainer(PinnedTorchTrainer):
    """``trainer.kind = "torch"`` for ``task.kind = "generate"`` (see the module docstring)."""

    spec = TRAIN_SPEC

    def train(self, ctx: GenerateContext) -> Trained:
        from kolm_audit import __version__

        recipe = ctx.recipe
        threads = int(recipe.trainer.get("threads", 1))
        stages = [_stage_job(ctx, i, dict(s)) for i, s in enumerate(recipe.trainer["stages"])]
        seeded = recipe.document["base"].get("init", "weights") == "seed"
        job = {"config": dict(ctx.base.config), "weights_dir": None if seeded else str(recipe.base_path),
               "seed": recipe.seed, "threads": threads, "pad_id": int(ctx.base.config.get("pad_token_id") or 0),
               "stages": stages, "progress": ctx.bars is not no_bars}
        clock = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="kolm-gen-") as tmp:
            job["out"] = tmp
            result = run_worker("kolm_audit.compile.gen_worker", job, folder=Path(tmp),
                                environment=self.environment(threads), recipe_file=str(recipe.path))
            from safetensors.numpy import load_file

            weights = {k: np.asarray(v) for k, v in load_file(str(Path(tmp) / "model.safetensors")).items()}
        train_ms = int((time.perf_counter() - clock) * 1000)
        tuned = HFCheckpoint(path=ctx.base.path, config=ctx.base.config, tensors=weights,
                             tokenizer_json=ctx.base.tokenizer_json, file_digests=ctx.base.file_digests)
        qm = quantize_llama(tuned, scheme=recipe.scheme)
        env = self.environment(threads)
        environment = {**{k: env[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")},
                       "threads": threads, **result["environment"]}
        build = {"trainer": self.kind, "trainer_spec": self.spec, "init": "seed" if seeded else "weights",
                 "stages": [{**{k: v for k, v in s.items() if k not in ("rows", "teacher_dir", "total_steps")},
                             "steps": int(r["steps"]),
                             **({"merged_adapters": int(r["merged_adapters"])} if s["algorithm"] == "lora" else {})}
                            for s, r in zip(stages, result["stages"], strict=True)],
                 "environment": environment, "promise": "same recorded environment only"}
        measures = [{"algorithm": r["algorithm"], "before": {k: f"{v:.6f}" for k, v in r["before"].items()},
                     "after": {k: f"{v:.6f}" for k, v in r["after"].items()}} for r in result["stages"]]
        toolchain = {"kolm_audit": __version__, **{k: str(result["environment"][k])
                                                    for k in ("python", "numpy", "torch", "transformers")}}
        return Trained(architecture=qm.architecture, task=qm.task, quantization=qm.quantization, tensors=qm.tensors,
                       build=build, toolchain=toolchain,
                       promise="float training: the same artifact only in the same recorded environment "
                               "(provenance.build.environment); rebuild elsewhere says environment-differs",
                       machine={"torch_cpu_capability": result["cpu_capability"], "training_measures": measures},
                       timings_ms={"train": train_ms})
