"""The child process of the float trainer: ``python -m kolm_audit.compile.torch_worker JOB.json``.

Started by :class:`kolm_audit.compile.torch_trainer.TorchTrainer` with the pinned environment already set (so
torch reads ``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA`` and the thread variables when it starts).
It fine-tunes the HF BERT base in ``job["base_dir"]`` (read locally; never a hub) with a linear head on the
mean-pooled last hidden state, cross-entropy, AdamW, float32, deterministic algorithms, the batch order of
:func:`kolm_audit.compile.exact_math.epoch_order`; writes ``encoder.safetensors`` (HF names, float32) and
``head.safetensors`` (``weight`` [L, H], ``bias`` [L]) into ``job["out"]``, and prints one JSON line with the step
count and the environment it ran in.

Example (what the parent does)::

    python -m kolm_audit.compile.torch_worker /tmp/kolm-torch-x/job.json
"""

from __future__ import annotations

import json
import platform
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any


def _batch(ids: list[list[int]], max_tokens: int, pad: int) -> tuple[Any, Any]:
    import torch

    seqs = [s[:max_tokens] for s in ids]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad, dtype=torch.long)          # [B,T] token ids
    mask = torch.zeros((len(seqs), width), dtype=torch.float32)             # [B,T] 1 for real tokens
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1.0
    return tokens, mask


def run(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import BertModel

    from kolm_audit.compile.exact_math import epoch_order

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(int(job["seed"]))
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(int(job["threads"]))
    encoder = BertModel.from_pretrained(job["base_dir"], local_files_only=True, add_pooling_layer=False,
                                        attn_implementation="eager").to(torch.float32)
    hidden = encoder.config.hidden_size
    head = torch.nn.Linear(hidden, int(job["labels"]))                      # seeded init
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=float(Decimal(job["learning_rate"])),
                            weight_decay=float(Decimal(job["weight_decay"])))
    ids, labels = job["train_ids"], torch.tensor(job["train_labels"], dtype=torch.long)
    n, size, pad = len(ids), int(job["batch_size"]), int(encoder.config.pad_token_id or 0)
    limit = job.get("max_steps") or int(job["epochs"]) * -(-n // size)
    bar = None
    if job.get("progress"):
        from tqdm import tqdm

        bar = tqdm(total=limit, desc="training (torch)", unit="step", leave=False, file=sys.stderr)
    encoder.train()
    steps = 0
    for epoch in range(int(job["epochs"])):
        order = epoch_order(int(job["seed"]), epoch, n).tolist()
        for start in range(0, n, size):
            if steps >= limit:
                break
            idx = order[start:start + size]
            tokens, mask = _batch([ids[i] for i in idx], int(job["max_tokens"]), pad)
            h = encoder(input_ids=tokens, attention_mask=mask).last_hidden_state   # [B,T,H] float32
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)     # [B,H] mean over real tokens
            loss = torch.nn.functional.cross_entropy(head(pooled), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    out = Path(job["out"])
    save_file({k: v.detach().contiguous() for k, v in encoder.state_dict().items()}, str(out / "encoder.safetensors"))
    save_file({"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()},
              str(out / "head.safetensors"))
    return {"steps": steps, "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
            "environment": worker_environment()}


def worker_environment() -> dict[str, Any]:
    """What this worker process ran with (recorded in ``provenance.build.environment``)."""
    import numpy as np
    import torch
    import transformers

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(), "system": platform.system(),
            "deterministic_algorithms": True, "torch_threads": torch.get_num_threads()}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result = run(job)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
