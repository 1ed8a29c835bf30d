"""``diff`` on real files: artifacts (one changed int8 weight; another model), receipts (file, LOG#INDEX, edited
scores, edited tokens) and replay reports — each kind detected from content, every difference located."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _replay_fixtures import bert_checkpoint, changed_weight, llama_checkpoint, make_keys, quantize_signed, record
from hypothesis import given
from hypothesis import strategies as hs

from kolm_audit.artifact import read_artifact
from kolm_audit.errors import InputError
from kolm_audit.log import open_log_source
from kolm_audit.receipts.document import parse_leaf, sign_receipt
from kolm_audit.replay.diff import diff, json_paths, path_key
from kolm_audit.replay.engine import ReplayOptions, replay
from kolm_audit.runtime.digests import classification_digest, generation_digest


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("diff")
    keys = make_keys(tmp / "keys")
    art = quantize_signed(bert_checkpoint(tmp / "hf"), tmp / "model.kolm", keys.vendor)
    changed, tensor, pos = changed_weight(art, tmp / "changed.kolm", keys.vendor)
    other = quantize_signed(bert_checkpoint(tmp / "hf2", seed=5), tmp / "other.kolm", keys.vendor, name="other")
    log = record(art, tmp / "r.db", keys, texts=["hello", "red car", "the bank will approve the loan"])
    gen = quantize_signed(llama_checkpoint(tmp / "hfl"), tmp / "gen.kolm", keys.vendor)
    glog = record(gen, tmp / "g.db", keys, texts=["w5 w6 w7", "w9"], generate={"max_new_tokens": 8})
    return {"tmp": tmp, "keys": keys, "art": art, "changed": changed, "tensor": tensor, "pos": pos, "other": other,
            "log": log, "glog": glog}


def _leaf(log: Path, index: int) -> bytes:
    with open_log_source(log) as src:
        return src.leaf(index)


def test_json_paths_are_sorted_and_name_missing_sides() -> None:
    assert [d["path"] for d in json_paths(list(range(12)), [])][:3] == ["$[0]", "$[1]", "$[2]"]
    diffs = json_paths({"z": 1, "a": {"x": [1, 2, 3]}}, {"a": {"x": [1, 5]}, "b": None})
    assert [d["path"] for d in diffs] == ["$.a.x[1]", "$.a.x[2]", "$.b", "$.z"]
    assert diffs[1] == {"path": "$.a.x[2]", "a": "3", "b": None} and diffs[2]["a"] is None


_JSON = hs.recursive(hs.none() | hs.booleans() | hs.integers(-5, 5) | hs.text(max_size=3),
                     lambda kids: hs.lists(kids, max_size=3) | hs.dictionaries(hs.text(max_size=2), kids, max_size=3),
                     max_leaves=12)


@given(_JSON, _JSON)
def test_json_paths_empty_exactly_when_equal(a: Any, b: Any) -> None:
    diffs = json_paths(a, b)
    assert (diffs == []) == (json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True))
    assert [d["path"] for d in diffs] == sorted((d["path"] for d in diffs), key=path_key)
    assert json_paths(a, a) == []


def test_same_artifact_is_identical(files: dict[str, Any]) -> None:
    doc = diff(str(files["art"]), str(files["art"]))
    assert doc["kind"] == "artifact" and doc["identical"]
    assert doc["details"]["tensors"]["changed"] == [] and doc["details"]["manifest"] == []


def test_one_changed_weight_is_located_exactly(files: dict[str, Any]) -> None:
    doc = diff(str(files["art"]), str(files["changed"]))
    assert not doc["identical"] and doc["details"]["manifest"] == []
    [change] = doc["details"]["tensors"]["changed"]
    a = np.asarray(read_artifact(files["art"]).tensors[files["tensor"]])
    b = np.asarray(read_artifact(files["changed"]).tensors[files["tensor"]])
    pos = files["pos"]
    assert change["name"] == files["tensor"] and change["differing"] == 1
    assert change["first_flat_index"] == pos
    assert change["first_index"] == [int(i) for i in np.unravel_index(pos, a.shape)]
    assert change["max_abs_difference"] == str(abs(int(a.reshape(-1)[pos]) - int(b.reshape(-1)[pos])))
    assert (change["a_value"], change["b_value"]) == (str(a.reshape(-1)[pos]), str(b.reshape(-1)[pos]))


def _flip_weight_byte(src: Path, out: Path) -> str:
    """Copy ``src`` with one byte of an int8 weight's stored data changed, manifest untouched (a tampered file)."""
    art = read_artifact(src)
    name = sorted(n for n, a in art.tensors.items() if a.dtype == np.int8 and n.startswith("layers.0."))[0]
    data = bytearray(src.read_bytes())
    at = data.find(art.tensors[name].tobytes())      # the tensor's stored bytes (unique in a random-weight model)
    assert at > 0
    data[at + 3] ^= 0x01
    out.write_bytes(bytes(data))
    return name


@pytest.mark.parametrize("side", ["a", "b"])
def test_a_tampered_weight_byte_is_never_identical(files: dict[str, Any], tmp_path: Path, side: str) -> None:
    tampered = tmp_path / "tampered.kolm"
    name = _flip_weight_byte(files["art"], tampered)
    a, b = (str(tampered), str(files["art"])) if side == "a" else (str(files["art"]), str(tampered))
    doc = diff(a, b)
    assert not doc["identical"]
    assert doc["details"]["a_digest"] == doc["details"]["b_digest"]       # same manifest: only the data changed
    assert doc["details"]["integrity"][side]["tampered_tensors"] == [name]
    other = "b" if side == "a" else "a"
    assert doc["details"]["integrity"][other]["tensors_verified"]
    [change] = doc["details"]["tensors"]["changed"]
    assert change["name"] == name and change["differing"] == 1


def test_another_model_differs_in_manifest_and_tensors(files: dict[str, Any]) -> None:
    doc = diff(str(files["art"]), str(files["other"]))
    paths = [d["path"] for d in doc["details"]["manifest"]]
    assert "$.name" in paths and paths == sorted(paths, key=path_key)
    assert len(doc["details"]["tensors"]["changed"]) > 10


def test_receipt_file_equals_its_log_leaf(files: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "leaf.json"
    path.write_bytes(json.dumps(json.loads(_leaf(files["log"], 1)), indent=2).encode())
    doc = diff(str(path), f"{files['log']}#1")
    assert doc["kind"] == "receipt" and doc["identical"] and doc["details"]["fields"] == []


def test_two_decisions_differ_and_bookkeeping_is_told_apart(files: dict[str, Any]) -> None:
    doc = diff(f"{files['log']}#0", f"{files['log']}#1")
    assert not doc["identical"] and doc["details"]["decision_fields"] > 0
    assert "$.receipt_id" in [f["path"] for f in doc["details"]["fields"]]


def test_edited_scores_show_label_and_first_score(files: dict[str, Any], tmp_path: Path) -> None:
    receipt = copy.deepcopy(parse_leaf(_leaf(files["log"], 2)).receipt)
    resp = receipt["response"]
    resp["scores"][2] -= 7
    resp["output_digest"] = classification_digest(resp["label"], resp["scores"])
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(receipt))
    doc = diff(f"{files['log']}#2", str(bare))
    scores = doc["details"]["scores"]
    assert not doc["identical"] and (scores["first_index"], scores["differing"], scores["max_abs_difference"]) == (
        2, 1, "7")


def test_edited_tokens_show_first_divergent_position(files: dict[str, Any], tmp_path: Path) -> None:
    receipt = copy.deepcopy(parse_leaf(_leaf(files["glog"], 0)).receipt)
    resp = receipt["response"]
    resp["output_ids"][3] = (resp["output_ids"][3] + 1) % 128
    resp["output_digest"] = generation_digest(resp["output_ids"], resp["finish_reason"])
    resp["text"] = resp["text_digest"] = None
    forged = tmp_path / "forged.json"
    forged.write_bytes(sign_receipt(receipt, files["keys"].rogue).canonical_bytes())
    details = diff(f"{files['glog']}#0", str(forged))["details"]
    fd = details["first_divergence"]
    assert fd["position"] == 3 and fd["a_token"] != fd["b_token"] and fd["window_start"] == 0
    assert "$.signatures[0]" in [f["path"] for f in details["fields"]]


def test_reports_from_other_batch_sizes_are_identical(files: dict[str, Any], tmp_path: Path) -> None:
    policy = files["keys"].policy
    paths = []
    for name, opts, art in (("a", ReplayOptions(batch_size=1), files["art"]),
                            ("b", ReplayOptions(batch_size=3), files["art"]),
                            ("c", ReplayOptions(replay_mismatched=True), files["changed"])):
        report = replay(files["log"], artifact=art, policy=policy, options=opts)
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    same = diff(str(paths[0]), str(paths[1]))
    assert same["kind"] == "report" and same["identical"]
    assert "$.batch_size" in [d["path"] for d in same["details"]["environment"]]
    changed = diff(str(paths[0]), str(paths[2]))
    assert not changed["identical"] and changed["details"]["verdict"] == {"a": "matched", "b": "mismatch"}
    assert changed["details"]["receipts_changed"] == 3 and changed["details"]["findings"]["only_in_b"]


def test_bad_inputs(files: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InputError):
        diff(str(files["art"]), f"{files['log']}#0")
    with pytest.raises(InputError):
        diff(str(tmp_path / "nope.json"), str(files["art"]))
    odd = tmp_path / "odd.json"
    odd.write_text('{"schema": "something/1"}')
    with pytest.raises(InputError):
        diff(str(odd), str(odd))
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)))
    with pytest.raises(InputError):
        diff(str(noise), str(noise))
