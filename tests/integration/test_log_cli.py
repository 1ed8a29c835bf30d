"""``kolm-audit log verify|checkpoint|prove|export`` end to end, with real receipts, keys and SQLite."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _cli_fixtures import cli as run

from kolm_audit.canonical import digest_of
from kolm_audit.keys import generate_key, load_private_key, write_keypair
from kolm_audit.log import ReceiptLog
from kolm_audit.log.merkle import leaf_hash
from kolm_audit.receipts.document import Decision, ReceiptContext, receipt_builder
from kolm_audit.schemas import validate
from kolm_audit.trust import write_trust_file

ORIGIN = "cli.example/log"
T0 = datetime(2026, 1, 1, tzinfo=UTC)




@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A log of 12 real signed receipts with a checkpoint at 8 and at 12, keys and a trust file."""
    receipt_key, log_key = generate_key(key_type="ed25519"), generate_key(key_type="ed25519")
    keys = tmp_path / "keys"
    write_keypair(receipt_key, keys, name="receipt")
    write_keypair(log_key, keys, name="log")
    write_trust_file(tmp_path / "trust.toml", [
        {"name": "receipts", "public_key": "keys/receipt.pub", "roles": ["receipt"]},
        {"name": "log", "public_key": "keys/log.pub", "roles": ["checkpoint"]}])
    ctx = ReceiptContext(tenant="acme", operator="svc", artifact_digest="sha256:" + "ab" * 32, artifact_name="demo",
                         artifact_version="1.0.0", kscore=None, backend="numpy", key=receipt_key)
    with ReceiptLog.open(tmp_path / "r.db", create=True, origin=ORIGIN) as log:
        for i in range(12):
            scores = (900 - i, 100 + i)
            decision = Decision(task="classify", input_ids=(101, i, 102), input_text=f"request {i}", label="positive",
                                scores=scores, output_digest=digest_of({"label": "positive", "scores": list(scores)}))
            log.append(receipt_builder(ctx, decision, start=T0, end=T0))
            if i + 1 == 8:
                (tmp_path / "kept.note").write_text(log.checkpoint(log_key))
        log.checkpoint(log_key)
    return tmp_path


def test_verify_database_and_bundle(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "log", "verify", world / "r.db", "--trust", world / "trust.toml", "--json")
    assert code == 0
    doc = json.loads(out)
    validate(doc, "log-verify-report")
    assert (doc["mode"], doc["size"], doc["leaves_checked"], len(doc["checkpoints"])) == ("full", 12, 12, 2)
    code, out, _ = run(capsys, "log", "export", world / "r.db", "--out", world / "bundle")
    assert code == 0 and "12" in out
    code, out, _ = run(capsys, "log", "verify", world / "bundle", "--trust", world / "trust.toml",
                       "--checkpoint", world / "kept.note")
    assert code == 0 and "verified bundle" in out and "extends your checkpoint at size 8" in out
    code, out, _ = run(capsys, "log", "verify", world / "bundle", "--key", world / "keys/log.pub",
                       "--checkpoint-only", "--json")
    assert code == 0 and json.loads(out)["mode"] == "checkpoint-only"


def test_bad_input_is_exit_2(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "log", "verify", world / "r.db")[0] == 2  # no trust given
    assert run(capsys, "log", "verify", world / "nope.db", "--trust", world / "trust.toml")[0] == 2
    assert run(capsys, "log", "verify", world / "r.db", "--trust", world / "trust.toml",
               "--key", world / "keys/log.pub")[0] == 2
    assert run(capsys, "log", "checkpoint", world / "r.db", "--key", world / "keys/log.pub")[0] == 2


def test_receipt_key_not_trusted_is_exit_1(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "log", "verify", world / "r.db", "--key", world / "keys/log.pub")
    assert code == 1 and "receipt" in err
    assert run(capsys, "log", "verify", world / "r.db", "--key", world / "keys/log.pub", "--checkpoint-only")[0] == 0


def _named(err: str) -> int:
    match = re.search(r"leaf\[?\s?(\d+)", err)
    assert match, err
    return int(match.group(1))


def _drop_triggers(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")


@pytest.mark.parametrize("action", ["edit", "delete", "reorder", "insert"])
def test_database_tamper_is_exit_1_naming_the_index(world: Path, capsys: pytest.CaptureFixture[str],
                                                    action: str) -> None:
    i = 6
    conn = sqlite3.connect(world / "r.db")
    _drop_triggers(conn)
    rows = conn.execute("SELECT idx, hash, data FROM leaves ORDER BY idx").fetchall()
    if action == "edit":  # one byte of one receipt
        data = bytearray(rows[i][2])
        data[40] ^= 0x02
        conn.execute("UPDATE leaves SET data = ? WHERE idx = ?", (bytes(data), i))
    elif action == "delete":
        conn.execute("DELETE FROM leaves WHERE idx = ?", (i,))
    elif action == "reorder":  # swap two receipts, hashes and all
        conn.execute("UPDATE leaves SET data = ?, hash = ? WHERE idx = ?", (rows[i + 1][2], rows[i + 1][1], i))
        conn.execute("UPDATE leaves SET data = ?, hash = ? WHERE idx = ?", (rows[i][2], rows[i][1], i + 1))
    else:  # insert a copy of receipt 3 at position 6, shifting the rest
        for idx, _, _ in reversed(rows[i:]):
            conn.execute("UPDATE leaves SET idx = idx + 1 WHERE idx = ?", (idx,))
        conn.execute("INSERT INTO leaves VALUES (?, ?, ?)", (i, leaf_hash(rows[3][2]), rows[3][2]))
    conn.commit()
    conn.close()
    for mode in ((), ("--checkpoint-only",)):
        code, _, err = run(capsys, "log", "verify", world / "r.db", "--trust", world / "trust.toml", *mode)
        assert code == 1, err
        span = re.search(r"\[(\d+), (\d+)\)", err)
        assert _named(err) == i or (span and int(span.group(1)) <= i < int(span.group(2))), err


@pytest.mark.parametrize("action", ["edit", "delete", "reorder", "insert"])
def test_bundle_tamper_is_exit_1_naming_the_index(world: Path, capsys: pytest.CaptureFixture[str],
                                                  action: str) -> None:
    assert run(capsys, "log", "export", world / "r.db", "--out", world / "b")[0] == 0
    path = world / "b" / "receipts.jsonl"
    lines = path.read_bytes().split(b"\n")[:-1]
    i = 4
    if action == "edit":
        lines[i] = lines[i].replace(b'"payload":"ey', b'"payload":"ez', 1)
    elif action == "delete":
        del lines[i]
    elif action == "reorder":
        lines[i], lines[i + 3] = lines[i + 3], lines[i]
    else:
        lines.insert(i, lines[1])
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    code, _, err = run(capsys, "log", "verify", world / "b", "--trust", world / "trust.toml")
    assert code == 1 and _named(err) == i, err


def test_forked_checkpoint_is_exit_1(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_key_path = world / "keys" / "log.pem"
    with ReceiptLog.open(world / "fork.db", create=True, origin=ORIGIN) as fork, \
            ReceiptLog.open(world / "r.db") as real:
        for i in range(10):
            data = real.leaf(i) if i != 2 else real.leaf(3)
            fork.append(lambda _i, data=data: data)
    code, out, _ = run(capsys, "log", "checkpoint", world / "fork.db", "--key", log_key_path)
    assert code == 0
    (world / "fork.note").write_text(out)
    code, _, err = run(capsys, "log", "verify", world / "r.db", "--trust", world / "trust.toml",
                       "--checkpoint", world / "fork.note", "--checkpoint-only")
    assert code == 1 and "forked" in err


def test_checkpoint_and_prove(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "log", "checkpoint", world / "r.db", "--key", world / "keys/log.pem", "--json")
    assert code == 0
    doc = json.loads(out)
    validate(doc, "checkpoint")
    assert doc["size"] == 12 and doc["origin"] == ORIGIN
    code, out, _ = run(capsys, "log", "prove", world / "r.db", "--index", "5", "--json")
    assert code == 0
    proof = json.loads(out)
    validate(proof, "inclusion-proof")
    assert proof["tree_size"] == 12 and proof["verified"] and proof["checkpoint"].startswith(ORIGIN)
    code, out, _ = run(capsys, "log", "prove", world / "r.db", "--index", "5", "--size", "8")
    assert code == 0 and "tree of size 8" in out and "signed checkpoint" in out
    assert run(capsys, "log", "prove", world / "r.db", "--index", "12")[0] == 2  # no such leaf: bad usage
    assert run(capsys, "log", "prove", world / "r.db", "--index", "3", "--size", "40")[0] == 2  # size > log


def test_receipts_after_the_latest_checkpoint_are_a_warning_or_a_finding(world: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ctx = ReceiptContext(tenant="acme", operator="svc", artifact_digest="sha256:" + "ab" * 32, artifact_name="demo",
                         artifact_version="1.0.0", kscore=None, backend="numpy",
                         key=load_private_key(world / "keys" / "receipt.pem"))
    decision = Decision(task="classify", input_ids=(101, 7, 102), input_text="late", label="positive",
                        scores=(1, 2), output_digest=digest_of({"label": "positive", "scores": [1, 2]}))
    with ReceiptLog.open(world / "r.db") as log:
        log.append(receipt_builder(ctx, decision, start=T0, end=T0))
    code, out, err = run(capsys, "log", "verify", world / "r.db", "--trust", world / "trust.toml")
    assert code == 0, err
    assert "warning: 1 receipt(s) at log index 12 are not covered by any signed checkpoint" in out
    code, out, _ = run(capsys, "log", "verify", world / "r.db", "--trust", world / "trust.toml", "--json")
    assert any("log index 12" in n for n in json.loads(out)["notes"])
    code, _, err = run(capsys, "log", "verify", world / "r.db", "--trust", world / "trust.toml",
                       "--require-checkpointed")
    assert code == 1 and "not covered by any signed checkpoint" in err
