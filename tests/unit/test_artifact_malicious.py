"""Malicious or malformed headers are rejected before anything large is read or allocated."""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _artifact_fixtures import key_and_policy, make_artifact, tiny_tensors

from kolm_audit.artifact import _safetensors as st
from kolm_audit.artifact import read_artifact, verify_artifact
from kolm_audit.canonical import jcs
from kolm_audit.errors import ArtifactError, SignatureError


@pytest.fixture
def valid(tmp_path: Path) -> bytes:
    make_artifact(tmp_path / "ok.kolm")
    return (tmp_path / "ok.kolm").read_bytes()


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: bytes, body: bytes, *, pad: bytes = b" ") -> bytes:
    header += pad * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + body


def _edit(data: bytes, fn: Callable[[dict[str, Any]], None]) -> bytes:
    doc, body = _split(data)
    fn(doc)
    return _join(jcs(doc), body)


def _reject(tmp_path: Path, data: bytes, match: str) -> ArtifactError:
    path = tmp_path / "bad.kolm"
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match=match) as exc:
        read_artifact(path)
    assert exc.value.file == str(path)
    return exc.value


def test_declared_length_larger_than_file(tmp_path: Path, valid: bytes) -> None:
    err = _reject(tmp_path, struct.pack("<Q", len(valid)) + valid[8:], "declared header length is impossible")
    assert err.field == "header.length"


def test_100mb_header_claim_on_small_file(tmp_path: Path, valid: bytes) -> None:
    _reject(tmp_path, struct.pack("<Q", 100_000_000) + valid[8:], "declared header length is impossible")


def test_100mb_header_claim_is_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.kolm"
    with open(path, "wb") as fh:   # a sparse 120 MB file whose header claims 100 MB
        fh.write(struct.pack("<Q", 100_000_000) + b"{")
        fh.truncate(120_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match="declared header length is impossible") as exc:
            read_artifact(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"at most {st.HEADER_CAP} bytes" in str(exc.value)
    assert peak < 2_000_000


def test_short_files(tmp_path: Path) -> None:
    for data in (b"", b"\x00" * 7):
        _reject(tmp_path, data, "too short")
    _reject(tmp_path, struct.pack("<Q", 0), "not strict JSON")


def test_non_utf8_header(tmp_path: Path, valid: bytes) -> None:
    i = valid.index(b'"dtype"')
    _reject(tmp_path, valid[:i + 1] + b"\xff" + valid[i + 2:], "not strict JSON")


def test_duplicate_keys(tmp_path: Path, valid: bytes) -> None:
    doc, body = _split(valid)
    entry = json.dumps(doc["layer.scale"], separators=(",", ":")).encode()
    raw = jcs(doc).replace(b'"layer.scale":', b'"layer.scale":' + entry + b',"layer.scale":', 1)
    _reject(tmp_path, _join(raw, body), "duplicate key")


def test_header_not_an_object(tmp_path: Path, valid: bytes) -> None:
    _, body = _split(valid)
    _reject(tmp_path, _join(b"[]", body), "not a JSON object")


@pytest.mark.parametrize(("shape", "match"), [
    ([1 << 47, 1 << 47, 1 << 47, 1 << 47, 1 << 47, 1 << 47, 1 << 47, 1 << 47], "shape does not match"),
    ([1 << 50], "bad tensor shape"),
    ([1] * 9, "bad tensor shape"),
    ([-1, 3], "bad tensor shape"),
    ([True, 3], "bad tensor shape"),
    (["3"], "bad tensor shape"),
    ([4, 3], "tensor table of the manifest does not match"),   # same byte count, other shape
    ([5, 3], "shape does not match"),
    ([], "shape does not match"),
])
def test_absurd_or_wrong_shapes(tmp_path: Path, valid: bytes, shape: list[Any], match: str) -> None:
    def fn(doc: dict[str, Any]) -> None:
        doc["layer.weight"]["shape"] = shape
    _reject(tmp_path, _edit(valid, fn), match)


@pytest.mark.parametrize("dtype", ["BF16", "F64", "BOOL", "U16", "i8", 8])
def test_dtype_not_allowed(tmp_path: Path, valid: bytes, dtype: object) -> None:
    def fn(doc: dict[str, Any]) -> None:
        doc["layer.weight"]["dtype"] = dtype
    _reject(tmp_path, _edit(valid, fn), "dtype not allowed")


def test_overlapping_offsets(tmp_path: Path, valid: bytes) -> None:
    def fn(doc: dict[str, Any]) -> None:   # two I32/I64 ranges that overlap
        doc["layer.scale"]["data_offsets"] = [0, 12]
    _reject(tmp_path, _edit(valid, fn), "not laid out contiguously")


def test_out_of_order_offsets(tmp_path: Path, valid: bytes) -> None:
    def fn(doc: dict[str, Any]) -> None:   # swap the two 1-byte tensors' ranges (same layout, wrong order)
        w, t = doc["layer.weight"], doc["tokenizer.json"]
        lw, lt = w["data_offsets"][1] - w["data_offsets"][0], t["data_offsets"][1] - t["data_offsets"][0]
        start = w["data_offsets"][0]
        t["data_offsets"], w["data_offsets"] = [start, start + lt], [start + lt, start + lt + lw]
    _reject(tmp_path, _edit(valid, fn), "not laid out contiguously")


@pytest.mark.parametrize("offsets", [[0, 1 << 40], [-4, 20], [30, 10], [0], "0,12", [0.0, 12]])
def test_bad_offsets(tmp_path: Path, valid: bytes, offsets: object) -> None:
    doc, body = _split(valid)
    doc["layer.scale"]["data_offsets"] = offsets
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    _reject(tmp_path, _join(raw, body), "bad data_offsets|not strict JSON")


def test_gap_and_trailing_bytes(tmp_path: Path, valid: bytes) -> None:
    _reject(tmp_path, valid + b"\x00", "bytes after the last tensor")
    _reject(tmp_path, valid[:-1], "bad data_offsets")


@pytest.mark.parametrize("meta", [None, {}, {"kolm": "{}", "other": "x"}, {"kolm": 1}, {"format": "pt"}])
def test_metadata_shape(tmp_path: Path, valid: bytes, meta: object) -> None:
    def fn(doc: dict[str, Any]) -> None:
        if meta is None:
            del doc["__metadata__"]
        else:
            doc["__metadata__"] = meta
    _reject(tmp_path, _edit(valid, fn), "__metadata__ must hold exactly one string key")


def test_non_canonical_header(tmp_path: Path, valid: bytes) -> None:
    doc, body = _split(valid)
    _reject(tmp_path, _join(json.dumps(doc, indent=1, sort_keys=True).encode(), body), "not in canonical form")
    _reject(tmp_path, _join(jcs(doc) + b" " * 8, body), "not in canonical form")   # extra padding
    raw = jcs(doc)
    if len(raw) % 8:   # padding with NUL instead of spaces
        _reject(tmp_path, _join(raw, body, pad=b"\x00"), "not strict JSON")


def test_non_canonical_kolm_metadata(tmp_path: Path, valid: bytes) -> None:
    def fn(doc: dict[str, Any]) -> None:
        doc["__metadata__"]["kolm"] = json.dumps(json.loads(doc["__metadata__"]["kolm"]), indent=1)
    _reject(tmp_path, _edit(valid, fn), "not in canonical")


def test_kolm_metadata_with_extra_keys(tmp_path: Path, valid: bytes) -> None:
    def fn(doc: dict[str, Any]) -> None:
        inner = json.loads(doc["__metadata__"]["kolm"])
        inner["extra"] = 1
        doc["__metadata__"]["kolm"] = jcs(inner).decode()
    _reject(tmp_path, _edit(valid, fn), "malformed kolm metadata")


def test_tensor_table_mismatch_is_listed_sorted(tmp_path: Path, valid: bytes) -> None:
    doc, _ = _split(valid)
    tensors = tiny_tensors()
    del tensors["tables.exp"]                                  # missing from the file
    tensors["z.extra"] = np.zeros(2, np.int8)                  # not in the manifest
    tensors["a.extra"] = np.zeros(2, np.int8)                  # not in the manifest
    tensors["layer.scale"] = np.array([3, 5, 7, 9], np.int32)  # shape differs
    header = st.encode_header(metadata=doc["__metadata__"]["kolm"], tensors=tensors)
    order = st.data_order((n, st.dtype_code(a, name=n)) for n, a in tensors.items())
    data = header + b"".join(tensors[n].tobytes() for n in order)
    err = _reject(tmp_path, data, "tensor table of the manifest does not match")
    assert "missing from the file: tables.exp" in err.message
    assert "not in the manifest: a.extra, z.extra" in err.message
    assert "layer.scale: manifest I32[3], file I32[4]" in err.message


def test_tensor_data_digest_mismatch_lists_expected_and_actual(tmp_path: Path, valid: bytes) -> None:
    data = bytearray(valid)
    data[-1] ^= 0xFF    # last byte of the last tensor in data order
    err = _reject(tmp_path, bytes(data), "do not match their manifest digest")
    assert err.field == "tensors.tokenizer.json"
    assert err.expected and err.actual and err.expected != err.actual
    path = tmp_path / "bad.kolm"
    read_artifact(path, check_tensors=False)   # the structure alone is fine


def test_unsigned_artifact_is_a_finding_unless_allowed(tmp_path: Path) -> None:
    _, policy = key_and_policy()
    make_artifact(tmp_path / "m.kolm")
    with pytest.raises(SignatureError, match="not signed"):
        verify_artifact(tmp_path / "m.kolm", policy=policy)
    report = verify_artifact(tmp_path / "m.kolm", policy=policy, require_signature=False)
    assert report.signers == ()


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    from kolm_audit.errors import InputError
    with pytest.raises(InputError, match="cannot open artifact"):
        read_artifact(tmp_path / "nope.kolm")


def _signed_twice(tmp_path: Path) -> bytes:
    path = tmp_path / "two.kolm"
    make_artifact(path, key=key_and_policy()[0])
    from kolm_audit.artifact import sign_artifact
    sign_artifact(path, key_and_policy()[0])
    return path.read_bytes()


def _edit_signatures(data: bytes, fn: Callable[[list[Any]], list[Any]]) -> bytes:
    def edit(doc: dict[str, Any]) -> None:
        inner = json.loads(doc["__metadata__"]["kolm"])
        inner["signatures"] = fn(inner["signatures"])
        doc["__metadata__"]["kolm"] = jcs(inner).decode()
    return _edit(data, edit)


def _reject_sig(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "bad.kolm"
    path.write_bytes(data)
    with pytest.raises(SignatureError, match=match):
        read_artifact(path)


def test_signature_list_is_canonical(tmp_path: Path) -> None:
    data = _signed_twice(tmp_path)
    read_artifact(tmp_path / "two.kolm")
    sigs = json.loads(_split(data)[0]["__metadata__"]["kolm"])["signatures"]
    assert len(sigs) == 1 and len(sigs[0]["signatures"]) == 2
    _reject_sig(tmp_path, _edit_signatures(data, lambda s: [s[0], s[0]]), "more than one envelope")

    def swap(s: list[Any]) -> list[Any]:
        s[0]["signatures"].reverse()
        return s

    def dup(s: list[Any]) -> list[Any]:
        s[0]["signatures"][1] = s[0]["signatures"][0]
        return s
    _reject_sig(tmp_path, _edit_signatures(data, swap), "unique and sorted by keyid")
    _reject_sig(tmp_path, _edit_signatures(data, dup), "unique and sorted by keyid")
    _reject_sig(tmp_path, _edit_signatures(data, lambda s: [dict(s[0], payloadType="text/plain")]),
                "unexpected payloadType")


def test_lone_surrogate_tensor_name(tmp_path: Path, valid: bytes) -> None:
    doc, body = _split(valid)
    raw = jcs(doc).replace(b'"layer.scale":', b'"layer.\\ud800":', 1)
    _reject(tmp_path, _join(raw, body), "surrogates not allowed")


def test_directory_is_input_error(tmp_path: Path) -> None:
    from kolm_audit.errors import InputError
    with pytest.raises(InputError, match="not a regular file"):
        read_artifact(tmp_path)
