"""The losses of the generator trainer (``kolm.train-generate/1``), one small function per algorithm.

Every function takes per-sequence quantities computed by :func:`sequence_logps` — the summed log-probability of
the completion tokens and their count — and returns a scalar to minimise. Written here from the papers (no
``trl``/``peft``): each is a few lines, and owning them keeps the float arithmetic — and so the bytes of a build
in one environment — fixed by this package's version. Tensors are float32 torch tensors; ``[B]`` = one value per
training row of the batch.

Example::

    >>> import torch
    >>> dpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.1)
    tensor(0.5981)
"""

from __future__ import annotations

from typing import Any


def sequence_logps(logits: Any, tokens: Any, loss_mask: Any) -> tuple[Any, Any]:
    """Summed log-probability of the masked tokens of each row, and how many tokens were summed.

    ``logits`` [B,T,V] float32 (position ``t`` predicts token ``t+1``), ``tokens`` [B,T] int64, ``loss_mask`` [B,T]
    float32 (1 on completion tokens). Returns ``(sum [B], count [B])``."""
    import torch

    logp = torch.log_softmax(logits[:, :-1, :], dim=-1)                         # [B,T-1,V] float32
    picked = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)                    # [B,T-1] log p(token t+1)
    mask = loss_mask[:, 1:]                                                      # [B,T-1] completion positions
    return (picked * mask).sum(-1), mask.sum(-1)


def sft_loss(logp_sum: Any, count: Any) -> Any:
    """Supervised fine-tuning: the mean negative log-likelihood per completion token (Ouyang et al. 2022,
    "Training language models to follow instructions with human feedback", arXiv:2203.02155, §3.5 SFT)."""
    return -logp_sum.sum() / count.sum()


def dpo_loss(chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, *, beta: float) -> Any:
    """Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290, eq. 7):
    ``-log σ(β[(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))])``, batch mean."""
    import torch

    margin = (chosen - ref_chosen) - (rejected - ref_rejected)                  # [B]
    return -torch.nn.functional.logsigmoid(beta * margin).mean()


def dpo_sft_loss(chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, chosen_count: Any, *, beta: float,
                 sft_weight: float) -> Any:
    """DPO plus ``sft_weight`` times the SFT loss on the chosen completions (the NLL term of Pang et al. 2024,
    "Iterative Reasoning Preference Optimization", arXiv:2404.19733, eq. 1): it keeps the chosen completion likely
    while the margin grows, where DPO alone can lower both (``trainer.stages[i].sft_weight``, default 0)."""
    loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
    return loss + sft_weight * sft_loss(chosen, chosen_count) if sft_weight else loss


def kto_loss(logp: Any, ref_logp: Any, desirable: Any, *, beta: float, desirable_weight: float,
             undesirable_weight: float) -> Any:
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306, eq. 8): with the implied reward
    ``r = log π(y|x) - log π_ref(y|x)`` and the reference point ``z0``, a desirable row costs
    ``λ_D (1 - σ(β(r - z0)))`` and an undesirable one ``λ_U (1 - σ(β(z0 - r)))``.

    ``z0`` estimates KL(π‖π_ref) from the batch itself — ``max(0, mean r)``, without gradient — where the paper uses
    mismatched (prompt, completion) pairs of the batch; the simplification is documented in docs/compile.md."""
    import torch

    r = logp - ref_logp                                                          # [B] implied reward
    z0 = r.mean().clamp(min=0).detach()                                          # [] reference point
    gain = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
    return gain.mean()


def orpo_loss(chosen_sum: Any, chosen_count: Any, rejected_sum: Any, rejected_count: Any, *, lam: float) -> Any:
    """Odds Ratio Preference Optimization (Hong et al. 2024, arXiv:2403.07691, eq. 6–8): the SFT loss on the chosen
    completion plus ``λ · -log σ(log odds(y_w) - log odds(y_l))``, ``odds(y) = P/(1-P)`` of the length-normalised
    likelihood ``P = exp(mean token log-prob)``. No reference model."""
    import torch

    def log_odds(mean_logp: Any) -> Any:
        return mean_logp - torch.log1p(-torch.exp(mean_logp).clamp(max=1 - 1e-6))

    w, lo = chosen_sum / chosen_count, rejected_sum / rejected_count              # [B] mean token log-probs
    ratio = -torch.nn.functional.logsigmoid(log_odds(w) - log_odds(lo))
    return sft_loss(chosen_sum, chosen_count) + lam * ratio.mean()


def simpo_loss(chosen_sum: Any, chosen_count: Any, rejected_sum: Any, rejected_count: Any, *, beta: float,
               gamma: float) -> Any:
    """Simple Preference Optimization (Meng et al. 2024, arXiv:2405.14734, eq. 6):
    ``-log σ(β/|y_w| log π(y_w) - β/|y_l| log π(y_l) - γ)``: a length-normalised reward, a target margin ``γ``,
    no reference model."""
    import torch

    margin = beta * chosen_sum / chosen_count - beta * rejected_sum / rejected_count - gamma
    return -torch.nn.functional.logsigmoid(margin).mean()


def distill_loss(student_logits: Any, teacher_logits: Any, loss_mask: Any, *, temperature: float) -> Any:
    """Logit distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531): ``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`` per completion position, averaged over those
    positions. ``*_logits`` [B,T,V] float32, ``loss_mask`` [B,T]."""
    import torch

    t = temperature
    mask = loss_mask[:, 1:]                                                      # [B,T-1] predicted completion tokens
    log_s = torch.log_softmax(student_logits[:, :-1, :] / t, dim=-1)             # [B,T-1,V]
    log_t = torch.log_softmax(teacher_logits[:, :-1, :] / t, dim=-1)             # [B,T-1,V]
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)                                 # [B,T-1] KL per position
    return t * t * (kl * mask).sum() / mask.sum()
