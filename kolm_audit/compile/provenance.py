"""The provenance statement written beside a compiled artifact: ``<artifact>.provenance.json``.

A DSSE envelope (the form of artifact signatures, payloadType ``application/vnd.in-toto+json``) signed by the
artifact key over an in-toto Statement v1 whose subject is the artifact — its name and ``{"sha256": <hex of the
artifact digest>}`` — and whose predicate is SLSA Provenance v1 (``https://slsa.dev/provenance/v1``): the recipe and
every resolved input (``buildDefinition``), the builder's versions, start and finish times and the build machine's
facts — CPU model and flags, backend and threads, measured latency (``runDetails``). Those facts never enter the
hashed manifest, so they cannot make two builds of the same recipe differ. Schema:
``schemas/provenance.schema.json`` (the statement); the file is the envelope's JCS bytes and a newline.

Example::

    >>> import tempfile, pathlib
    >>> from kolm_audit.keys import generate_key
    >>> key = generate_key(key_type="ed25519")
    >>> st = provenance_statement(name="demo", artifact_digest="sha256:" + "ab" * 32, recipe_file="r.toml",
    ...     recipe={"schema": "kolm.recipe/1"}, recipe_digest="sha256:" + "cd" * 32, dependencies={},
    ...     parameters={"trainer": "exact"}, builder={"kolm_audit": "0.1.0"},
    ...     started="2026-01-01T00:00:00Z", finished="2026-01-01T00:01:00Z", byproducts=[])
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.kolm.provenance.json"
    >>> write_provenance(path, st, key)
    >>> read_provenance(path).subject_digest
    'sha256:abababababababababababababababababababababababababababababababab'
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit.canonical import jcs, loads_canonical, loads_strict
from kolm_audit.errors import InputError, SignatureError
from kolm_audit.keys import PrivateKey
from kolm_audit.schemas import validate
from kolm_audit.signing import IN_TOTO_PAYLOAD_TYPE, IN_TOTO_STATEMENT_V1, Envelope, sign_envelope
from kolm_audit.trust import Signer, TrustPolicy, verify_envelope

SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://kolm-audit.dev/compile/v1"
BUILDER_ID = "https://kolm-audit.dev/builders/kolm-audit-compile"
SUFFIX = ".provenance.json"


def provenance_path(artifact: str | Path) -> Path:
    """Where the statement of ``artifact`` lives: ``<artifact>.provenance.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def machine_facts() -> dict[str, Any]:
    """CPU model and flags, OS and architecture of this machine (strings and integers only)."""
    model, flags = platform.processor() or "unknown", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    return {"cpu_model": model, "cpu_flags": flags, "cpu_count": os.cpu_count() or 0,
            "machine": platform.machine(), "system": platform.system(), "release": platform.release()}


def provenance_statement(*, name: str, artifact_digest: str, recipe_file: str, recipe: Mapping[str, Any],
                         recipe_digest: str, dependencies: Mapping[str, str], parameters: Mapping[str, Any],
                         builder: Mapping[str, str], started: str, finished: str,
                         byproducts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The in-toto Statement v1 with an SLSA Provenance v1 predicate (no floats anywhere)."""
    def rd(dep_name: str, digest: str) -> dict[str, Any]:
        return {"name": dep_name, "digest": {"sha256": digest.removeprefix("sha256:")}}
    statement = {
        "_type": IN_TOTO_STATEMENT_V1,
        "subject": [{"name": name, "digest": {"sha256": artifact_digest.removeprefix("sha256:")}}],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"recipe": {"path": recipe_file, "digest": recipe_digest,
                                                  "document": dict(recipe)}},
                "internalParameters": dict(parameters),
                "resolvedDependencies": [rd(n, d) for n, d in sorted(dependencies.items())],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": dict(builder)},
                "metadata": {"startedOn": started, "finishedOn": finished},
                "byproducts": [dict(b) for b in byproducts],
            },
        },
    }
    jcs(statement)                  # refuses floats, naming the field
    validate(statement, "provenance")
    return statement


def write_provenance(path: str | Path, statement: Mapping[str, Any], key: PrivateKey) -> None:
    """Sign ``statement`` with ``key`` and write the envelope atomically (temp file + rename)."""
    path = Path(path)
    env = sign_envelope(jcs(statement), payload_type=IN_TOTO_PAYLOAD_TYPE, key=key)
    data = jcs(env.to_json()) + b"\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Provenance:
    """A provenance statement as read: the envelope, the statement and the artifact digest it is about."""

    path: Path
    envelope: Envelope
    statement: Mapping[str, Any]

    @property
    def subject_digest(self) -> str:
        return "sha256:" + self.statement["subject"][0]["digest"]["sha256"]

    @property
    def byproducts(self) -> dict[str, Mapping[str, Any]]:
        """``runDetails.byproducts`` by name (their ``annotations``)."""
        return {b["name"]: b.get("annotations", {}) for b in self.statement["predicate"]["runDetails"]["byproducts"]}


def read_provenance(path: str | Path) -> Provenance:
    """Read a provenance file strictly: canonical envelope bytes, in-toto payload type, schema-valid statement."""
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("provenance statement not found", file=file) from None
    except OSError as exc:
        raise InputError(f"cannot read the provenance statement ({exc.strerror})", file=file) from None
    doc = loads_strict(raw, file=file, error=SignatureError)
    env = Envelope.from_json(doc, file=file)
    if jcs(env.to_json()) + b"\n" != raw:
        raise SignatureError("provenance envelope is not in canonical form", file=file,
                             expected="the JCS bytes of the envelope and one newline")
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise SignatureError("unexpected payloadType", file=file, field="payloadType", expected=IN_TOTO_PAYLOAD_TYPE,
                             actual=env.payload_type[:80])
    statement = loads_canonical(env.payload, file=file, field="payload", error=SignatureError)
    validate(statement, "provenance", source=file)
    return Provenance(path=path, envelope=env, statement=statement)


def verify_provenance(path: str | Path, *, policy: TrustPolicy, artifact_digest: str | None = None
                      ) -> tuple[Provenance, list[Signer]]:
    """Read, check the signature by a key the policy trusts for role ``artifact`` and (when given) that the
    statement is about ``artifact_digest``; raises a :class:`~kolm_audit.errors.Finding` otherwise."""
    prov = read_provenance(path)
    signers = verify_envelope(prov.envelope, policy, role="artifact")
    if artifact_digest is not None and prov.subject_digest != artifact_digest:
        raise SignatureError("provenance statement is about another artifact", file=str(path),
                             field="subject[0].digest", expected=artifact_digest, actual=prov.subject_digest)
    return prov, signers
