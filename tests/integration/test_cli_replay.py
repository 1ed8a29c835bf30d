"""``kolm-audit replay`` and ``kolm-audit diff`` end to end: transformers tiny BERT → ``quantize`` → ``sign`` →
``run`` (receipts) → ``replay`` / ``diff`` through the real CLI entry point, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _cli_fixtures import cli as _cli

from kolm_audit.canonical import jcs
from kolm_audit.cli import main
from kolm_audit.keys import load_private_key
from kolm_audit.log import ReceiptLog
from kolm_audit.log.source import export_bundle
from kolm_audit.schemas import validate
from kolm_audit.trust import write_trust_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _replay_fixtures import TEXTS, bert_checkpoint, changed_weight


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli-replay")
    bert_checkpoint(tmp / "hf")
    (tmp / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": f"q{i}"}) + "\n" for i, t in enumerate(TEXTS)))
    steps = [["quantize", tmp / "hf", "--scheme", "int8", "--out", tmp / "model.kolm", "--name", "tiny",
              "--created", "2026-01-01T00:00:00Z"],
             ["keys", "generate", "--out", tmp / "k", "--type", "ecdsa-p256", "--name", "vendor"],
             ["keys", "generate", "--out", tmp / "k", "--type", "ed25519", "--name", "ops"],
             ["sign", tmp / "model.kolm", "--key", tmp / "k" / "vendor.pem"]]
    for args in steps:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        assert exc.value.code == 0, args
    write_trust_file(tmp / "trust.toml", [
        {"name": "vendor", "public_key": "k/vendor.pub", "roles": ["artifact"]},
        {"name": "ops", "public_key": "k/ops.pub", "roles": ["receipt", "checkpoint"]}])
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in ["run", tmp / "model.kolm", "--input", tmp / "in.jsonl", "--log", tmp / "r.db",
                                "--key", tmp / "k" / "ops.pem", "--trust", tmp / "trust.toml", "--tenant", "acme",
                                "--operator", "ops", "--out", tmp / "out.jsonl", "--batch-size", 3]])
    assert exc.value.code == 0
    changed_weight(tmp / "model.kolm", tmp / "changed.kolm", load_private_key(tmp / "k" / "vendor.pem"))
    return tmp


def _replay(capsys: pytest.CaptureFixture[str], w: Path, *extra: object) -> tuple[int, str, str]:
    return _cli(capsys, "replay", w / "r.db", "--artifact", w / "model.kolm", "--trust", w / "trust.toml", *extra)


def test_replay_matches_and_writes_a_schema_valid_report(capsys, world, tmp_path):
    code, out, err = _replay(capsys, world, "--report", tmp_path / "report.json")
    assert code == 0, err
    assert "replay MATCHED: 10/10 receipts" in out and str(tmp_path / "report.json") in out
    report = json.loads((tmp_path / "report.json").read_text())
    validate(report, "replay-report")
    assert report["inputs"]["trust"] == str(world / "trust.toml")
    code, out, _ = _replay(capsys, world, "--json", "--batch-size", 1, "--workers", 2)
    again = json.loads(out)
    assert code == 0 and jcs(again["results"]) == jcs(report["results"])
    assert again["environment"]["workers"] == 2 and again["environment"]["batch_size"] == 1


def test_replay_select_and_bundle(capsys, world, tmp_path):
    with ReceiptLog.open(world / "r.db") as log:
        export_bundle(log.path, tmp_path / "bundle")
    code, out, _ = _cli(capsys, "replay", tmp_path / "bundle", "--artifact", world / "model.kolm", "--key",
                        world / "k" / "vendor.pub", "--key", world / "k" / "ops.pub", "--select", "index=3..5",
                        "--select", "tenant=acme", "--json")
    report = json.loads(out)
    assert code == 0 and [r["index"] for r in report["results"]["receipts"]] == [3, 4, 5]


def test_replay_against_a_changed_weight_exits_1_with_reasons(capsys, world, tmp_path):
    code, out, _ = _cli(capsys, "replay", world / "r.db", "--artifact", world / "changed.kolm", "--trust",
                        world / "trust.toml", "--replay-mismatched", "--report", tmp_path / "bad.json")
    assert code == 1 and "replay MISMATCH" in out and "artifact-mismatch" in out
    report = json.loads((tmp_path / "bad.json").read_text())
    assert report["results"]["counts"]["by_reason"]["artifact-mismatch"] == 10
    code, _, _ = _replay(capsys, world, "--report", tmp_path / "good.json")
    code, out, _ = _cli(capsys, "diff", tmp_path / "good.json", tmp_path / "bad.json")
    assert code == 1 and "reports DIFFERENT" in out
    code, out, _ = _cli(capsys, "diff", world / "model.kolm", world / "changed.kolm", "--json")
    doc = json.loads(out)
    validate(doc, "diff-report")
    assert code == 1 and len(doc["details"]["tensors"]["changed"]) == 1
    code, out, _ = _cli(capsys, "diff", world / "model.kolm", world / "model.kolm")
    assert code == 0 and "artifacts IDENTICAL" in out
    code, out, _ = _cli(capsys, "diff", f"{world / 'r.db'}#0", f"{world / 'r.db'}#0")
    assert code == 0 and "receipts IDENTICAL" in out


@pytest.mark.parametrize("args", [
    ["--select", "index=9..1"],
    pytest.param(["--backend", "cuda"], marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="a CUDA device is present")),
    ["--kek-env", "NOPE"],
])
def test_bad_input_exits_2(capsys, world, args):
    code, _, err = _replay(capsys, world, *args)
    assert code == 2 and "error" in err


def test_missing_trust_and_bad_diff_exit_2(capsys, world):
    code, _, err = _cli(capsys, "replay", world / "r.db", "--artifact", world / "model.kolm")
    assert code == 2 and "--trust" in err
    code, _, err = _cli(capsys, "diff", world / "model.kolm", f"{world / 'r.db'}#0", "--json")
    assert code == 2 and "cannot diff" in err
