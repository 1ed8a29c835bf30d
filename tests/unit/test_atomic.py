"""``write_atomic``: the old file or the whole new one, never a part; no temporary file left behind."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kolm_audit._atomic import write_atomic
from kolm_audit.errors import InputError


def test_writes_bytes_and_chunks_with_the_mode(tmp_path: Path) -> None:
    a = write_atomic(tmp_path / "a.json", b"{}\n", what="report")
    b = write_atomic(tmp_path / "b.bin", (b"ab", memoryview(b"cd"), bytearray(b"e")), what="artifact", mode=0o600)
    assert a.read_bytes() == b"{}\n" and b.read_bytes() == b"abcde"
    assert stat.S_IMODE(a.stat().st_mode) == 0o644 and stat.S_IMODE(b.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_a_failure_midway_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "suite.json"
    target.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"new, half"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, chunks(), what="suite")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["suite.json"]


def test_an_unwritable_folder_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        write_atomic(tmp_path / "missing" / "report.json", b"x", what="report")
    assert "cannot write report" in str(err.value) and err.value.file == str(tmp_path / "missing" / "report.json")
