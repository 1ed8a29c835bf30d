"""Interop sidecar: ``model.kolm.sig``, a Sigstore bundle v0.3 for the OpenSSF ``model_signing`` tools.

The bundle is produced with the ``model_signing`` library's own key signer (``model-signing`` 1.1.1, extra
``kolm-audit[sidecar]``), fed our in-memory ECDSA P-256 key, so the unmodified CLI verifies it::

    model_signing verify key model.kolm --signature model.kolm.sig --public_key key.pub

It covers the file's bytes as they are when it is written (so write it after the last embedded signature)
and records the file's name: renaming the artifact breaks the sidecar, not the embedded signatures.

    >>> import tempfile, pathlib
    >>> from kolm_audit.keys import generate_key
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "m.bin"
    >>> _ = f.write_bytes(b"weights")
    >>> write_sidecar(f, generate_key(key_type="ecdsa-p256")).name  # doctest: +SKIP
    'm.bin.sig'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from kolm_audit.errors import InputError
from kolm_audit.keys import PrivateKey


def _signer_class() -> type[Any]:
    try:
        from model_signing._signing import sign_ec_key
    except ImportError:
        raise InputError("the sidecar needs the model-signing package (pip install 'kolm-audit[sidecar]')",
                         field="--sidecar", expected="model-signing 1.1.1 and pyopenssl installed") from None

    class _InMemoryKeySigner(sign_ec_key.Signer):  # type: ignore[misc]
        """model_signing's elliptic-key signer, holding a key object instead of reading a PEM file."""

        def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
            self._private_key = private_key
            sign_ec_key._check_supported_ec_key(private_key.public_key())

    return _InMemoryKeySigner


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sig")


def write_sidecar(path: str | Path, key: PrivateKey, *, out: str | Path | None = None) -> Path:
    """Write the Sigstore bundle for file ``path`` signed by ECDSA P-256 ``key``; return its path."""
    if key.key_type != "ecdsa-p256" or not isinstance(key.key, ec.EllipticCurvePrivateKey):
        raise InputError("the model_signing sidecar needs an ECDSA P-256 key (it verifies EC keys only)",
                         field="--key", expected="ecdsa-p256", actual=key.key_type)
    signer_cls = _signer_class()
    from model_signing import hashing, signing

    target = Path(out) if out is not None else sidecar_path(path)
    config = signing.Config().set_hashing_config(hashing.Config())
    config._signer = signer_cls(key.key)   # the public API only takes a key file path
    try:
        config.sign(Path(path), target)
    except OSError as exc:
        raise InputError(f"cannot write the sidecar ({exc.strerror})", file=str(target)) from None
    return target
