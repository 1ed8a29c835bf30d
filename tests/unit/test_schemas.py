"""Schema validation follows JSON Schema's ECMA-262 patterns, not Python's ``re`` quirks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.errors import SchemaError
from kolm_audit.schemas import _ecma_regex, schema_dir, validate

DIGEST = "sha256:" + "ab" * 32


def _patterns() -> list[str]:
    """Every ``pattern`` in the shipped schemas."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.append(node["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(schema_dir().glob("*.schema.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return sorted(set(found))


def test_a_trailing_newline_never_satisfies_an_anchored_pattern() -> None:
    trust = {"schema": "kolm.trust/1", "keys": [{"name": "k", "public_key": "k.pub", "roles": ["artifact"],
                                                  "tenants": ["*"], "not_after": "2031-01-01T00:00:00Z"}]}
    validate(trust, "trust")
    trust["keys"][0]["not_after"] = "2031-01-01T00:00:00Z\n"
    with pytest.raises(SchemaError, match="does not match"):
        validate(trust, "trust")


def test_digit_classes_are_ascii() -> None:
    trust = {"schema": "kolm.trust/1", "keys": [{"name": "k", "public_key": "k.pub", "roles": ["artifact"],
                                                  "tenants": ["*"], "not_after": "٢٠٣١-01-01T00:00:00Z"}]}
    with pytest.raises(SchemaError):
        validate(trust, "trust")


@settings(max_examples=300, deadline=None)
@given(pattern=st.sampled_from(_patterns()), text=st.text(max_size=80), tail=st.sampled_from(["", "\n"]))
def test_every_schema_pattern_is_anchored_at_the_very_end(pattern: str, text: str, tail: str) -> None:
    """A match never ends before a final newline: whatever matches ``s + "\\n"`` contains the newline itself."""
    regex = _ecma_regex(pattern)
    if pattern.endswith("$") and not pattern.endswith("\\$") and regex.search(text + tail):
        assert regex.search(text + tail).end() == len(text + tail)


def test_digest_pattern_refuses_a_trailing_newline() -> None:
    regex = _ecma_regex("^sha256:[0-9a-f]{64}$")
    assert regex.search(DIGEST) and not regex.search(DIGEST + "\n")


def test_errors_are_explained_from_the_closest_alternative() -> None:
    import jsonschema

    from kolm_audit.schemas import explain

    schema = {"oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["ok", "items"],
         "properties": {"ok": {"const": True}, "items": {"type": "array", "items": {"type": "integer"}}}},
        {"type": "object", "additionalProperties": False, "required": ["ok", "error"],
         "properties": {"ok": {"const": False}, "error": {"type": "string"}}}]}
    [error] = jsonschema.Draft202012Validator(schema).iter_errors({"ok": True, "items": [1, "x"]})
    assert explain(error) == "'x' is not of type 'integer' (at $.items[1])"
    [error] = jsonschema.Draft202012Validator({"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}).iter_errors({})
    assert explain(error) == "give exactly one of: a | b"
    schema = {"type": "object", "additionalProperties": False, "properties": {"a": {}, "b": {}}}
    [error] = jsonschema.Draft202012Validator(schema).iter_errors({"a": 1, "zz": 2})
    assert explain(error) == "unknown field(s) 'zz'; allowed: a, b"
