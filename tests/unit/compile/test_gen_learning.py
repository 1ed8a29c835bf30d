"""Each generator algorithm learns what it should, on tiny data and a tiny Llama (seconds each).

The training loop and the measures are the worker's own (:mod:`kolm_audit.compile.gen_worker`), run in this process
on a 1-layer model: sft makes the target completion the greedy one, dpo/orpo/simpo grow the chosen-minus-rejected
margin, kto raises desirable completions, LoRA changes only its adapters and merges to ``W + (α/r)·BA``, distill
brings the student's KL to the teacher down.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from kolm_audit.compile import gen_worker as w  # noqa: E402
from kolm_audit.compile import losses  # noqa: E402

CONFIG = {"model_type": "llama", "vocab_size": 32, "hidden_size": 32, "intermediate_size": 64,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
          "max_position_embeddings": 32, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False}
PAD = 0


def _model(seed: int = 0):
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return w.new_model(CONFIG, None)


def _stage(algorithm: str, rows: list[dict], **kw: object) -> dict:
    return {"algorithm": algorithm, "rows": rows, "epochs": kw.pop("epochs", 20), "batch_size": 4,
            "learning_rate": kw.pop("learning_rate", "0.01"), **kw}


SFT = [{"prompt": [1, 3 + i, 4], "completion": [12 + i, 20 + i % 3, 2]} for i in range(8)]
PAIRS = [{"prompt": [1, 5 + i % 4, 6], "chosen": [10 + i % 4, 11, 2], "rejected": [20 + i % 3, 21, 2]}
         for i in range(8)]
KTO = [{"prompt": [1, 5 + i % 4, 6], "completion": [12 + i % 4, 13, 2] if i % 2 == 0 else [24, 25 + i % 3, 2],
        "label": i % 2 == 0} for i in range(8)]


def _greedy_matches(model, rows: list[dict]) -> bool:
    """Teacher-forced argmax equals every completion token: greedy decoding writes exactly the completion."""
    with torch.no_grad():
        for r in rows:
            seq = torch.tensor([r["prompt"] + r["completion"]])
            logits = model(input_ids=seq).logits[0]                              # [T,V]
            start = len(r["prompt"])
            if logits[start - 1:-1].argmax(-1).tolist() != r["completion"]:
                return False
    return True


def test_sft_loss_falls_and_the_completion_becomes_greedy() -> None:
    model = _model()
    stage = _stage("sft", SFT)
    before = w.measure(model, stage, SFT, None, PAD)["nll"]
    assert not _greedy_matches(model, SFT)
    steps = w.train_stage(model, stage, seed=7, epoch_offset=0, pad=PAD)
    after = w.measure(model, stage, SFT, None, PAD)["nll"]
    assert steps == 40 and after < before / 10
    assert _greedy_matches(model, SFT)


@pytest.mark.parametrize("algorithm", ["dpo", "orpo", "simpo"])
def test_preference_algorithms_grow_the_chosen_minus_rejected_margin(algorithm: str) -> None:
    model = _model()
    stage = _stage(algorithm, PAIRS, epochs=10)
    before = w.measure(model, stage, PAIRS, None, PAD)["margin"]
    w.train_stage(model, stage, seed=7, epoch_offset=0, pad=PAD)
    after = w.measure(model, stage, PAIRS, None, PAD)["margin"]
    assert after > before + 5, (before, after)


def test_kto_raises_desirable_and_lowers_undesirable_completions() -> None:
    model = _model()
    stage = _stage("kto", KTO, epochs=10)
    before = w.measure(model, stage, KTO, None, PAD)
    w.train_stage(model, stage, seed=7, epoch_offset=0, pad=PAD)
    after = w.measure(model, stage, KTO, None, PAD)
    assert after["desirable"] > before["desirable"] + 1, (before, after)
    assert after["undesirable"] < before["undesirable"], (before, after)


def test_lora_changes_only_its_adapters_and_merges_to_base_plus_scaled_ba() -> None:
    model = _model()
    base = copy.deepcopy(model.state_dict())
    names = w.attach_lora(model, targets=["q_proj", "mlp.up_proj"], rank=2, alpha=4)
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"]
    stage = _stage("lora", SFT, epochs=5)
    before = w.measure(model, stage, SFT, None, PAD)["nll"]
    w.train_stage(model, stage, seed=7, epoch_offset=0, pad=PAD)
    assert w.measure(model, stage, SFT, None, PAD)["nll"] < before
    trained = model.state_dict()
    for name, value in base.items():                       # every base weight untouched (wrapped ones moved)
        key = name.replace("q_proj.weight", "q_proj.base.weight").replace("up_proj.weight", "up_proj.base.weight")
        assert torch.equal(trained[key], value), name
    adapters = {k: v.clone() for k, v in trained.items() if ".lora_" in k}
    assert len(adapters) == 4 and all(v.abs().sum() > 0 for v in adapters.values())
    assert w.merge_lora(model) == 2
    merged = model.state_dict()
    assert sorted(merged) == sorted(base)
    for p in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"):
        want = base[f"{p}.weight"] + (4 / 2) * adapters[f"{p}.lora_b"] @ adapters[f"{p}.lora_a"]
        assert torch.equal(merged[f"{p}.weight"], want)


def test_distill_brings_the_kl_to_the_teacher_down() -> None:
    teacher = _model(seed=1).eval()
    student = _model(seed=2)
    stage = _stage("distill", SFT, epochs=10)
    before = w.measure(student, stage, SFT, teacher, PAD)["kl"]
    w.train_stage(student, stage, seed=7, epoch_offset=0, pad=PAD, teacher=teacher)
    after = w.measure(student, stage, SFT, teacher, PAD)["kl"]
    assert after < before / 2, (before, after)


def test_losses_at_their_reference_points() -> None:
    zero, one = torch.zeros(3), torch.ones(3)
    log2 = torch.log(torch.tensor(2.0))
    assert torch.allclose(losses.dpo_loss(zero, zero, zero, zero, beta=0.1), log2)      # no preference yet: log 2
    assert torch.allclose(losses.simpo_loss(zero, one, zero, one, beta=2.0, gamma=0.0), log2)
    assert torch.allclose(losses.kto_loss(zero, zero, torch.tensor([True, False, True]), beta=0.1,
                                          desirable_weight=1.0, undesirable_weight=1.0), torch.tensor(0.5))
    chosen, count = torch.tensor([-2.0, -4.0]), torch.tensor([2.0, 2.0])
    plain = losses.dpo_loss(chosen, chosen - 1, chosen, chosen, beta=0.1)
    assert torch.equal(losses.dpo_sft_loss(chosen, chosen - 1, chosen, chosen, count, beta=0.1, sft_weight=0.0), plain)
    assert torch.allclose(losses.dpo_sft_loss(chosen, chosen - 1, chosen, chosen, count, beta=0.1, sft_weight=0.5),
                          plain + 0.5 * 1.5)                                     # + 0.5 · (6 nats / 4 tokens)
    logits = torch.randn(2, 4, 8)
    assert float(losses.distill_loss(logits, logits, torch.ones(2, 4), temperature=2.0)) == pytest.approx(0, abs=1e-6)
