"""The receipt log: one import for the SQLite log, bundles, sources and verification.

* :class:`ReceiptLog` (``kolm_audit.log.db``): append-only SQLite log with an RFC 6962 tree and signed
  C2SP checkpoints;
* :func:`open_log_source`, :class:`LogSource`, :func:`export_bundle` (``kolm_audit.log.bundle``): read a
  database or an exported bundle the same way;
* :func:`verify_log`, :class:`LogVerifyReport` (``kolm_audit.log.verify``): full verification.

Example::

    >>> import tempfile, pathlib
    >>> from kolm_audit.keys import generate_key
    >>> from kolm_audit.trust import TrustPolicy
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> key = generate_key(key_type="ed25519")
    >>> with ReceiptLog.open(d / "r.db", create=True, origin="example.org/log") as log:
    ...     _ = log.append_many([lambda i: b'{"i":%d}' % i] * 3)
    ...     _ = log.checkpoint(key)
    >>> _ = export_bundle(d / "r.db", d / "bundle")
    >>> policy = TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",))
    >>> verify_log(d / "bundle", policy=policy).size
    3
"""

from __future__ import annotations

from kolm_audit.log.bundle import BundleSource
from kolm_audit.log.db import DatabaseSource, ReceiptLog
from kolm_audit.log.source import LogSource, export_bundle, open_log_source
from kolm_audit.log.verify import LogVerifyReport, check_leaf_canonical, verify_log

__all__ = ["BundleSource", "DatabaseSource", "LogSource", "LogVerifyReport", "ReceiptLog", "check_leaf_canonical",
           "export_bundle", "open_log_source", "verify_log"]
