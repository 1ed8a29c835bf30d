"""Suites from logged decisions: generate receipts keep their decoding parameters (seeded sampling), embed receipts
are re-run for their embeddings, the seed decides the sample, and a logged output the artifact does not reproduce is
never recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _golden_fixtures import PROMPTS, SAMPLING, bert_artifact, llama_artifact, model
from _replay_fixtures import TEXTS, make_keys, record

from kolm_audit.canonical import digest
from kolm_audit.errors import Finding, ReplayMismatch
from kolm_audit.golden.from_log import sample_rank, suite_from_log
from kolm_audit.golden.runner import run_suite
from kolm_audit.log import ReceiptLog
from kolm_audit.receipts.document import Decision, ReceiptContext, receipt_builder
from kolm_audit.timefmt import now


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("golden-from-log")
    keys = make_keys(tmp / "keys")
    gen = llama_artifact(tmp)
    emb = bert_artifact(tmp, head=False, name="tiny-embed")
    sampling = {"max_new_tokens": SAMPLING.max_new_tokens, "temperature": SAMPLING.temperature,
                "seed": SAMPLING.seed, "top_k": SAMPLING.top_k, "top_p": SAMPLING.top_p}
    return {"keys": keys, "gen": gen, "emb": emb,
            "gen_log": record(gen, tmp / "gen.db", keys, texts=list(PROMPTS.values()), generate=sampling, batch=3),
            "emb_log": record(emb, tmp / "emb.db", keys, texts=TEXTS, batch=4), "tmp": tmp}


def test_generate_receipts_become_seeded_cases_that_pass(logs: dict[str, Any]) -> None:
    m = model(logs["gen"])
    suite, info = suite_from_log(logs["gen_log"], m, sample=10, seed=0, name="gen", policy=logs["keys"].policy)
    assert info["sampled"] == len(PROMPTS) == len(suite.cases) and info["verified"]
    assert {c.params for c in suite.cases} == {SAMPLING}
    assert sorted(c.text for c in suite.cases) == sorted(PROMPTS.values())
    assert run_suite(suite, m, batch_size=1).passed and run_suite(suite, m, batch_size=8).passed


def test_the_seed_decides_the_sample(logs: dict[str, Any]) -> None:
    m = model(logs["emb"])
    picks = {}
    for seed in (0, 1, 2):
        suite, info = suite_from_log(logs["emb_log"], m, sample=3, seed=seed, name="emb")
        picks[seed] = [c.origin["log_index"] for c in suite.cases]
        ranked = sorted(range(len(TEXTS)), key=lambda i, s=seed: sample_rank(s, i))[:3]
        assert picks[seed] == sorted(ranked) and info["eligible"] == len(TEXTS)
        assert run_suite(suite, m).passed
    again, _ = suite_from_log(logs["emb_log"], m, sample=3, seed=1, name="emb")
    assert [c.origin["log_index"] for c in again.cases] == picks[1]
    assert len({tuple(p) for p in picks.values()}) > 1


def test_a_logged_output_the_artifact_does_not_reproduce_is_not_recorded(logs: dict[str, Any], tmp_path: Path) -> None:
    m = model(logs["emb"])
    keys = logs["keys"]
    forged_log = tmp_path / "forged.db"
    fake = digest(b"not this embedding")
    ctx = ReceiptContext(tenant="acme", operator="svc", artifact_digest=m.digest, artifact_name=m.manifest["name"],
                         artifact_version=m.manifest["version"], kscore=None, backend="numpy", key=keys.rogue)
    [ids] = m.tokenize(["a forged decision"])
    decision = Decision(task="embed", input_ids=tuple(ids), input_text="a forged decision", output_digest=fake,
                        embedding_digest=fake, dim=32)
    with ReceiptLog.open(forged_log, create=True, origin="example.org/forged") as log:
        log.append(receipt_builder(ctx, decision, start=now(), end=now()))
        log.checkpoint(keys.log)
    with pytest.raises(ReplayMismatch, match="does not reproduce") as exc:
        suite_from_log(forged_log, m, sample=1, name="forged")
    assert exc.value.exit_code == 1 and exc.value.expected == fake
    with pytest.raises(Finding):                        # with the trust policy the rogue signature stops it first
        suite_from_log(forged_log, m, sample=1, name="forged", policy=keys.policy)
