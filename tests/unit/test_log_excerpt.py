"""Log excerpts (a bundle carrying only cited leaves, each proven against a signed checkpoint): written from a real
SQLite log, verified, and every way of tampering with them caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kolm_audit.canonical import jcs
from kolm_audit.errors import InputError, LogError, SchemaError, SignatureError, TrustError
from kolm_audit.keys import generate_key
from kolm_audit.log import ReceiptLog, open_log_source, verify_log
from kolm_audit.log.checkpoint import Checkpoint, sign_checkpoint
from kolm_audit.log.source import export_bundle
from kolm_audit.trust import TrustPolicy

ORIGIN = "test.example/excerpt"
CITED = [0, 5, 17, 18, 29]


def leaf(i: int) -> bytes:
    return jcs({"index": i, "text": f"decision {i}"})


@pytest.fixture(scope="module")
def key():  # type: ignore[no-untyped-def]
    return generate_key(key_type="ed25519")


@pytest.fixture(scope="module")
def policy(key) -> TrustPolicy:  # type: ignore[no-untyped-def]
    return TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",))


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory, key) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("excerpt") / "r.db"
    with ReceiptLog.open(path, create=True, origin=ORIGIN) as log:
        for i in range(33):
            log.append(leaf)
            if i + 1 in (7, 20, 30):
                log.checkpoint(key)      # 3 leaves after the last checkpoint stay unsigned
    return path


def _excerpt(log_path: Path, out: Path, indices: list[int] = CITED) -> Path:
    return export_bundle(log_path, out, indices=indices)


def test_excerpt_carries_the_cited_leaves_with_their_proofs(log_path: Path, policy: TrustPolicy,
                                                           tmp_path: Path) -> None:
    out = _excerpt(log_path, tmp_path / "ex")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["excerpt"] is True and manifest["size"] == 30 and len(manifest["checkpoints"]) == 3
    proofs = json.loads((out / "proofs.json").read_text())
    assert [p["index"] for p in proofs["proofs"]] == CITED
    assert [(c["old_size"], c["new_size"]) for c in proofs["consistency"]] == [(7, 20), (20, 30)]
    with open_log_source(out) as src:
        assert [i for i, _ in src.iter_leaves()] == CITED
        assert src.leaf(17) == leaf(17) and src.size() == 30
        with pytest.raises(LogError, match="no such leaf in this excerpt"):
            src.leaf(6)
    report = verify_log(out, policy=policy, verify_leaf=lambda i, data: None)
    assert (report.size, report.latest_checkpoint_size, report.leaves_rehashed, report.leaves_checked,
            report.proofs_checked, report.unsigned_leaves) == (30, 30, 5, 5, 5, 0)
    with ReceiptLog.open(log_path) as log:
        assert report.root_hex == log.root(30).hex()
    assert "5 of 30 leaves" in report.notes[0]


def test_excerpt_refuses_leaves_no_checkpoint_covers(log_path: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not covered by a signed checkpoint"):
        _excerpt(log_path, tmp_path / "ex", [3, 31])
    with pytest.raises(InputError, match="distinct"):
        _excerpt(log_path, tmp_path / "ex2", [3, 3])


def _edit(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _lines(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(fn(lines)))


TAMPERS = {
    "edited leaf": (lambda out: _lines(out / "receipts.jsonl", lambda ls: [ls[0], leaf(99) + b"\n", *ls[2:]]),
                    "differs from the one its inclusion proof"),
    "leaf removed": (lambda out: _lines(out / "receipts.jsonl", lambda ls: ls[:-1]), "different number"),
    "leaf added": (lambda out: _lines(out / "receipts.jsonl", lambda ls: [*ls, leaf(31) + b"\n"]),
                   "without an inclusion"),
    "leaf moved": (lambda out: _edit(out / "proofs.json", lambda d: d["proofs"][1].update(index=6)),
                   "inclusion proof fails"),
    "proof edited": (lambda out: _edit(out / "proofs.json", lambda d: d["proofs"][2]["path"].__setitem__(0, "0" * 64)),
                     "inclusion proof fails"),
    "proofs reordered": (lambda out: _edit(out / "proofs.json", lambda d: d["proofs"].reverse()),
                         "out of order|differs"),
    "consistency edited": (lambda out: _edit(out / "proofs.json",
                                             lambda d: d["consistency"][0]["path"].__setitem__(0, "1" * 64)),
                           "not consistent"),
    "consistency dropped": (lambda out: _edit(out / "proofs.json", lambda d: d["consistency"].pop()),
                            "consistency proofs do not match"),
    "size edited": (lambda out: _edit(out / "manifest.json", lambda d: d.update(size=31)), "not for the latest"),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_any_excerpt_tamper_is_a_finding(log_path: Path, policy: TrustPolicy, tmp_path: Path, name: str) -> None:
    out = _excerpt(log_path, tmp_path / "ex")
    tamper, message = TAMPERS[name]
    tamper(out)
    with pytest.raises(LogError, match=message):
        verify_log(out, policy=policy)


def test_checkpoint_signature_and_trust_are_checked(log_path: Path, policy: TrustPolicy, tmp_path: Path) -> None:
    out = _excerpt(log_path, tmp_path / "ex")
    other = TrustPolicy.from_public_key(generate_key(key_type="ed25519").public_key(), roles=("checkpoint",))
    with pytest.raises(TrustError):
        verify_log(out, policy=other)
    note = out / "checkpoints" / "000002.note"
    note.write_text(note.read_text().replace("\n20\n", "\n21\n"))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_log(out, policy=policy)


def test_schema_refuses_an_excerpt_without_proofs(log_path: Path, policy: TrustPolicy, tmp_path: Path) -> None:
    out = _excerpt(log_path, tmp_path / "ex")
    _edit(out / "manifest.json", lambda d: d.pop("proofs"))
    with pytest.raises(SchemaError):
        verify_log(out, policy=policy)


def test_supplied_checkpoint_must_be_one_the_excerpt_carries(log_path: Path, policy: TrustPolicy, key,  # type: ignore[no-untyped-def]
                                                             tmp_path: Path) -> None:
    out = _excerpt(log_path, tmp_path / "ex")
    carried = (out / "checkpoints" / "000001.note").read_text()
    assert verify_log(out, policy=policy, supplied_checkpoint=carried).supplied_checkpoint["size"] == 7
    with ReceiptLog.open(log_path) as log:
        other = sign_checkpoint(Checkpoint(origin=ORIGIN, size=33, root=log.root(33)), key)   # not in the excerpt
    with pytest.raises(InputError, match="only against a checkpoint it carries"):
        verify_log(out, policy=policy, supplied_checkpoint=other)
