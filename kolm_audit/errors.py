"""One error tree for kolm_audit.

Every failure is a :class:`KolmError`. Its ``exit_code`` tells the CLI what it means:

* ``1`` — a *finding*: the thing examined is not what it claims (bad signature, tampered file,
  mismatched replay, failed gate). Subclasses of :class:`Finding`.
* ``2`` — the request could not be carried out: bad usage, a missing or unreadable input, a
  missing passphrase. Subclasses of :class:`InputError`.

Every error names the file, the field and what was expected, so a message is actionable::

    >>> str(ArtifactError("tensor digest differs", file="m.kolm", field="tensors.w", expected="sha256:ab"))
    'm.kolm: tensors.w: tensor digest differs (expected sha256:ab)'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class KolmError(Exception):
    """Root of every error kolm_audit raises on purpose."""

    exit_code: int = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        self.expected = expected
        self.actual = actual
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.file, self.field) if p)
        text = f"{where}: {self.message}" if where else self.message
        extra = []
        if self.expected is not None:
            extra.append(f"expected {self.expected}")
        if self.actual is not None:
            extra.append(f"got {self.actual}")
        return f"{text} ({', '.join(extra)})" if extra else text

    def to_json(self) -> dict[str, Any]:
        """A machine-readable form for ``--json`` output."""
        doc: dict[str, Any] = {"error": type(self).__name__, "message": self.message, "exit_code": self.exit_code}
        for key in ("file", "field", "expected", "actual"):
            value = getattr(self, key)
            if value is not None:
                doc[key] = value
        return doc


# --- exit 2: the request could not be carried out -------------------------------------------------


class InputError(KolmError):
    """Bad usage or an input that cannot be read (missing file, bad option, missing passphrase)."""

    exit_code = 2


class KeyFileError(InputError):
    """A key file cannot be loaded (wrong format, encrypted without passphrase, wrong passphrase)."""


class ConfigError(InputError):
    """A configuration document (trust file, recipe, suite) is malformed."""


class UnsupportedModel(InputError):
    """A model architecture, config field or quantization scheme the runtime does not support."""


class RuntimeInputError(InputError):
    """A request the runtime refuses: token id out of range, sequence too long, bad decoding parameters."""


# --- exit 1: a finding -----------------------------------------------------------------------------


class Finding(KolmError):
    """The examined evidence is not what it claims to be."""

    exit_code = 1


class ArtifactError(Finding):
    """A ``.kolm`` file is malformed, non-canonical or tampered with."""


class SchemaError(Finding):
    """A document does not validate against its JSON Schema."""


class SignatureError(Finding):
    """A signature is missing, malformed, or does not verify."""


class Unsigned(SignatureError):
    """A document that must be signed carries no signature at all (nothing was forged: nobody vouched for it)."""


class TrustError(SignatureError):
    """A signature verifies but the key is not trusted for this role, tenant or time."""


class LogError(Finding):
    """The receipt log is inconsistent, tampered with, or a proof fails."""



class ReplayMismatch(Finding):
    """A re-run decision did not reproduce its recorded bytes (e.g. a golden case sampled from a log)."""


class GateFailed(Finding):
    """A K-score gate (or other release gate) was not met."""


class BinderError(Finding):
    """An audit binder (PDF) is malformed, tampered with, not PDF/A, or its embedded evidence does not check out."""



@contextmanager
def naming_file(file: str | None) -> Iterator[None]:
    """Re-raise a :class:`KolmError` that names no file as the same error naming ``file``.

    Validation deep inside a value (a frozen dataclass's ``__post_init__``) knows the field but not the document it
    came from; the caller that read the document wraps it::

        >>> try:
        ...     with naming_file("config.json"):
        ...         raise InputError("expected a positive integer", field="hidden_size")
        ... except InputError as exc:
        ...     print(exc)
        config.json: hidden_size: expected a positive integer
    """
    try:
        yield
    except KolmError as exc:
        if exc.file is not None or file is None:
            raise
        raise type(exc)(exc.message, file=file, field=exc.field, expected=exc.expected, actual=exc.actual) from None
