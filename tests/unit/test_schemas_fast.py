"""The optional ``jsonschema-rs`` fast path decides exactly like the Python validator (differential test).

Valid documents of the hot schemas (every receipt kind, a manifest, a trust file) are mutated at a random path —
a value replaced by another JSON value (strings with newlines, non-ASCII digits, ints, floats, bools, null,
lists, objects), a key removed or an unknown key added — and both validators must give the same verdict. The
fast path may only accept, so the one direction that matters is "fast accepts, Python rejects": it must never
happen. Skipped without ``jsonschema-rs``.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from _artifact_fixtures import tiny_manifest, tiny_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("jsonschema_rs")

from kolm_audit.canonical import digest, digest_of
from kolm_audit.keys import generate_key
from kolm_audit.receipts.document import Decision, Decoding, ReceiptContext, parse_leaf, receipt_builder
from kolm_audit.schemas import _fast_accepts, _fast_validator, _validator, validate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = generate_key(key_type="ed25519")


def _receipts() -> list[dict[str, Any]]:
    ctx = ReceiptContext(tenant="acme", operator="svc-1", artifact_digest=digest(b"manifest"), artifact_name="demo",
                         artifact_version="1.0.0", kscore={"score": 912, "gate": {"min": 800, "passed": True}},
                         backend="numpy", key=KEY)
    decisions = [
        Decision(task="embed", input_ids=(101, 7592, 102), input_text="hello", output_digest=digest(b"e"),
                 embedding_digest=digest(b"e"), dim=384, request_id="q-1"),
        Decision(task="classify", input_ids=(101, 7592, 102), input_text="hello",
                 output_digest=digest_of({"label": "positive", "scores": [-1200, 3400]}), label="positive",
                 scores=(-1200, 3400), caller="alice"),
        Decision(task="generate", input_ids=(1, 15043), input_text="Hello,",
                 output_digest=digest_of({"finish_reason": "eos", "output_ids": [3186, 2]}), output_ids=(3186, 2),
                 output_text=" world!", finish_reason="eos",
                 decoding=Decoding(max_new_tokens=8, temperature=700, top_k=40, top_p=900, seed=7)),
    ]
    return [parse_leaf(receipt_builder(ctx, d, start=T0, end=T0)(0)).receipt for d in decisions]


TRUST = {"schema": "kolm.trust/1", "keys": [{"name": "k", "public_key": "k.pub", "roles": ["artifact"],
                                             "tenants": ["*"], "not_after": "2031-01-01T00:00:00Z"}]}
DOCS: list[tuple[str, dict[str, Any]]] = [*(("receipt", r) for r in _receipts()),
                                          ("manifest", tiny_manifest(tiny_tensors())), ("trust", TRUST)]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
           | st.text(max_size=20) | st.sampled_from(["٣", "sha256:" + "a" * 64 + "\n", "a\n", "", " ", "1.0"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: dict[str, Any], path: tuple[Any, ...], how: str, value: Any, original: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    if not path:
        return out
    parent = out
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "suffix" and isinstance(original, str):
        parent[last] = original + "\n"
    elif how == "delete" and isinstance(parent, dict):
        del parent[last]
    elif how == "extra" and isinstance(parent, dict):
        parent["x-unknown"] = value
    return out


def test_the_hot_schemas_use_the_fast_path() -> None:
    for name in ("receipt", "manifest", "trust", "replay-report", "log-bundle"):
        assert _fast_validator(name) is not None, name
    assert _fast_validator("checkpoint") is None          # its pattern uses \\s: Python decides alone


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(DOCS) - 1), data=st.data(), how=st.sampled_from(["replace", "suffix", "delete",
                                                                                 "extra"]), value=values)
def test_fast_and_python_validators_agree_on_mutated_documents(which: int, data: st.DataObject, how: str,
                                                               value: Any) -> None:
    name, doc = DOCS[which]
    path = data.draw(st.sampled_from(_paths(doc)))
    original: Any = doc
    for part in path:
        original = original[part]
    mutated = _mutate(doc, path, how, value, original)
    slow = _validator(name).is_valid(mutated)
    assert _fast_accepts(name, mutated) == slow, (name, path, how, value)


def test_the_valid_documents_are_valid_on_both_paths() -> None:
    for name, doc in DOCS:
        assert _fast_accepts(name, doc) and _validator(name).is_valid(doc)
        validate(doc, name)
