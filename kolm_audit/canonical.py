"""Canonical bytes and digests for everything kolm_audit hashes or signs.

* JSON is serialised with RFC 8785 (JSON Canonicalization Scheme) through the ``rfc8785`` package.
* Floats are refused (docs/architecture.md, invariant 1): signed documents carry integers or decimal strings only.
* Digests are written ``"sha256:<64 lowercase hex>"``.

Example::

    >>> jcs({"b": 1, "a": [True, None, "x"]})
    b'{"a":[true,null,"x"],"b":1}'
    >>> digest(b"")
    'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import rfc8785

from kolm_audit.errors import InputError, SchemaError

DIGEST_PREFIX = "sha256:"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_SAFE_INT = 2**53 - 1     # RFC 8785 / I-JSON: the largest integer every JSON reader keeps exactly


def _reject_floats(obj: Any, path: str) -> None:
    if isinstance(obj, float):
        raise InputError("floats are not allowed in canonical documents; use an integer or a decimal string",
                         field=path or "$")
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            _reject_floats(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _reject_floats(value, f"{path}[{i}]")


def jcs(obj: Any) -> bytes:
    """RFC 8785 canonical bytes of ``obj`` (no floats allowed)."""
    _reject_floats(obj, "")
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:  # an integer beyond ±(2^53-1), a lone surrogate
        raise InputError(f"cannot canonicalize: {exc}") from None
    except UnicodeEncodeError:  # a lone surrogate is not a Unicode scalar value
        raise InputError("cannot canonicalize: string with a lone surrogate", expected="valid Unicode") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(data: bytes) -> str:
    """``"sha256:<hex>"`` of raw bytes."""
    return DIGEST_PREFIX + sha256_hex(data)


def digest_of(obj: Any) -> str:
    """``"sha256:<hex>"`` of the JCS bytes of a JSON value."""
    return digest(jcs(obj))


def check_digest(value: object, *, field: str, file: str | None = None) -> str:
    """Return ``value`` if it is a well-formed ``sha256:<hex>`` string, else raise :class:`SchemaError`."""
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise SchemaError("malformed digest", file=file, field=field, expected="sha256:<64 lowercase hex>",
                          actual=repr(value)[:80])
    return value


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads` that refuses duplicate keys (raises ValueError)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def loads_strict(data: bytes | str, *, file: str | None = None, field: str | None = None,
                 error: type[Exception] = SchemaError, decimals: bool = False) -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate keys, no NaN/Infinity, no floats.

    With ``decimals`` a non-integer number is read exactly as a :class:`decimal.Decimal` instead of refused (for
    third-party request shapes that carry decimal parameters, e.g. an OpenAI ``temperature``); never a float.
    Raises ``error`` (a :class:`~kolm_audit.errors.KolmError` subclass) naming ``file``/``field``.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_no_constants,
                         parse_float=Decimal if decimals else _reject_float_literal, parse_int=_safe_int)
        if _SURROGATE_ESCAPE.search(text):
            _reject_lone_surrogates(obj)
        return obj
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
        raise error(f"not strict JSON: {exc}", file=file, field=field) from None  # type: ignore[call-arg]


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _reject_lone_surrogates(obj: Any) -> None:
    """Only ``\\uD8xx``-style escapes can produce lone surrogates; UTF-8 decoding never does."""
    if isinstance(obj, str):
        obj.encode("utf-8")   # raises UnicodeEncodeError (a ValueError) on a lone surrogate
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _reject_lone_surrogates(key)
            _reject_lone_surrogates(value)
    elif isinstance(obj, list):
        for value in obj:
            _reject_lone_surrogates(value)


def _safe_int(text: str) -> int:
    if len(text.lstrip("-")) > 16 or abs(value := int(text)) > MAX_SAFE_INT:
        raise ValueError(f"integer {text[:40]} outside the JSON safe range ±(2^53-1)")
    return value


def _reject_float_literal(text: str) -> Any:
    raise ValueError(f"float literal {text} not allowed")


def loads_canonical(data: bytes, *, file: str | None = None, field: str | None = None,
                    error: type[Exception] = SchemaError) -> Any:
    """Parse ``data`` strictly and require that it is exactly its own JCS encoding."""
    obj = loads_strict(data, file=file, field=field, error=error)
    if jcs(obj) != data:
        raise error("JSON is not in canonical (RFC 8785) form", file=file, field=field)  # type: ignore[call-arg]
    return obj
