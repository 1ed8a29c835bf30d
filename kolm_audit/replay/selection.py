"""``--select`` filters of ``kolm-audit replay``: which receipts of a log to re-run.

Filters (repeatable; all must hold):

* ``index=10..20`` — log indices 10 to 20 inclusive (``10..``, ``..20`` and ``index=7`` work too);
* ``time=2026-01-01T00:00:00Z..2026-02-01T00:00:00Z`` — receipts whose ``period.start`` is in ``[from, to)``;
* ``tenant=acme`` (``tenant=acme,globex`` for either) and ``id=<receipt id>[,<receipt id>...]``.

    >>> s = Selection.parse(["index=2..4", "tenant=acme"])
    >>> s.index_ok(3), s.index_ok(5), s.describe()
    (True, False, ['index=2..4', 'tenant=acme'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kolm_audit.errors import InputError, KolmError
from kolm_audit.timefmt import parse_time

_KINDS = ("index", "time", "tenant", "id")


@dataclass(frozen=True)
class Filter:
    kind: str
    text: str
    low: int | None = None
    high: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    values: frozenset[str] = frozenset()


def _range(text: str, expr: str) -> tuple[str | None, str | None]:
    if ".." not in text:
        return text, text
    low, _, high = text.partition("..")
    if ".." in high:
        raise InputError("a range has one '..'", field="--select", actual=expr)
    return low or None, high or None


def _int(text: str | None, expr: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise InputError("index bounds are non-negative integers", field="--select", expected="index=A..B",
                         actual=expr)
    return int(text)


def parse_filter(expr: str) -> Filter:
    kind, sep, value = expr.partition("=")
    kind = kind.strip()
    if not sep or kind not in _KINDS or not value:
        raise InputError("unknown selection", field="--select",
                         expected="index=A..B | time=T1..T2 | tenant=NAME[,NAME] | id=RECEIPT_ID[,ID]", actual=expr)
    if kind == "index":
        low, high = (_int(v, expr) for v in _range(value, expr))
        if low is not None and high is not None and low > high:
            raise InputError("empty index range", field="--select", actual=expr)
        return Filter(kind=kind, text=expr, low=low, high=high)
    if kind == "time":
        if ".." not in value:
            raise InputError("a time selection is a range", field="--select", expected="time=T1..T2", actual=expr)
        t1, t2 = _range(value, expr)
        start = None if t1 is None else parse_time(t1, field="--select")
        end = None if t2 is None else parse_time(t2, field="--select")
        if start is not None and end is not None and start >= end:
            raise InputError("empty time range", field="--select", actual=expr)
        return Filter(kind=kind, text=expr, start=start, end=end)
    values = frozenset(v.strip() for v in value.split(",") if v.strip())
    if not values:
        raise InputError("empty selection value", field="--select", actual=expr)
    return Filter(kind=kind, text=expr, values=values)


@dataclass(frozen=True)
class Selection:
    filters: tuple[Filter, ...] = ()

    @classmethod
    def parse(cls, exprs: Sequence[str]) -> Selection:
        return cls(filters=tuple(parse_filter(e) for e in exprs))

    def describe(self) -> list[str]:
        return [f.text for f in self.filters]

    @property
    def needs_receipt(self) -> bool:
        """True when some filter looks inside the receipt (not only at its log index)."""
        return any(f.kind != "index" for f in self.filters)

    def index_ok(self, index: int) -> bool:
        for f in self.filters:
            if f.kind == "index" and ((f.low is not None and index < f.low) or (f.high is not None and index > f.high)):
                return False
        return True

    def max_index(self) -> int | None:
        highs = [f.high for f in self.filters if f.kind == "index" and f.high is not None]
        return min(highs) if highs else None

    def receipt_ok(self, receipt: Mapping[str, Any]) -> bool:
        for f in self.filters:
            if f.kind == "tenant" and receipt["tenant"] not in f.values:
                return False
            if f.kind == "id" and receipt["receipt_id"] not in f.values:
                return False
            if f.kind == "time":
                try:
                    start = parse_time(receipt["period"]["start"])
                except KolmError:
                    return False
                if (f.start is not None and start < f.start) or (f.end is not None and start >= f.end):
                    return False
        return True
