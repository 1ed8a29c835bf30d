"""The ``.kolm`` artifact: a canonical, signed safetensors file (DESIGN §5.1, docs/formats.md).

Writers produce exactly one byte sequence for a given manifest, tensors and signatures; the strict
reader rejects everything else, so any changed byte is a finding. The artifact digest is
``sha256(JCS(manifest))``; signatures are DSSE envelopes over an in-toto Statement v1 whose subject is
that digest and whose predicate is the manifest.

    >>> import tempfile, pathlib, numpy as np
    >>> from kolm_audit.keys import generate_key
    >>> from kolm_audit.trust import TrustPolicy
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> tensors = {"w": np.arange(6, dtype=np.int8).reshape(2, 3)}
    >>> manifest = build_manifest(name="demo", version="1", task={"kind": "embed"},
    ...     architecture={"family": "bert"}, quantization={"scheme": "int8"}, tensors=tensors,
    ...     provenance=empty_provenance(), created="2026-01-01T00:00:00Z")
    >>> art = write_artifact(d / "m.kolm", manifest=manifest, tensors=tensors)
    >>> key = generate_key()
    >>> _ = sign_artifact(d / "m.kolm", key)
    >>> report = verify_artifact(d / "m.kolm", policy=TrustPolicy.from_public_key(key.public_key()))
    >>> report.artifact_digest == art.digest, [s.role for s in report.signers]
    (True, ['artifact'])
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from kolm_audit import _safetensors as st
from kolm_audit.canonical import digest_of, jcs, loads_canonical
from kolm_audit.errors import ArtifactError, InputError, KolmError, SignatureError, TrustError
from kolm_audit.keys import PrivateKey
from kolm_audit.schemas import validate
from kolm_audit.signing import IN_TOTO_PAYLOAD_TYPE, Envelope, statement
from kolm_audit.timefmt import parse_time
from kolm_audit.trust import Signer, TrustPolicy, verify_envelope

MANIFEST_SCHEMA = "kolm.manifest/1"
RUNTIME_SPEC = "kolm-int/1"
PREDICATE_TYPE = "https://kolm-audit.dev/manifest/v1"
VERIFY_REPORT_SCHEMA = "kolm.verify-report/1"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Artifact:
    """A ``.kolm`` file as read: its manifest, signature envelopes (JSON), digest and read-only tensors."""

    path: Path | None
    manifest: dict[str, Any]
    signatures: tuple[dict[str, Any], ...]
    digest: str
    tensors: Mapping[str, np.ndarray]

    @property
    def envelopes(self) -> tuple[Envelope, ...]:
        return tuple(Envelope.from_json(e, file=self._file, field=f"signatures[{i}]")
                     for i, e in enumerate(self.signatures))

    @property
    def _file(self) -> str | None:
        return None if self.path is None else str(self.path)


def empty_provenance() -> dict[str, Any]:
    """Provenance of an artifact with no recipe, base model or data (fill in what applies)."""
    return {"recipe": None, "base_model": {"files": {}}, "data": {}, "toolchain": {}, "seed": None, "build": {}}


def _le_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {st.check_name(n): st.as_le_contiguous(np.asarray(a), name=n) for n, a in tensors.items()}


def _digests(tensors: Mapping[str, np.ndarray]) -> dict[str, str]:
    def one(item: tuple[str, np.ndarray]) -> tuple[str, str]:
        return item[0], st.tensor_digest(item[1], name=item[0])
    with ThreadPoolExecutor(max_workers=max(1, min(len(tensors), os.cpu_count() or 1))) as pool:
        return dict(pool.map(one, tensors.items()))


def build_manifest(*, name: str, version: str, task: dict[str, Any], architecture: dict[str, Any],
                   quantization: dict[str, Any], tensors: Mapping[str, np.ndarray], provenance: dict[str, Any],
                   created: str, kscore: dict[str, Any] | None = None) -> dict[str, Any]:
    """A schema-valid ``kolm.manifest/1`` with every tensor's dtype, shape and sha256."""
    le = _le_tensors(tensors)
    digests = _digests(le)
    table = {n: {"dtype": st.dtype_code(a, name=n), "shape": [int(d) for d in a.shape], "sha256": digests[n]}
             for n, a in le.items()}
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA, "name": name, "version": version, "runtime": RUNTIME_SPEC,
        "architecture": architecture, "task": task, "quantization": quantization, "tensors": table,
        "provenance": provenance, "created": created}
    if kscore is not None:
        manifest["kscore"] = kscore
    jcs(manifest)   # refuses floats with the field's path
    _check_manifest(manifest, file=None)
    return manifest


def _check_manifest(manifest: object, *, file: str | None) -> None:
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


def _check_envelopes(signatures: Sequence[object], manifest: Mapping[str, Any], *, file: str | None) -> None:
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


def write_artifact(path: str | Path, *, manifest: dict[str, Any], tensors: Mapping[str, np.ndarray],
                   signatures: Sequence[dict[str, Any]] = ()) -> Artifact:
    """Write the canonical file atomically (temp file + rename) and return it as read back."""
    path = Path(path)
    _check_manifest(manifest, file=str(path))
    le = _le_tensors(tensors)
    _compare_tables(manifest["tensors"], {n: (st.dtype_code(a, name=n), tuple(a.shape)) for n, a in le.items()},
                    file=str(path))
    _compare_digests(manifest["tensors"], _digests(le), file=str(path))
    _check_envelopes(signatures, manifest, file=str(path))
    metadata = jcs({"manifest": manifest, "signatures": list(signatures)}).decode("utf-8")
    header = st.encode_header(metadata=metadata, tensors=le)
    order = st.data_order((n, st.dtype_code(a, name=n)) for n, a in le.items())
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write artifact ({exc.strerror})", file=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(header)
            for name in order:
                fh.write(memoryview(le[name].reshape(-1).view(np.uint8)))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:  # leave no temporary file behind, whatever stopped the write
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write artifact ({exc.strerror})", file=str(path)) from None
        raise
    return read_artifact(path, check_tensors=False)


def _compare_tables(table: Mapping[str, Any], actual: Mapping[str, tuple[str, tuple[int, ...]]], *,
                    file: str | None) -> None:
    missing = sorted(set(table) - set(actual))
    extra = sorted(set(actual) - set(table))
    differ = sorted(n for n in set(table) & set(actual)
                    if (table[n]["dtype"], tuple(table[n]["shape"])) != actual[n])
    if missing or extra or differ:
        parts = []
        if missing:
            parts.append("missing from the file: " + ", ".join(missing))
        if extra:
            parts.append("not in the manifest: " + ", ".join(extra))
        for n in differ:
            parts.append(f"{n}: manifest {table[n]['dtype']}{table[n]['shape']}, "
                         f"file {actual[n][0]}{list(actual[n][1])}")
        first = (missing or extra or differ)[0]
        raise ArtifactError("tensor table of the manifest does not match the file's tensors: " + "; ".join(parts),
                            file=file, field=f"manifest.tensors.{first}")


def _compare_digests(table: Mapping[str, Any], digests: Mapping[str, str], *, file: str | None) -> None:
    bad = sorted(n for n, d in digests.items() if table[n]["sha256"] != d)
    if bad:
        listing = "; ".join(f"{n}: expected {table[n]['sha256']}, got {digests[n]}" for n in bad[:20])
        more = f" (+{len(bad) - 20} more)" if len(bad) > 20 else ""
        raise ArtifactError(f"{len(bad)} tensor(s) do not match their manifest digest: {listing}{more}",
                            file=file, field=f"tensors.{bad[0]}", expected=table[bad[0]]["sha256"],
                            actual=digests[bad[0]])


@contextlib.contextmanager
def _naming(file: str) -> Iterator[None]:
    """Attach ``file`` to errors raised without one, so every message names the artifact."""
    try:
        yield
    except KolmError as exc:
        if exc.file is not None:
            raise
        raise type(exc)(exc.message, file=file, field=exc.field, expected=exc.expected, actual=exc.actual) from None


def read_artifact(path: str | Path, *, check_tensors: bool = True, progress: Progress | None = None,
                  workers: int | None = None) -> Artifact:
    """Strictly read a ``.kolm`` file. Tensors are read-only arrays over a private memory map.

    With ``check_tensors`` every tensor's sha256 is recomputed (in parallel) and compared to the manifest.
    """
    with _naming(str(path)):
        return _read(Path(path), check_tensors=check_tensors, progress=progress, workers=workers)


def _read(path: Path, *, check_tensors: bool, progress: Progress | None, workers: int | None) -> Artifact:
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"cannot open artifact ({exc.strerror})", file=name) from None
    try:
        st_ = os.fstat(fd)
        if not stat.S_ISREG(st_.st_mode):
            raise InputError("not a regular file", file=name, expected="a .kolm file")
        if st_.st_size < 8:
            raise ArtifactError("file too short for a safetensors header", file=name, field="header",
                                expected="at least 8 bytes", actual=f"{st_.st_size} bytes")
        try:
            mm = mmap.mmap(fd, st_.st_size, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise InputError(f"cannot map artifact ({exc.strerror})", file=name) from None
        header = st.parse_header(mm, file=name)
        doc = loads_canonical(header.metadata.encode("utf-8"), file=name, field="header.__metadata__.kolm",
                              error=ArtifactError)
        if not isinstance(doc, dict) or set(doc) != {"manifest", "signatures"} or not isinstance(
                doc["signatures"], list):
            raise ArtifactError("malformed kolm metadata", file=name, field="header.__metadata__.kolm",
                                expected='{"manifest": {...}, "signatures": [...]}')
        manifest = doc["manifest"]
        _check_manifest(manifest, file=name)
        _compare_tables(manifest["tensors"], {e.name: (e.dtype, e.shape) for e in header.entries}, file=name)
        _check_envelopes(doc["signatures"], manifest, file=name)
        if check_tensors:
            _compare_digests(manifest["tensors"],
                             st.hash_ranges(fd, header.entries, workers=workers, progress=progress, file=name),
                             file=name)
    finally:
        os.close(fd)
    tensors = {e.name: np.frombuffer(mm, dtype=st.DTYPES[e.dtype], count=e.nbytes // st.DTYPES[e.dtype].itemsize,
                                     offset=e.start).reshape(e.shape)
               for e in header.entries}
    return Artifact(path=path, manifest=manifest, signatures=tuple(doc["signatures"]), digest=digest_of(manifest),
                    tensors=MappingProxyType(tensors))


@dataclass(frozen=True)
class SignResult:
    artifact: Artifact
    key_id: str
    sidecar: Path | None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": str(self.artifact.path), "artifact_digest": self.artifact.digest,
                               "key_id": self.key_id,
                               "signatures": sorted(s["keyid"] for e in self.artifact.signatures
                                                    for s in e["signatures"])}
        if self.sidecar is not None:
            doc["sidecar"] = str(self.sidecar)
        return doc


def sign_artifact(path: str | Path, key: PrivateKey, *, sidecar: bool = False,
                  progress: Progress | None = None) -> SignResult:
    """Add a DSSE signature by ``key`` (the file is checked first, then rewritten canonically).

    With ``sidecar`` also write ``<path>.sig``, a Sigstore bundle v0.3 for the OpenSSF ``model_signing``
    CLI (ECDSA keys only). Signing again later invalidates that sidecar; re-create it with the last signature.
    """
    path = Path(path)
    if sidecar and key.key_type != "ecdsa-p256":
        raise InputError("--sidecar needs an ECDSA P-256 key: model_signing verifies elliptic-curve keys only",
                         field="--key", expected="ecdsa-p256", actual=key.key_type)
    art = read_artifact(path, check_tensors=True, progress=progress)
    envelopes = art.envelopes   # the reader guarantees at most one, carrying this artifact's statement
    env = envelopes[0] if envelopes else Envelope(payload_type=IN_TOTO_PAYLOAD_TYPE,
                                                  payload=artifact_statement(art.manifest), signatures=())
    env = env.with_signature(key)
    env = Envelope(payload_type=env.payload_type, payload=env.payload,
                   signatures=tuple(sorted(env.signatures, key=lambda s: s.keyid)))
    signed = write_artifact(path, manifest=art.manifest, tensors=art.tensors, signatures=[env.to_json()])
    sidecar_path = None
    if sidecar:
        from kolm_audit.sidecar import write_sidecar
        sidecar_path = write_sidecar(path, key)
    return SignResult(artifact=signed, key_id=key.key_id, sidecar=sidecar_path)


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` established: the artifact, and which trusted keys signed it in which role."""

    file: str
    artifact_digest: str
    name: str
    version: str
    created: str
    tensors: int
    bytes: int
    signature_required: bool
    signers: tuple[Signer, ...]
    untrusted_signatures: tuple[str, ...] = ()
    #: the artifact as verified (tensors already checked): use it instead of reading and hashing again
    artifact: Artifact | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"schema": VERIFY_REPORT_SCHEMA, "file": self.file, "verified": True,
                "artifact_digest": self.artifact_digest, "name": self.name, "version": self.version,
                "created": self.created, "tensors": self.tensors, "bytes": self.bytes,
                "signature_required": self.signature_required,
                "signers": [s.to_json() for s in self.signers],
                "untrusted_signatures": list(self.untrusted_signatures)}


def failed_report(path: str | Path, error: KolmError) -> dict[str, Any]:
    """The ``kolm.verify-report/1`` document for a verification that ended in ``error``."""
    return {"schema": VERIFY_REPORT_SCHEMA, "file": str(path), "verified": False, "error": error.to_json()}


def verify_artifact(path: str | Path, *, policy: TrustPolicy, require_signature: bool = True,
                    tenant: str | None = None, progress: Progress | None = None,
                    workers: int | None = None) -> VerifyReport:
    """Strict read, every tensor digest recomputed, every signature by a policy key checked.

    Raises a :class:`~kolm_audit.errors.Finding` on any tamper, bad or untrusted signature, or (with
    ``require_signature``) when no key the policy trusts for role ``artifact`` signed.
    """
    with _naming(str(path)):
        return _verify(Path(path), policy=policy, require_signature=require_signature, tenant=tenant,
                       progress=progress, workers=workers)


def _verify(path: Path, *, policy: TrustPolicy, require_signature: bool, tenant: str | None,
            progress: Progress | None, workers: int | None) -> VerifyReport:
    art = read_artifact(path, check_tensors=True, progress=progress, workers=workers)
    name = str(path)
    at = parse_time(art.manifest["created"])
    signers: list[Signer] = []
    untrusted: set[str] = set()
    for env in art.envelopes:
        known = [s for s in env.signatures if policy.find(s.keyid) is not None]
        untrusted.update(s.keyid for s in env.signatures if policy.find(s.keyid) is None)
        if known:
            signers.extend(verify_envelope(env, policy, role="artifact", tenant=tenant, at=at))
    if require_signature and not signers:
        if not art.signatures:
            raise SignatureError("artifact is not signed", file=name, field="signatures",
                                 expected="a DSSE signature by a trusted artifact key")
        raise TrustError("no signature by a key trusted for role 'artifact'", file=name, field="signatures",
                         expected="a signature by a key in the trust policy",
                         actual="signed by " + ", ".join(sorted(untrusted)))
    return VerifyReport(file=name, artifact_digest=art.digest, name=art.manifest["name"],
                        version=art.manifest["version"], created=art.manifest["created"],
                        tensors=len(art.tensors), bytes=os.path.getsize(path), signature_required=require_signature,
                        signers=tuple(sorted(signers, key=lambda s: s.key_id)),
                        untrusted_signatures=tuple(sorted(untrusted)), artifact=art)
