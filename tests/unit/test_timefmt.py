from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kolm_audit.errors import InputError
from kolm_audit.timefmt import format_time, parse_time, source_date_epoch


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)))
def test_round_trip(stamp: datetime) -> None:
    assert parse_time(format_time(stamp)) == stamp


@pytest.mark.parametrize("bad", ["2026-01-01", "2026-01-01T00:00:00", "2026-01-01T00:00:00+01:00", "", "x"])
def test_rejects_non_utc_or_malformed(bad: str) -> None:
    with pytest.raises(InputError):
        parse_time(bad, field="t")


def test_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert format_time(source_date_epoch()) == "1970-01-02T00:00:00Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "-1")
    with pytest.raises(InputError):
        source_date_epoch()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert source_date_epoch() is None
