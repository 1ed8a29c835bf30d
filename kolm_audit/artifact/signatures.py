"""Signing and verifying a ``.kolm`` file: embedded DSSE signatures, the trust policy, the verify report.

``verify_artifact`` answers "which trusted key, for which role and tenant, signed this exact file": a strict read,
every tensor digest recomputed, every signature by a policy key checked.

Example::

    >>> import tempfile, pathlib, numpy as np
    >>> from kolm_audit.artifact.file import write_artifact
    >>> from kolm_audit.artifact.manifest import build_manifest, empty_provenance
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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kolm_audit.artifact.file import Artifact, Progress, read_artifact, write_artifact
from kolm_audit.artifact.manifest import artifact_statement
from kolm_audit.errors import InputError, KolmError, TrustError, Unsigned, naming_file
from kolm_audit.keys import PrivateKey
from kolm_audit.signing import IN_TOTO_PAYLOAD_TYPE, Envelope
from kolm_audit.timefmt import parse_time
from kolm_audit.trust import Signer, TrustPolicy, verify_envelope

VERIFY_REPORT_SCHEMA = "kolm.verify-report/1"


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
        from kolm_audit.artifact.sidecar import write_sidecar
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
    with naming_file(str(path)):
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
            raise Unsigned("artifact is not signed", file=name, field="signatures",
                           expected="a DSSE signature by a trusted artifact key")
        raise TrustError("no signature by a key trusted for role 'artifact'", file=name, field="signatures",
                         expected="a signature by a key in the trust policy",
                         actual="signed by " + ", ".join(sorted(untrusted)))
    return VerifyReport(file=name, artifact_digest=art.digest, name=art.manifest["name"],
                        version=art.manifest["version"], created=art.manifest["created"],
                        tensors=len(art.tensors), bytes=os.path.getsize(path), signature_required=require_signature,
                        signers=tuple(sorted(signers, key=lambda s: s.key_id)),
                        untrusted_signatures=tuple(sorted(untrusted)), artifact=art)
