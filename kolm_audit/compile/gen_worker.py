"""The child process of the generator trainer: ``python -m kolm_audit.compile.gen_worker JOB.json``.

Started by :class:`kolm_audit.compile.gen_trainer.GenerateTrainer` through the float trainer's pinned launcher
(:func:`kolm_audit.compile.torch_trainer.run_worker`: ``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``,
threads set before torch starts). It builds an HF ``LlamaForCausalLM`` (from the base's weights, or initialised from
the seed when the base has none), runs the recipe's stages in order — one training loop (:func:`train_stage`) for
every algorithm, the loss chosen from :mod:`kolm_audit.compile.losses` — merges LoRA adapters into the weights
after a ``lora`` stage, writes ``model.safetensors`` (HF names, float32) into ``job["out"]`` and prints one JSON
line: steps and the before/after measure of each stage (:func:`measure`, over its first ``MEASURED_ROWS`` rows),
and the environment it ran in.

Rows arrive tokenized: ``{"prompt": ids, "completion": ids}`` (sft, lora, distill), ``{"prompt", "chosen",
"rejected"}`` (dpo, orpo, simpo), ``{"prompt", "completion", "label": bool}`` (kto); completions end with EOS.

Example (what the parent does)::

    python -m kolm_audit.compile.gen_worker /tmp/kolm-gen-x/job.json
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import torch

from kolm_audit.compile.torch_worker import worker_environment

REFERENCE = ("dpo", "kto")                          # algorithms that compare with the frozen model of stage start
MEASURED_ROWS = 64                                  # rows of each stage's data measured before and after it


class LoRALinear(torch.nn.Module):
    """A LoRA adapter around a frozen linear (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
    arXiv:2106.09685): ``y = W x + (α/r) · B A x`` with ``A`` [r, in] Kaiming-uniform and ``B`` [out, r] zero, so
    training starts from the base model exactly."""

    def __init__(self, base: torch.nn.Linear, *, rank: int, alpha: int) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.lora_a = torch.nn.Parameter(torch.empty(rank, base.in_features))          # [r,in] float32
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))         # [out,r] float32
        torch.nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale        # [...,out] float32

    def merged(self) -> torch.nn.Linear:
        """One linear with the weight ``W + (α/r)·BA`` (and the base's bias)."""
        out = torch.nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))  # [out,in] float32
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _set(model: Any, name: str, module: Any) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def attach_lora(model: Any, *, targets: Sequence[str], rank: int, alpha: int) -> list[str]:
    """Wrap every linear whose name ends with one of ``targets`` (e.g. ``q_proj``) and freeze everything else;
    returns the wrapped module names (the parent checked that each target names at least one)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and any(n == t or n.endswith("." + t) for t in targets)]
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        _set(model, n, LoRALinear(model.get_submodule(n), rank=rank, alpha=alpha))
    return names


def merge_lora(model: Any) -> int:
    """Replace every adapter by one linear with ``W + (α/r)·BA``; unfreezes all weights. Returns how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for n in names:
        _set(model, n, model.get_submodule(n).merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return len(names)


def _pad(seqs: Sequence[Sequence[int]], starts: Sequence[int], pad: int) -> tuple[Any, Any, Any]:
    """Right-padded ``tokens`` [B,T] int64, ``attention`` [B,T] int64 and ``loss_mask`` [B,T] float32 (1 from
    each row's ``start`` — its first completion token — to its end)."""
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad, dtype=torch.long)              # [B,T] token ids
    attention = torch.zeros((len(seqs), width), dtype=torch.long)               # [B,T] 1 on real tokens
    loss_mask = torch.zeros((len(seqs), width), dtype=torch.float32)            # [B,T] 1 on completion tokens
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        tokens[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        attention[i, :len(s)] = 1
        loss_mask[i, start:len(s)] = 1.0
    return tokens, attention, loss_mask


def _logits(model: Any, tokens: Any, attention: Any) -> Any:
    return model(input_ids=tokens, attention_mask=attention).logits              # [B,T,V] float32


def completion_logps(model: Any, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                     pad: int) -> tuple[Any, Any]:
    """``(Σ log π(completion | prompt) [B], completion length [B])`` for each row."""
    from kolm_audit.compile.losses import sequence_logps

    tokens, attention, mask = _pad([list(p) + list(c) for p, c in zip(prompts, completions, strict=True)],
                                   [len(p) for p in prompts], pad)
    return sequence_logps(_logits(model, tokens, attention), tokens, mask)


def _float(stage: dict[str, Any], name: str, default: str) -> float:
    return float(Decimal(str(stage.get(name, default))))


def stage_loss(model: Any, stage: dict[str, Any], rows: Sequence[dict[str, Any]], ref: Sequence[Any] | None,
               teacher: Any, pad: int) -> Any:
    """The loss of one batch ``rows`` under the stage's algorithm (``ref``: the reference log-probs of the rows)."""
    from kolm_audit.compile import losses

    algo = stage["algorithm"]
    prompts = [r["prompt"] for r in rows]
    if algo in ("sft", "lora"):
        return losses.sft_loss(*completion_logps(model, prompts, [r["completion"] for r in rows], pad))
    if algo == "distill":
        tokens, attention, mask = _pad([r["prompt"] + r["completion"] for r in rows], [len(p) for p in prompts],
                                       pad)
        with torch.no_grad():
            target = _logits(teacher, tokens, attention)                       # [B,T,V] float32, no gradient
        return losses.distill_loss(_logits(model, tokens, attention), target, mask,
                                   temperature=_float(stage, "temperature", "1"))
    if algo == "kto":
        logp, _ = completion_logps(model, prompts, [r["completion"] for r in rows], pad)
        assert ref is not None
        return losses.kto_loss(logp, torch.stack(list(ref)), torch.tensor([bool(r["label"]) for r in rows]),
                               beta=_float(stage, "beta", "0.1"),
                               desirable_weight=_float(stage, "desirable_weight", "1"),
                               undesirable_weight=_float(stage, "undesirable_weight", "1"))
    both = completion_logps(model, prompts + prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows],
                            pad)
    n = len(rows)
    (cs, rs), (cn, rn) = (both[0][:n], both[0][n:]), (both[1][:n], both[1][n:])
    if algo == "dpo":
        assert ref is not None
        refs = torch.stack(list(ref))                                           # [B,2] reference chosen, rejected
        return losses.dpo_sft_loss(cs, rs, refs[:, 0], refs[:, 1], cn, beta=_float(stage, "beta", "0.1"),
                                   sft_weight=_float(stage, "sft_weight", "0"))
    if algo == "orpo":
        return losses.orpo_loss(cs, cn, rs, rn, lam=_float(stage, "lambda", "0.1"))
    return losses.simpo_loss(cs, cn, rs, rn, beta=_float(stage, "beta", "2"), gamma=_float(stage, "gamma", "0.5"))


def reference_logps(model: Any, stage: dict[str, Any], rows: Sequence[dict[str, Any]], pad: int,
                    batch: int = 16) -> list[Any] | None:
    """Per row, the log-probs under the model as the stage starts (frozen reference of dpo and kto)."""
    algo = stage["algorithm"]
    if algo not in REFERENCE:
        return None
    out: list[Any] = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            part = rows[i:i + batch]
            prompts = [r["prompt"] for r in part]
            if algo == "kto":
                out.extend(completion_logps(model, prompts, [r["completion"] for r in part], pad)[0])
            else:
                c = completion_logps(model, prompts, [r["chosen"] for r in part], pad)[0]
                r_ = completion_logps(model, prompts, [r["rejected"] for r in part], pad)[0]
                out.extend(torch.stack([c, r_], dim=-1))
    return out


def measure(model: Any, stage: dict[str, Any], rows: Sequence[dict[str, Any]], teacher: Any, pad: int,
            batch: int = 16) -> dict[str, float]:
    """What the stage should move, over all its rows: ``nll`` per token (sft, lora), ``margin`` = mean of
    ``log π(chosen) - log π(rejected)`` (dpo, orpo, simpo), ``desirable``/``undesirable`` mean ``log π`` (kto),
    ``kl`` per completion token to the teacher at temperature 1 (distill)."""
    from kolm_audit.compile import losses

    algo = stage["algorithm"]
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            part = rows[i:i + batch]
            prompts = [r["prompt"] for r in part]
            if algo in ("sft", "lora"):
                s, n = completion_logps(model, prompts, [r["completion"] for r in part], pad)
                sums.setdefault("nll", []).extend((-s / n).tolist())
            elif algo == "distill":
                tokens, attention, mask = _pad([r["prompt"] + r["completion"] for r in part],
                                               [len(p) for p in prompts], pad)
                kl = losses.distill_loss(_logits(model, tokens, attention), _logits(teacher, tokens, attention),
                                         mask, temperature=1.0)
                sums.setdefault("kl", []).extend([float(kl)] * len(part))
            elif algo == "kto":
                s, _ = completion_logps(model, prompts, [r["completion"] for r in part], pad)
                for r, v in zip(part, s.tolist(), strict=True):
                    sums.setdefault("desirable" if r["label"] else "undesirable", []).append(v)
            else:
                c, _ = completion_logps(model, prompts, [r["chosen"] for r in part], pad)
                r_, _ = completion_logps(model, prompts, [r["rejected"] for r in part], pad)
                sums.setdefault("margin", []).extend((c - r_).tolist())
    return {k: sum(v) / len(v) for k, v in sorted(sums.items())}


def train_stage(model: Any, stage: dict[str, Any], *, seed: int, epoch_offset: int, pad: int, teacher: Any = None,
                on_step: Callable[[], None] | None = None) -> int:
    """One stage: AdamW over the trainable parameters, batches in the counter-based order of
    :func:`kolm_audit.compile.exact_math.epoch_order` (``seed``, global epoch ``epoch_offset + e``); returns the
    number of optimizer steps."""
    from kolm_audit.compile.exact_math import epoch_order

    rows = stage["rows"]
    model.eval()
    ref = reference_logps(model, stage, rows, pad)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=_float(stage, "learning_rate", "0.001"),
                            weight_decay=_float(stage, "weight_decay", "0"))
    n, size = len(rows), int(stage["batch_size"])
    limit = stage.get("max_steps") or int(stage["epochs"]) * -(-n // size)
    model.train()
    steps = 0
    for epoch in range(int(stage["epochs"])):
        order = epoch_order(seed, epoch_offset + epoch, n).tolist()
        for start in range(0, n, size):
            if steps >= limit:
                break
            idx = order[start:start + size]
            loss = stage_loss(model, stage, [rows[i] for i in idx], None if ref is None else [ref[i] for i in idx],
                              teacher, pad)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if on_step is not None:
                on_step()
    model.eval()
    return steps


def new_model(config: dict[str, Any], weights_dir: str | None) -> Any:
    """An HF ``LlamaForCausalLM`` (eager attention, float32): from ``weights_dir`` or initialised from the seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if weights_dir is not None:
        return LlamaForCausalLM.from_pretrained(weights_dir, local_files_only=True, attn_implementation="eager",
                                                dtype="float32")
    cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype", "dtype")})
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg).to(torch.float32)


def run(job: dict[str, Any]) -> dict[str, Any]:
    import transformers
    from safetensors.torch import save_file

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    seed, pad = int(job["seed"]), int(job["pad_id"])
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(int(job["threads"]))
    model = new_model(job["config"], job.get("weights_dir"))
    bar = None
    if job.get("progress"):
        from tqdm import tqdm

        bar = tqdm(total=sum(s["total_steps"] for s in job["stages"]), desc="training (generate)", unit="step",
                   leave=False, file=sys.stderr)
    report, offset = [], 0
    for stage in job["stages"]:
        teacher = None
        if stage["algorithm"] == "distill":
            teacher = new_model({}, stage["teacher_dir"]).eval()
        if stage["algorithm"] == "lora":
            lora = stage["lora"]
            attach_lora(model, targets=lora["targets"], rank=int(lora["rank"]), alpha=int(lora["alpha"]))
        sample = stage["rows"][:MEASURED_ROWS]
        before = measure(model, stage, sample, teacher, pad)
        steps = train_stage(model, stage, seed=seed, epoch_offset=offset, pad=pad, teacher=teacher,
                            on_step=None if bar is None else (lambda: bar.update(1)))
        after = measure(model, stage, sample, teacher, pad)
        merged = merge_lora(model) if stage["algorithm"] == "lora" else 0
        offset += int(stage["epochs"])
        report.append({"algorithm": stage["algorithm"], "steps": steps, "before": before, "after": after,
                       "merged_adapters": merged})
    if bar is not None:
        bar.close()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(job["out"]) / "model.safetensors"))
    return {"stages": report, "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
            "environment": worker_environment()}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    sys.stdout.write(json.dumps(run(job)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
