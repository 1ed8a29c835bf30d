"""Replay of generate receipts on a tiny int8 Llama (transformers config, fixed seed): seeded sampling, first
divergent token of an edited receipt, tokenizer drift as a warning, sealed inputs with and without the key store."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from _replay_fixtures import Keys, llama_checkpoint, make_keys, quantize_signed, record

from kolm_audit.artifact import read_artifact
from kolm_audit.canonical import jcs
from kolm_audit.log import ReceiptLog, open_log_source
from kolm_audit.model import Model, generation_digest
from kolm_audit.receipts.document import Decision, Decoding, ReceiptContext, parse_leaf, receipt_builder, sign_receipt
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore
from kolm_audit.receipts.recorder import Recorder
from kolm_audit.replay.engine import ReplayOptions, replay
from kolm_audit.replay.report import summary_text
from kolm_audit.schemas import validate
from kolm_audit.timefmt import now

ORIGIN = "example.org/replay-test"
PROMPTS = ["w5 w6 w7", "w10 w11", "w3", "w40 w41 w42 w43", "w7 w7", "w100"]
SAMPLING = {"max_new_tokens": 6, "temperature": 900, "seed": 1234, "top_k": 40, "top_p": 950}


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("replay-gen")
    keys = make_keys(tmp / "keys")
    art = quantize_signed(llama_checkpoint(tmp / "hf"), tmp / "gen.kolm", keys.vendor)
    log = record(art, tmp / "gen.db", keys, texts=PROMPTS, generate=SAMPLING, batch=3)
    return {"tmp": tmp, "keys": keys, "art": art, "log": log}


def test_seeded_sampling_replays_identically_in_any_batch(gen: dict[str, Any]) -> None:
    policy = gen["keys"].policy
    runs = [replay(gen["log"], artifact=gen["art"], policy=policy, options=ReplayOptions(batch_size=b, workers=w))
            for b, w in ((1, 1), (4, 1), (2, 2))]
    assert all(r["results"]["verdict"] == "matched" for r in runs)
    assert runs[0]["results"]["counts"]["matched"] == len(PROMPTS)
    assert len({jcs(r["results"]) for r in runs}) == 1


def test_edited_tokens_show_the_first_divergent_position(gen: dict[str, Any], tmp_path: Path) -> None:
    keys: Keys = gen["keys"]
    with open_log_source(gen["log"]) as src:
        leaves = [leaf for _, leaf in src.iter_leaves()]
    receipt = copy.deepcopy(parse_leaf(leaves[3]).receipt)
    resp = receipt["response"]
    resp["output_ids"][2] = (resp["output_ids"][2] + 1) % 128
    resp["output_digest"] = generation_digest(resp["output_ids"], resp["finish_reason"])
    resp["text"] = resp["text_digest"] = None
    leaves[3] = sign_receipt(receipt, keys.receipt).canonical_bytes()
    with ReceiptLog.open(tmp_path / "edited.db", create=True, origin=ORIGIN) as log:
        log.append_many([lambda i, data=data: data for data in leaves])
        log.checkpoint(keys.log)
    res = replay(tmp_path / "edited.db", artifact=gen["art"], policy=keys.policy)["results"]
    [finding] = res["findings"]
    assert (finding["reason"], finding["index"], finding["position"]) == ("output-mismatch", 3, 2)
    assert "ids" in finding["excerpt"]["expected"] and finding["excerpt"]["expected"] != finding["excerpt"]["actual"]
    assert finding["expected"] == resp["output_digest"] != finding["actual"]


def test_tokenizer_drift_is_a_warning(gen: dict[str, Any], tmp_path: Path) -> None:
    keys: Keys = gen["keys"]
    art = read_artifact(gen["art"])
    model = Model.from_artifact(art)
    [result] = model.generate([[5, 7]], max_new_tokens=4)
    ctx = ReceiptContext(tenant="acme", operator="svc", artifact_digest=art.digest, artifact_name="tiny",
                         artifact_version="1", kscore=None, backend="numpy", key=keys.receipt)
    decision = Decision.from_result(result, task="generate", input_text="w5 w6",
                                    decoding=Decoding(max_new_tokens=4))
    with ReceiptLog.open(tmp_path / "drift.db", create=True, origin=ORIGIN) as log:
        log.append(receipt_builder(ctx, decision, start=now(), end=now()))
        log.checkpoint(keys.log)
    report = replay(tmp_path / "drift.db", artifact=gen["art"], policy=keys.policy)
    res = report["results"]
    assert res["verdict"] == "matched" and res["counts"]["warnings"] == 1
    [warning] = res["findings"]
    assert (warning["reason"], warning["severity"], warning["position"]) == ("tokenizer-drift", "warning", 1)
    assert res["receipts"][0]["status"] == "matched" and res["receipts"][0]["reasons"] == ["tokenizer-drift"]


def test_sealed_inputs_need_the_tenant_key_store(gen: dict[str, Any], tmp_path: Path) -> None:
    keys: Keys = gen["keys"]
    kek = KeyEncryptionKey.generate()
    store = KeyStore.empty().with_tenant("acme", mode="encrypt-all", kek=kek)
    model = Model.from_artifact(read_artifact(gen["art"]))
    with ReceiptLog.open(tmp_path / "sealed.db", create=True, origin=ORIGIN) as log, \
            Recorder(model, log, keys.receipt, tenant="acme", operator="svc", privacy=store.tenant("acme", kek=kek),
                     checkpoint_key=keys.log) as rec:
        rec.record_generate(PROMPTS[:3], **SAMPLING)
    blind = replay(tmp_path / "sealed.db", artifact=gen["art"], policy=keys.policy)["results"]
    assert blind["counts"]["by_reason"] == {"input-unavailable": 3} and blind["counts"]["replayed"] == 0
    opened = replay(tmp_path / "sealed.db", artifact=gen["art"], policy=keys.policy,
                    options=ReplayOptions(keystore=store, kek=kek))["results"]
    assert opened["verdict"] == "matched" and opened["counts"]["matched"] == 3


def test_shredded_receipts_are_erased_not_mismatched(gen: dict[str, Any], tmp_path: Path) -> None:
    """A lawful crypto-shred: erased receipts get their own status and count; the rest still match; verdict matched."""
    keys: Keys = gen["keys"]
    kek = KeyEncryptionKey.generate()
    store = (KeyStore.empty().with_tenant("acme", mode="encrypt-all", kek=kek)
             .with_tenant("globex", mode="encrypt-all", kek=kek))
    model = Model.from_artifact(read_artifact(gen["art"]))
    with ReceiptLog.open(tmp_path / "sealed.db", create=True, origin=ORIGIN) as log:
        for tenant, prompts in (("acme", PROMPTS[:2]), ("globex", PROMPTS[2:5])):
            with Recorder(model, log, keys.receipt, tenant=tenant, operator="svc", checkpoint_key=keys.log,
                          privacy=store.tenant(tenant, kek=kek)) as rec:
                rec.record_generate(prompts, **SAMPLING)
    shredded = store.shred("acme")
    report = replay(tmp_path / "sealed.db", artifact=gen["art"], policy=keys.policy,
                    options=ReplayOptions(keystore=shredded, kek=kek))
    validate(report, "replay-report")
    res = report["results"]
    assert res["verdict"] == "matched"
    assert (res["counts"]["erased"], res["counts"]["matched"], res["counts"]["mismatched"]) == (2, 3, 0)
    assert [r["status"] for r in res["receipts"]] == ["erased"] * 2 + ["matched"] * 3
    assert {(f["reason"], f["severity"]) for f in res["findings"]} == {("erased", "info")}
    text = summary_text(report)
    assert text.startswith("replay MATCHED: 3/5 receipts") and "2 erased" in text and "None" not in text
