"""Examining one receipt of a replay: nine numbered steps, each recording its findings or stopping the receipt.

:func:`kolm_audit.replay.engine.replay` checks the artifact and the log, then calls :func:`examine` on every selected
log leaf; what the steps establish is an :class:`Examined` (a :class:`~kolm_audit.replay.report.ReceiptOutcome`
once re-run), and every finding lands in the :class:`State`. Steps: 1 parse, 2 position, 3 signature, 4 recorded
output, 5 names this artifact, 6 task, 7 input (or lawfully erased), 8 tokenizer drift, 9 queue the re-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kolm_audit.artifact import Artifact
from kolm_audit.errors import Finding, InputError, KolmError, RuntimeInputError
from kolm_audit.model import Model
from kolm_audit.receipts.document import Decoding, SignedReceipt, parse_leaf
from kolm_audit.receipts.privacy import TenantCrypto, is_sealed
from kolm_audit.replay.options import ReplayOptions
from kolm_audit.replay.report import (
    ReceiptOutcome,
    ReplayFinding,
    error_text,
    reason_of,
    recorded_consistency,
    tokenizer_drift,
)
from kolm_audit.runtime.digests import input_digest
from kolm_audit.trust import TrustPolicy, verify_envelope


@dataclass(frozen=True)
class Job:
    """One decision to re-run: its log index, task, recorded input ids and decoding keyword arguments."""

    index: int
    task: str
    ids: tuple[int, ...]
    kwargs: tuple[tuple[str, Any], ...]


@dataclass
class Examined:
    """What the examination of one selected log leaf established (becomes a :class:`ReceiptOutcome`)."""

    index: int
    receipt_id: str | None = None
    tenant: str | None = None
    task: str | None = None
    expected: str | None = None                                  # the recorded output digest
    view: dict[str, Any] = field(default_factory=dict)           # the response, sealed fields opened where possible
    reasons: list[str] = field(default_factory=list)
    erased: bool = False
    job: Job | None = None
    actual: str | None = None                                    # the replayed output digest

    def outcome(self) -> ReceiptOutcome:
        return ReceiptOutcome(index=self.index, receipt_id=self.receipt_id, tenant=self.tenant, task=self.task,
                              replayed=self.actual is not None, erased=self.erased, expected_digest=self.expected,
                              actual_digest=self.actual, reasons=tuple(self.reasons))


class Stop(Exception):
    """A step found why this receipt goes no further (its finding is already recorded)."""


@dataclass
class State:
    findings: list[ReplayFinding] = field(default_factory=list)
    examined: dict[int, Examined] = field(default_factory=dict)
    signatures: int = 0
    crypto: dict[str, TenantCrypto | None] = field(default_factory=dict)

    def add(self, index: int | None, reason: str, message: str, *, scope: str = "receipt",
            receipt_id: str | None = None, **kw: Any) -> None:
        found = ReplayFinding(scope=scope, reason=reason, message=message, index=index, receipt_id=receipt_id, **kw)
        self.findings.append(found)
        if index is not None and index in self.examined:
            self.examined[index].reasons.append(reason)

    def flag(self, ex: Examined, reason: str, message: str, **kw: Any) -> None:
        """A finding about the receipt under examination."""
        self.add(ex.index, reason, message, receipt_id=ex.receipt_id, **kw)


@dataclass(frozen=True)
class Context:
    """What every examination step may read."""

    model: Model | None
    art: Artifact | None
    policy: TrustPolicy
    options: ReplayOptions


def _crypto(st: State, options: ReplayOptions, tenant: str) -> TenantCrypto | None:
    if tenant not in st.crypto:
        crypto = None
        if options.keystore is not None and tenant in options.keystore.tenants:
            crypto = options.keystore.tenant(tenant, kek=options.kek)
        st.crypto[tenant] = crypto
    return st.crypto[tenant]


@dataclass(frozen=True)
class _Opened:
    """A possibly sealed receipt field: its clear value, or why it cannot be read (``erased``: key shredded)."""

    value: Any
    why: str | None = None
    erased: bool = False


def _open(value: Any, crypto: TenantCrypto | None, *, receipt_id: str, name: str) -> _Opened:
    if not is_sealed(value):
        return _Opened(value)
    if crypto is None:
        return _Opened(None, "sealed, and no key store entry for this tenant was supplied")
    if value["key_id"] in crypto.shredded:
        return _Opened(None, f"erased: the tenant's data key {value['key_id']} was shredded", erased=True)
    try:
        return _Opened(crypto.open(value, receipt_id=receipt_id, field=name))
    except KolmError as exc:
        return _Opened(None, error_text(exc))


# --- examining one receipt: numbered steps, each records its findings or stops the examination ---------------

def _step1_parse(index: int, leaf: bytes, st: State) -> SignedReceipt:
    """1. The leaf is a canonical, schema-valid, signed receipt envelope."""
    try:
        return parse_leaf(leaf, field=f"leaf[{index}]")
    except Finding as exc:
        st.examined[index] = Examined(index=index)
        digests = (exc.field or "").endswith(("output_digest", "input_digest"))   # edited, digest not fixed
        st.add(index, "receipt-inconsistent" if digests else "receipt-malformed", error_text(exc))
        raise Stop from None


def _step2_position(ex: Examined, rec: Mapping[str, Any], st: State) -> None:
    """2. The receipt names the log position it sits at."""
    if rec["log_index"] != ex.index:
        st.flag(ex, "log-inconsistent", "receipt names another log position than the one it sits at",
                expected=str(ex.index), actual=str(rec["log_index"]))


def _step3_signature(ex: Examined, signed: SignedReceipt, ctx: Context, st: State) -> None:
    """3. A key trusted for role ``receipt`` and the receipt's tenant signed it, valid at the decision's time."""
    try:
        verify_envelope(signed.envelope, ctx.policy, role="receipt", tenant=ex.tenant, at=signed.end)
        st.signatures += 1
    except Finding as exc:
        st.flag(ex, reason_of(exc, default="signature-invalid"), error_text(exc), expected=exc.expected,
                actual=exc.actual)


def _step4_recorded_output(ex: Examined, rec: Mapping[str, Any], crypto: TenantCrypto | None, st: State) -> None:
    """4. The recorded output (opened where sealed and a key is at hand) hashes to its own output digest."""
    ex.view = dict(rec["response"])
    for name in ("label", "scores", "output_ids"):
        if name in ex.view:
            ex.view[name] = _open(ex.view[name], crypto, receipt_id=rec["receipt_id"], name=f"response.{name}").value
    problem = recorded_consistency(rec["task"], ex.view)
    if problem is not None:
        st.flag(ex, "receipt-inconsistent", problem, expected=ex.expected)


def _step5_names_this_artifact(ex: Examined, rec: Mapping[str, Any], art: Artifact, ctx: Context,
                               st: State) -> None:
    """5. The receipt names the replayed artifact: its digest, and then its name, version and K-score."""
    if rec["artifact"]["digest"] != art.digest:
        st.flag(ex, "artifact-mismatch", "receipt was made by another artifact", expected=rec["artifact"]["digest"],
                actual=art.digest)
        if not ctx.options.replay_mismatched:
            raise Stop
        return
    named = {k: rec["artifact"][k] for k in ("name", "version", "kscore")}
    own = {"name": art.manifest["name"], "version": art.manifest["version"], "kscore": art.manifest.get("kscore")}
    if named != own:
        st.flag(ex, "receipt-inconsistent", "receipt names this artifact's digest but another name, version or "
                "K-score", expected=str(own)[:200], actual=str(named)[:200])


def _step6_task(ex: Examined, model: Model, st: State) -> None:
    """6. The artifact performs the receipt's task."""
    if ex.task != model.task:
        st.flag(ex, "task-mismatch", f"receipt task {ex.task} cannot run on a {model.task} artifact",
                expected=model.task, actual=ex.task)
        raise Stop


def _step7_input(ex: Examined, rec: Mapping[str, Any], crypto: TenantCrypto | None, st: State) -> tuple[int, ...]:
    """7. The recorded input ids can be read and hash to the recorded input digest (lawfully erased: stop)."""
    opened = _open(rec["request"]["input_ids"], crypto, receipt_id=rec["receipt_id"], name="request.input_ids")
    if opened.erased:
        ex.erased = True
        st.flag(ex, "erased", f"not replayable: {opened.why}")
        raise Stop
    if opened.value is None:
        st.flag(ex, "input-unavailable", f"input ids cannot be read: {opened.why}")
        raise Stop
    ids = tuple(int(i) for i in opened.value)
    if input_digest(ids) != rec["request"]["input_digest"]:
        st.flag(ex, "receipt-inconsistent", "opened input ids do not match input_digest",
                expected=rec["request"]["input_digest"], actual=input_digest(ids))
        raise Stop
    return ids


def _step8_tokenizer(ex: Examined, rec: Mapping[str, Any], ids: tuple[int, ...], model: Model,
                     crypto: TenantCrypto | None, st: State) -> None:
    """8. Today's tokenizer turns readable recorded text into the recorded ids (a warning when not)."""
    text = _open(rec["request"]["text"], crypto, receipt_id=rec["receipt_id"], name="request.text").value
    if not isinstance(text, str):
        return
    try:
        today = model.tokenize([text])[0]
    except RuntimeInputError:
        return
    drift = tokenizer_drift(index=ex.index, receipt_id=ex.receipt_id, text=text, recorded=ids, today=today,
                            decode=model.tokenizer.decode)
    if drift is not None:
        st.findings.append(drift)
        ex.reasons.append(drift.reason)


def _step9_job(ex: Examined, rec: Mapping[str, Any], ids: tuple[int, ...], st: State) -> None:
    """9. The recorded decoding parameters make a valid request: queue the re-run."""
    kwargs: tuple[tuple[str, Any], ...] = ()
    if ex.task == "generate":
        dec = dict(rec["decoding"] or {})
        dec.pop("strategy", None)
        try:
            kwargs = tuple(sorted(Decoding(**dec).kwargs().items()))
        except InputError as exc:
            st.flag(ex, "runtime-refused", error_text(exc))
            raise Stop from None
    ex.job = Job(index=ex.index, task=str(ex.task), ids=ids, kwargs=kwargs)


def examine(index: int, leaf: bytes, ctx: Context, st: State) -> None:
    """Run the examination steps on one log leaf; every finding lands in ``st``, never stops the replay."""
    try:
        signed = _step1_parse(index, leaf, st)
        rec = signed.receipt
        if ctx.options.selection.needs_receipt and not ctx.options.selection.receipt_ok(rec):
            return
        ex = st.examined[index] = Examined(index=index, receipt_id=rec["receipt_id"], tenant=rec["tenant"],
                                            task=rec["task"], expected=rec["response"]["output_digest"])
        crypto = _crypto(st, ctx.options, rec["tenant"])
        _step2_position(ex, rec, st)
        _step3_signature(ex, signed, ctx, st)
        _step4_recorded_output(ex, rec, crypto, st)
        if ctx.art is None or ctx.model is None:
            return
        _step5_names_this_artifact(ex, rec, ctx.art, ctx, st)
        _step6_task(ex, ctx.model, st)
        ids = _step7_input(ex, rec, crypto, st)
        _step8_tokenizer(ex, rec, ids, ctx.model, crypto, st)
        _step9_job(ex, rec, ids, st)
    except Stop:
        return
