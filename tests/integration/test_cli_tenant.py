"""``kolm-audit keys kek`` / ``keys tenant add|rotate|shred|list``: the tenant key store from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli_fixtures import cli as _run

from kolm_audit.errors import KeyFileError
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore
from kolm_audit.schemas import validate


def test_add_rotate_list_shred(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kek_file, store = tmp_path / "kek.b64", tmp_path / "tenant-keys.json"
    assert _run(capsys, "keys", "kek", "--out", kek_file)[0] == 0
    assert kek_file.stat().st_mode & 0o777 == 0o600
    code, _, _ = _run(capsys, "keys", "tenant", "add", "--keystore", store, "--tenant", "acme", "--mode",
                      "encrypt-text", "--kek-file", kek_file)
    assert code == 0
    validate(json.loads(store.read_text()), "tenant-keys", source=str(store))
    kek = KeyEncryptionKey.from_file(kek_file)
    sealed = KeyStore.load(store).tenant("acme", kek=kek).seal("secret text", receipt_id="r1", field="request.text")

    code, _, err = _run(capsys, "keys", "tenant", "add", "--keystore", store, "--tenant", "acme", "--mode", "clear",
                        "--kek-file", kek_file)
    assert code == 2 and "already in the key store" in err
    assert _run(capsys, "keys", "tenant", "rotate", "--keystore", store, "--tenant", "acme", "--kek-file",
                kek_file)[0] == 0
    code, out, _ = _run(capsys, "keys", "tenant", "list", "--keystore", store, "--json")
    states = sorted(k["state"] for k in json.loads(out)["tenants"]["acme"]["data_keys"])
    assert code == 0 and states == ["active", "retired"]
    # the rotated store still opens what the first key sealed
    assert KeyStore.load(store).tenant("acme", kek=kek).open(sealed, receipt_id="r1", field="request.text") == \
        "secret text"

    code, _, err = _run(capsys, "keys", "tenant", "shred", "--keystore", store, "--tenant", "acme")
    assert code == 2 and "--yes" in err
    assert _run(capsys, "keys", "tenant", "shred", "--keystore", store, "--tenant", "acme", "--yes")[0] == 0
    with pytest.raises(KeyFileError):
        KeyStore.load(store).tenant("acme", kek=kek).open(sealed, receipt_id="r1", field="request.text")


def test_kek_source_must_be_exactly_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "keys", "tenant", "add", "--keystore", tmp_path / "s.json", "--tenant", "t",
                        "--mode", "clear")
    assert code == 2 and "exactly one key-encryption key source" in err
