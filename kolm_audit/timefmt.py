"""RFC 3339 UTC timestamps, the only time format kolm_audit writes (``2026-11-26T12:00:00Z``).

    >>> format_time(parse_time("2026-01-02T03:04:05Z"))
    '2026-01-02T03:04:05Z'
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

from kolm_audit.errors import InputError

_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


def parse_time(value: str, *, file: str | None = None, field: str | None = None) -> datetime:
    """Parse an RFC 3339 timestamp in UTC (``Z`` suffix required)."""
    if not isinstance(value, str) or not _RE.match(value):
        raise InputError("not an RFC 3339 UTC timestamp", file=file, field=field,
                         expected="YYYY-MM-DDTHH:MM:SS[.fff]Z", actual=repr(value)[:60])
    main, _, frac = value[:-1].partition(".")
    try:
        stamp = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:  # well-formed but impossible, e.g. month 13
        raise InputError("not a valid date and time", file=file, field=field, actual=repr(value)[:60]) from None
    if frac:
        stamp = stamp.replace(microsecond=int(frac[:6].ljust(6, "0")))
    return stamp


def format_time(stamp: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC, microseconds only when present."""
    if stamp.tzinfo is None:
        raise InputError("naive datetime; kolm_audit writes UTC only", expected="an aware datetime")
    stamp = stamp.astimezone(UTC)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    if stamp.microsecond:
        text += f".{stamp.microsecond:06d}"
    return text + "Z"


def source_date_epoch() -> datetime | None:
    """``SOURCE_DATE_EPOCH`` as a UTC datetime, or None when unset (reproducible builds spec)."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InputError("SOURCE_DATE_EPOCH must be a non-negative integer", field="SOURCE_DATE_EPOCH",
                         actual=raw[:40])
    return datetime.fromtimestamp(int(raw), tz=UTC)


def now() -> datetime:
    return datetime.now(tz=UTC)
