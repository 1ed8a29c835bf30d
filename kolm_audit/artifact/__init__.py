"""The artifact stage: the ``.kolm`` file — canonical safetensors layout, manifest, signatures, sidecar.

Start at :func:`verify_artifact` (what an auditor runs) or :func:`read_artifact` (the strict reader). The file
layout is :mod:`~kolm_audit.artifact.file` (with :mod:`~kolm_audit.artifact._safetensors`, the header codec), the
manifest and the statement signatures cover :mod:`~kolm_audit.artifact.manifest`, signing and verification
:mod:`~kolm_audit.artifact.signatures`, the OpenSSF ``model_signing`` sidecar :mod:`~kolm_audit.artifact.sidecar`.
Format: docs/formats.md.

Example::

    >>> from kolm_audit.artifact import MANIFEST_SCHEMA
    >>> MANIFEST_SCHEMA
    'kolm.manifest/1'
"""

from __future__ import annotations

from kolm_audit.artifact.file import Artifact, read_artifact, write_artifact
from kolm_audit.artifact.manifest import MANIFEST_SCHEMA, build_manifest, empty_provenance, gate_failed
from kolm_audit.artifact.signatures import SignResult, VerifyReport, failed_report, sign_artifact, verify_artifact

__all__ = ["MANIFEST_SCHEMA", "Artifact", "SignResult", "VerifyReport", "build_manifest", "empty_provenance",
           "failed_report", "gate_failed", "read_artifact", "sign_artifact", "verify_artifact", "write_artifact"]
