"""The manifest of a ``.kolm`` file (``kolm.manifest/1``) and the in-toto statement its signatures cover.

The manifest names everything that makes the artifact what it is: architecture, task, quantization, every
tensor's dtype, shape and sha256, provenance, K-score. The artifact digest is ``sha256(JCS(manifest))``
(docs/formats.md); a signature is a DSSE envelope over an in-toto Statement v1 whose subject is that digest and
whose predicate is the manifest.

Example::

    >>> import numpy as np
    >>> m = build_manifest(name="demo", version="1", task={"kind": "embed"}, architecture={"family": "bert"},
    ...     quantization={"scheme": "int8"}, tensors={"w": np.zeros((2, 3), dtype=np.int8)},
    ...     provenance=empty_provenance(), created="2026-01-01T00:00:00Z")
    >>> m["tensors"]["w"]["shape"], gate_failed(m.get("kscore"))
    ([2, 3], False)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from kolm_audit.artifact import _safetensors as st
from kolm_audit.canonical import digest_of, jcs, loads_canonical
from kolm_audit.errors import ArtifactError, InputError, SignatureError
from kolm_audit.runtime import SPEC
from kolm_audit.schemas import validate
from kolm_audit.signing import IN_TOTO_PAYLOAD_TYPE, Envelope, statement
from kolm_audit.timefmt import parse_time

MANIFEST_SCHEMA = "kolm.manifest/1"
PREDICATE_TYPE = "https://kolm-audit.dev/manifest/v1"


def empty_provenance() -> dict[str, Any]:
    """Provenance of an artifact with no recipe, base model or data (fill in what applies)."""
    return {"recipe": None, "base_model": {"files": {}}, "data": {}, "toolchain": {}, "seed": None, "build": {}}


def le_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {st.check_name(n): st.as_le_contiguous(np.asarray(a), name=n) for n, a in tensors.items()}


def tensor_digests(tensors: Mapping[str, np.ndarray]) -> dict[str, str]:
    def one(item: tuple[str, np.ndarray]) -> tuple[str, str]:
        return item[0], st.tensor_digest(item[1], name=item[0])
    with ThreadPoolExecutor(max_workers=max(1, min(len(tensors), os.cpu_count() or 1))) as pool:
        return dict(pool.map(one, tensors.items()))


def build_manifest(*, name: str, version: str, task: dict[str, Any], architecture: dict[str, Any],
                   quantization: dict[str, Any], tensors: Mapping[str, np.ndarray], provenance: dict[str, Any],
                   created: str, kscore: dict[str, Any] | None = None) -> dict[str, Any]:
    """A schema-valid ``kolm.manifest/1`` with every tensor's dtype, shape and sha256."""
    le = le_tensors(tensors)
    digests = tensor_digests(le)
    table = {n: {"dtype": st.dtype_code(a, name=n), "shape": [int(d) for d in a.shape], "sha256": digests[n]}
             for n, a in le.items()}
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA, "name": name, "version": version, "runtime": SPEC,
        "architecture": architecture, "task": task, "quantization": quantization, "tensors": table,
        "provenance": provenance, "created": created}
    if kscore is not None:
        manifest["kscore"] = kscore
    jcs(manifest)   # refuses floats with the field's path
    check_manifest(manifest, file=None)
    return manifest


def check_manifest(manifest: object, *, file: str | None) -> None:
    validate(manifest, "manifest", source=file)
    assert isinstance(manifest, dict)
    try:
        parse_time(manifest["created"], file=file, field="manifest.created")
    except InputError as exc:
        raise ArtifactError(exc.message, file=file, field="manifest.created", actual=exc.actual) from None
    if manifest["quantization"]["scheme"] != "none":
        floats = sorted(n for n, t in manifest["tensors"].items() if t["dtype"] in st.FLOAT_DTYPES)
        if floats:
            raise ArtifactError("float tensors are allowed only with quantization scheme 'none'", file=file,
                                field=f"manifest.tensors.{floats[0]}", expected="an integer dtype",
                                actual=f"{len(floats)} float tensor(s)")


def artifact_statement(manifest: Mapping[str, Any]) -> bytes:
    """The JCS bytes of the in-toto Statement v1 an artifact signature covers."""
    return jcs(statement(subject_name=manifest["name"], subject_digest=digest_of(manifest),
                         predicate_type=PREDICATE_TYPE, predicate=manifest))


def check_envelopes(signatures: Sequence[object], manifest: Mapping[str, Any], *, file: str | None) -> None:
    expected = artifact_statement(manifest)
    if len(signatures) > 1:
        raise SignatureError("more than one envelope: all signatures of an artifact belong in one envelope",
                             file=file, field="signatures", expected="at most 1", actual=str(len(signatures)))
    for i, doc in enumerate(signatures):
        env = Envelope.from_json(doc, file=file, field=f"signatures[{i}]")
        if env.to_json() != doc:
            raise SignatureError("envelope is not in canonical form", file=file, field=f"signatures[{i}]")
        keyids = [s.keyid for s in env.signatures]
        if keyids != sorted(set(keyids)):
            raise SignatureError("signatures must be unique and sorted by keyid", file=file,
                                 field=f"signatures[{i}].signatures")
        if env.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise SignatureError("unexpected payloadType", file=file, field=f"signatures[{i}].payloadType",
                                 expected=IN_TOTO_PAYLOAD_TYPE, actual=env.payload_type[:80])
        if env.payload != expected:
            raise SignatureError(_statement_difference(env.payload, manifest), file=file,
                                 field=f"signatures[{i}].payload",
                                 expected=f"an in-toto statement about {digest_of(manifest)}")


def _statement_difference(payload: bytes, manifest: Mapping[str, Any]) -> str:
    try:
        doc = loads_canonical(payload, error=SignatureError)
    except SignatureError:
        return "signed payload is not a canonical in-toto statement"
    want = loads_canonical(artifact_statement(manifest))
    if not isinstance(doc, dict):
        return "signed payload is not a JSON object"
    diffs = sorted(k for k in set(doc) | set(want) if doc.get(k) != want.get(k))
    return "signed statement does not match this artifact (differs in: " + ", ".join(diffs) + ")"


def gate_failed(kscore: object) -> bool:
    """True when a manifest's ``kscore`` (``kolm.kscore/1``, schema-checked on read) says its gate failed
    (``gate.passed`` is false); an artifact without a K-score (made by ``quantize``) has no gate to fail."""
    if not isinstance(kscore, dict):
        return False
    gate = kscore.get("gate")
    return isinstance(gate, dict) and gate.get("passed") is False
