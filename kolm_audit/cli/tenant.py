"""``kolm-audit keys kek`` and ``kolm-audit keys tenant …``: the per-tenant key store of receipt privacy.

    kolm-audit keys kek --out kek.b64                                         # a new key-encryption key (0600)
    kolm-audit keys tenant add --keystore tenant-keys.json --tenant acme --mode encrypt-text --kek-file kek.b64
    kolm-audit keys tenant rotate --keystore tenant-keys.json --tenant acme --kek-file kek.b64
    kolm-audit keys tenant shred --keystore tenant-keys.json --tenant acme --yes   # crypto-shredding
    kolm-audit keys tenant list --keystore tenant-keys.json --json

Modes and what each allows before and after shredding: ``docs/privacy.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kolm_audit.cli import emit
from kolm_audit.cli._options import kek_from_options
from kolm_audit.errors import InputError
from kolm_audit.receipts.privacy import MODES, KeyEncryptionKey, KeyStore

_STORE = click.option("--keystore", required=True, type=click.Path(dir_okay=False, path_type=Path),
                      help="Tenant key store (kolm.tenant-keys/1 JSON).")
_TENANT = click.option("--tenant", required=True, help="Tenant name as recorded in receipts.")
_KEK_FILE = click.option("--kek-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help="File holding the base64 key-encryption key.")
_KEK_ENV = click.option("--kek-env", metavar="VAR", help="Env var holding the base64 key-encryption key.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _summary(store: KeyStore, path: Path) -> dict[str, Any]:
    tenants = {}
    for name in store.tenants:
        entry = store.doc["tenants"][name]
        tenants[name] = {"mode": entry["mode"],
                         "data_keys": [{"key_id": k["key_id"], "state": k.get("state", "active")}
                                       for k in entry["data_keys"]],
                         "salt_shredded": "shredded" in entry["salt"]}
    return {"keystore": str(path), "tenants": tenants}


@click.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="New KEK file (0600).")
@_JSON
def kek(out: Path, as_json: bool) -> int:
    """Generate a key-encryption key (wraps the tenants' data keys and salts)."""
    key = KeyEncryptionKey.generate()
    key.write(out)
    emit({"kek_file": str(out), "kek_id": key.key_id}, as_json=as_json,
         text=f"wrote {out} (key-encryption key {key.key_id}); keep it apart from the key store")
    return 0


@click.group()
def tenant() -> None:
    """Per-tenant privacy keys: add, rotate, shred, list."""


@tenant.command()
@_STORE
@_TENANT
@click.option("--mode", type=click.Choice(MODES), required=True, help="What receipts of this tenant seal.")
@_KEK_FILE
@_KEK_ENV
@_JSON
def add(keystore: Path, tenant: str, mode: str, kek_file: Path | None, kek_env: str | None, as_json: bool) -> int:
    """Add a tenant (fresh salt, and a fresh data key unless the mode is clear); creates the store if missing."""
    key = kek_from_options(kek_file=kek_file, kek_env=kek_env)
    store = KeyStore.load(keystore) if keystore.exists() else KeyStore.empty()
    if tenant in store.tenants:
        raise InputError("tenant already in the key store", file=str(keystore), field=tenant,
                         expected="a new tenant (use `keys tenant rotate` for a new data key)")
    store.with_tenant(tenant, mode=mode, kek=key).write(keystore)  # type: ignore[arg-type]
    emit(_summary(KeyStore.load(keystore), keystore), as_json=as_json,
         text=f"added tenant {tenant} ({mode}) to {keystore}")
    return 0


@tenant.command()
@_STORE
@_TENANT
@_KEK_FILE
@_KEK_ENV
@_JSON
def rotate(keystore: Path, tenant: str, kek_file: Path | None, kek_env: str | None, as_json: bool) -> int:
    """Start a new data key for new receipts; older keys stay to open older receipts."""
    key = kek_from_options(kek_file=kek_file, kek_env=kek_env)
    KeyStore.load(keystore).rotate(tenant, kek=key).write(keystore)
    emit(_summary(KeyStore.load(keystore), keystore), as_json=as_json, text=f"rotated the data key of {tenant}")
    return 0


@tenant.command()
@_STORE
@_TENANT
@click.option("--key-id", help="Shred only this data key (default: all of the tenant's data keys).")
@click.option("--forget-salt", is_flag=True, help="Also delete the salt: salted digests can no longer be matched.")
@click.option("--yes", is_flag=True, help="Confirm: this cannot be undone.")
@_JSON
def shred(keystore: Path, tenant: str, key_id: str | None, forget_salt: bool, yes: bool, as_json: bool) -> int:
    """Crypto-shred a tenant: its sealed texts become unreadable; signatures, proofs and replay still verify."""
    if not yes:
        raise InputError("shredding cannot be undone", field="--yes", expected="--yes to confirm")
    KeyStore.load(keystore).shred(tenant, key_id=key_id, forget_salt=forget_salt).write(keystore)
    emit(_summary(KeyStore.load(keystore), keystore), as_json=as_json,
         text=f"shredded {'data key ' + key_id if key_id else 'every data key'} of {tenant}"
              f"{' and its salt' if forget_salt else ''} in {keystore}; destroy backups of the store too")
    return 0


@tenant.command("list")
@_STORE
@_JSON
def list_(keystore: Path, as_json: bool) -> int:
    """List tenants, their modes and the state of their data keys (no secrets)."""
    doc = _summary(KeyStore.load(keystore), keystore)
    lines = [f"{keystore}:"] + [
        f"  {name}: {t['mode']}, data keys: " + (", ".join(f"{k['key_id'][:19]}… {k['state']}" for k in t["data_keys"])
                                                 or "none") + (", salt shredded" if t["salt_shredded"] else "")
        for name, t in doc["tenants"].items()]
    emit(doc, as_json=as_json, text="\n".join(lines))
    return 0
