"""The .kolm writer is canonical, any safetensors reader opens it, and signatures verify and coexist."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from _artifact_fixtures import CREATED, key_and_policy, make_artifact, sample_kscore, tiny_manifest, tiny_tensors
from safetensors import safe_open
from safetensors.numpy import load_file

from kolm_audit.artifact import _safetensors as st
from kolm_audit.artifact import (
    build_manifest,
    empty_provenance,
    failed_report,
    read_artifact,
    sign_artifact,
    verify_artifact,
    write_artifact,
)
from kolm_audit.artifact.manifest import PREDICATE_TYPE, artifact_statement
from kolm_audit.canonical import digest_of, jcs, loads_canonical
from kolm_audit.errors import ArtifactError, InputError, SchemaError, SignatureError, TrustError
from kolm_audit.schemas import validate
from kolm_audit.signing import IN_TOTO_PAYLOAD_TYPE, IN_TOTO_STATEMENT_V1
from kolm_audit.trust import TrustedKey, TrustPolicy


def test_round_trip_and_safetensors_library_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "m.kolm"
    art = make_artifact(path)
    tensors = tiny_tensors()
    assert set(art.tensors) == set(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(art.tensors[name], array)
        assert art.tensors[name].dtype == array.dtype
        assert not art.tensors[name].flags.writeable
    loaded = load_file(str(path))    # the reference safetensors implementation
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)
    with safe_open(str(path), "np") as fh:
        meta = fh.metadata()
    assert set(meta) == {"kolm"}
    doc = loads_canonical(meta["kolm"].encode())
    assert doc == {"manifest": art.manifest, "signatures": []}
    assert art.digest == digest_of(art.manifest)


def test_layout_is_canonical(tmp_path: Path) -> None:
    path = tmp_path / "m.kolm"
    make_artifact(path)
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert (8 + n) % 8 == 0
    header = data[8:8 + n]
    body = header.rstrip(b" ")
    assert len(header) - len(body) < 8
    doc = json.loads(body)
    assert jcs(doc) == body
    ranges = sorted((v["data_offsets"], k) for k, v in doc.items() if k != "__metadata__")
    assert [k for _, k in ranges] == ["tables.exp", "layer.scale", "layer.weight", "tokenizer.json"]
    assert ranges[0][0][0] == 0
    assert all(a[0][1] == b[0][0] for a, b in itertools.pairwise(ranges))
    assert ranges[-1][0][1] == len(data) - 8 - n


def test_writer_is_deterministic_and_ignores_input_order(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    manifest = tiny_manifest(tensors)
    write_artifact(tmp_path / "a.kolm", manifest=manifest, tensors=tensors)
    write_artifact(tmp_path / "b.kolm", manifest=manifest, tensors=dict(reversed(list(tensors.items()))))
    assert (tmp_path / "a.kolm").read_bytes() == (tmp_path / "b.kolm").read_bytes()


def test_non_contiguous_and_big_endian_inputs_are_stored_little_endian(tmp_path: Path) -> None:
    tensors = {"t": np.arange(12, dtype=">i4").reshape(3, 4).T, "s": np.array(7, dtype=np.int16)}
    manifest = tiny_manifest(tensors)
    art = write_artifact(tmp_path / "m.kolm", manifest=manifest, tensors=tensors)
    np.testing.assert_array_equal(art.tensors["t"], np.arange(12).reshape(3, 4).T)
    assert art.tensors["t"].dtype == np.dtype("<i4") and art.tensors["s"].shape == ()


def test_manifest_fields(tmp_path: Path) -> None:
    manifest = tiny_manifest(tiny_tensors(), kscore=sample_kscore(passed=True))
    validate(manifest, "manifest")
    assert manifest["schema"] == "kolm.manifest/1" and manifest["runtime"] == "kolm-int/1"
    assert manifest["created"] == CREATED
    assert manifest["tensors"]["layer.scale"] == {
        "dtype": "I32", "shape": [3], "sha256": "sha256:" + __import__("hashlib").sha256(
            np.array([3, 5, 7], "<i4").tobytes()).hexdigest()}


def test_manifest_refuses_floats_and_bad_fields() -> None:
    with pytest.raises(InputError, match="floats are not allowed"):
        tiny_manifest(tiny_tensors(), architecture={"family": "bert", "eps": 1e-12})
    with pytest.raises(SchemaError):
        tiny_manifest(tiny_tensors(), task={"kind": "dance"})
    with pytest.raises(ArtifactError, match="float tensors are allowed only with quantization scheme 'none'"):
        tiny_manifest({"w": np.ones(2, np.float32)})
    with pytest.raises(ArtifactError, match="dtype not allowed"):
        tiny_manifest({"w": np.ones(2, np.float64)})
    with pytest.raises(ArtifactError, match="bad tensor name"):
        tiny_manifest({"__metadata__": np.ones(2, np.int8)})
    with pytest.raises(ArtifactError):
        tiny_manifest(tiny_tensors(), created="2026-13-01T00:00:00Z")
    ok = build_manifest(name="f", version="1", task={"kind": "embed"}, architecture={"family": "bert"},
                        quantization={"scheme": "none"}, tensors={"w": np.ones(2, np.float16)},
                        provenance=empty_provenance(), created=CREATED)
    assert ok["tensors"]["w"]["dtype"] == "F16"


def test_write_refuses_tensors_that_do_not_match_the_manifest(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    manifest = tiny_manifest(tensors)
    changed = dict(tensors, **{"layer.scale": np.array([3, 5, 8], np.int32)})
    with pytest.raises(ArtifactError, match="do not match their manifest digest"):
        write_artifact(tmp_path / "m.kolm", manifest=manifest, tensors=changed)
    with pytest.raises(ArtifactError, match=r"missing from the file: tables\.exp"):
        write_artifact(tmp_path / "m.kolm", manifest=manifest,
                       tensors={k: v for k, v in tensors.items() if k != "tables.exp"})
    assert not list(tmp_path.iterdir())   # nothing half-written


def test_sign_verify_and_report(tmp_path: Path) -> None:
    key, policy = key_and_policy("ecdsa-p256")
    path = tmp_path / "m.kolm"
    unsigned = make_artifact(path)
    result = sign_artifact(path, key)
    assert result.artifact.digest == unsigned.digest     # signing never changes the manifest
    report = verify_artifact(path, policy=policy)
    assert report.artifact_digest == unsigned.digest
    assert [(s.key_id, s.role) for s in report.signers] == [(key.key_id, "artifact")]
    assert report.artifact is not None and report.artifact.digest == unsigned.digest
    validate(report.to_json(), "verify-report")
    env = result.artifact.envelopes[0]
    assert env.payload_type == IN_TOTO_PAYLOAD_TYPE
    stmt = loads_canonical(env.payload)
    assert stmt["_type"] == IN_TOTO_STATEMENT_V1 and stmt["predicateType"] == PREDICATE_TYPE
    assert stmt["subject"] == [{"name": "tiny", "digest": {"sha256": unsigned.digest.split(":")[1]}}]
    assert stmt["predicate"] == unsigned.manifest
    assert env.payload == artifact_statement(unsigned.manifest)


def test_several_signatures_coexist(tmp_path: Path) -> None:
    path = tmp_path / "m.kolm"
    make_artifact(path)
    k1, p1 = key_and_policy("ed25519")
    k2, _ = key_and_policy("ecdsa-p256")
    sign_artifact(path, k1)
    sign_artifact(path, k2)
    art = read_artifact(path)
    assert len(art.signatures) == 1 and len(art.signatures[0]["signatures"]) == 2
    r1 = verify_artifact(path, policy=p1)
    assert [s.key_id for s in r1.signers] == [k1.key_id] and r1.untrusted_signatures == (k2.key_id,)
    both = TrustPolicy(keys=(TrustedKey(name="a", public_key=k1.public_key(), roles=frozenset({"artifact"})),
                             TrustedKey(name="b", public_key=k2.public_key(), roles=frozenset({"artifact"}))))
    assert {s.name for s in verify_artifact(path, policy=both).signers} == {"a", "b"}
    with pytest.raises(SignatureError, match="already signed"):
        sign_artifact(path, k1)


def test_untrusted_wrong_role_and_expired_keys(tmp_path: Path) -> None:
    from kolm_audit.timefmt import parse_time
    path = tmp_path / "m.kolm"
    key, _ = key_and_policy()
    make_artifact(path, key=key)
    _, other_policy = key_and_policy()
    with pytest.raises(TrustError, match="no signature by a key trusted for role 'artifact'"):
        verify_artifact(path, policy=other_policy)
    receipt_only = TrustPolicy.from_public_key(key.public_key(), roles=("receipt",))
    with pytest.raises(TrustError, match="not trusted for role 'artifact'"):
        verify_artifact(path, policy=receipt_only)
    expired = TrustPolicy(keys=(TrustedKey(name="old", public_key=key.public_key(), roles=frozenset({"artifact"}),
                                           not_after=parse_time("2025-01-01T00:00:00Z")),))
    with pytest.raises(TrustError, match="expired"):
        verify_artifact(path, policy=expired)
    tenant_a = TrustPolicy(keys=(TrustedKey(name="a", public_key=key.public_key(), roles=frozenset({"artifact"}),
                                            tenants=frozenset({"acme"})),))
    assert verify_artifact(path, policy=tenant_a, tenant="acme").signers[0].tenant == "acme"
    with pytest.raises(TrustError, match="not trusted for tenant 'globex'"):
        verify_artifact(path, policy=tenant_a, tenant="globex")


def test_a_signature_from_another_artifact_is_rejected(tmp_path: Path) -> None:
    key, _ = key_and_policy()
    make_artifact(tmp_path / "a.kolm", key=key)
    b = make_artifact(tmp_path / "b.kolm", version="2.0")
    foreign = read_artifact(tmp_path / "a.kolm").signatures
    with pytest.raises(SignatureError, match=r"signed statement does not match this artifact \(differs in: "
                                             r"predicate, subject\)"):
        write_artifact(tmp_path / "b.kolm", manifest=b.manifest, tensors=b.tensors, signatures=foreign)


def test_failed_report_validates(tmp_path: Path) -> None:
    doc = failed_report(tmp_path / "m.kolm", ArtifactError("x", file="m.kolm", field="header"))
    validate(doc, "verify-report")
    assert doc["verified"] is False


def test_parallel_and_serial_hashing_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.integers(-128, 127, size=(257, 33), dtype=np.int8) for i in range(7)}
    path = tmp_path / "m.kolm"
    write_artifact(path, manifest=tiny_manifest(tensors), tensors=tensors)
    header = st.parse_header(path.read_bytes())
    import os
    fd = os.open(path, os.O_RDONLY)
    try:
        seen: list[int] = []
        assert st.hash_ranges(fd, header.entries, workers=1) == st.hash_ranges(fd, header.entries, workers=4,
                                                                              progress=seen.append)
    finally:
        os.close(fd)
    assert sum(seen) == sum(e.nbytes for e in header.entries)


def test_sign_refuses_a_tampered_file(tmp_path: Path) -> None:
    path = tmp_path / "m.kolm"
    make_artifact(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    key, _ = key_and_policy()
    with pytest.raises(ArtifactError, match="do not match their manifest digest"):
        sign_artifact(path, key)
    assert path.read_bytes() == bytes(data)   # untouched
