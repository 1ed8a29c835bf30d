"""The compliance crosswalk: each piece of evidence in a binder, the record-keeping or audit duty it serves, what it
shows — with this binder's own numbers — and what it does not cover.

It states only what the evidence establishes. It is not a legal opinion and does not say that anyone complies with
anything: whether these records meet a duty depends on the system, its risk classification and everything outside
the model calls the receipts record. Duties named (texts as published):

* EU AI Act (Regulation (EU) 2024/1689) Art. 12 "Record-keeping" (automatic recording of events over the system's
  lifetime) and Art. 19 "Automatically generated logs" (providers keep them, at least six months);
* HIPAA Security Rule 45 CFR §164.312(b) "Audit controls" (mechanisms that record and examine activity in systems
  that contain or use ePHI);
* SR 11-7 (Federal Reserve / OCC, Supervisory Guidance on Model Risk Management, 2011): model validation
  (process verification, outcomes analysis, ongoing monitoring) and change control.

    >>> rows = crosswalk_rows(receipts=3, matched=3, mismatched=0, log_size=3, checkpoint_size=3, first=None,
    ...                       last=None, kscore=None, provenance=False, artifact_digest="sha256:" + "ab" * 32)
    >>> [r.duty.split(" ")[0] for r in rows][:3]
    ['EU', 'EU', 'HIPAA']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    evidence: str
    duty: str
    shows: str
    does_not_cover: str


def crosswalk_rows(*, receipts: int, matched: int, mismatched: int, log_size: int, checkpoint_size: int | None,
                   first: str | None, last: str | None, kscore: Mapping[str, Any] | None, provenance: bool,
                   artifact_digest: str) -> list[Row]:
    """The crosswalk table for one binder (numbers from its own evidence)."""
    period = f"from {first} to {last}" if first and last else "(no receipt times readable)"
    signed = (f"a signed checkpoint covers {checkpoint_size} of {log_size} leaves" if checkpoint_size is not None
              else "no signed checkpoint covers the log")
    verdict = ("every replayed decision reproduced byte for byte" if mismatched == 0
               else f"{mismatched} decision(s) did not reproduce (listed in section 4)")
    gate = ("the K-score gate was not evaluated (no kscore in the manifest)" if kscore is None
            else f"K = {kscore.get('k')}, gate {'passed' if _passed(kscore) else 'FAILED'}")
    return [
        Row(evidence="Signed receipts in an append-only Merkle-tree log (section 3)",
            duty="EU AI Act Art. 12(1)-(2): automatic recording of events over the system's lifetime",
            shows=(f"{log_size} model decisions recorded automatically, each with its time, the artifact digest, "
                   f"input and output digests, tenant and operator, {period}; {signed}, so removing or editing "
                   "a covered receipt is detectable."),
            does_not_cover=("Whether these are all the events relevant to risk under the provider's risk management "
                            "(Art. 9); events outside the model call (human oversight, overrides, downstream use); "
                            "the extra fields Art. 12(3) asks of remote biometric identification systems.")),
        Row(evidence="This binder: PDF/A-3 with the report, manifest, checkpoints and receipts embedded",
            duty="EU AI Act Art. 19(1): providers keep the automatically generated logs (at least six months)",
            shows=("The logs this binder covers existed, unaltered up to the signed checkpoint, when the binder was "
                   "made; the file format is meant for long-term archiving and verifies offline."),
            does_not_cover=("How long logs are actually kept, or that logs outside this binder were kept; the "
                            "retention policy and storage are the provider's.")),
        Row(evidence="Receipt log, log verification and replay (sections 3 and 4)",
            duty="HIPAA §164.312(b): audit controls that record and examine activity",
            shows=(f"A software mechanism that records each model decision and examines the records: the log and "
                   f"its signatures were verified and {receipts} receipt(s) re-examined by replay ({verdict})."),
            does_not_cover=("Access to ePHI outside model calls, user authentication and access logs "
                            "(§164.312(a), (d)), the covered entity's policies and risk analysis (§164.308); "
                            "whether receipts of tenants in clear mode contain ePHI.")),
        Row(evidence="Replay report: exact integer re-execution of recorded decisions (section 4)",
            duty="SR 11-7 model validation: process verification and outcomes analysis",
            shows=(f"The deployed artifact ({artifact_digest[:23]}…) produced exactly the recorded outputs for "
                   f"{matched} of {receipts} receipts checked; {verdict}."),
            does_not_cover=("Conceptual soundness, the quality of the outputs, benchmarking, or independent "
                            "validation: replay proves what the model did, not that it was right.")),
        Row(evidence="K-score and gate in the signed manifest (section 2)",
            duty="SR 11-7 model validation: developer testing before use",
            shows=f"The evaluation results the developer signed into the artifact: {gate}.",
            does_not_cover=("Whether the evaluation data and thresholds are adequate for the use; the K-score is "
                            "computed by the developer's recipe, not by this binder.")),
        Row(evidence="Artifact digest, signatures and provenance (section 1)",
            duty="SR 11-7 change control and model inventory",
            shows=("Every receipt names the artifact digest, so decisions by any other version show up as "
                   "artifact mismatches; the signing key is identified"
                   + ("; the provenance statement names recipe, base model and data digests." if provenance
                      else "; no provenance statement was supplied.")),
            does_not_cover=("Who approved the release and under which process: a signature shows which key "
                            "signed, not the governance behind it.")),
    ]


def _passed(kscore: Mapping[str, Any]) -> bool:
    gate = kscore.get("gate")
    return isinstance(gate, Mapping) and gate.get("passed") is True
