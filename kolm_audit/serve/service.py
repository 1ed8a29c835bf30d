"""What ``kolm-audit serve`` runs behind HTTP: a verified artifact, a verified log, the tenants, the batcher.

:func:`open_service` refuses to start (raises) unless everything checks out, in this order, before any thread
starts or anything is written: the trust file allows the receipt key to sign for every tenant and the checkpoint
key to sign checkpoints; every tenant has its privacy keys (with a key store); the existing log verifies (every
leaf rehashed, the tree, every checkpoint, and — by default — every receipt signature); the artifact verifies and
its K-score gate did not fail. Then it signs a checkpoint if receipts exist that none covers (the tail a crash
left) and indexes receipt ids and tenants for the read endpoints.

Reads (checkpoint, proof, receipt) use their own SQLite connection, so they never see the writer's open
transaction; a tenant reads only its own receipts and proofs.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kolm_audit import __version__
from kolm_audit.errors import Finding, InputError, KolmError, LogError, TrustError
from kolm_audit.keys import PrivateKey, load_private_key
from kolm_audit.log.checkpoint import parse_checkpoint
from kolm_audit.log.db import DatabaseSource, ReceiptLog
from kolm_audit.log.merkle import leaf_hash, verify_inclusion
from kolm_audit.model import Model
from kolm_audit.receipts.document import make_leaf_verifier, parse_leaf, reveal
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore, TenantCrypto
from kolm_audit.receipts.recorder import Recorded, Recorder
from kolm_audit.runtime import SPEC
from kolm_audit.schemas import validate
from kolm_audit.serve.auth import Principal, TokenFile
from kolm_audit.serve.batcher import Batcher, BatchLimits, CheckpointPolicy
from kolm_audit.serve.problems import Forbidden, NotFound
from kolm_audit.timefmt import now
from kolm_audit.trust import TrustPolicy

VERIFY_MODES = ("full", "checkpoints")
MAX_INPUTS = 256                    # inputs of one OpenAI-style request (the request schemas say the same)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and policies of a server (every one is a ``kolm-audit serve`` option)."""

    operator: str = "kolm-audit-serve"
    limits: BatchLimits = field(default_factory=BatchLimits)
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 60.0
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 30.0
    queue_timeout_s: float = 30.0
    verify_on_start: str = "full"
    verify_workers: int | None = None

    def __post_init__(self) -> None:
        if not 1024 <= self.max_body_bytes <= 1 << 30:
            raise InputError("body limit out of range", field="max_body_bytes", expected="1 KiB .. 1 GiB",
                             actual=str(self.max_body_bytes))
        for name in ("body_timeout_s", "queue_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise InputError("timeout out of range", field=name, expected="0 < seconds <= 3600",
                                 actual=str(getattr(self, name)))
        if self.verify_on_start not in VERIFY_MODES:
            raise InputError("unknown start-up verification", field="verify_on_start",
                             expected=" | ".join(VERIFY_MODES), actual=self.verify_on_start)
        if not self.operator:
            raise InputError("operator must not be empty", field="operator")


def _key(key: PrivateKey | str | Path, passphrase_env: str | None) -> PrivateKey:
    return key if isinstance(key, PrivateKey) else load_private_key(key, passphrase_env=passphrase_env)


def _authorize(policy: TrustPolicy, key: PrivateKey, *, role: str, tenant: str | None) -> None:
    """Refuse to sign what the trust file would not accept: receipts and checkpoints must verify later."""
    trusted = policy.find(key.key_id)
    who = f"{role}s" + ("" if tenant is None else f" of tenant '{tenant}'")
    if trusted is None:
        raise TrustError(f"{who} would be signed by a key the trust file does not list", file=policy.source,
                         field=key.key_id, expected=f"the key trusted for role '{role}'")
    try:
        trusted.authorize(role=role, tenant=tenant, at=now())
    except TrustError as exc:
        raise TrustError(f"{who} signed now would not verify: {exc.message}", file=policy.source,
                         field=exc.field, expected=exc.expected, actual=exc.actual) from None


def _verify_existing_log(path: Path, policy: TrustPolicy, settings: ServeSettings) -> None:
    from kolm_audit.log.verify import verify_log

    if not path.exists():
        return
    verify_leaf = make_leaf_verifier(policy) if settings.verify_on_start == "full" else None
    try:
        verify_log(path, policy=policy, verify_leaf=verify_leaf, workers=settings.verify_workers,
                   require_checkpoint=False)
    except Finding as exc:
        raise type(exc)(f"the receipt log does not verify; refusing to start: {exc.message}", file=exc.file,
                        field=exc.field, expected=exc.expected, actual=exc.actual) from None


def _tenant_of(leaf: bytes) -> tuple[str, str]:
    """``(receipt_id, tenant)`` of a stored leaf (verified at start-up or written by this server)."""
    envelope = json.loads(leaf)
    receipt = json.loads(base64.b64decode(envelope["payload"]))
    return str(receipt["receipt_id"]), str(receipt["tenant"])


class Service:
    """The running parts; build it with :func:`open_service`, then :meth:`start` and finally :meth:`close`."""

    def __init__(self, *, model: Model, writer: ReceiptLog, reader: ReceiptLog, tenants: Mapping[str, Recorder],
                 crypto: Mapping[str, TenantCrypto | None], tokens: TokenFile | None, settings: ServeSettings,
                 checkpoint_key: PrivateKey) -> None:
        self.model = model
        self.settings = settings
        self.tokens = tokens
        self.tenants = tuple(sorted(tenants))
        self._writer = writer
        self._reader = reader
        self._read_lock = threading.Lock()
        self._crypto = dict(crypto)
        self._ids: dict[str, int] = {}
        self._leaf_tenants: list[str] = []
        with DatabaseSource(writer.path) as src:   # one read pass, before the writer thread starts
            for index, leaf in src.iter_leaves():
                self._index(index, *_tenant_of(leaf))
        self.batcher = Batcher(model=model, log=writer, recorders=tenants, limits=settings.limits,
                               checkpoints=CheckpointPolicy(key=checkpoint_key, every=settings.checkpoint_every,
                                                            interval_s=settings.checkpoint_interval_s),
                               on_commit=self._committed)
        manifest = model.manifest
        self.name = str(manifest["name"])
        self.task = str(manifest["task"]["kind"])
        self.context = int(manifest["architecture"]["max_position_embeddings"])

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()

    def close(self) -> None:
        """Drain the queue, sign the final checkpoint, close the log."""
        self.batcher.close()
        with self._read_lock:
            self._reader.close()
        self._writer.close()

    # --- tenants and the receipt index -------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Principal:
        if self.tokens is None:
            return Principal(tenant=self.tenants[0], name="anonymous")
        return self.tokens.authenticate(authorization)

    def tenant_for(self, principal: Principal, requested: str | None, *, field: str = "$.tenant") -> str:
        """The tenant a request records under: the token's own; naming another one is forbidden."""
        if requested is not None and requested != principal.tenant:
            raise Forbidden("this token may not act for that tenant", field=field, expected=principal.tenant,
                            actual=requested)
        return principal.tenant

    def _index(self, index: int, receipt_id: str, tenant: str) -> None:
        if index != len(self._leaf_tenants):
            raise LogError("receipt index out of order", file=str(self._writer.path), field=f"leaf {index}",
                           expected=f"leaf {len(self._leaf_tenants)}")
        self._ids[receipt_id] = index
        self._leaf_tenants.append(sys.intern(tenant))

    def _committed(self, recorded: Sequence[tuple[str, Recorded]]) -> None:
        for tenant, rec in recorded:       # the writer thread, after the commit, before anyone is answered
            self._index(rec.log_index, rec.receipt_id, tenant)

    def _own(self, principal: Principal, index: int, *, field: str) -> None:
        if not 0 <= index < len(self._leaf_tenants):
            raise NotFound("no such receipt in the log", field=field, expected=f"0 <= index < "
                           f"{len(self._leaf_tenants)}", actual=str(index))
        if self._leaf_tenants[index] != principal.tenant:
            raise Forbidden("the receipt belongs to another tenant", field=field, expected=principal.tenant)

    # --- read views (call from a worker thread: they read SQLite) ----------------------------------

    def checkpoint(self) -> dict[str, Any]:
        with self._read_lock:
            note = self._reader.latest_checkpoint()
        if note is None:   # open_service signs one before the server starts
            raise NotFound("the log has no checkpoint yet")
        doc = parse_checkpoint(note).to_json()
        validate(doc, "checkpoint")
        return doc

    def receipt(self, principal: Principal, receipt_id: str, *, open_sealed: bool) -> dict[str, Any]:
        index = self._ids.get(receipt_id)
        if index is None:
            raise NotFound("no receipt with this id", field="receipt_id", actual=receipt_id)
        self._own(principal, index, field="receipt_id")
        with self._read_lock:
            leaf = self._reader.leaf(index)
        signed = parse_leaf(leaf, field=f"leaf {index}")
        receipt = signed.receipt
        crypto = self._crypto.get(principal.tenant)
        if open_sealed and crypto is not None:
            receipt = reveal(receipt, crypto)
        doc = {"receipt_id": receipt_id, "log_index": index, "tenant": signed.receipt["tenant"],
               "leaf_hash": leaf_hash(leaf).hex(), "envelope": signed.envelope.to_json(), "receipt": receipt,
               "revealed": bool(open_sealed and crypto is not None)}
        validate(doc, "serve-receipt")
        return doc

    def proof(self, principal: Principal, index: int) -> dict[str, Any] | None:
        """The inclusion proof of leaf ``index`` in the latest checkpoint (``None``: no checkpoint covers it yet)."""
        self._own(principal, index, field="index")
        with self._read_lock:
            note = self._reader.latest_checkpoint()
            cp = None if note is None else parse_checkpoint(note).checkpoint
            if cp is None or cp.size <= index:
                return None
            proof = self._reader.inclusion_proof(index, cp.size)
            leaf = leaf_hash(self._reader.leaf(index))
        verify_inclusion(index=index, size=cp.size, leaf=leaf, proof=proof, root=cp.root)
        doc = {"schema": "kolm.inclusion-proof/1", "origin": cp.origin, "index": index, "tree_size": cp.size,
               "leaf_hash": leaf.hex(), "root_hash": cp.root.hex(), "path": [p.hex() for p in proof],
               "verified": True, "checkpoint": note}
        validate(doc, "inclusion-proof")
        return doc

    def metadata(self, principal: Principal) -> dict[str, Any]:
        manifest = self.model.manifest
        limits = self.settings.limits
        doc = {"artifact": {"digest": self.model.digest, "name": self.name, "version": str(manifest["version"]),
                            "task": self.task, "labels": [str(x) for x in manifest["task"].get("labels", [])],
                            "family": str(manifest["architecture"]["family"]), "runtime": SPEC,
                            "context": self.context, "kscore": manifest.get("kscore")},
               "server": {"software": f"kolm-audit {__version__}", "backend": str(self.model.backend),
                          "max_batch": limits.max_batch, "max_wait_ms": limits.max_wait_ms,
                          "max_queue": limits.max_queue, "max_body_bytes": self.settings.max_body_bytes,
                          "max_inputs": MAX_INPUTS},
               "log": {"origin": self._writer.origin}, "tenant": principal.tenant}
        validate(doc, "serve-metadata")
        return doc


def open_service(*, artifact: str | Path, log: str | Path, key: PrivateKey | str | Path, trust: str | Path,
                 tokens: str | Path | TokenFile | None = None, tenant: str = "default",
                 checkpoint_key: PrivateKey | str | Path | None = None, keystore: str | Path | None = None,
                 kek: KeyEncryptionKey | None = None, backend: str = "auto", threads: int | None = None,
                 passphrase_env: str | None = None, settings: ServeSettings | None = None) -> Service:
    """Check everything (see the module docstring) and return a :class:`Service` ready to :meth:`~Service.start`.

    ``tokens`` (a tokens file) gives each bearer token its tenant; without it the server takes requests without
    a token and records them under ``tenant``. Raises a :class:`~kolm_audit.errors.KolmError` when anything does
    not check out: nothing is written then.
    """
    import kolm_audit.model as kmodel

    settings = settings or ServeSettings()
    policy = TrustPolicy.load(trust)
    receipt_key = _key(key, passphrase_env)
    ckey = receipt_key if checkpoint_key is None else _key(checkpoint_key, passphrase_env)
    CheckpointPolicy(key=ckey)  # Ed25519 or refuse now
    token_file = TokenFile.load(tokens) if isinstance(tokens, str | Path) else tokens
    if token_file is not None and not token_file.entries:
        raise InputError("the tokens file lists no token: nobody could call this server", file=token_file.source,
                         field="tokens", expected="at least one token (kolm-audit serve tokens add)")
    tenants = token_file.tenants if token_file is not None else (tenant,)
    for name in tenants:
        _authorize(policy, receipt_key, role="receipt", tenant=name)
    _authorize(policy, ckey, role="checkpoint", tenant=None)
    store = None if keystore is None else KeyStore.load(keystore)
    if store is not None and kek is None:
        raise InputError("a key store needs its key-encryption key", field="--kek-file/--kek-env")
    crypto = {name: None if store is None else store.tenant(name, kek=kek) for name in tenants}
    log_path = Path(log)
    _verify_existing_log(log_path, policy, settings)       # before any thread exists: verification may fork
    model = kmodel.load(artifact, trust=trust, backend=backend, threads=threads)
    writer = ReceiptLog.open(log_path, create=True)
    try:
        recorders = {name: Recorder(model, writer, receipt_key, tenant=name, operator=settings.operator,
                                    privacy=crypto[name]) for name in tenants}
        latest = writer.latest_checkpoint()
        if latest is None or parse_checkpoint(latest).checkpoint.size < writer.size():
            writer.checkpoint(ckey)                        # cover what a crash left unsigned, or start the log
        reader = ReceiptLog.open(log_path)
    except KolmError:
        writer.close()
        raise
    return Service(model=model, writer=writer, reader=reader, tenants=recorders, crypto=crypto, tokens=token_file,
                   settings=settings, checkpoint_key=ckey)
