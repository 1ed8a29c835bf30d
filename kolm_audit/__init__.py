"""kolm_audit: make model decisions auditable forever.

Signed open-weight model files, an exact integer inference runtime that replays any recorded decision
byte-for-byte on any hardware, signed receipts in a tamper-evident log. The package is one folder per stage of
the flow (docs/architecture.md)::

    compile/   HF checkpoint (+ recipe) → quantized integer tensors       (kolm-audit quantize)
    artifact/  the signed .kolm file: layout, manifest, signatures        (sign, verify, inspect)
    runtime/   the exact integer runtime kolm-int/1: loads and runs       (load → Model)
    receipts/  one signed receipt per decision, the Recorder               (run)
    log/       the tamper-evident receipt log: SQLite, bundles, proofs    (log verify|checkpoint|prove|export)
    replay/    re-run recorded decisions, report, diff                     (replay, diff)
    cli/       the kolm-audit command line (errors become exit codes only here)

The entry points the README teaches are importable from here (lazily, so the CLI starts fast); the stages'
own entry points from their packages (``kolm_audit.replay.replay``, ``kolm_audit.log.export_bundle``)::

    >>> import kolm_audit
    >>> sorted(kolm_audit.__all__)[:4]
    ['Model', 'ReceiptLog', 'Recorder', 'TrustPolicy']
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "load": "kolm_audit.model",
    "Model": "kolm_audit.model",
    "Recorder": "kolm_audit.receipts.recorder",
    "ReceiptLog": "kolm_audit.log.db",
    "verify_log": "kolm_audit.log.verify",
    "ReplayOptions": "kolm_audit.replay.options",
    "TrustPolicy": "kolm_audit.trust",
    "verify_artifact": "kolm_audit.artifact.signatures",
    "read_artifact": "kolm_audit.artifact.file",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """The entry points of :data:`_EXPORTS`, imported when first used."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kolm_audit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
