"""``golden new --from-log``: a suite from real logged decisions — regression tests taken from production.

:func:`suite_from_log` reads a receipt log (database or bundle), keeps the receipts this artifact made (same
digest and task), optionally of one tenant, and samples ``n`` of them with a seed. Receipts of tenants whose
inputs are sealed (privacy mode ``encrypt-text`` or ``encrypt-all``) are used **only** when that tenant's key
store entry and key-encryption key are given: a suite is usually committed to a repository, so an encrypted
tenant's inputs never land there without the key holder's say. Identical requests are sampled once.

The sample is a pure function of the log and the seed — each eligible receipt is ranked by
``sha256("kolm-golden-sample\\0" ‖ seed ‖ ":" ‖ log index)`` and the ``n`` lowest are taken (in log order), so
the same seed picks the same receipts on any Python, and a grown log keeps most earlier picks.

Every sampled case is run on the artifact and its output digest compared with the logged one before anything is
written: a suite never records an output production did not return (a mismatch is a
:class:`~kolm_audit.errors.ReplayMismatch`; ``kolm-audit replay`` says why).

    >>> from kolm_audit.model import load
    >>> suite, info = suite_from_log("receipts.db", load("model.kolm", require_signature=False), sample=20,
    ...                              seed=7, name="production")               # doctest: +SKIP
    >>> len(suite.cases), info["sampled"]                                     # doctest: +SKIP
    (20, 20)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit.errors import InputError, ReplayMismatch
from kolm_audit.golden.runner import run_cases
from kolm_audit.golden.suite import Case, Suite
from kolm_audit.log.source import open_log_source
from kolm_audit.receipts.document import Decoding, parse_leaf
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore, TenantCrypto, is_sealed
from kolm_audit.runtime.digests import input_digest
from kolm_audit.trust import TrustPolicy

__all__ = ["sample_rank", "suite_from_log"]

_SKIPS = ("other_artifact", "other_task", "other_tenant", "sealed_no_key", "duplicate")


def sample_rank(seed: int, log_index: int) -> bytes:
    """The sort key that decides which receipts a seed samples (lowest first)."""
    return hashlib.sha256(b"kolm-golden-sample\x00" + f"{int(seed)}:{int(log_index)}".encode("ascii")).digest()


@dataclass(frozen=True)
class _Pick:
    index: int
    receipt: Mapping[str, Any]
    case: Case
    output_digest: str


def _crypto_for(tenant: str, store: KeyStore | None, kek: KeyEncryptionKey | None,
                cache: dict[str, TenantCrypto | None]) -> TenantCrypto | None:
    if tenant not in cache:
        cache[tenant] = store.tenant(tenant, kek=kek) if store is not None and tenant in store.tenants else None
    return cache[tenant]


def _open(value: Any, crypto: TenantCrypto | None, *, receipt_id: str, name: str) -> Any:
    return crypto.open(value, receipt_id=receipt_id, field=name) if is_sealed(value) and crypto else value


def _case_of(index: int, rec: Mapping[str, Any], crypto: TenantCrypto | None, model: Any, log_origin: str) -> Case:
    rid = rec["receipt_id"]
    ids = tuple(int(i) for i in _open(rec["request"]["input_ids"], crypto, receipt_id=rid, name="request.input_ids"))
    if input_digest(ids) != rec["request"]["input_digest"]:
        raise ReplayMismatch("opened input ids do not match the receipt's input digest", field=f"leaf[{index}]",
                             expected=rec["request"]["input_digest"], actual=input_digest(ids))
    text = _open(rec["request"]["text"], crypto, receipt_id=rid, name="request.text")
    use_text = isinstance(text, str) and tuple(model.tokenize([text])[0]) == ids   # else production's ids
    params = None
    if rec["task"] == "generate":
        dec = dict(rec["decoding"])
        dec.pop("strategy", None)
        params = Decoding(**dec)
    origin = {"kind": "log", "log": log_origin, "log_index": index, "receipt_id": rid, "tenant": rec["tenant"]}
    return Case(id=f"log-{index}", text=text if use_text else None, ids=None if use_text else ids, params=params,
                origin=origin)


def suite_from_log(log: str | Path, model: Any, *, sample: int, seed: int = 0, name: str,
                   tenant: str | None = None, keystore: KeyStore | None = None, kek: KeyEncryptionKey | None = None,
                   policy: TrustPolicy | None = None, batch_size: int = 16) -> tuple[Suite, dict[str, Any]]:
    """A suite pinned to ``model``'s artifact with ``sample`` cases drawn from ``log`` (see the module docstring).

    With ``policy`` the log is verified first (tree, checkpoints, every receipt signature); returns the suite
    (not yet written) and the ``log`` section of the ``kolm.golden-update/1`` report."""
    if sample < 1:
        raise InputError("the sample size must be positive", field="--sample", actual=str(sample))
    if keystore is not None and kek is None:
        raise InputError("a key store needs its key-encryption key", field="--kek-file/--kek-env")
    if policy is not None:
        from kolm_audit.log.verify import verify_log
        from kolm_audit.receipts.document import make_leaf_verifier

        verify_log(log, policy=policy, verify_leaf=make_leaf_verifier(policy))
    skipped = dict.fromkeys(_SKIPS, 0)
    seen: set[tuple[str, Decoding | None]] = set()
    crypto_cache: dict[str, TenantCrypto | None] = {}
    eligible: list[tuple[int, Mapping[str, Any], TenantCrypto | None]] = []
    total = 0
    with open_log_source(log) as src:
        origin = src.origin
        for index, leaf in src.iter_leaves():
            total += 1
            rec = parse_leaf(leaf, source=str(log), field=f"leaf[{index}]").receipt
            reason = None
            crypto = None
            if rec["artifact"]["digest"] != model.digest:
                reason = "other_artifact"
            elif rec["task"] != model.task:
                reason = "other_task"
            elif tenant is not None and rec["tenant"] != tenant:
                reason = "other_tenant"
            elif rec["privacy"]["mode"] != "clear":
                crypto = _crypto_for(rec["tenant"], keystore, kek, crypto_cache)
                reason = "sealed_no_key" if crypto is None else None
            if reason is None:
                dec = rec["decoding"]
                key = (rec["request"]["input_digest"],
                       None if dec is None else Decoding(**{k: v for k, v in dec.items() if k != "strategy"}))
                reason = "duplicate" if key in seen else None
                seen.add(key)
            if reason is not None:
                skipped[reason] += 1
                continue
            eligible.append((index, rec, crypto))
    chosen = sorted(sorted(eligible, key=lambda e: sample_rank(seed, e[0]))[:sample], key=lambda e: e[0])
    picks = [_Pick(i, rec, _case_of(i, rec, crypto, model, origin), rec["response"]["output_digest"])
             for i, rec, crypto in chosen]
    actual = run_cases(model, [p.case for p in picks], task=str(model.task), batch_size=batch_size)
    cases = []
    for p in picks:
        got = actual[p.case.id]
        if not hasattr(got, "output_digest") or got.output_digest != p.output_digest:
            raise ReplayMismatch("the artifact does not reproduce this logged decision; refusing to record it "
                                 "(kolm-audit replay shows why)", file=str(log), field=f"leaf[{p.index}]",
                                 expected=p.output_digest, actual=getattr(got, "output_digest", str(got)))
        cases.append(Case(id=p.case.id, text=p.case.text, ids=p.case.ids, params=p.case.params, expected=got,
                          origin=p.case.origin))
    suite = Suite(name=name, task=str(model.task), artifact_name=str(model.manifest["name"]),
                  artifact_digest=model.digest, cases=tuple(cases))
    info = {"path": str(log), "origin": origin, "receipts": total, "eligible": len(eligible), "sampled": len(picks),
            "seed": seed, "tenant": tenant, "verified": policy is not None, "skipped": skipped}
    return suite, info
