"""Replay on real evidence: tiny int8 BERT classifier built with transformers, signed artifacts, receipt logs
recorded by the Recorder, forged and tampered variants — every planted problem reported with its own reason."""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _artifact_fixtures import sample_kscore
from _replay_fixtures import Keys, bert_checkpoint, changed_weight, make_keys, quantize_signed, record

from kolm_audit.artifact import build_manifest, read_artifact, sign_artifact, write_artifact
from kolm_audit.canonical import digest_of, jcs
from kolm_audit.errors import InputError
from kolm_audit.keys import PrivateKey
from kolm_audit.log import ReceiptLog, open_log_source
from kolm_audit.log.source import export_bundle
from kolm_audit.model import Model
from kolm_audit.receipts.document import parse_leaf, sign_receipt
from kolm_audit.receipts.recorder import Recorder
from kolm_audit.replay.engine import ReplayOptions, replay
from kolm_audit.replay.report import summary_text
from kolm_audit.replay.selection import Selection
from kolm_audit.runtime.digests import classification_digest
from kolm_audit.schemas import validate
from kolm_audit.trust import TrustPolicy

ORIGIN = "example.org/replay-test"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("replay")
    keys = make_keys(tmp / "keys")
    art = quantize_signed(bert_checkpoint(tmp / "hf"), tmp / "model.kolm", keys.vendor)
    other = quantize_signed(bert_checkpoint(tmp / "hf2", seed=5), tmp / "other.kolm", keys.vendor, name="other")
    changed, _, _ = changed_weight(art, tmp / "changed.kolm", keys.vendor)
    log = record(art, tmp / "receipts.db", keys)
    with open_log_source(log) as src:
        first_note = src.checkpoints()[-1][1]
    return {"tmp": tmp, "keys": keys, "art": art, "other": other, "changed": changed, "log": log,
            "note": first_note}


def _forge(world: dict[str, Any], out: Path, index: int, edit: Callable[[dict[str, Any]], None],
           signer: PrivateKey) -> Path:
    """A copy of the log whose receipt ``index`` was edited and re-signed by ``signer``, re-checkpointed by the
    operator's log key (a log rewritten wholesale, consistent in itself)."""
    with open_log_source(world["log"]) as src:
        leaves = [leaf for _, leaf in src.iter_leaves()]
    receipt = copy.deepcopy(parse_leaf(leaves[index]).receipt)
    edit(receipt)
    leaves[index] = sign_receipt(receipt, signer).canonical_bytes()
    with ReceiptLog.open(out, create=True, origin=ORIGIN) as log:
        log.append_many([lambda i, data=data: data for data in leaves])
        log.checkpoint(world["keys"].log)
    return out


def _reasons(report: dict[str, Any], index: int | None = None, scope: str = "receipt") -> set[str]:
    return {f["reason"] for f in report["results"]["findings"] if f["scope"] == scope and f["index"] == index}


def test_clean_replay_matches_everything(world: dict[str, Any]) -> None:
    keys: Keys = world["keys"]
    report = replay(world["log"], artifact=world["art"], policy=keys.policy)
    validate(report, "replay-report")
    res = report["results"]
    assert res["verdict"] == "matched" and res["findings"] == []
    assert res["counts"]["receipts"] == res["counts"]["matched"] == res["counts"]["signatures_verified"] == 10
    assert res["artifact"]["verified"] and res["log"]["verified"] and res["log"]["size"] == 10
    assert [r["index"] for r in res["receipts"]] == list(range(10))
    assert all(r["expected_digest"] == r["actual_digest"] for r in res["receipts"])
    assert report["results_digest"] == digest_of(res)
    assert report["environment"]["backend"] in ("numpy", "cpu", "cuda")


def test_results_identical_across_batch_sizes_and_workers(world: dict[str, Any]) -> None:
    policy = world["keys"].policy
    runs = [replay(world["log"], artifact=world["art"], policy=policy,
                   options=ReplayOptions(batch_size=b, workers=w, backend=be))
            for b, w, be in ((1, 1, "numpy"), (4, 1, "numpy"), (4, 2, "numpy"), (3, 2, "numpy"), (3, 2, "auto"))]
    assert len({jcs(r["results"]) for r in runs}) == 1
    assert [r["environment"]["batch_size"] for r in runs] == [1, 4, 4, 3, 3]
    assert [r["environment"]["workers"] for r in runs] == [1, 1, 2, 2, 2]


def test_bundle_gives_the_same_results_as_the_database(world: dict[str, Any], tmp_path: Path) -> None:
    with ReceiptLog.open(world["log"]) as log:
        bundle = export_bundle(log.path, tmp_path / "bundle")
    policy = world["keys"].policy
    a = replay(world["log"], artifact=world["art"], policy=policy)
    b = replay(bundle, artifact=world["art"], policy=policy)
    assert jcs(a["results"]) == jcs(b["results"])


def test_changed_weight_is_an_artifact_mismatch_and_shows_which_outputs_move(world: dict[str, Any]) -> None:
    policy = world["keys"].policy
    report = replay(world["log"], artifact=world["changed"], policy=policy)
    res = report["results"]
    assert res["verdict"] == "mismatch" and res["artifact"]["verified"]
    assert res["counts"]["by_reason"] == {"artifact-mismatch": 10} and res["counts"]["replayed"] == 0
    first = next(f for f in res["findings"] if f["index"] == 0)
    assert first["expected"] != first["actual"] == res["artifact"]["digest"]
    forced = replay(world["log"], artifact=world["changed"], policy=policy,
                    options=ReplayOptions(replay_mismatched=True))["results"]
    moved = [f for f in forced["findings"] if f["reason"] == "output-mismatch"]
    assert forced["counts"]["replayed"] == 10 and moved
    assert all(f["position"] is not None and f["excerpt"] is not None for f in moved)   # first differing score


def test_wrong_artifact_every_receipt_is_an_artifact_mismatch(world: dict[str, Any]) -> None:
    res = replay(world["log"], artifact=world["other"], policy=world["keys"].policy)["results"]
    assert res["counts"]["by_reason"] == {"artifact-mismatch": 10}
    assert all(r["status"] == "mismatch" and not r["replayed"] for r in res["receipts"])


def _edit_scores(receipt: dict[str, Any]) -> None:
    resp = receipt["response"]
    resp["scores"] = [s + (1 << 16) if i == 1 else s for i, s in enumerate(resp["scores"])]
    resp["output_digest"] = classification_digest(resp["label"], resp["scores"])


def test_rogue_signed_edit_is_untrusted_signer_and_output_mismatch(world: dict[str, Any], tmp_path: Path) -> None:
    keys: Keys = world["keys"]
    forged = _forge(world, tmp_path / "forged.db", 3, _edit_scores, keys.rogue)
    report = replay(forged, artifact=world["art"], policy=keys.policy)
    res = report["results"]
    assert _reasons(report, 3) == {"untrusted-signer", "output-mismatch"}
    assert all(not _reasons(report, i) for i in range(10) if i != 3)
    assert res["log"]["verified"]                                 # rewritten wholesale: consistent in itself...
    mismatch = next(f for f in res["findings"] if f["reason"] == "output-mismatch")
    assert mismatch["position"] == 1 and mismatch["receipt_id"] == res["receipts"][3]["receipt_id"]
    kept = replay(forged, artifact=world["art"], policy=keys.policy,
                  options=ReplayOptions(supplied_checkpoint=world["note"]))
    assert _reasons(kept, None, scope="log") == {"log-inconsistent"}   # ...but not with the checkpoint we kept


def test_insider_edit_with_the_real_key_is_only_an_output_mismatch(world: dict[str, Any], tmp_path: Path) -> None:
    forged = _forge(world, tmp_path / "insider.db", 5, _edit_scores, world["keys"].receipt)
    report = replay(forged, artifact=world["art"], policy=world["keys"].policy)
    assert _reasons(report, 5) == {"output-mismatch"}
    assert report["results"]["counts"]["by_reason"] == {"output-mismatch": 1}


def test_edit_without_fixing_the_digest_is_receipt_inconsistent(world: dict[str, Any], tmp_path: Path) -> None:
    def edit(receipt: dict[str, Any]) -> None:
        receipt["response"]["label"] = "label_z"

    forged = _forge(world, tmp_path / "sloppy.db", 2, edit, world["keys"].receipt)
    report = replay(forged, artifact=world["art"], policy=world["keys"].policy)
    assert _reasons(report, 2) == {"receipt-inconsistent"}


def test_receipt_naming_this_digest_with_another_version_is_inconsistent(world: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    def edit(receipt: dict[str, Any]) -> None:
        receipt["artifact"]["version"] = "2"

    forged = _forge(world, tmp_path / "version.db", 7, edit, world["keys"].receipt)
    report = replay(forged, artifact=world["art"], policy=world["keys"].policy)
    assert _reasons(report, 7) == {"receipt-inconsistent"}
    assert report["results"]["receipts"][7]["replayed"]          # the decision itself still reproduced


def test_tampered_leaf_in_the_database_is_log_inconsistent(world: dict[str, Any], tmp_path: Path) -> None:
    forged = _forge(world, tmp_path / "f.db", 4, _edit_scores, world["keys"].receipt)
    with open_log_source(forged) as src:
        new_leaf = src.leaf(4)
    target = tmp_path / "tampered.db"
    target.write_bytes(world["log"].read_bytes())
    with sqlite3.connect(target) as conn:   # an attacker with write access to the file drops the guard first
        conn.execute("DROP TRIGGER leaves_no_update")
        conn.execute("UPDATE leaves SET data = ? WHERE idx = 4", (new_leaf,))
    conn.close()
    report = replay(target, artifact=world["art"], policy=world["keys"].policy)
    assert _reasons(report, None, scope="log") == {"log-inconsistent"}
    assert _reasons(report, 4) == {"output-mismatch"} and not report["results"]["log"]["verified"]


def test_untrusted_artifact_signer_is_reported_but_replay_still_runs(world: dict[str, Any]) -> None:
    keys: Keys = world["keys"]
    policy = TrustPolicy(keys=tuple(k for k in keys.policy.keys if "artifact" not in k.roles))
    res = replay(world["log"], artifact=world["art"], policy=policy)["results"]
    assert res["counts"]["by_reason"] == {"untrusted-signer": 1} and res["counts"]["replayed"] == 10
    assert res["findings"][0]["scope"] == "artifact" and not res["artifact"]["verified"]


def test_tampered_artifact_is_artifact_invalid_and_nothing_is_replayed(world: dict[str, Any], tmp_path: Path) -> None:
    data = bytearray(world["art"].read_bytes())
    data[-5] ^= 0x01
    bad = tmp_path / "bad.kolm"
    bad.write_bytes(bytes(data))
    res = replay(world["log"], artifact=bad, policy=world["keys"].policy)["results"]
    assert _reasons({"results": res}, None, scope="artifact") == {"artifact-invalid"}
    assert res["counts"]["replayed"] == 0 and res["verdict"] == "mismatch"


def test_failed_gate_is_reported(world: dict[str, Any], tmp_path: Path) -> None:
    art = read_artifact(world["art"])
    m = art.manifest
    tensors = {n: np.asarray(a) for n, a in art.tensors.items()}
    manifest = build_manifest(name=m["name"], version=m["version"], task=m["task"], architecture=m["architecture"],
                              quantization=m["quantization"], tensors=tensors, provenance=m["provenance"],
                              created=m["created"], kscore=sample_kscore(passed=False))
    gated = tmp_path / "gated.kolm"
    write_artifact(gated, manifest=manifest, tensors=tensors)
    sign_artifact(gated, world["keys"].vendor)
    report = replay(world["log"], artifact=gated, policy=world["keys"].policy)
    assert _reasons(report, None, scope="artifact") == {"gate-failed"}
    assert report["results"]["counts"]["by_reason"]["artifact-mismatch"] == 10


def test_selection_filters(world: dict[str, Any]) -> None:
    policy = world["keys"].policy
    base = replay(world["log"], artifact=world["art"], policy=policy)["results"]["receipts"]

    def picked(*exprs: str) -> list[int]:
        report = replay(world["log"], artifact=world["art"], policy=policy,
                        options=ReplayOptions(selection=Selection.parse(exprs)))
        assert report["results"]["selection"]["filters"] == list(exprs)
        return [r["index"] for r in report["results"]["receipts"]]

    assert picked("index=2..4") == [2, 3, 4]
    assert picked("index=8..") == [8, 9]
    assert picked("tenant=acme", "index=..1") == [0, 1]
    assert picked(f"id={base[6]['receipt_id']},{base[1]['receipt_id']}") == [1, 6]
    assert picked("time=2000-01-01T00:00:00Z..") == list(range(10))
    # a selection that matches nothing is bad input, never "MATCHED 0/0"
    for empty in ("tenant=globex", "time=2000-01-01T00:00:00Z..2001-01-01T00:00:00Z", "id=no-such-receipt",
                  "index=50..60"):
        with pytest.raises(InputError, match="no receipt in this log matches"):
            picked(empty)


@pytest.mark.parametrize("expr", ["index=5..2", "index=a..b", "colour=red", "time=2026-01-01T00:00:00Z",
                                  "tenant=", "index=1..2..3"])
def test_bad_selection_is_bad_input(expr: str) -> None:
    with pytest.raises(InputError):
        Selection.parse([expr])


def test_replay_options_are_checked() -> None:
    with pytest.raises(InputError):
        ReplayOptions(batch_size=0)
    with pytest.raises(InputError):
        ReplayOptions(backend="tpu")


def test_results_identical_across_available_backends(world: dict[str, Any]) -> None:
    policy = world["keys"].policy
    runs = []
    for backend in ("numpy", "auto", "cpu"):
        try:
            runs.append(replay(world["log"], artifact=world["art"], policy=policy,
                               options=ReplayOptions(backend=backend, batch_size=4)))
        except InputError:   # this build's runtime does not offer that backend
            continue
    assert len(runs) >= 2 and len({jcs(r["results"]) for r in runs}) == 1
    assert "numpy" in {r["environment"]["backend"] for r in runs}
    assert all(r["results"]["verdict"] == "matched" for r in runs)


def test_receipts_after_the_latest_checkpoint_are_reported(world: dict[str, Any], tmp_path: Path) -> None:
    keys: Keys = world["keys"]
    log = tmp_path / "tail.db"
    shutil.copy(world["log"], log)
    art = read_artifact(world["art"])
    with ReceiptLog.open(log) as db, Recorder(Model.from_artifact(art), db, keys.receipt, tenant="acme",
                                              operator="svc") as rec:
        rec.record_classify(["one more decision", "and another"])     # no checkpoint key: nothing signs them
    report = replay(log, artifact=world["art"], policy=keys.policy)
    res = report["results"]
    assert res["verdict"] == "matched" and res["counts"]["warnings"] == 1
    assert res["log"]["unanchored"] == {"count": 2, "first_index": 10, "last_index": 11}
    [f] = res["findings"]
    assert (f["scope"], f["reason"], f["severity"]) == ("log", "unanchored", "warning")
    assert "2 receipt(s) at log indices 10..11" in f["message"]
    strict = replay(log, artifact=world["art"], policy=keys.policy, options=ReplayOptions(require_checkpointed=True))
    assert strict["results"]["verdict"] == "mismatch"
    assert strict["results"]["findings"][0]["severity"] == "error"
    assert "not covered by a signed checkpoint" in summary_text(report)


def test_an_unsigned_artifact_is_unsigned_not_signature_invalid(world: dict[str, Any], tmp_path: Path) -> None:
    art = read_artifact(world["art"])
    unsigned = tmp_path / "unsigned.kolm"
    write_artifact(unsigned, manifest=art.manifest, tensors={n: np.asarray(a) for n, a in art.tensors.items()})
    report = replay(world["log"], artifact=unsigned, policy=world["keys"].policy)
    res = report["results"]
    assert _reasons(report, None, scope="artifact") == {"unsigned"}
    text = summary_text(report)
    assert text.startswith("replay MISMATCH (unsigned): 10/10 receipts") and "None" not in text
    assert "signature-invalid" not in json.dumps(res)
