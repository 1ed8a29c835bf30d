"""kolm_audit: make model decisions auditable forever.

Signed open-weight model files, an exact integer inference runtime that replays any recorded decision
byte-for-byte on any hardware, signed receipts in a tamper-evident log.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str) -> object:
    """``kolm_audit.load`` (see :mod:`kolm_audit.model`), imported lazily so the CLI starts fast."""
    if name == "load":
        from kolm_audit.model import load

        return load
    raise AttributeError(f"module 'kolm_audit' has no attribute {name!r}")
