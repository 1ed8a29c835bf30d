"""The provenance statement beside a compiled artifact: written canonically and signed, read strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kolm_audit.canonical import jcs
from kolm_audit.compile.provenance import (
    machine_facts,
    provenance_path,
    provenance_statement,
    read_provenance,
    verify_provenance,
    write_provenance,
)
from kolm_audit.errors import InputError, SchemaError, SignatureError, TrustError
from kolm_audit.keys import generate_key
from kolm_audit.signing import sign_envelope
from kolm_audit.trust import TrustPolicy

DIGEST = "sha256:" + "ab" * 32


def _statement(**kw: object) -> dict:
    args: dict = dict(name="demo", artifact_digest=DIGEST, recipe_file="r.toml", recipe={"schema": "kolm.recipe/1"},
                      recipe_digest="sha256:" + "cd" * 32, dependencies={"data/train": "sha256:" + "ef" * 32},
                      parameters={"trainer": "exact", "threads": 2}, builder={"kolm_audit": "0.1.0"},
                      started="2026-01-01T00:00:00Z", finished="2026-01-01T00:01:00Z",
                      byproducts=[{"name": "build-machine", "annotations": machine_facts()}])
    args.update(kw)
    return provenance_statement(**args)


def test_round_trip_and_verification(tmp_path: Path) -> None:
    key = generate_key(key_type="ecdsa-p256")
    path = provenance_path(tmp_path / "m.kolm")
    assert path.name == "m.kolm.provenance.json"
    write_provenance(path, _statement(), key)
    prov = read_provenance(path)
    assert prov.subject_digest == DIGEST and prov.statement["subject"][0]["name"] == "demo"
    assert prov.statement["predicate"]["buildDefinition"]["resolvedDependencies"] == [
        {"name": "data/train", "digest": {"sha256": "ef" * 32}}]
    assert "cpu_model" in prov.byproducts["build-machine"]
    policy = TrustPolicy.from_public_key(key.public_key(), roles=("artifact",))
    _, signers = verify_provenance(path, policy=policy, artifact_digest=DIGEST)
    assert [s.key_id for s in signers] == [key.key_id]
    with pytest.raises(TrustError):
        verify_provenance(path, policy=TrustPolicy.from_public_key(key.public_key(), roles=("receipt",)))


def test_the_statement_refuses_floats_and_what_its_schema_does_not_allow() -> None:
    with pytest.raises(InputError, match="floats"):
        _statement(parameters={"learning_rate": 0.5})
    with pytest.raises(SchemaError):
        _statement(started="yesterday")


def test_strict_reader(tmp_path: Path) -> None:
    key = generate_key(key_type="ed25519")
    path = tmp_path / "p.json"
    write_provenance(path, _statement(), key)
    raw = path.read_bytes()
    (tmp_path / "pretty.json").write_text(json.dumps(json.loads(raw), indent=1))
    with pytest.raises(SignatureError, match="canonical"):
        read_provenance(tmp_path / "pretty.json")
    other = sign_envelope(jcs(_statement()), payload_type="application/json", key=key)
    (tmp_path / "type.json").write_bytes(jcs(other.to_json()) + b"\n")
    with pytest.raises(SignatureError, match="payloadType"):
        read_provenance(tmp_path / "type.json")
    bad = dict(_statement())
    bad["predicateType"] = "https://example.com/other"
    env = sign_envelope(jcs(bad), payload_type="application/vnd.in-toto+json", key=key)
    (tmp_path / "schema.json").write_bytes(jcs(env.to_json()) + b"\n")
    with pytest.raises(SchemaError, match="predicateType"):
        read_provenance(tmp_path / "schema.json")
    with pytest.raises(InputError, match="not found"):
        read_provenance(tmp_path / "missing.json")
