"""Property: any single flipped byte, truncation, appended byte or header edit of a signed artifact is a finding."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from _artifact_fixtures import key_and_policy, make_artifact
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kolm_audit.artifact import verify_artifact
from kolm_audit.cli import main
from kolm_audit.errors import Finding
from kolm_audit.keys import write_keypair

KEY, POLICY = key_and_policy("ed25519")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("tamper")
    path = d / "m.kolm"
    make_artifact(path, key=KEY)
    verify_artifact(path, policy=POLICY)   # the untouched file verifies
    return d, path.read_bytes()


def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["flip", "truncate", "append", "header-replace", "header-insert",
                                 "header-delete"]))
    n = _header_len(data)
    if kind == "flip":
        i = draw(st.integers(0, len(data) - 1))
        mask = draw(st.integers(1, 255))
        return kind, data[:i] + bytes([data[i] ^ mask]) + data[i + 1:]
    if kind == "truncate":
        return kind, data[:draw(st.integers(0, len(data) - 1))]
    if kind == "append":
        return kind, data + draw(st.binary(min_size=1, max_size=16))
    # header edits keep the length prefix consistent, so the parser's deeper checks are exercised
    i = draw(st.integers(8, 8 + n - 1))
    char = draw(st.sampled_from(list(b' "{}[],:0123456789abcdefAZ\\_-.')))
    if kind == "header-replace":
        if data[i] == char:
            char = ord("x") if char != ord("x") else ord("y")
        return kind, data[:i] + bytes([char]) + data[i + 1:]
    inserted = data[8:i] + bytes([char]) + data[i:8 + n]
    body = inserted if kind == "header-insert" else data[8:i] + data[i + 1:8 + n]
    return kind, struct.pack("<Q", len(body)) + body + data[8 + n:]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_change_is_a_finding(signed: tuple[Path, bytes], data: st.DataObject) -> None:
    d, original = signed
    kind, changed = data.draw(mutations(original))
    assert changed != original
    path = d / "t.kolm"
    path.write_bytes(changed)
    with pytest.raises(Finding) as exc:
        verify_artifact(path, policy=POLICY, workers=1)
    event(f"{kind} -> {type(exc.value).__name__}: {exc.value.message[:40]}")
    assert exc.value.file == str(path), kind
    assert exc.value.message


@pytest.mark.parametrize("where", ["length", "header", "data", "end"])
def test_cli_exit_1_on_tamper(signed: tuple[Path, bytes], where: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    _, original = signed
    n = _header_len(original)
    i = {"length": 0, "header": 8 + n // 2, "data": 8 + n + 3, "end": len(original) - 1}[where]
    path = tmp_path / "m.kolm"
    path.write_bytes(original[:i] + bytes([original[i] ^ 0x01]) + original[i + 1:])
    _, pub = write_keypair(KEY, tmp_path / "keys", name="k")
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(path), "--key", str(pub)])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert str(path) in err and "error" in err
