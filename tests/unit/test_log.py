"""The SQLite receipt log, bundles and verify_log, with real SQLite, real keys, no mocks."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.canonical import jcs, loads_canonical
from kolm_audit.errors import InputError, LogError, SchemaError, TrustError
from kolm_audit.keys import generate_key
from kolm_audit.log import ReceiptLog, check_leaf_canonical, open_log_source, verify_log
from kolm_audit.log.checkpoint import parse_checkpoint
from kolm_audit.log.merkle import MemoryTree, leaf_hash, verify_consistency, verify_inclusion
from kolm_audit.log.source import export_bundle
from kolm_audit.schemas import validate
from kolm_audit.trust import TrustPolicy

ORIGIN = "test.example/log"


def leaf(i: int, tag: str = "r") -> bytes:
    return jcs({"index": i, "tag": tag, "text": f"decision {i}"})


@pytest.fixture(scope="module")
def key():  # type: ignore[no-untyped-def]
    return generate_key(key_type="ed25519")


@pytest.fixture
def policy(key) -> TrustPolicy:  # type: ignore[no-untyped-def]
    return TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",))


def make_log(path: Path, key, n: int, *, checkpoints: tuple[int, ...] = ()) -> ReceiptLog:  # type: ignore[no-untyped-def]
    log = ReceiptLog.open(path, create=True, origin=ORIGIN)
    for i in range(n):
        assert log.append(leaf) == i
        if i + 1 in checkpoints:
            log.checkpoint(key)
    return log


def leaf_named(exc: pytest.ExceptionInfo[LogError]) -> int:
    match = re.search(r"leaf (\d+)", str(exc.value))
    assert match, str(exc.value)
    return int(match.group(1))


def test_append_gives_the_index_to_the_builder_and_is_readable(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 5) as log:
        assert log.size() == 5
        assert [log.leaf(i) for i in range(5)] == [leaf(i) for i in range(5)]
        assert log.append_many([lambda i: leaf(i, "b")] * 3) == [5, 6, 7]
        assert json.loads(log.leaf(6))["index"] == 6
        assert log.append_many([]) == []


def test_roots_and_proofs_match_an_in_memory_tree(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 45) as log:
        tree = MemoryTree([leaf_hash(leaf(i)) for i in range(45)])
        for size in range(46):
            assert log.root(size) == tree.root(size)
        for size in (1, 2, 3, 16, 17, 33, 45):
            for index in range(size):
                proof = log.inclusion_proof(index, size)
                assert proof == tree.inclusion_proof(index, size)
                verify_inclusion(index=index, size=size, leaf=leaf_hash(leaf(index)), proof=proof, root=tree.root(size))
            for old in range(size + 1):
                verify_consistency(old_size=old, new_size=size, old_root=tree.root(old), new_root=tree.root(size),
                                   proof=log.consistency_proof(old, size))
        with pytest.raises(LogError):
            log.root(46)


def test_non_canonical_leaf_is_refused_and_rolled_back(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 2) as log:
        with pytest.raises(InputError):
            log.append_many([leaf, lambda i: b'{"b":1, "a":2}'])
        with pytest.raises(InputError):
            log.append(lambda i: "text")  # type: ignore[arg-type,return-value]
        for big in (b'{"a":9007199254740993}', '{"é":9007199254740993}'.encode()):
            with pytest.raises(InputError):
                log.append(lambda i, big=big: big)
            with pytest.raises(LogError):
                check_leaf_canonical(0, big)
        assert log.size() == 2
        assert log.append(leaf) == 2


def test_builder_error_rolls_back(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    def boom(i: int) -> bytes:
        raise SchemaError("cannot build", field="receipt")

    with make_log(tmp_path / "r.db", key, 1) as log:
        with pytest.raises(SchemaError):
            log.append_many([leaf, boom])
        assert log.size() == 1


def test_triggers_forbid_update_delete_and_gaps(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    make_log(tmp_path / "r.db", key, 3, checkpoints=(3,)).close()
    conn = sqlite3.connect(tmp_path / "r.db")
    for sql in ("UPDATE leaves SET data = x'00' WHERE idx = 1", "DELETE FROM leaves WHERE idx = 2",
                "DELETE FROM checkpoints", "UPDATE nodes SET hash = x'00'",
                "INSERT INTO leaves(idx, hash, data) VALUES (7, x'00', x'00')"):
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(sql)
    conn.close()


def test_open_checks(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError):
        ReceiptLog.open(tmp_path / "missing.db")
    make_log(tmp_path / "r.db", key, 1).close()
    with pytest.raises(InputError):
        ReceiptLog.open(tmp_path / "r.db", origin="another.example/log")
    with ReceiptLog.open(tmp_path / "r.db") as log:
        assert log.origin == ORIGIN
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(InputError):
        ReceiptLog.open(tmp_path / "junk.db")
    with pytest.raises(InputError):
        ReceiptLog.open(tmp_path / "x.db", create=True, origin="has space")
    with ReceiptLog.open(tmp_path / "auto name+.db", create=True) as log:
        assert re.match(r"^kolm-audit\.local/auto_name_/[0-9a-f]{16}$", log.origin)


def test_checkpoints_are_stored_and_consistent(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 10, checkpoints=(3, 8, 10)) as log:
        notes = log.checkpoints()
        assert [parse_checkpoint(n).checkpoint.size for n in notes] == [3, 8, 10]
        assert log.latest_checkpoint() == notes[-1]
        assert parse_checkpoint(notes[1]).checkpoint.root == log.root(8)
    report = verify_log(tmp_path / "r.db", policy=policy)
    assert report.size == 10 and report.latest_checkpoint_size == 10 and len(report.checkpoints) == 3
    validate(report.to_json(), "log-verify-report")


def test_checkpoint_refuses_after_tampering(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    make_log(tmp_path / "r.db", key, 6, checkpoints=(4,)).close()
    conn = sqlite3.connect(tmp_path / "r.db")
    conn.execute("DROP TRIGGER leaves_no_update")
    conn.execute("UPDATE leaves SET data = ? WHERE idx = 5", (leaf(5, "forged"),))
    conn.commit()
    conn.close()
    with ReceiptLog.open(tmp_path / "r.db") as log, pytest.raises(LogError) as exc:
        log.checkpoint(key)
    assert leaf_named(exc) == 5
    # a consistent rewrite of the already-signed part is refused too (never two inconsistent checkpoints)
    conn = sqlite3.connect(tmp_path / "r.db")
    for table in ("leaves", "nodes"):
        conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    conn.execute("DELETE FROM nodes")
    conn.execute("DELETE FROM leaves")
    conn.commit()
    conn.close()
    with ReceiptLog.open(tmp_path / "r.db") as log:
        for i in range(6):
            log.append(lambda i: leaf(i, "rewritten"))
        with pytest.raises(LogError):
            log.checkpoint(key)
        assert len(log.checkpoints()) == 1


def test_verify_requires_a_checkpoint_and_trust(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    make_log(tmp_path / "r.db", key, 3).close()
    with pytest.raises(LogError):
        verify_log(tmp_path / "r.db", policy=policy)
    assert verify_log(tmp_path / "r.db", policy=policy, require_checkpoint=False).latest_checkpoint_size == 0
    with ReceiptLog.open(tmp_path / "r.db") as log:
        log.checkpoint(generate_key(key_type="ed25519"))
    with pytest.raises(TrustError, match="trusted"):
        verify_log(tmp_path / "r.db", policy=policy)


def test_unsigned_tail_is_reported(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    make_log(tmp_path / "r.db", key, 7, checkpoints=(5,)).close()
    report = verify_log(tmp_path / "r.db", policy=policy)
    assert report.unsigned_leaves == 2 and report.to_json()["unsigned_leaves"] == 2


def _tamper_db(path: Path, action: str, i: int) -> None:
    conn = sqlite3.connect(path)
    for table in ("leaves", "nodes"):
        for op in ("update", "delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_{op}")
    conn.execute("DROP TRIGGER IF EXISTS leaves_next_index")
    rows = conn.execute("SELECT idx, hash, data FROM leaves ORDER BY idx").fetchall()
    if action == "edit":
        conn.execute("UPDATE leaves SET data = ? WHERE idx = ?", (leaf(i, "forged"), i))
    elif action == "delete":
        conn.execute("DELETE FROM leaves WHERE idx = ?", (i,))
    elif action == "swap":
        conn.execute("UPDATE leaves SET data = ? WHERE idx = ?", (rows[i + 1][2], i))
        conn.execute("UPDATE leaves SET data = ? WHERE idx = ?", (rows[i][2], i + 1))
    elif action == "insert":
        for idx, _, _ in reversed(rows[i:]):
            conn.execute("UPDATE leaves SET idx = idx + 1 WHERE idx = ?", (idx,))
        conn.execute("INSERT INTO leaves VALUES (?, ?, ?)", (i, leaf_hash(leaf(i, "x")), leaf(i, "x")))
    elif action == "node-edit":
        conn.execute("UPDATE nodes SET hash = ? WHERE level = 1 AND idx = ?", (bytes(32), i // 2))
    elif action == "node-delete":
        conn.execute("DELETE FROM nodes WHERE level = 1 AND idx = ?", (i // 2,))
    elif action == "edit-with-hash":
        conn.execute("UPDATE leaves SET data = ?, hash = ? WHERE idx = ?",
                     (leaf(i, "forged"), leaf_hash(leaf(i, "forged")), i))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("action", ["edit", "delete", "swap", "insert", "edit-with-hash", "node-edit",
                                    "node-delete"])
@pytest.mark.parametrize("i", [0, 6, 12])
def test_any_database_tamper_is_detected_naming_the_index(tmp_path: Path, key, policy, action: str,
                                                          i: int) -> None:  # type: ignore[no-untyped-def]
    make_log(tmp_path / "r.db", key, 14, checkpoints=(10, 14)).close()
    _tamper_db(tmp_path / "r.db", action, i)
    with pytest.raises(LogError) as exc:
        verify_log(tmp_path / "r.db", policy=policy)
    named = leaf_named(exc)
    span = re.search(r"\[(\d+), (\d+)\)", str(exc.value))
    assert named == i or (span and int(span.group(1)) <= i < int(span.group(2)))


def test_consistent_rewrite_is_caught_by_the_signed_checkpoint(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    make_log(tmp_path / "r.db", key, 9, checkpoints=(4, 9)).close()
    forged = make_log(tmp_path / "forged.db", key, 0)
    for i in range(9):
        forged.append(lambda i: leaf(i, "forged") if i == 6 else leaf(i))
    forged.close()
    conn = sqlite3.connect(tmp_path / "forged.db")
    conn.execute("ATTACH ? AS real", (str(tmp_path / "r.db"),))
    conn.execute("INSERT INTO checkpoints SELECT * FROM real.checkpoints")  # the attacker keeps the signed notes
    conn.commit()
    conn.close()
    with pytest.raises(LogError) as exc:
        verify_log(tmp_path / "forged.db", policy=policy)
    assert "[4, 9)" in str(exc.value) and leaf_named(exc) == 4


def test_supplied_checkpoint_from_a_fork_is_detected(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "a.db", key, 6, checkpoints=(6,)) as log:
        kept = log.latest_checkpoint()
        for _ in range(4):
            log.append(leaf)
        log.checkpoint(key)
    report = verify_log(tmp_path / "a.db", policy=policy, supplied_checkpoint=kept)
    assert report.supplied_checkpoint is not None and report.supplied_checkpoint["size"] == 6
    # same origin and key, different history: a fork
    with ReceiptLog.open(tmp_path / "b.db", create=True, origin=ORIGIN) as fork:
        for i in range(8):
            fork.append(lambda i: leaf(i, "fork") if i == 3 else leaf(i))
        fork_note = fork.checkpoint(key)
    with pytest.raises(LogError, match="forked"):
        verify_log(tmp_path / "a.db", policy=policy, supplied_checkpoint=fork_note)
    # a checkpoint larger than the log: truncated log
    with pytest.raises(LogError, match="fewer leaves"):
        verify_log(tmp_path / "b.db", policy=policy, supplied_checkpoint=ReceiptLog.open(tmp_path / "a.db")
                   .latest_checkpoint())


def test_bundle_roundtrip_and_source_api(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 11, checkpoints=(5, 9)) as log:
        out = export_bundle(log.path, tmp_path / "bundle")
    manifest = json.loads((out / "manifest.json").read_text())
    validate(manifest, "log-bundle")
    assert manifest["size"] == 11 and len(manifest["checkpoints"]) == 2
    lines = (out / "receipts.jsonl").read_bytes().split(b"\n")
    assert lines[:-1] == [leaf(i) for i in range(11)] and lines[-1] == b""
    proofs = json.loads((out / "proofs.json").read_text())
    assert proofs["tree_size"] == 9 and len(proofs["proofs"]) == 9
    for path in (tmp_path / "r.db", out):
        with open_log_source(path) as src:
            assert src.size() == 11 and src.leaf(7) == leaf(7) and src.origin == ORIGIN
            assert [i for i, _ in src.iter_leaves(9)] == [9, 10]
            assert len(src.checkpoints()) == 2
    report = verify_log(out, policy=policy)
    assert (report.kind, report.size, report.proofs_checked) == ("bundle", 11, 9)
    with pytest.raises(InputError):
        verify_log(tmp_path / "nothing-here", policy=policy)
    with pytest.raises(InputError):
        export_bundle(tmp_path / "r.db", out)  # refuses a non-empty directory


def _tamper_bundle(out: Path, action: str, i: int) -> None:
    path = out / "receipts.jsonl"
    lines = path.read_bytes().split(b"\n")[:-1]
    if action == "edit":
        lines[i] = leaf(i, "forged")
    elif action == "delete":
        del lines[i]
    elif action == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif action == "insert":
        lines.insert(i, leaf(i, "x"))
    elif action == "byte":
        lines[i] = lines[i].replace(b"decision", b"decisioN")
    path.write_bytes(b"".join(x + b"\n" for x in lines))


@pytest.mark.parametrize("action", ["edit", "delete", "swap", "insert", "byte"])
@pytest.mark.parametrize("i", [0, 5, 11])
def test_any_bundle_tamper_is_detected_naming_the_index(tmp_path: Path, key, policy, action: str,
                                                        i: int) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 13, checkpoints=(13,)) as log:
        out = export_bundle(log.path, tmp_path / "bundle")
    _tamper_bundle(out, action, i)
    with pytest.raises(LogError) as exc:
        verify_log(out, policy=policy)
    assert leaf_named(exc) == i


def test_bundle_last_leaf_deleted_and_proof_edited(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 6, checkpoints=(6,)) as log:
        out = export_bundle(log.path, tmp_path / "bundle")
    proofs_text = (out / "proofs.json").read_text()
    doc = json.loads(proofs_text)
    doc["proofs"][3]["path"][0] = "00" * 32
    (out / "proofs.json").write_text(json.dumps(doc))
    with pytest.raises(LogError) as exc:
        verify_log(out, policy=policy)
    assert leaf_named(exc) == 3
    (out / "proofs.json").write_text(proofs_text)
    _tamper_bundle(out, "delete", 5)
    with pytest.raises(LogError) as exc:
        verify_log(out, policy=policy)
    assert leaf_named(exc) == 5


def _reject_index_7(index: int, data: bytes) -> None:
    check_leaf_canonical(index, data)
    if index == 7 + 3000:
        raise LogError("receipt signature does not verify", field=f"leaf {index}")


def test_per_leaf_callback_runs_in_parallel_and_reports_the_index(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    with ReceiptLog.open(tmp_path / "r.db", create=True, origin=ORIGIN) as log:
        log.append_many([leaf] * 3100)
        log.checkpoint(key)
    report = verify_log(tmp_path / "r.db", policy=policy, verify_leaf=check_leaf_canonical, workers=2)
    assert report.mode == "full" and report.leaves_checked == 3100
    with pytest.raises(LogError) as exc:
        verify_log(tmp_path / "r.db", policy=policy, verify_leaf=_reject_index_7, workers=2)
    assert leaf_named(exc) == 3007
    with pytest.raises(LogError) as exc:
        verify_log(tmp_path / "r.db", policy=policy, verify_leaf=_reject_index_7, workers=1)
    assert leaf_named(exc) == 3007


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(doc=_json, spacing=st.booleans(), sort=st.booleans(), ascii_only=st.booleans())
def test_fast_canonical_check_agrees_with_the_reference(doc: object, spacing: bool, sort: bool,
                                                        ascii_only: bool) -> None:
    data = json.dumps(doc, sort_keys=sort, ensure_ascii=ascii_only,
                      separators=(", ", ": ") if spacing else (",", ":")).encode()
    try:
        loads_canonical(data, error=LogError)
        reference_ok = True
    except (LogError, rfc8785.IntegerDomainError):
        reference_ok = False
    try:
        check_leaf_canonical(0, data)
        fast_ok = True
    except LogError:
        fast_ok = False
    assert fast_ok == reference_ok, data


@pytest.mark.parametrize("size", [0, 12, 14, 99999])
def test_bundle_manifest_size_must_equal_the_leaves(tmp_path: Path, key, policy, size: int) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 13, checkpoints=(13,)) as log:
        out = export_bundle(log.path, tmp_path / "bundle")
    doc = json.loads((out / "manifest.json").read_text())
    doc["size"] = size
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(LogError, match="number of receipts") as exc:
        verify_log(out, policy=policy)
    assert (exc.value.field, exc.value.expected, exc.value.actual) == ("size", "13", str(size))


def test_bundle_checkpoints_must_be_oldest_first(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 9, checkpoints=(4, 9)) as log:
        out = export_bundle(log.path, tmp_path / "bundle")
    doc = json.loads((out / "manifest.json").read_text())
    doc["checkpoints"].reverse()
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(LogError, match="oldest first"):
        verify_log(out, policy=policy)


def test_a_checkpoint_signed_under_another_key_name_is_refused(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    from kolm_audit.errors import TrustError
    from kolm_audit.log.checkpoint import Checkpoint, sign_checkpoint

    with make_log(tmp_path / "r.db", key, 3, checkpoints=(3,)) as log:
        cp = Checkpoint(origin=ORIGIN, size=3, root=log.root(3))
    note = sign_checkpoint(cp, key, name="someone.else/log")
    with pytest.raises(TrustError, match="key name") as exc:
        verify_log(tmp_path / "r.db", policy=policy, supplied_checkpoint=note)
    assert exc.value.expected == ORIGIN and exc.value.actual == "someone.else/log"
    cosigned = note + sign_checkpoint(cp, key).split("\n\n")[1]
    assert verify_log(tmp_path / "r.db", policy=policy, supplied_checkpoint=cosigned).supplied_checkpoint


def test_proofs_with_another_root_say_so(tmp_path: Path, key, policy) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 6, checkpoints=(6,)) as log:
        out = export_bundle(log.path, tmp_path / "bundle")
    doc = json.loads((out / "proofs.json").read_text())
    doc["root_hash"] = "ab" * 32
    (out / "proofs.json").write_text(json.dumps(doc))
    with pytest.raises(LogError, match="another root hash") as exc:
        verify_log(out, policy=policy)
    assert exc.value.field == "root_hash" and exc.value.actual == "ab" * 32


@pytest.mark.parametrize("victim", ["receipts.jsonl", "proofs.json", "checkpoints/000001.note"])
def test_a_missing_listed_bundle_file_is_a_finding(tmp_path: Path, key, policy, victim: str) -> None:  # type: ignore[no-untyped-def]
    with make_log(tmp_path / "r.db", key, 6, checkpoints=(6,)) as log:
        out = export_bundle(log.path, tmp_path / "bundle")
    (out / victim).unlink()
    with pytest.raises(LogError, match="missing") as exc:
        verify_log(out, policy=policy)
    assert exc.value.exit_code == 1 and exc.value.file == str(out / victim)
