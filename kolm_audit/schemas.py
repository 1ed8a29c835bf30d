r"""JSON Schema (2020-12) validation for every document kolm_audit reads or writes.

The schemas live in the repository's top-level ``schemas/`` folder and are shipped inside the wheel as
``kolm_audit/_schemas`` (hatch ``force-include``), so an installed package validates with the same files.

``pattern`` follows ECMA-262 as JSON Schema requires (§6.3.3 of the 2020-12 validation vocabulary): a final
``$`` matches only at the end of the string. Python's ``re`` also matches it before a trailing newline, which
would let ``"sha256:<64 hex>\n"`` through; the validator here anchors such patterns with ``\Z`` instead. The
schemas write digit classes as ``[0-9]`` (ECMA's ``\d`` is ASCII, Python's is Unicode).

When the optional ``jsonschema-rs`` (extra ``fast``) is installed, a document is first checked by it (~100×
faster; log verification checks every receipt) for every schema whose patterns mean the same to Rust's regex,
ECMA-262 and the validator here — no class escapes such as ``\s`` or ``\w``, no ``format`` — see
:func:`_fast_ok`. It may only *accept*: a document it rejects goes to the Python validator, whose verdict and
error message are the ones reported. A differential test compares the two on mutated documents.

    >>> _ecma_regex("^sha256:[0-9a-f]{4}$").search("sha256:abcd\n") is None
    True
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

try:                                                    # optional accelerator (extra "fast")
    import jsonschema_rs
except ImportError:                                     # pragma: no cover - depends on the environment
    jsonschema_rs = None

from kolm_audit.errors import InputError, KolmError, SchemaError

_HERE = Path(__file__).resolve().parent
_CANDIDATES = (_HERE / "_schemas", _HERE.parent / "schemas")


def schema_dir() -> Path:
    for candidate in _CANDIDATES:
        if candidate.is_dir():
            return candidate
    raise InputError("schemas folder not found", file=str(_CANDIDATES[0]), expected="an installed kolm_audit")


@functools.cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    r"""``pattern`` with a final unescaped ``$`` as ``\Z`` (ECMA-262: end of input, never before a newline)."""
    return re.compile(re.sub(r"(?<!\\)\$$", r"\\Z", pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@functools.cache
def _validator(name: str) -> Any:
    path = schema_dir() / f"{name}.schema.json"
    if not path.is_file():
        raise InputError("no such schema", file=str(path))
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return _Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


_CLASS_ESCAPE = re.compile(r"\\[sSwWdDbBpP]")            # escapes whose meaning differs between regex dialects


def _fast_ok(schema: Any) -> bool:
    """Whether ``jsonschema-rs`` decides ``schema`` exactly like the Python validator: no ``format`` keyword and
    no pattern with a class escape (explicit ASCII classes, anchors, quantifiers and literals agree)."""
    if isinstance(schema, dict):
        if "format" in schema:
            return False
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and _CLASS_ESCAPE.search(pattern):
            return False
        return all(_fast_ok(v) for v in schema.values())
    if isinstance(schema, list):
        return all(_fast_ok(v) for v in schema)
    return True


@functools.cache
def _fast_validator(name: str) -> Any | None:
    """The ``jsonschema-rs`` validator of ``name`` when installed and :func:`_fast_ok`, else ``None``."""
    if jsonschema_rs is None:
        return None
    schema = _validator(name).schema                    # loaded and checked once, by the Python validator
    return jsonschema_rs.Draft202012Validator(schema) if _fast_ok(schema) else None


def _fast_accepts(name: str, doc: Any) -> bool:
    """The accept-only fast path: ``True`` only when ``jsonschema-rs`` is in use for ``name`` and accepts ``doc``
    (a value it cannot convert, such as bytes or a non-string key, leaves the decision to the Python validator)."""
    fast = _fast_validator(name)
    if fast is None:
        return False
    try:
        return bool(fast.is_valid(doc))
    except ValueError:
        return False


def _path(error: jsonschema.ValidationError) -> str:
    out = "$"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _alternatives(schemas: Any) -> list[str] | None:
    """The field names of ``oneOf``/``anyOf`` alternatives that each only require fields, else None."""
    names = []
    for sub in schemas if isinstance(schemas, list) else []:
        if not isinstance(sub, dict) or set(sub) - {"required", "not"} or not sub.get("required"):
            return None
        names.append(" + ".join(sub["required"]))
    return names or None


def explain(error: jsonschema.ValidationError) -> str:
    """A validation error as a person would say it: what is wrong and what was expected, not the schema's
    internals (``is valid under each of {...}``, ``was unexpected``)."""
    kind, schema_value = error.validator, error.validator_value
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        return f"unknown field(s) {', '.join(map(repr, extra))}; allowed: {', '.join(sorted(allowed)) or 'none'}"
    if kind in ("oneOf", "anyOf"):
        names = _alternatives(schema_value)
        if names is not None:
            how = "exactly one" if kind == "oneOf" else "at least one"
            return f"give {how} of: {' | '.join(names)}"
        if not error.context:
            return "does not match any allowed form of this field"
        # the alternative the document is closest to (fewest errors; ties: the first) says what is wrong
        by_branch: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
        closest = min(by_branch.values(), key=len)
        first = sorted(closest, key=lambda e: (list(map(str, e.absolute_path)), e.message))[0]
        where = _path(first)
        return explain(first) + (f" (at {where})" if where != _path(error) else "")
    if kind == "required" and isinstance(schema_value, list):
        missing = [f for f in schema_value if isinstance(error.instance, dict) and f not in error.instance]
        return f"missing required field(s) {', '.join(map(repr, missing))}"
    return error.message


def validate(doc: Any, name: str, *, source: str | None = None,
             error: type[KolmError] = SchemaError) -> None:
    """Validate ``doc`` against ``schemas/<name>.schema.json``.

    Raises ``error`` (default :class:`SchemaError`, exit 1) naming the source file and the JSON path of
    the first failing field (errors sorted by path, so the message is stable).
    """
    validator = _validator(name)
    if _fast_accepts(name, doc):
        return
    if validator.is_valid(doc):  # collect and sort errors only for an invalid document
        return
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        first = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise error(f"does not match schema {name}: {explain(first)[:300]}{more}", file=source, field=_path(first))
