"""Log checkpoints as C2SP signed notes (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint).

A checkpoint note is::

    <origin>\\n
    <tree size, decimal>\\n
    <root hash, base64>\\n
    \\n
    — <key name> <base64(key hash (4 bytes) ‖ Ed25519 signature)>\\n

The signature covers the note body (the first three lines, newlines included). The key hash is the
first four bytes of ``SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte Ed25519 public key)`` (signature type
0x01 = Ed25519). Parsing is strict: anything a writer would not produce is rejected.

    >>> from kolm_audit.keys import generate_key
    >>> from kolm_audit.trust import TrustPolicy
    >>> key = generate_key(key_type="ed25519")
    >>> note = sign_checkpoint(Checkpoint(origin="example.org/log", size=0, root=bytes(32)), key)
    >>> policy = TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",))
    >>> verify_checkpoint(note, policy=policy).checkpoint.size
    0
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit.errors import InputError, LogError, SignatureError, TrustError
from kolm_audit.keys import PrivateKey, PublicKey
from kolm_audit.trust import Signer, TrustPolicy

ED25519_TYPE = b"\x01"  # signed-note signature type for Ed25519
SIG_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
MAX_SIGNATURES = 100
_SIZE_RE = re.compile(r"^(0|[1-9][0-9]{0,19})$")
_NAME_RE = re.compile(r"^[^\s+]+$")


def _b64decode(text: str, *, field: str, source: str | None) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise LogError("not standard base64", file=source, field=field) from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise LogError("base64 is not in canonical form", file=source, field=field)
    return raw


def _check_name(name: str, *, source: str | None = None) -> str:
    if not _NAME_RE.match(name) or not name.isprintable():
        raise LogError("bad signed-note key name", file=source, field="signature name",
                       expected="non-empty, no spaces, no '+'", actual=repr(name)[:80])
    return name


def key_hash(name: str, public_key: PublicKey) -> bytes:
    """signed-note key hash: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ raw Ed25519 key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519_TYPE + public_key.raw()).digest()[:4]


def vkey(name: str, public_key: PublicKey) -> str:
    """The signed-note verifier key string ``<name>+<hex key hash>+<base64(0x01 ‖ key)>``."""
    _check_name(name)
    return f"{name}+{key_hash(name, public_key).hex()}+{base64.b64encode(ED25519_TYPE + public_key.raw()).decode()}"


@dataclass(frozen=True)
class Checkpoint:
    """The body of a tlog-checkpoint: origin, tree size, root hash (and optional extension lines)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or self.origin != self.origin.strip() or not self.origin.isprintable():
            raise InputError("bad checkpoint origin", field="origin", expected="a non-empty printable line",
                             actual=repr(self.origin)[:80])
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 0 <= self.size < 2**64:
            raise InputError("bad checkpoint size", field="size", expected="0 <= size < 2**64")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise InputError("bad checkpoint root", field="root", expected="32 bytes")
        for ext in self.extensions:
            if not ext or not ext.isprintable():
                raise InputError("bad checkpoint extension line", field="extensions", actual=repr(ext)[:80])

    def body(self) -> bytes:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"origin": self.origin, "size": self.size,
                               "root_hash": base64.b64encode(self.root).decode("ascii"), "root_hex": self.root.hex()}
        if self.extensions:
            doc["extensions"] = list(self.extensions)
        return doc


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(self.key_hash + self.signature).decode('ascii')}\n"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key_hash": self.key_hash.hex(),
                "signature": base64.b64encode(self.signature).decode("ascii")}


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    signatures: tuple[NoteSignature, ...]
    signers: tuple[Signer, ...] = ()

    @property
    def text(self) -> str:
        return self.checkpoint.body().decode("utf-8") + "\n" + "".join(s.line() for s in self.signatures)

    def to_json(self) -> dict[str, Any]:
        doc = {"schema": "kolm.checkpoint/1", **self.checkpoint.to_json(),
               "signatures": [s.to_json() for s in self.signatures], "note": self.text}
        if self.signers:
            doc["signers"] = [s.to_json() for s in self.signers]
        return doc


def require_note_key(key: PrivateKey, *, field: str = "--key") -> PrivateKey:
    """``key`` if it can sign checkpoints: C2SP signed notes (type 0x01) are Ed25519; else :class:`InputError`."""
    if key.key_type != "ed25519":
        raise InputError("log checkpoints are C2SP signed notes and need an Ed25519 key", field=field,
                         expected="ed25519", actual=key.key_type)
    return key


def sign_checkpoint(checkpoint: Checkpoint, key: PrivateKey, *, name: str | None = None) -> str:
    """Sign ``checkpoint`` with an Ed25519 key; the key name defaults to the origin (C2SP convention)."""
    require_note_key(key)
    name = _check_name(checkpoint.origin if name is None else name)
    sig = NoteSignature(name=name, key_hash=key_hash(name, key.public_key()), signature=key.sign(checkpoint.body()))
    return SignedCheckpoint(checkpoint=checkpoint, signatures=(sig,)).text


def _parse_body(body: str, source: str | None) -> Checkpoint:
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise LogError("checkpoint body needs origin, size and root lines", file=source, field="body")
    origin, size_text, root_text, *extensions = lines
    if not _SIZE_RE.match(size_text) or int(size_text) >= 2**64:
        raise LogError("bad tree size line", file=source, field="size", expected="decimal, no leading zeros",
                       actual=repr(size_text)[:40])
    root = _b64decode(root_text, field="root hash", source=source)
    if len(root) != 32:
        raise LogError("root hash is not 32 bytes", file=source, field="root hash", actual=str(len(root)))
    try:
        return Checkpoint(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))
    except InputError as exc:
        raise LogError(exc.message, file=source, field=exc.field, expected=exc.expected) from None


def parse_checkpoint(note: str | bytes, *, source: str | None = None) -> SignedCheckpoint:
    """Parse a signed note strictly (signatures are *not* checked here; see :func:`verify_checkpoint`)."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise LogError("checkpoint is not UTF-8", file=source) from None
    if any((c < " " and c != "\n") or c == "\x7f" for c in note):
        raise LogError("checkpoint contains control characters", file=source)
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise LogError("not a signed note (no blank line before signatures, or no final newline)", file=source)
    body, block = note[: split + 1], note[split + 2:]
    checkpoint = _parse_body(body, source)
    sigs: list[NoteSignature] = []
    for i, line in enumerate(block[:-1].split("\n")):
        field = f"signature[{i}]"
        if not line.startswith(SIG_PREFIX):
            raise LogError("signature line must start with '— '", file=source, field=field)
        parts = line[len(SIG_PREFIX):].split(" ")
        if len(parts) != 2:
            raise LogError("signature line must be '— <name> <base64>'", file=source, field=field)
        name = _check_name(parts[0], source=source)
        raw = _b64decode(parts[1], field=field, source=source)
        if len(raw) < 5:
            raise LogError("signature too short", file=source, field=field, expected="key hash + signature")
        sig = NoteSignature(name=name, key_hash=raw[:4], signature=raw[4:])
        if any(s.name == sig.name and s.key_hash == sig.key_hash for s in sigs):
            raise LogError("duplicate signature by the same key", file=source, field=field)
        sigs.append(sig)
    if not sigs or len(sigs) > MAX_SIGNATURES:
        raise LogError("a signed note carries 1 to 100 signatures", file=source, field="signatures",
                       actual=str(len(sigs)))
    parsed = SignedCheckpoint(checkpoint=checkpoint, signatures=tuple(sigs))
    if parsed.text != note:  # strict: what we would write, byte for byte
        raise LogError("checkpoint is not in canonical form", file=source)
    return parsed


def verify_checkpoint(note: str | bytes | SignedCheckpoint, *, policy: TrustPolicy,
                      source: str | None = None) -> SignedCheckpoint:
    """Check every signature by a key the policy trusts for role ``checkpoint``; return the signers.

    Signatures by unknown keys (witnesses, other logs) are ignored, as the signed-note spec says; a
    known key whose signature fails → :class:`SignatureError`; no trusted signature, or none under the checkpoint's
    origin as key name (the log's own; trusted keys under other names only cosign) → :class:`TrustError`.
    """
    parsed = note if isinstance(note, SignedCheckpoint) else parse_checkpoint(note, source=source)
    body = parsed.checkpoint.body()
    signers: list[Signer] = []
    by_log = False
    for sig in parsed.signatures:
        for trusted in policy.keys:
            if trusted.public_key.key_type != "ed25519" or key_hash(sig.name, trusted.public_key) != sig.key_hash:
                continue
            try:
                trusted.public_key.verify(sig.signature, body)
            except SignatureError:
                raise SignatureError("checkpoint signature does not verify", file=source,
                                     field=f"signature by {sig.name}", expected=trusted.key_id) from None
            trusted.authorize(role="checkpoint", tenant=None, at=None)
            signers.append(Signer(key_id=trusted.key_id, name=trusted.name, role="checkpoint", tenant=None,
                                  tenants=tuple(sorted(trusted.tenants))))
            by_log = by_log or sig.name == parsed.checkpoint.origin
    if signers and not by_log:   # the log signs under its origin (docs/formats.md); others can only cosign
        raise TrustError("no trusted signature under the log's origin as key name", file=source,
                         field="signatures", expected=parsed.checkpoint.origin,
                         actual=", ".join(sorted(s.name for s in parsed.signatures)))
    if not signers:
        raise TrustError("checkpoint carries no signature by a key trusted for role 'checkpoint'", file=source,
                         expected="an Ed25519 signature by a trusted checkpoint key",
                         actual="signed by " + ", ".join(s.name for s in parsed.signatures))
    return SignedCheckpoint(checkpoint=parsed.checkpoint, signatures=parsed.signatures, signers=tuple(signers))


def read_note_file(path: str | Path) -> str:
    """The text of a checkpoint file a user supplies (``--checkpoint``): UTF-8, else a finding."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise InputError(f"cannot read checkpoint ({exc.strerror})", file=str(path)) from None
    except UnicodeDecodeError:
        raise LogError("checkpoint is not UTF-8", file=str(path)) from None
