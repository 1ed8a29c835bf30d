"""``kolm-audit keys generate``: make a signing key pair (PKCS#8 private PEM, mode 0600; SPKI public PEM).

    kolm-audit keys generate --out keys/ --type ecdsa-p256 --name artifact
    kolm-audit keys generate --out keys/ --type ed25519 --passphrase-env KOLM_PASS --json
"""

from __future__ import annotations

from pathlib import Path

import click

from kolm_audit.cli import emit
from kolm_audit.errors import InputError
from kolm_audit.keys import KEY_TYPES, generate_key, passphrase_from_env, write_keypair


@click.group()
def keys() -> None:
    """Manage signing keys."""


@keys.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for <name>.pem and <name>.pub (created if missing).")
@click.option("--type", "key_type", type=click.Choice(KEY_TYPES), default="ecdsa-p256", show_default=True)
@click.option("--passphrase-env", "passphrase_env", metavar="VAR",
              help="Encrypt the private key with the passphrase held in this environment variable.")
@click.option("--name", default="key", show_default=True, help="Base name of the key files.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def generate(out_dir: Path, key_type: str, passphrase_env: str | None, name: str, as_json: bool) -> int:
    """Generate a key pair; print its key id and file paths."""
    if not name or "/" in name or name.startswith("."):
        raise InputError("bad key name", field="--name", expected="a plain file name", actual=name)
    passphrase = passphrase_from_env(passphrase_env)
    if passphrase is not None and not passphrase:
        raise InputError("empty passphrase", field=passphrase_env)
    key = generate_key(key_type=key_type)  # type: ignore[arg-type]
    priv, pub = write_keypair(key, out_dir, name=name, passphrase=passphrase)
    doc = {"key_id": key.key_id, "type": key_type, "private_key": str(priv), "public_key": str(pub),
           "encrypted": passphrase is not None}
    emit(doc, as_json=as_json, text=f"key id:      {key.key_id}\ntype:        {key_type}\n"
                                    f"private key: {priv}{' (encrypted)' if passphrase else ''}\npublic key:  {pub}")
    return 0


def _register() -> None:
    from kolm_audit.cli.tenant import kek, tenant

    keys.add_command(kek)
    keys.add_command(tenant)


_register()
