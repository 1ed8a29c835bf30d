"""The `--sidecar` bundle verifies with the unmodified OpenSSF `model_signing` CLI (model-signing 1.1.1)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli_fixtures import tiny_kolm

from kolm_audit.artifact import sign_artifact
from kolm_audit.artifact.sidecar import write_sidecar
from kolm_audit.cli import main
from kolm_audit.errors import InputError
from kolm_audit.keys import generate_key, write_keypair

MODEL_SIGNING = shutil.which("model_signing", path=str(Path(sys.executable).parent)) or shutil.which(
    "model_signing")
needs_cli = pytest.mark.skipif(MODEL_SIGNING is None, reason="the model_signing CLI is not installed")


def _ms_verify(kolm: Path, sig: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    assert MODEL_SIGNING is not None
    return subprocess.run([MODEL_SIGNING, "verify", "key", str(kolm), "--signature", str(sig), "--public_key",
                           str(pub)], capture_output=True, text=True, check=False, timeout=120)


@needs_cli
def test_model_signing_cli_verifies_our_sidecar(tmp_path: Path) -> None:
    kolm = tiny_kolm(tmp_path / "model.kolm")
    key = generate_key(key_type="ecdsa-p256")
    _, pub = write_keypair(key, tmp_path, name="key")
    other = generate_key(key_type="ed25519")
    sign_artifact(kolm, other)                       # an earlier embedded signature may exist
    result = sign_artifact(kolm, key, sidecar=True)
    sig = tmp_path / "model.kolm.sig"
    assert result.sidecar == sig
    bundle = json.loads(sig.read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    ok = _ms_verify(kolm, sig, pub)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Verification succeeded" in ok.stdout + ok.stderr
    # one changed byte of the artifact and model_signing refuses it too
    data = bytearray(kolm.read_bytes())
    data[-1] ^= 1
    kolm.write_bytes(bytes(data))
    bad = _ms_verify(kolm, sig, pub)
    assert bad.returncode != 0


@needs_cli
def test_cli_sign_sidecar_with_encrypted_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    kolm = tiny_kolm(tmp_path / "model.kolm")
    monkeypatch.setenv("KOLM_SIDECAR_PASS", "pw")
    key = generate_key()
    priv, pub = write_keypair(key, tmp_path, name="key", passphrase=b"pw")
    with pytest.raises(SystemExit) as exc:
        main(["sign", str(kolm), "--key", str(priv), "--passphrase-env", "KOLM_SIDECAR_PASS", "--sidecar"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert "sidecar:" in capsys.readouterr().out
    ok = _ms_verify(kolm, tmp_path / "model.kolm.sig", pub)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong_priv, wrong = write_keypair(generate_key(), tmp_path, name="wrong")
    assert _ms_verify(kolm, tmp_path / "model.kolm.sig", wrong).returncode != 0
    # a later embedded signature makes the sidecar stale: the CLI says so, model_signing refuses it
    with pytest.raises(SystemExit) as exc:
        main(["sign", str(kolm), "--key", str(wrong_priv)])
    assert exc.value.code == 0
    assert "re-create it with `sign --sidecar`" in capsys.readouterr().err
    assert _ms_verify(kolm, tmp_path / "model.kolm.sig", pub).returncode != 0


def test_ed25519_sidecar_is_refused(tmp_path: Path) -> None:
    kolm = tiny_kolm(tmp_path / "model.kolm")
    with pytest.raises(InputError, match="needs an ECDSA P-256 key"):
        write_sidecar(kolm, generate_key(key_type="ed25519"))
    with pytest.raises(InputError, match="needs an ECDSA P-256 key"):
        sign_artifact(kolm, generate_key(key_type="ed25519"), sidecar=True)
    assert not (tmp_path / "model.kolm.sig").exists()
