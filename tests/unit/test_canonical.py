"""RFC 8785 canonical JSON, digests and strict parsing: golden vectors as exact bytes."""

from __future__ import annotations

import pytest

from kolm_audit.canonical import check_digest, digest, digest_of, jcs, loads_canonical, loads_strict
from kolm_audit.errors import ArtifactError, InputError, SchemaError


@pytest.mark.parametrize(("value", "expected"), [
    ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
    ({}, b"{}"),
    ([], b"[]"),
    ([True, False, None], b"[true,false,null]"),
    ({"a": [3, {"z": 0, "y": -1}]}, b'{"a":[3,{"y":-1,"z":0}]}'),
    (9007199254740991, b"9007199254740991"),
    (-9007199254740991, b"-9007199254740991"),
    (0, b"0"),
    # RFC 8785 §3.2.2.2: only \b \t \n \f \r \" \\ and \u00XX (lowercase) escapes; "/" and non-ASCII raw
    (["\x0f", '"', "\\", "/", "\b\t\n\f\r", "\u00e9", "\u20ac"],
     b'["\\u000f","\\"","\\\\","/","\\b\\t\\n\\f\\r","\xc3\xa9","\xe2\x82\xac"]'),
    # RFC 8785 §3.2.3: property names sorted by UTF-16 code units (U+1F600 sorts before U+FB33)
    ({"\u20ac": 1, "\r": 2, "\U0001F600": 3, "\u00f6": 4, "1": 5, "\ufb33": 6},
     b'{"\\r":2,"1":5,"\xc3\xb6":4,"\xe2\x82\xac":1,"\xf0\x9f\x98\x80":3,"\xef\xac\xb3":6}'),
])
def test_jcs_golden_vectors(value: object, expected: bytes) -> None:
    assert jcs(value) == expected
    assert loads_canonical(expected) == value


def test_floats_and_unsafe_integers_are_refused() -> None:
    with pytest.raises(InputError, match="floats are not allowed") as exc:
        jcs({"a": [1, {"b": 0.5}]})
    assert exc.value.field == "a[1].b"
    with pytest.raises(InputError, match="cannot canonicalize"):
        jcs(2**53)
    for lone in (["\ud800"], {"\udc00": 1}):
        with pytest.raises(InputError, match="cannot canonicalize"):
            jcs(lone)


def test_digests() -> None:
    assert digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest(b"abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert digest_of({"b": 1, "a": 2}) == digest(b'{"a":2,"b":1}')
    ok = "sha256:" + "0" * 64
    assert check_digest(ok, field="f") == ok
    for bad in ("sha256:" + "A" * 64, "sha512:" + "0" * 64, "sha256:" + "0" * 63, 5, None):
        with pytest.raises(SchemaError, match="malformed digest"):
            check_digest(bad, field="f")


@pytest.mark.parametrize(("text", "match"), [
    (b'{"a":1,"a":2}', "duplicate key"),
    (b"[NaN]", "non-standard JSON constant"),
    (b"[Infinity]", "non-standard JSON constant"),
    (b"[1.5]", "float literal"),
    (b"[1e3]", "float literal"),
    (b"[9007199254740992]", "outside the JSON safe range"),
    (b'["\xff"]', "utf-8"),
    (b"[1", "Expecting"),
    (b'["\\ud800"]', "surrogates not allowed"),
    (b'{"\\udc00x":1}', "surrogates not allowed"),
    (b"[" * 100_000 + b"]" * 100_000, "not strict JSON"),
])
def test_loads_strict_rejects(text: bytes, match: str) -> None:
    with pytest.raises(SchemaError, match=match):
        loads_strict(text)


def test_loads_strict_error_class_and_location() -> None:
    with pytest.raises(ArtifactError) as exc:
        loads_strict(b"{", file="f.json", field="header", error=ArtifactError)
    assert exc.value.file == "f.json" and exc.value.field == "header"


@pytest.mark.parametrize("text", [b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1} ', b'"\\u00e9"', b'"\\/"', b"-0"])
def test_loads_canonical_rejects_non_canonical(text: bytes) -> None:
    loads_strict(text)   # valid JSON ...
    with pytest.raises(SchemaError, match="not in canonical"):
        loads_canonical(text)   # ... but not its own JCS encoding
