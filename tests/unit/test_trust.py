"""Trust policy: roles, tenants, validity windows, trust.toml loading, who signed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kolm_audit.errors import ConfigError, KeyFileError, SignatureError, TrustError
from kolm_audit.keys import generate_key, write_keypair
from kolm_audit.signing import Envelope, Signature, sign_envelope
from kolm_audit.timefmt import parse_time
from kolm_audit.trust import TrustedKey, TrustPolicy, load_policy, verify_envelope, write_trust_file

T = parse_time


def _key(name: str = "k", **kw: object) -> tuple:
    priv = generate_key(key_type="ed25519")
    return priv, TrustedKey(name=name, public_key=priv.public_key(), **kw)  # type: ignore[arg-type]


def test_signer_identity() -> None:
    priv, tk = _key("vendor", roles=frozenset({"artifact", "binder"}), tenants=frozenset({"acme"}))
    env = sign_envelope(b"x", payload_type="t", key=priv)
    [signer] = verify_envelope(env, TrustPolicy(keys=(tk,)), role="binder", tenant="acme")
    assert signer.to_json() == {"key_id": priv.key_id, "name": "vendor", "role": "binder", "tenant": "acme",
                                "tenants": ["acme"]}


def test_role_tenant_and_window() -> None:
    priv, tk = _key(roles=frozenset({"receipt"}), tenants=frozenset({"acme"}),
                    not_before=T("2026-01-01T00:00:00Z"), not_after=T("2027-01-01T00:00:00Z"))
    env = sign_envelope(b"x", payload_type="t", key=priv)
    policy = TrustPolicy(keys=(tk,))
    verify_envelope(env, policy, role="receipt", tenant="acme", at=T("2026-06-01T00:00:00Z"))
    with pytest.raises(TrustError, match="not trusted for role 'artifact'"):
        verify_envelope(env, policy, role="artifact", tenant="acme")
    with pytest.raises(TrustError, match="not trusted for tenant 'globex'"):
        verify_envelope(env, policy, role="receipt", tenant="globex")
    with pytest.raises(TrustError, match="not yet valid"):
        verify_envelope(env, policy, role="receipt", at=T("2025-12-31T23:59:59Z"))
    with pytest.raises(TrustError, match="expired"):
        verify_envelope(env, policy, role="receipt", at=T("2027-01-01T00:00:00Z"))


def test_unknown_keys_ignored_known_bad_signature_fails() -> None:
    stranger = generate_key(key_type="ed25519")
    priv, tk = _key(roles=frozenset({"artifact"}))
    policy = TrustPolicy(keys=(tk,))
    only_stranger = sign_envelope(b"x", payload_type="t", key=stranger)
    with pytest.raises(TrustError, match="no signature by a key trusted"):
        verify_envelope(only_stranger, policy, role="artifact")
    both = only_stranger.with_signature(priv)
    assert [s.key_id for s in verify_envelope(both, policy, role="artifact")] == [priv.key_id]
    forged = Envelope(payload_type="t", payload=b"x",
                      signatures=(Signature(keyid=priv.key_id, sig=stranger.sign(b"x")),))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(forged, policy, role="artifact")


def test_bad_policies() -> None:
    _, tk = _key(roles=frozenset({"artifact"}))
    with pytest.raises(ConfigError, match="listed twice"):
        TrustPolicy(keys=(tk, tk))
    with pytest.raises(ConfigError, match="unknown or empty roles"):
        _key(roles=frozenset({"root"}))
    with pytest.raises(ConfigError, match="validity window is empty"):
        _key(roles=frozenset({"artifact"}), not_before=T("2027-01-01T00:00:00Z"),
             not_after=T("2026-01-01T00:00:00Z"))


def test_trust_file_round_trip(tmp_path: Path) -> None:
    priv = generate_key()
    write_keypair(priv, tmp_path / "keys", name="a")
    path = write_trust_file(tmp_path / "trust.toml", [
        {"name": "vendor", "public_key": "keys/a.pub", "key_id": priv.key_id, "roles": ["artifact"],
         "tenants": ["acme"], "not_before": "2026-01-01T00:00:00Z"}])
    policy = TrustPolicy.load(path)
    found = policy.find(priv.key_id)
    assert found is not None and found.name == "vendor" and found.tenants == frozenset({"acme"})
    assert found.not_before == T("2026-01-01T00:00:00Z") and policy.source == str(path)
    toml_dates = tmp_path / "dates.toml"   # TOML native datetimes are accepted too
    toml_dates.write_text('schema = "kolm.trust/1"\n[[keys]]\nname = "v"\npublic_key = "keys/a.pub"\n'
                          'roles = ["artifact"]\nnot_after = 2030-01-01T00:00:00Z\n')
    assert TrustPolicy.load(toml_dates).keys[0].not_after == T("2030-01-01T00:00:00Z")


@pytest.mark.parametrize(("text", "error", "match"), [
    ('schema = "kolm.trust/1"\nkeys = []', ConfigError, "does not match schema"),
    ('schema = "kolm.trust/2"\n[[keys]]\nname="v"\npublic_key="keys/a.pub"\nroles=["artifact"]', ConfigError,
     "does not match schema"),
    ('schema = "kolm.trust/1"\n[[keys]]\nname="v"\npublic_key="keys/a.pub"\nroles=["god"]', ConfigError,
     "does not match schema"),
    ('schema = "kolm.trust/1"\n[[keys]]\nname="v"\npublic_key="keys/nope.pub"\nroles=["artifact"]', KeyFileError,
     "cannot read key file"),
    ('schema = "kolm.trust/1"\n[[keys]]\nname="v"\npublic_key="keys/a.pub"\nroles=["artifact"]\n'
     'key_id="sha256:' + "0" * 64 + '"', ConfigError, "key_id does not match"),
    ("not toml [", ConfigError, "not valid TOML"),
])
def test_bad_trust_files(tmp_path: Path, text: str, error: type, match: str) -> None:
    write_keypair(generate_key(), tmp_path / "keys", name="a")
    (tmp_path / "trust.toml").write_text(text)
    with pytest.raises(error, match=match):
        TrustPolicy.load(tmp_path / "trust.toml")
    with pytest.raises(ConfigError, match="cannot read trust file"):
        TrustPolicy.load(tmp_path / "missing.toml")


def test_load_policy_takes_exactly_one_source(tmp_path: Path) -> None:
    key = generate_key(key_type="ed25519")
    _, pub = write_keypair(key, tmp_path, name="k")
    policy = load_policy(trust=None, keys=(pub,), roles=("receipt",))
    assert policy.find(key.key_id) is not None and policy.find(key.key_id).roles == frozenset({"receipt"})
    with pytest.raises(ConfigError, match="not both"):
        load_policy(trust=tmp_path / "trust.toml", keys=(pub,))
    with pytest.raises(ConfigError, match="trust policy is needed"):
        load_policy(trust=None, keys=())


def _write(tmp_path: Path, entries: list[str], keys: tuple[str, ...] = ("a", "b", "v")) -> Path:
    for name in keys:
        write_keypair(generate_key(key_type="ed25519"), tmp_path, name=name)
    path = tmp_path / "trust.toml"
    path.write_text('schema = "kolm.trust/1"\n' + "".join(f"[[keys]]\n{e}\n" for e in entries), encoding="utf-8")
    return path


def test_two_entries_with_one_name_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, ['name = "ops"\npublic_key = "a.pub"\nroles = ["receipt"]',
                             'name = "ops"\npublic_key = "b.pub"\nroles = ["checkpoint"]'])
    with pytest.raises(ConfigError, match="same name") as exc:
        TrustPolicy.load(path)
    assert exc.value.file == str(path) and exc.value.field == "keys[1] (ops).name"


def test_a_missing_key_file_names_the_trust_file_and_the_entry(tmp_path: Path) -> None:
    path = _write(tmp_path, ['name = "vendor"\npublic_key = "gone.pub"\nroles = ["artifact"]'])
    with pytest.raises(KeyFileError) as exc:
        TrustPolicy.load(path)
    assert exc.value.file == str(path) and exc.value.field == "keys[0] (vendor).public_key"
    assert "gone.pub" in str(exc.value)


def test_an_inverted_validity_window_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, ['name = "vendor"\npublic_key = "v.pub"\nroles = ["artifact"]\n'
                             'not_before = "2027-01-01T00:00:00Z"\nnot_after = "2026-01-01T00:00:00Z"'])
    with pytest.raises(ConfigError, match="validity window") as exc:
        TrustPolicy.load(path)
    assert exc.value.file == str(path) and "2027-01-01" in str(exc.value)
