"""Trust policy: which key may sign what (role), for whom (tenant), and when (validity window).

A trust file (``trust.toml``, schema ``schemas/trust.schema.json``)::

    schema = "kolm.trust/1"

    [[keys]]
    name = "vendor-release"
    public_key = "keys/artifact.pub"       # path relative to the trust file
    key_id = "sha256:…"                    # optional; checked against the key file when present
    roles = ["artifact", "binder"]         # artifact | receipt | checkpoint | binder
    tenants = ["*"]                        # "*" = any tenant
    not_before = "2026-01-01T00:00:00Z"    # optional
    not_after = "2031-01-01T00:00:00Z"     # optional

Verification answers *which* trusted key, for which role and tenant, signed — not just "some key did"::

    >>> from kolm_audit.keys import generate_key
    >>> from kolm_audit.signing import sign_envelope
    >>> key = generate_key(key_type="ed25519")
    >>> policy = TrustPolicy.from_public_key(key.public_key(), roles=("artifact",))
    >>> env = sign_envelope(b"x", payload_type="text/plain", key=key)
    >>> [s.role for s in verify_envelope(env, policy, role="artifact")]
    ['artifact']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from kolm_audit._toml import read_toml
from kolm_audit.errors import ConfigError, KolmError, TrustError, naming_file
from kolm_audit.keys import PublicKey, load_public_key
from kolm_audit.schemas import validate
from kolm_audit.signing import Envelope, verify_signature
from kolm_audit.timefmt import format_time, parse_time

ROLES: tuple[str, ...] = ("artifact", "receipt", "checkpoint", "binder")
TRUST_SCHEMA = "kolm.trust/1"
ANY_TENANT = "*"


@dataclass(frozen=True)
class TrustedKey:
    name: str
    public_key: PublicKey
    roles: frozenset[str]
    tenants: frozenset[str] = frozenset({ANY_TENANT})
    not_before: datetime | None = None
    not_after: datetime | None = None

    def __post_init__(self) -> None:
        unknown = sorted(self.roles - set(ROLES))
        if unknown or not self.roles:
            raise ConfigError("unknown or empty roles", field=f"keys[{self.name}].roles",
                              expected=", ".join(ROLES), actual=", ".join(unknown))
        if self.not_before and self.not_after and self.not_before >= self.not_after:
            raise ConfigError("validity window is empty", field=f"keys[{self.name}]",
                              expected="not_before < not_after",
                              actual=f"not_before {format_time(self.not_before)}, "
                                     f"not_after {format_time(self.not_after)}")

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def authorize(self, *, role: str, tenant: str | None, at: datetime | None) -> None:
        """Raise :class:`TrustError` unless this key may sign for ``role``/``tenant`` at time ``at``."""
        if role not in self.roles:
            raise TrustError(f"key '{self.name}' is not trusted for role '{role}'", field=self.key_id,
                             expected=f"a key with role {role}", actual="roles " + ",".join(sorted(self.roles)))
        if tenant is not None and ANY_TENANT not in self.tenants and tenant not in self.tenants:
            raise TrustError(f"key '{self.name}' is not trusted for tenant '{tenant}'", field=self.key_id,
                             expected=f"tenant {tenant}", actual="tenants " + ",".join(sorted(self.tenants)))
        if at is not None and self.not_before is not None and at < self.not_before:
            raise TrustError(f"key '{self.name}' is not yet valid at {format_time(at)}", field=self.key_id,
                             expected=f"not before {format_time(self.not_before)}")
        if at is not None and self.not_after is not None and at >= self.not_after:
            raise TrustError(f"key '{self.name}' expired before {format_time(at)}", field=self.key_id,
                             expected=f"before {format_time(self.not_after)}")


@dataclass(frozen=True)
class Signer:
    """Who signed: the trusted key, the role it signed in, the tenant it was checked for (if any) and the tenants
    the trust policy lets that key sign for (``*``: any)."""

    key_id: str
    name: str
    role: str
    tenant: str | None
    tenants: tuple[str, ...] = (ANY_TENANT,)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key_id": self.key_id, "name": self.name, "role": self.role,
                               "tenants": list(self.tenants)}
        if self.tenant is not None:
            doc["tenant"] = self.tenant
        return doc


@dataclass(frozen=True)
class TrustPolicy:
    keys: tuple[TrustedKey, ...]
    source: str | None = None
    _by_id: dict[str, TrustedKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, TrustedKey] = {}
        for key in self.keys:
            if key.key_id in by_id:
                raise ConfigError("the same key is listed twice", file=self.source, field=f"keys[{key.name}]")
            by_id[key.key_id] = key
        object.__setattr__(self, "_by_id", by_id)

    def find(self, key_id: str) -> TrustedKey | None:
        return self._by_id.get(key_id)

    @classmethod
    def from_public_key(cls, public_key: PublicKey, *, roles: Iterable[str] = ROLES, name: str = "cli-key",
                        source: str | None = None) -> TrustPolicy:
        """A policy trusting one key for ``roles`` and any tenant (``--key PUB`` on the command line)."""
        return cls(keys=(TrustedKey(name=name, public_key=public_key, roles=frozenset(roles)),), source=source)

    @classmethod
    def load(cls, path: str | Path) -> TrustPolicy:
        path = Path(path)
        doc = _stringify_dates(read_toml(path, what="trust file"))
        validate(doc, "trust", source=str(path), error=ConfigError)
        keys = []
        names: dict[str, int] = {}
        for i, entry in enumerate(doc["keys"]):
            where = f"keys[{i}] ({entry['name']})"
            if entry["name"] in names:
                raise ConfigError("two trust entries have the same name", file=str(path), field=f"{where}.name",
                                  expected="a name not used by another entry",
                                  actual=f"also keys[{names[entry['name']]}]")
            names[entry["name"]] = i
            try:
                pub = load_public_key(path.parent / entry["public_key"])
            except KolmError as exc:   # name the trust file and its entry, then the key file and what is wrong
                raise type(exc)(f"{exc.message}: {exc.file or entry['public_key']}", file=str(path),
                                field=f"{where}.public_key", expected=exc.expected or "an SPKI PEM public key file",
                                actual=exc.actual) from None
            if "key_id" in entry and entry["key_id"] != pub.key_id:
                raise ConfigError("key_id does not match the public key file", file=str(path),
                                  field=f"{where}.key_id", expected=pub.key_id, actual=entry["key_id"])
            with naming_file(str(path)):
                keys.append(TrustedKey(
                    name=entry["name"], public_key=pub, roles=frozenset(entry["roles"]),
                    tenants=frozenset(entry.get("tenants", [ANY_TENANT])),
                    not_before=_opt_time(entry, "not_before", path, i),
                    not_after=_opt_time(entry, "not_after", path, i)))
        return cls(keys=tuple(keys), source=str(path))


def load_policy(*, trust: str | Path | None, keys: Sequence[str | Path] = (), roles: Iterable[str] = ROLES,
                what: str = "signatures") -> TrustPolicy:
    """The policy a user names: a trust file, or public keys trusted for ``roles`` and any tenant.

    Exactly one of ``trust`` and ``keys`` must be given (the CLI's ``--trust`` / ``--key``).
    """
    if trust is not None and keys:
        raise ConfigError("give either --trust or --key, not both", field="--trust/--key")
    if trust is not None:
        return TrustPolicy.load(trust)
    if not keys:
        raise ConfigError(f"a trust policy is needed to check {what}", field="--trust/--key",
                          expected="--trust trust.toml or --key PUB")
    return TrustPolicy(keys=tuple(TrustedKey(name=Path(k).name, public_key=load_public_key(k),
                                             roles=frozenset(roles)) for k in keys),
                       source=", ".join(str(k) for k in keys))


def _stringify_dates(obj: Any) -> Any:
    if isinstance(obj, datetime | date):
        if isinstance(obj, datetime) and obj.tzinfo is not None:
            return format_time(obj)
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: _stringify_dates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_stringify_dates(v) for v in obj]
    return obj


def _opt_time(entry: dict[str, Any], name: str, path: Path, i: int) -> datetime | None:
    if name not in entry:
        return None
    return parse_time(entry[name], file=str(path), field=f"keys[{i}].{name}")


def write_trust_file(path: str | Path, entries: list[dict[str, Any]]) -> Path:
    """Write a trust file from entries (``name``, ``public_key`` path relative to the file, ``roles``, ...)."""
    path = Path(path)
    lines = [f'schema = "{TRUST_SCHEMA}"', ""]
    for entry in entries:
        lines.append("[[keys]]")
        for key in ("name", "public_key", "key_id", "not_before", "not_after"):
            if key in entry:
                lines.append(f'{key} = "{entry[key]}"')
        for key in ("roles", "tenants"):
            if key in entry:
                lines.append(f"{key} = [{', '.join(chr(34) + v + chr(34) for v in entry[key])}]")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    TrustPolicy.load(path)  # what we write, we can read
    return path


def verify_envelope(envelope: Envelope, policy: TrustPolicy, *, role: str, tenant: str | None = None,
                    at: datetime | None = None) -> list[Signer]:
    """Check every signature by a key the policy knows; return the signers.

    * a signature by a known key that does not verify → :class:`SignatureError` (tampering);
    * a known key used outside its role, tenant or window → :class:`TrustError`;
    * no signature by any trusted key → :class:`TrustError`.
    Signatures by unknown keys are ignored (several parties may sign one artifact).
    """
    signers: list[Signer] = []
    for signature in envelope.signatures:
        trusted = policy.find(signature.keyid)
        if trusted is None:
            continue
        verify_signature(envelope, signature, trusted.public_key)
        trusted.authorize(role=role, tenant=tenant, at=at)
        signers.append(Signer(key_id=trusted.key_id, name=trusted.name, role=role, tenant=tenant,
                              tenants=tuple(sorted(trusted.tenants))))
    if not signers:
        known = ", ".join(s.keyid for s in envelope.signatures)
        raise TrustError(f"no signature by a key trusted for role '{role}'", file=policy.source,
                         expected="a signature by a key in the trust policy", actual=f"signed by {known}")
    return signers
