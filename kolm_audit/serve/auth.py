"""Bearer tokens of ``kolm-audit serve``: one tenant per token, only a hash at rest, constant-time compare.

The tokens file (``tokens.toml``, schema ``schemas/serve-tokens.schema.json``)::

    schema = "kolm.serve-tokens/1"

    [[tokens]]
    name = "acme-scoring"                  # who holds it (unique)
    tenant = "acme"                        # the only tenant it may record under and read
    hash = "sha256:…"                      # sha256 of the token; the token itself is never stored

Tokens are 256-bit random strings (``kolm_`` + 43 base64url characters), so a plain SHA-256 is the right hash:
there is nothing to brute-force (a slow password hash guards low-entropy secrets, which these are not).
:meth:`TokenFile.authenticate` hashes the presented token and compares it with *every* stored hash with
:func:`hmac.compare_digest`, so the time taken does not depend on which entry, if any, matched.

    >>> token = new_token()
    >>> tokens = TokenFile.empty().with_token(name="svc", tenant="acme", token=token)
    >>> tokens.authenticate(f"Bearer {token}").tenant
    'acme'
    >>> tokens.authenticate("Bearer kolm_wrong")           # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kolm_audit.serve.problems.Unauthorized: Authorization: unknown bearer token (...)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from kolm_audit._atomic import write_atomic
from kolm_audit._toml import read_toml
from kolm_audit.errors import ConfigError, InputError
from kolm_audit.schemas import validate
from kolm_audit.serve.problems import Unauthorized

TOKENS_SCHEMA = "kolm.serve-tokens/1"
TOKEN_PREFIX = "kolm_"
_MAX_TOKEN_CHARS = 512


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """``sha256:<hex>`` of the token's UTF-8 bytes: what the tokens file stores."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's tenant and name (``anonymous`` when the server runs without tokens)."""

    tenant: str
    name: str


@dataclass(frozen=True)
class TokenEntry:
    name: str
    tenant: str
    hash: str

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.hash.removeprefix("sha256:"))


@dataclass(frozen=True)
class TokenFile:
    """The parsed tokens file; immutable (:meth:`with_token` returns a new one)."""

    entries: tuple[TokenEntry, ...]
    source: str | None = None

    def __post_init__(self) -> None:
        doc = self.to_doc()
        validate(doc, "serve-tokens", source=self.source, error=ConfigError)
        for what in ("name", "hash"):
            seen: set[str] = set()
            for i, entry in enumerate(self.entries):
                value = getattr(entry, what)
                if value in seen:
                    raise ConfigError(f"the same token {what} is listed twice", file=self.source,
                                      field=f"tokens[{i}].{what}", expected=f"a unique {what}")
                seen.add(value)

    @classmethod
    def empty(cls) -> TokenFile:
        return cls(entries=())

    @classmethod
    def load(cls, path: str | Path) -> TokenFile:
        path = Path(path)
        doc = read_toml(path, what="tokens file")
        validate(doc, "serve-tokens", source=str(path), error=ConfigError)
        return cls(entries=tuple(TokenEntry(name=e["name"], tenant=e["tenant"], hash=e["hash"])
                                 for e in doc["tokens"]), source=str(path))

    def to_doc(self) -> dict[str, object]:
        return {"schema": TOKENS_SCHEMA,
                "tokens": [{"name": e.name, "tenant": e.tenant, "hash": e.hash} for e in self.entries]}

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(sorted({e.tenant for e in self.entries}))

    def with_token(self, *, name: str, tenant: str, token: str | None = None, hashed: str | None = None) -> TokenFile:
        """Add a token (give the token, or only its ``hashed`` form, ``sha256:<hex>``)."""
        if (token is None) == (hashed is None):
            raise InputError("give a token or its hash", field="token|hash", expected="exactly one of them")
        entry = TokenEntry(name=name, tenant=tenant, hash=token_hash(token) if token is not None else str(hashed))
        return TokenFile(entries=(*self.entries, entry), source=self.source)

    def write(self, path: str | Path) -> Path:
        """Write atomically (temp file, fsync, rename), mode 0600; what is written reads back the same."""
        path = Path(path)
        lines = [f"schema = {json.dumps(TOKENS_SCHEMA)}", *(() if self.entries else ("tokens = []",)), ""]
        for e in self.entries:  # JSON string escapes are valid TOML basic-string escapes
            lines += ["[[tokens]]", f"name = {json.dumps(e.name)}", f"tenant = {json.dumps(e.tenant)}",
                      f"hash = {json.dumps(e.hash)}", ""]
        write_atomic(path, "\n".join(lines).encode("utf-8"), what="tokens file", mode=0o600)
        if TokenFile.load(path).entries != self.entries:
            raise ConfigError("tokens file did not read back as written", file=str(path))
        return path

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <token>`` header; :class:`Unauthorized` otherwise."""
        token = bearer_token(authorization)
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: TokenEntry | None = None
        for entry in self.entries:  # every entry compared, in constant time each
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        if found is None:
            raise Unauthorized("unknown bearer token", field="Authorization",
                               expected="a token listed in the tokens file")
        return Principal(tenant=found.tenant, name=found.name)


def bearer_token(authorization: str | None) -> str:
    """The token of an RFC 6750 ``Bearer`` credential."""
    if not authorization:
        raise Unauthorized("no bearer token", field="Authorization", expected="Authorization: Bearer <token>",
                           actual="missing")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_CHARS or not token.isascii():
        raise Unauthorized("malformed Authorization header", field="Authorization",
                           expected="Authorization: Bearer <token>")
    return token
