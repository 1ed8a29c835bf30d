"""The golden suite document: canonical writer, strict reader (schema errors name the case), integer differences."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolm_audit.canonical import jcs
from kolm_audit.errors import ConfigError
from kolm_audit.golden.differences import (
    classify_differences,
    embedding_differences,
    generate_differences,
    q16_text,
)
from kolm_audit.golden.suite import Case, Expected, Suite, parse_suite, read_suite
from kolm_audit.receipts.document import Decoding
from kolm_audit.runtime.digests import classification_digest, embedding_digest, generation_digest, input_digest

PIN = "sha256:" + "ab" * 32


def _embed_expected(values: list[int], ids: list[int] = (101, 102)) -> Expected:  # type: ignore[assignment]
    return Expected(task="embed", input_digest=input_digest(ids), output_digest=embedding_digest(values),
                    embedding=tuple(values))


def _suite(cases: tuple[Case, ...], **kw: object) -> Suite:
    args: dict = {"name": "s", "task": "embed", "artifact_name": "m", "artifact_digest": PIN, "cases": cases}
    args.update(kw)
    return Suite(**args)


def _doc(suite: Suite) -> dict:
    return json.loads(suite.canonical_bytes())


def test_write_then_read_is_byte_identical_and_canonical(tmp_path: Path) -> None:
    suite = _suite((Case(id="a", text="hello", expected=_embed_expected([1, -2, 3])), Case(id="b", ids=(101, 102))))
    path = suite.write(tmp_path / "s.golden.json")
    data = path.read_bytes()
    assert data == jcs(json.loads(data)) + b"\n"
    again = read_suite(path)
    assert again == suite and again.canonical_bytes() == data and again.digest == suite.digest


def test_reader_rejects_non_canonical_bytes_unless_asked(tmp_path: Path) -> None:
    suite = _suite((Case(id="a", text="hello"),))
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(_doc(suite), indent=2))
    with pytest.raises(ConfigError, match="not in canonical form") as exc:
        read_suite(pretty)
    assert exc.value.exit_code == 2 and "golden bless" in str(exc.value)
    assert read_suite(pretty, canonical=False) == suite
    (tmp_path / "dup.json").write_text('{"name": "a", "name": "b"}')
    with pytest.raises(ConfigError, match="duplicate key"):
        read_suite(tmp_path / "dup.json")


def _malformed(doc: dict, tmp_path: Path) -> str:
    path = tmp_path / "bad.json"
    path.write_bytes(jcs(doc) + b"\n")
    with pytest.raises(ConfigError) as exc:
        read_suite(path)
    assert exc.value.exit_code == 2 and exc.value.file == str(path)
    return str(exc.value)


def test_schema_error_names_the_case(tmp_path: Path) -> None:
    doc = _doc(_suite((Case(id="fine", text="x"), Case(id="loan-17", text="y", expected=_embed_expected([4])))))
    doc["cases"][1]["expected"]["output_digest"] = "sha256:xyz"
    message = _malformed(doc, tmp_path)
    assert "cases[1] (id 'loan-17'): expected.output_digest" in message and "golden-suite" in message
    doc = _doc(_suite((Case(id="a", text="x"), Case(id="b", text="y"))))
    doc["cases"][1]["input"] = {"text": "y", "ids": [1]}
    assert "cases[1] (id 'b')" in _malformed(doc, tmp_path)
    doc = _doc(_suite((Case(id="a", text="x"),)))
    doc["cases"][0]["params"] = {"max_new_tokens": 4, "seed": None, "temperature": None, "top_k": None, "top_p": None}
    assert "cases[0] (id 'a')" in _malformed(doc, tmp_path)       # params on an embed case


def test_expected_digest_must_hash_the_values_beside_it(tmp_path: Path) -> None:
    doc = _doc(_suite((Case(id="a", text="x"), Case(id="edited", text="y", expected=_embed_expected([7, 8])))))
    doc["cases"][1]["expected"]["embedding"] = [7, 9]          # hand-edited value, digest left alone
    message = _malformed(doc, tmp_path)
    assert "cases[1] (id 'edited'): output_digest" in message and embedding_digest([7, 9]) in message


def test_ids_input_must_match_its_input_digest_and_ids_are_unique(tmp_path: Path) -> None:
    doc = _doc(_suite((Case(id="a", ids=(101, 102), expected=_embed_expected([1])),)))
    doc["cases"][0]["input"]["ids"] = [101, 103]
    assert "cases[0] (id 'a'): expected.input_digest" in _malformed(doc, tmp_path)
    doc = _doc(_suite((Case(id="a", text="x"),)))
    doc["cases"].append(dict(doc["cases"][0]))
    assert "duplicate case id" in _malformed(doc, tmp_path)


def test_pinned_and_per_digest_forms_do_not_mix(tmp_path: Path) -> None:
    doc = _doc(_suite((Case(id="a", text="x"),)))
    doc["cases"][0]["expected_by_digest"] = {}
    assert "cases[0] (id 'a')" in _malformed(doc, tmp_path)
    per_digest = _suite((Case(id="a", text="x", expected_by_digest={PIN: _embed_expected([1])}),),
                        artifact_digest=None)
    assert per_digest.expectation(per_digest.cases[0], PIN) == _embed_expected([1])
    assert per_digest.expectation(per_digest.cases[0], "sha256:" + "cd" * 32) is None
    doc = _doc(per_digest)
    del doc["cases"][0]["expected_by_digest"]
    assert "cases[0] (id 'a')" in _malformed(doc, tmp_path)


def test_generate_and_classify_expectations(tmp_path: Path) -> None:
    gen = Expected(task="generate", input_digest=input_digest([5, 6]), output_digest=generation_digest([9, 2], "eos"),
                   output_ids=(9, 2), finish_reason="eos", text="w9")
    suite = _suite((Case(id="g", ids=(5, 6), params=Decoding(max_new_tokens=4, seed=3, temperature=700),
                         expected=gen),), task="generate")
    assert read_suite(suite.write(tmp_path / "g.json")) == suite
    with pytest.raises(ConfigError, match="params"):
        _suite((Case(id="g", ids=(5, 6)),), task="generate")
    cls = Expected(task="classify", input_digest=input_digest([1]), output_digest=classification_digest("yes", [3, 1]),
                   label="yes", scores=(3, 1))
    assert "label 'yes'" in cls.summary()
    with pytest.raises(ConfigError, match="output_digest"):
        Expected(task="classify", input_digest=input_digest([1]), output_digest=cls.output_digest, label="no",
                 scores=(3, 1))


_case_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
_values = st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8)


@st.composite
def _suites(draw: st.DrawFn) -> Suite:
    ids = draw(st.lists(_case_ids, min_size=0, max_size=5, unique=True))
    cases = []
    for cid in ids:
        tokens = draw(st.lists(st.integers(0, 30000), min_size=1, max_size=6))
        text = draw(st.none() | st.text(max_size=20))
        exp = draw(st.none() | _values.map(lambda v, t=tokens: _embed_expected(v, t)))
        cases.append(Case(id=cid, text=text, ids=None if text is not None else tuple(tokens),
                          expected=exp if text is None else None))
    return _suite(tuple(cases), name=draw(_case_ids))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suite=_suites())
def test_property_canonical_round_trip(suite: Suite) -> None:
    data = suite.canonical_bytes()
    assert data == jcs(json.loads(data)) + b"\n"
    assert parse_suite(data, source="s.json") == suite
    pretty = json.dumps(json.loads(data), indent=1).encode()
    if pretty != data[:-1]:
        with pytest.raises(ConfigError):
            parse_suite(pretty, source="s.json")
    assert parse_suite(pretty, source="s.json", canonical=False) == suite


@settings(max_examples=60, deadline=None)
@given(a=st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=16), data=st.data())
def test_property_embedding_distance_is_exact_integer_math(a: list[int], data: st.DataObject) -> None:
    b = data.draw(st.lists(st.integers(-(2**20), 2**20), min_size=len(a), max_size=len(a)))
    [d] = embedding_differences(a, b)
    l2 = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True))) / 65536
    assert abs(float(d.detail["l2_distance"]) - l2) <= 2e-6
    assert d.detail["differing"] == sum(x != y for x, y in zip(a, b, strict=True))
    if any(a) and any(b):
        cos = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
        assert abs(float(d.detail["cosine_similarity"]) - cos) <= 2e-6
    if any(a):
        [same] = embedding_differences(a, a)
        assert same.detail["l2_distance"] == "0.000000" and same.detail["cosine_similarity"] == "1.000000"


def test_q16_and_first_divergent_token_text() -> None:
    assert q16_text(-98304) == "-1.500000" and q16_text(1) == "0.000015"
    words = {i: f"w{i}" for i in range(200)}

    def decode(ids: list[int]) -> str:
        return " ".join(words[i] for i in ids)

    expected = list(range(10, 30))
    actual = [*expected[:12], 99, 98, *expected[14:]]
    [d] = generate_differences(expected, "length", actual, "length", decode=decode)
    assert d.kind == "tokens" and d.detail["position"] == 12
    assert d.detail["context_text"] == decode(expected[4:12]) and d.detail["actual_ids"][:2] == [99, 98]
    assert "position 12" in d.message and "w99 w98" in d.message
    kinds = [x.kind for x in generate_differences([1, 2], "eos", [1, 2, 3], "length", decode=None)]
    assert kinds == ["tokens", "finish_reason"]


def test_label_change_reads_first() -> None:
    label, scores = classify_differences("approve", [65536, -65536], "deny", [-65536, 65536])
    assert (label.kind, label.message) == ("label", "label changed: 'approve' -> 'deny'")
    assert scores.kind == "scores" and scores.detail["differing"] == 2 and "max |Δ| 2.000000" in scores.message
    [only] = classify_differences("a", [1, 2], "a", [1, 3])
    assert only.detail["first_index"] == 1 and "label 'a' unchanged" in only.message
