"""RS-1 receipts (``kolm.receipt/1``): one signed model decision, one log leaf.

A receipt (schema ``schemas/receipt.schema.json``) records who asked what of which artifact, when, with which
decoding parameters, and what came back — as token ids and digests that :mod:`kolm_audit.replay.engine` can recompute —
with texts in clear or sealed per tenant (:mod:`kolm_audit.receipts.privacy`). It is signed as a DSSE envelope
(``payloadType = application/vnd.kolm.receipt+json``, payload = JCS(receipt)) by a key with the ``receipt``
role for the tenant; the log leaf is the JCS bytes of that envelope's JSON.

    >>> from kolm_audit.keys import generate_key
    >>> from kolm_audit.trust import TrustPolicy
    >>> from kolm_audit.timefmt import now
    >>> key = generate_key(key_type="ed25519")
    >>> ctx = ReceiptContext(tenant="acme", operator="svc", artifact_digest="sha256:" + "ab" * 32,
    ...                      artifact_name="demo", artifact_version="1", kscore=None, backend="numpy", key=key)
    >>> decision = Decision(task="embed", input_ids=(101, 102), input_text="hi",
    ...                     output_digest="sha256:" + "cd" * 32, embedding_digest="sha256:" + "cd" * 32, dim=4)
    >>> leaf = receipt_builder(ctx, decision, start=now(), end=now())(0)
    >>> policy = TrustPolicy.from_public_key(key.public_key(), roles=("receipt",))
    >>> verify_receipt(leaf, policy, expected_index=0).role
    'receipt'
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kolm_audit import __version__
from kolm_audit.canonical import MAX_SAFE_INT, jcs, loads_canonical
from kolm_audit.errors import InputError, KeyFileError, LogError, SchemaError, SignatureError
from kolm_audit.keys import PrivateKey, PublicKey
from kolm_audit.receipts.privacy import TenantCrypto, is_sealed
from kolm_audit.receipts.rules import check_receipt, receipt_time, recorded_output_digest
from kolm_audit.runtime import SPEC
from kolm_audit.runtime.digests import input_digest
from kolm_audit.signing import Envelope, sign_envelope
from kolm_audit.timefmt import format_time, parse_time
from kolm_audit.trust import Signer, TrustedKey, TrustPolicy, verify_envelope

RECEIPT_SCHEMA = "kolm.receipt/1"
RECEIPT_PAYLOAD_TYPE = "application/vnd.kolm.receipt+json"
TASKS = ("embed", "classify", "generate")

__all__ = ["RECEIPT_PAYLOAD_TYPE", "RECEIPT_SCHEMA", "Decision", "Decoding", "LeafVerifier", "ReceiptContext",
           "SignedReceipt", "build_receipt", "input_digest", "input_ids_of", "make_leaf_verifier", "parse_leaf",
           "receipt_builder", "reveal", "sign_receipt", "verify_receipt"]


def _check_int(value: object, name: str, low: int, high: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
        raise InputError("decoding parameter out of range", field=name, expected=f"an integer in [{low}, {high}]",
                         actual=repr(value)[:40])


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters of a generate call: greedy without a seed, seeded sampling with one (integers only;
    a null temperature/top_k/top_p means the runtime default: 1000 per-mille / whole vocabulary / 1000)."""

    max_new_tokens: int = 32
    temperature: int | None = None  # per-mille
    top_k: int | None = None
    top_p: int | None = None  # per-mille
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_int(self.max_new_tokens, "max_new_tokens", 1, 1_000_000)
        _check_int(self.temperature, "temperature", 1, 100_000)
        _check_int(self.top_k, "top_k", 1, 10_000_000)
        _check_int(self.top_p, "top_p", 1, 1000)
        _check_int(self.seed, "seed", 0, MAX_SAFE_INT)  # JCS integers
        if self.seed is None and (self.temperature, self.top_k, self.top_p) != (None, None, None):
            raise InputError("sampling parameters need a seed (no seed means greedy), so the decision can be "
                             "replayed", field="seed", expected="an integer seed")

    @property
    def strategy(self) -> str:
        return "greedy" if self.seed is None else "sample"

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_k": self.top_k, "top_p": self.top_p, "seed": self.seed}

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Model.generate``."""
        return {"max_new_tokens": self.max_new_tokens, "seed": self.seed, "temperature": self.temperature,
                "top_k": self.top_k, "top_p": self.top_p}


@dataclass(frozen=True)
class Decision:
    """What the model did for one request, before it becomes a receipt."""

    task: str
    input_ids: tuple[int, ...]
    output_digest: str
    input_text: str | None = None
    request_id: str | None = None
    caller: str | None = None
    decoding: Decoding | None = None
    embedding_digest: str | None = None  # embed
    dim: int | None = None  # embed
    label: str | None = None  # classify
    scores: tuple[int, ...] | None = None  # classify
    output_ids: tuple[int, ...] | None = None  # generate
    output_text: str | None = None  # generate
    finish_reason: str | None = None  # generate
    input_digest: str = field(default="")

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError("unknown task", field="task", expected=" | ".join(TASKS), actual=str(self.task))
        object.__setattr__(self, "input_ids", tuple(int(i) for i in self.input_ids))
        expected = input_digest(self.input_ids)
        if self.input_digest and self.input_digest != expected:
            raise InputError("input digest does not match the input ids", field="input_digest",
                             expected=expected, actual=self.input_digest)
        object.__setattr__(self, "input_digest", expected)
        needs = {"embed": ("embedding_digest", "dim"), "classify": ("label", "scores"),
                 "generate": ("output_ids", "finish_reason", "decoding")}[self.task]
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise InputError(f"a {self.task} decision needs {', '.join(missing)}", field=missing[0])
        if self.task != "generate" and self.decoding is not None:
            raise InputError("only generate takes decoding parameters", field="decoding")
        clear = {"embedding_digest": self.embedding_digest, "label": self.label,
                 "scores": None if self.scores is None else [int(v) for v in self.scores],
                 "output_ids": None if self.output_ids is None else [int(v) for v in self.output_ids],
                 "finish_reason": self.finish_reason}
        recorded = recorded_output_digest(self.task, clear)
        if recorded != self.output_digest:
            raise InputError("output digest does not match the outputs (runtime spec §8)", field="output_digest",
                             expected=recorded, actual=self.output_digest)

    @classmethod
    def from_result(cls, result: Any, *, task: str, input_text: str | None = None, request_id: str | None = None,
                    caller: str | None = None, decoding: Decoding | None = None) -> Decision:
        """From a runtime result (``EmbedResult`` / ``ClassifyResult`` / ``GenerateResult``)."""
        common: dict[str, Any] = {"task": task, "input_ids": tuple(result.input_ids), "input_text": input_text,
                                  "output_digest": result.output_digest, "input_digest": result.input_digest,
                                  "request_id": request_id, "caller": caller, "decoding": decoding}
        if task == "embed":
            return cls(**common, embedding_digest=getattr(result, "embedding_digest", result.output_digest),
                       dim=int(result.embedding.shape[-1]))
        if task == "classify":
            return cls(**common, label=str(result.label), scores=tuple(int(s) for s in result.scores))
        return cls(**common, output_ids=tuple(int(i) for i in result.output_ids), output_text=result.text,
                   finish_reason=str(result.finish_reason))


@dataclass(frozen=True)
class ReceiptContext:
    """What every receipt of one run shares: tenant, operator, artifact, runtime, signing key, privacy."""

    tenant: str
    operator: str
    artifact_digest: str
    artifact_name: str
    artifact_version: str
    kscore: Mapping[str, Any] | None
    backend: str
    key: PrivateKey
    crypto: TenantCrypto | None = None

    def __post_init__(self) -> None:
        for name in ("tenant", "operator", "backend"):
            if not getattr(self, name):
                raise InputError(f"{name} must not be empty", field=name)
        if self.crypto is None:
            object.__setattr__(self, "crypto", TenantCrypto.clear(self.tenant))
        elif self.crypto.tenant != self.tenant:
            raise InputError("privacy keys belong to another tenant", field="tenant", expected=self.tenant,
                             actual=self.crypto.tenant)
        elif self.crypto.mode != "clear" and self.crypto.active_key_id is None:
            raise KeyFileError(f"tenant '{self.tenant}' has no active data key (shredded?)", field=self.tenant,
                               expected="a data key: KeyStore.rotate(tenant) makes a new one")


def build_receipt(ctx: ReceiptContext, decision: Decision, *, log_index: int, start: datetime, end: datetime,
                  receipt_id: str | None = None) -> dict[str, Any]:
    """The receipt document (unsigned) for ``decision`` at ``log_index``; seals fields per the tenant mode."""
    rid = receipt_id or str(uuid.uuid4())
    crypto = ctx.crypto
    assert crypto is not None  # set in ReceiptContext.__post_init__

    def seal(value: Any, name: str, sensitive: bool) -> Any:
        return crypto.maybe_seal(value, receipt_id=rid, field=name, sensitive=sensitive)

    def text_pair(text: str | None, name: str) -> tuple[Any, str | None]:
        if text is None:
            return None, None
        return seal(text, f"{name}.text", crypto.seals_text), crypto.text_digest(text)

    req_text, req_digest = text_pair(decision.input_text, "request")
    response: dict[str, Any] = {"output_digest": decision.output_digest}
    if decision.task == "embed":
        response.update(embedding_digest=decision.embedding_digest, dim=decision.dim)
    elif decision.task == "classify":
        response.update(label=seal(decision.label, "response.label", crypto.seals_ids),
                        scores=seal(list(decision.scores or ()), "response.scores", crypto.seals_ids))
    else:
        out_text, out_digest = text_pair(decision.output_text, "response")
        response.update(output_ids=seal(list(decision.output_ids or ()), "response.output_ids", crypto.seals_ids),
                        text=out_text, text_digest=out_digest, finish_reason=decision.finish_reason)
    receipt = {
        "schema": RECEIPT_SCHEMA, "receipt_id": rid, "tenant": ctx.tenant, "log_index": log_index,
        "period": {"start": format_time(start), "end": format_time(end)},
        "artifact": {"digest": ctx.artifact_digest, "name": ctx.artifact_name, "version": ctx.artifact_version,
                     "kscore": None if ctx.kscore is None else dict(ctx.kscore)},
        "runtime": {"spec": SPEC, "backend": ctx.backend, "software": f"kolm-audit {__version__}"},
        "task": decision.task,
        "operator": {"name": ctx.operator, "caller": decision.caller},
        "request": {"id": decision.request_id,
                    "input_ids": seal(list(decision.input_ids), "request.input_ids", crypto.seals_ids),
                    "input_digest": decision.input_digest, "text": req_text, "text_digest": req_digest},
        "decoding": None if decision.decoding is None else decision.decoding.to_json(),
        "response": response,
        "privacy": {"mode": crypto.mode, "data_key_id": crypto.active_key_id if crypto.mode != "clear" else None,
                    "salt_id": crypto.salt_id},
    }
    check_receipt(receipt, source=None, field="receipt")
    return receipt


def sign_receipt(receipt: Mapping[str, Any], key: PrivateKey) -> Envelope:
    return sign_envelope(jcs(receipt), payload_type=RECEIPT_PAYLOAD_TYPE, key=key)


def receipt_builder(ctx: ReceiptContext, decision: Decision, *, start: datetime, end: datetime,
                    receipt_id: str | None = None) -> Callable[[int], bytes]:
    """A ``build(index) -> leaf bytes`` callback for ``ReceiptLog.append`` / ``append_many``."""

    def build(index: int) -> bytes:
        receipt = build_receipt(ctx, decision, log_index=index, start=start, end=end, receipt_id=receipt_id)
        return sign_receipt(receipt, ctx.key).canonical_bytes()

    return build


@dataclass(frozen=True)
class SignedReceipt:
    envelope: Envelope
    receipt: dict[str, Any]
    leaf: bytes

    @property
    def end(self) -> datetime:
        return receipt_time(self.receipt["period"]["end"], source=None, field="period.end")


def parse_leaf(leaf: bytes, *, source: str | None = None, field: str = "leaf") -> SignedReceipt:
    """Parse a log leaf strictly: canonical envelope, right payload type, canonical schema-valid receipt.

    Checks structure only; :func:`verify_receipt` checks the signature and trust.
    """
    doc = loads_canonical(leaf, file=source, field=field)
    envelope = Envelope.from_json(doc, file=source, field=field)
    if envelope.payload_type != RECEIPT_PAYLOAD_TYPE:
        raise SchemaError("not a receipt envelope", file=source, field=f"{field}.payloadType",
                          expected=RECEIPT_PAYLOAD_TYPE, actual=envelope.payload_type[:80])
    receipt = loads_canonical(envelope.payload, file=source, field=f"{field}.payload")
    check_receipt(receipt, source=source, field=f"{field}.payload")
    return SignedReceipt(envelope=envelope, receipt=receipt, leaf=leaf)


def verify_receipt(leaf: bytes, policy: TrustPolicy, *, expected_index: int | None, source: str | None = None
                   ) -> Signer:
    """Parse ``leaf`` and check its signature by a key trusted for role ``receipt``, the receipt's tenant and
    its end time; and that it sits at ``expected_index`` in the log. Returns the (first) signer."""
    signed = parse_leaf(leaf, source=source, field="leaf" if expected_index is None else f"leaf[{expected_index}]")
    receipt = signed.receipt
    if expected_index is not None and receipt["log_index"] != expected_index:
        raise LogError("receipt is at the wrong position in the log", file=source, field=f"leaf[{expected_index}]",
                       expected=f"log_index {expected_index}", actual=f"log_index {receipt['log_index']}")
    signers = verify_envelope(signed.envelope, policy, role="receipt", tenant=receipt["tenant"], at=signed.end)
    return signers[0]


def _policy_state(policy: TrustPolicy) -> tuple[Any, ...]:
    return tuple((k.name, k.public_key.pem(), tuple(sorted(k.roles)), tuple(sorted(k.tenants)),
                  None if k.not_before is None else format_time(k.not_before),
                  None if k.not_after is None else format_time(k.not_after)) for k in policy.keys), policy.source


def _policy_from_state(keys: tuple[Any, ...], source: str | None) -> TrustPolicy:
    return TrustPolicy(keys=tuple(
        TrustedKey(name=name, public_key=PublicKey.from_pem(pem), roles=frozenset(roles), tenants=frozenset(tenants),
                   not_before=None if nb is None else parse_time(nb), not_after=None if na is None else parse_time(na))
        for name, pem, roles, tenants, nb, na in keys), source=source)


class LeafVerifier:
    """``verify_leaf(index, leaf)`` callback for ``verify_log``; picklable (keys travel as PEM)."""

    def __init__(self, policy: TrustPolicy) -> None:
        self.policy = policy

    def __call__(self, index: int, leaf: bytes) -> None:
        verify_receipt(leaf, self.policy, expected_index=index)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_verifier, _policy_state(self.policy))


def _rebuild_verifier(keys: tuple[Any, ...], source: str | None) -> LeafVerifier:
    return LeafVerifier(_policy_from_state(keys, source))


def make_leaf_verifier(policy: TrustPolicy) -> LeafVerifier:
    return LeafVerifier(policy)


def reveal(receipt: Mapping[str, Any], crypto: TenantCrypto) -> dict[str, Any]:
    """A copy of ``receipt`` with every sealed field opened (raises if a key is missing or shredded)."""
    if crypto.tenant != receipt["tenant"]:
        raise InputError("keys of another tenant", field="tenant", expected=receipt["tenant"], actual=crypto.tenant)
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in receipt.items()}
    for part in ("request", "response"):
        for name, value in out[part].items():
            if is_sealed(value):
                out[part][name] = crypto.open(value, receipt_id=receipt["receipt_id"], field=f"{part}.{name}")
    return out


def input_ids_of(receipt: Mapping[str, Any], crypto: TenantCrypto | None = None) -> tuple[int, ...]:
    """The recorded input token ids (opening them when sealed), checked against their digest."""
    value = receipt["request"]["input_ids"]
    if is_sealed(value):
        if crypto is None:
            raise InputError("input ids are sealed; replay needs the tenant key store", field="request.input_ids",
                             expected="--keystore with --kek-file/--kek-env")
        value = crypto.open(value, receipt_id=receipt["receipt_id"], field="request.input_ids")
    ids = tuple(int(i) for i in value)
    if input_digest(ids) != receipt["request"]["input_digest"]:
        raise SignatureError("opened input ids do not match input_digest", field="request.input_ids")
    return ids
