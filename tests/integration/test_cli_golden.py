"""``kolm-audit golden new|run|bless`` end to end on a signed tiny int8 BERT classifier and a real receipt log (one
clear tenant, one encrypt-all tenant): exit codes 0 / 1 / 2, schema-valid JSON, JUnit XML, no silent overwrite."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import junitparser
import pytest
from _cli_fixtures import cli

from kolm_audit.golden.suite import read_suite
from kolm_audit.log import ReceiptLog
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore
from kolm_audit.receipts.recorder import Recorder
from kolm_audit.schemas import validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _golden_fixtures import bert_artifact, changed_embedding, model, token_id
from _replay_fixtures import TEXTS, make_keys

from kolm_audit.artifact import sign_artifact

VAULT = ["the vault opens at dawn", "red blue green", "the lazy river", "a quick key"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("cli-golden")
    keys = make_keys(tmp / "keys")
    art = bert_artifact(tmp)
    sign_artifact(art, keys.vendor)
    m = model(art)
    kek = KeyEncryptionKey.generate()
    kek.write(tmp / "kek.b64")
    store = KeyStore.empty().with_tenant("vault", mode="encrypt-all", kek=kek)
    store.write(tmp / "tenant-keys.json")
    with ReceiptLog.open(tmp / "r.db", create=True, origin="example.org/golden-test") as log:
        with Recorder(m, log, keys.receipt, tenant="acme", operator="svc", checkpoint_key=keys.log) as rec:
            rec.record_classify(TEXTS[:6])
            rec.record_classify(TEXTS[6:] + TEXTS[:2])          # two repeated requests: sampled once
        with Recorder(m, log, keys.receipt, tenant="vault", operator="svc", checkpoint_key=keys.log,
                      privacy=store.tenant("vault", kek=kek)) as rec:
            rec.record_classify(VAULT)
    changed, _ = changed_embedding(art, tmp / "changed.kolm", token_id(m, "fox"), key=keys.vendor)
    return {"tmp": tmp, "art": art, "changed": changed, "trust": keys.trust, "log": tmp / "r.db"}


def _new(capsys: pytest.CaptureFixture[str], w: dict[str, Any], out: Path, *extra: object) -> tuple[int, str, str]:
    return cli(capsys, "golden", "new", "--from-log", w["log"], "--artifact", w["art"], "--out", out,
               "--backend", "numpy", *extra)


def test_new_samples_logged_decisions_deterministically_and_skips_sealed_tenants(capsys, world, tmp_path):
    code, out, err = _new(capsys, world, tmp_path / "prod.golden.json", "--sample", "6", "--seed", "3",
                          "--trust", world["trust"], "--json")
    assert code == 0, err
    report = json.loads(out)
    validate(report, "golden-update")
    log = report["log"]
    assert log["receipts"] == 16 and log["verified"] is True
    assert log["skipped"] == {"other_artifact": 0, "other_task": 0, "other_tenant": 0, "sealed_no_key": 4,
                              "duplicate": 2}
    assert log["eligible"] == 10 and log["sampled"] == 6 and report["counts"]["new"] == 6
    suite = read_suite(tmp_path / "prod.golden.json")
    assert suite.name == "prod" and suite.artifact_digest == report["artifact"]["digest"] and len(suite.cases) == 6
    assert all(c.origin["kind"] == "log" and c.origin["tenant"] == "acme" and c.text in TEXTS for c in suite.cases)
    assert [c.origin["log_index"] for c in suite.cases] == sorted(c.origin["log_index"] for c in suite.cases)
    code, _, _ = _new(capsys, world, tmp_path / "again.json", "--sample", "6", "--seed", "3", "--name", "prod")
    assert code == 0
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "prod.golden.json").read_bytes()
    code, _, err = _new(capsys, world, tmp_path / "again.json", "--sample", "6")
    assert code == 2 and "refusing to overwrite" in err


def test_new_uses_encrypted_tenants_only_with_their_key(capsys, world, tmp_path):
    code, out, err = _new(capsys, world, tmp_path / "vault.json", "--sample", "50", "--tenant", "vault",
                          "--keystore", world["tmp"] / "tenant-keys.json", "--kek-file", world["tmp"] / "kek.b64",
                          "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["log"]["sampled"] == 4 and report["log"]["skipped"]["other_tenant"] == 12
    suite = read_suite(tmp_path / "vault.json")
    assert sorted(c.text for c in suite.cases) == sorted(VAULT)
    code, _, err = _new(capsys, world, tmp_path / "none.json", "--sample", "5", "--tenant", "vault")
    assert code == 2 and "sealed no key" in err and not (tmp_path / "none.json").exists()


def test_run_passes_fails_and_writes_junit(capsys, world, tmp_path):
    suite = tmp_path / "s.json"
    assert _new(capsys, world, suite, "--sample", "10")[0] == 0
    code, out, err = cli(capsys, "golden", "run", suite, "--artifact", world["art"], "--trust", world["trust"],
                         "--backend", "numpy", "--junit", tmp_path / "ok.xml", "--json")
    assert code == 0, err
    report = json.loads(out)
    validate(report, "golden-run")
    assert report["verdict"] == "passed" and report["artifact"]["signature"] == "verified"
    xml = junitparser.JUnitXml.fromfile(str(tmp_path / "ok.xml"))
    assert [(s.tests, s.failures, s.errors) for s in xml] == [(report["counts"]["cases"] + 1, 0, 0)]
    code, out, err = cli(capsys, "golden", "run", suite, "--artifact", world["changed"], "--backend", "numpy",
                         "--junit", tmp_path / "bad.xml")
    assert code == 1
    fox = [line for line in out.splitlines() if line.startswith("  FAIL ")]
    assert fox[0].split()[1].startswith("log-") and "scores moved" in out and "artifact pin FAILED" in out
    assert TEXTS[0] == "the quick brown fox jumps over the lazy dog"      # the only logged text with "fox"
    failing = read_suite(suite).case(fox[0].split()[1])
    assert failing is not None and "fox" in str(failing.text)
    [s] = list(junitparser.JUnitXml.fromfile(str(tmp_path / "bad.xml")))
    assert (s.tests, s.failures, s.errors) == (report["counts"]["cases"] + 1, 2, 0)


def test_malformed_suite_is_exit_2_naming_the_case(capsys, world, tmp_path):
    suite = tmp_path / "s.json"
    assert _new(capsys, world, suite, "--sample", "3")[0] == 0
    doc = json.loads(suite.read_bytes())
    doc["cases"][2]["expected"]["label"] = 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    code, out, err = cli(capsys, "golden", "run", bad, "--artifact", world["art"])
    assert code == 2 and out == ""
    assert err.startswith(f"kolm-audit: error: {bad}: cases[2] (id '{doc['cases'][2]['id']}'): expected.label: ")
    assert "does not match schema golden-suite" in err


def test_bless_records_new_cases_and_refuses_silent_overwrites(capsys, world, tmp_path):
    suite = tmp_path / "s.json"
    assert _new(capsys, world, suite, "--sample", "10")[0] == 0
    doc = json.loads(suite.read_bytes())
    doc["cases"].append({"id": "hand-written", "input": {"text": "the fox is red"}})
    suite.write_text(json.dumps(doc, indent=2))                         # edited by hand: not canonical
    code, out, err = cli(capsys, "golden", "run", suite, "--artifact", world["art"])
    assert code == 2 and "canonical" in err
    code, out, err = cli(capsys, "golden", "bless", suite, "--artifact", world["art"], "--backend", "numpy")
    assert code == 0, err
    assert "NEW       hand-written" in out and "1 new, 0 changed" in out
    assert cli(capsys, "golden", "run", suite, "--artifact", world["art"])[0] == 0
    blessed = suite.read_bytes()
    code, out, err = cli(capsys, "golden", "bless", suite, "--artifact", world["changed"])
    assert code == 2 and "pinned to another artifact" in err and "--force" in err
    code, out, err = cli(capsys, "golden", "bless", suite, "--artifact", world["changed"], "--force", "--json")
    assert code == 1
    report = json.loads(out)
    validate(report, "golden-update")
    assert report["written"] is False and report["counts"]["refused"] == 2     # the two cases with "fox"
    assert suite.read_bytes() == blessed
    refused = [c["id"] for c in report["changes"] if c["kind"] == "changed"]
    code, out, err = cli(capsys, "golden", "bless", suite, "--artifact", world["changed"], "--force",
                         "--accept", refused[0])
    assert code == 1 and suite.read_bytes() == blessed and f"--accept {refused[1]}" in out
    code, out, err = cli(capsys, "golden", "bless", suite, "--artifact", world["changed"], "--force", "--accept-all")
    assert code == 0, err
    assert out.count("ACCEPTED") == 2 and "scores moved" in out and "re-pinned from" in out
    assert cli(capsys, "golden", "run", suite, "--artifact", world["changed"])[0] == 0
    assert cli(capsys, "golden", "run", suite, "--artifact", world["art"])[0] == 1
