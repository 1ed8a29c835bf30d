"""The binder's page logic without rendering: printable text, the K-score table and chart, receipt cards (sealed
tenants show digests only), sample selection, the crosswalk, safe extraction names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.binder.chart import kscore_svg
from kolm_audit.binder.crosswalk import crosswalk_rows
from kolm_audit.binder.evidence import Cited, select_samples
from kolm_audit.binder.extract import safe_name
from kolm_audit.binder.pages import _card, _kscore, _ranges, printable
from kolm_audit.errors import BinderError

DRAWABLE = frozenset(range(0x20, 0x7F)) | frozenset(map(ord, "éü—…"))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_printable_only_emits_drawable_characters(text: str) -> None:
    out = printable(text, DRAWABLE)
    assert all(ord(c) in DRAWABLE or c in "\n\t" for c in out)
    if all(ord(c) in DRAWABLE for c in text):
        assert out == text


def test_printable_names_what_it_replaces() -> None:
    assert printable("a\u4e2db\x00", DRAWABLE) == "a[U+4E2D]b[U+0000]"


FAILED_GATE = {"spec": "kolm.kscore/1", "k": 867, "components": {"A": 780, "S": 1000, "L": 900, "C": 800, "V": 1000},
               "weights": {"A": 400, "S": 150, "L": 150, "C": 150, "V": 150}, "inputs": {"eval_cases": 200},
               "gate": {"min_k": 800, "min_components": {"A": 800}, "passed": False, "failed": ["A"]}}


def test_kscore_table_recomputes_k_and_marks_the_failed_component() -> None:
    ks = _kscore(FAILED_GATE)
    assert ks is not None and ks["k"] == 867 and ks["recomputed"] == 867 and not ks["passed"]
    rows = {r["name"]: r for r in ks["rows"]}
    assert rows["A"]["value"] == "78.0 %" and rows["A"]["points"] == "312" and not rows["A"]["ok"]
    assert rows["S"]["ok"] and rows["A"]["min"] == "80.0 %"
    assert ks["svg"].count('fill="#b03a2e"') == 1          # one bar below its minimum
    assert _kscore(None) is None
    edited = {**FAILED_GATE, "k": 900}
    assert _kscore(edited)["recomputed"] == 867                # shown beside the manifest's 900


def test_chart_is_deterministic_and_clamped() -> None:
    a = kscore_svg({"A": 1200, "S": -5}, minimums={"A": 500})
    assert a == kscore_svg({"S": -5, "A": 1200}, minimums={"A": 500})
    assert 'width="400" height="16" fill="#2f6f4f"' in a and 'width="0" height="16"' in a


def _cited(mode: str) -> Cited:
    sealed = {"alg": "A256GCM-kolm/1", "key_id": "k", "nonce": "n", "ct": "c"}
    receipt = {"receipt_id": "r", "tenant": "t", "task": "classify", "privacy": {"mode": mode},
               "period": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:01Z"},
               "artifact": {"digest": "sha256:" + "a" * 64}, "operator": {"name": "svc", "caller": None},
               "request": {"text": "secret text" if mode == "clear" else sealed, "text_digest": "sha256:" + "b" * 64,
                           "input_ids": [1, 2, 3], "input_digest": "sha256:" + "c" * 64},
               "decoding": None, "response": {"output_digest": "sha256:" + "d" * 64, "label": "yes", "scores": [1, 2]}}
    row = {"status": "matched", "reasons": [], "expected_digest": "sha256:" + "d" * 64,
           "actual_digest": "sha256:" + "d" * 64}
    return Cited(index=3, why="sample", row=row, findings=(), receipt=receipt, signers=("sha256:" + "e" * 64,),
                 leaf_hash="f" * 64, proof=("0" * 64,))


def test_cards_of_encrypted_tenants_show_digests_only() -> None:
    clear = _card(_cited("clear"))["receipt"]
    assert clear["text"] == "secret text" and dict(clear["outputs"])["label"] == "yes"
    sealed = _card(_cited("encrypt-text"))["receipt"]
    assert sealed["text"] == sealed["input_ids"] == "sealed (digest only)"
    assert dict(sealed["outputs"])["label"] == dict(sealed["outputs"])["scores"] == "sealed (digest only)"
    assert sealed["text_digest"] == "sha256:" + "b" * 64 and dict(sealed["outputs"])["output digest"].startswith("sha")


def test_samples_are_a_fixed_function_of_the_seed() -> None:
    one = select_samples(range(1000), seed="sha256:" + "1" * 64, count=12)
    assert one == select_samples(list(reversed(range(1000))), seed="sha256:" + "1" * 64, count=12)
    assert one != select_samples(range(1000), seed="sha256:" + "2" * 64, count=12)
    assert len(one) == 12 and list(one) == sorted(one) and one[-1] - one[0] > 100     # spread over the log
    assert select_samples([4, 7], seed="x", count=12) == (4, 7)


def test_ranges_compact_indices() -> None:
    assert _ranges([1, 2, 3, 7, 9, 10]) == "1–3, 7, 9–10" and _ranges([]) == ""


def test_crosswalk_states_its_numbers_and_limits() -> None:
    rows = crosswalk_rows(receipts=10, matched=8, mismatched=2, log_size=12, checkpoint_size=10,
                          first="2026-01-01T00:00:00Z", last="2026-02-01T00:00:00Z", kscore=FAILED_GATE,
                          provenance=True, artifact_digest="sha256:" + "a" * 64)
    text = " ".join(r.shows for r in rows)
    assert "12 model decisions" in text and "covers 10 of 12 leaves" in text and "8 of 10 receipts" in text
    assert "2 decision(s) did not reproduce" in text and "K = 867, gate FAILED" in text
    assert all(r.does_not_cover for r in rows)
    duties = " ".join(r.duty for r in rows)
    for duty in ("Art. 12", "Art. 19", "§164.312(b)", "SR 11-7"):
        assert duty in duties


@pytest.mark.parametrize("name", ["../x", "/abs", "a//b", "a/../b", "index.json", "", "a b", ".hidden", "a\\b"])
def test_unsafe_extraction_names_are_refused(name: str) -> None:
    with pytest.raises(BinderError):
        safe_name(name)


def test_safe_extraction_names() -> None:
    assert safe_name("log/checkpoints/000001.note") == "log/checkpoints/000001.note"
