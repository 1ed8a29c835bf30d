"""What a binder binds, read and cross-checked: the replay report, the artifact's manifest and signatures, its
provenance statement, and the receipt log — turned into the documents the PDF embeds and the facts its pages show.

Nothing is mixed up silently: the artifact must be the one the report replayed (same digest), the log the one it
covers (same origin, same root at the report's size), the provenance statement about this artifact. The receipts
the binder *cites* are every mismatch (up to :data:`MISMATCH_DETAIL_LIMIT`) and :data:`SAMPLES` matched receipts
picked by hash from the report's results digest (deterministic, and not choosable by whoever ran the service).

    >>> select_samples([0, 1, 2, 3, 4], seed="sha256:" + "0" * 64, count=2)
    (0, 4)
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kolm_audit.artifact.file import read_artifact
from kolm_audit.canonical import digest, digest_of, jcs, loads_strict
from kolm_audit.errors import Finding, InputError, SchemaError
from kolm_audit.log.checkpoint import parse_checkpoint
from kolm_audit.log.merkle import MemoryTree, leaf_hash, verify_inclusion
from kolm_audit.log.source import export_bundle, open_log_source
from kolm_audit.receipts.document import parse_leaf
from kolm_audit.schemas import validate
from kolm_audit.timefmt import parse_time

FULL_LOG_LIMIT = 2000           # logs up to this many leaves are embedded whole; larger ones as an excerpt
MISMATCH_DETAIL_LIMIT = 500     # mismatches shown (and embedded) one by one; the rest are counted and listed
SAMPLES = 12                    # matched receipts shown as cards
EMBED_MODES = ("auto", "full", "excerpt")


@dataclass(frozen=True)
class Document:
    """One file the binder embeds (a PDF/A-3 associated file) and gives back on ``binder extract``."""

    name: str                   # path inside the evidence folder, e.g. "log/receipts.jsonl"
    data: bytes
    relationship: str           # PDF/A-3 AFRelationship: "Source" (what the pages present) or "Data"
    media_type: str
    description: str

    @property
    def digest(self) -> str:
        return digest(self.data)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "bytes": len(self.data), "relationship": self.relationship,
                "media_type": self.media_type}


@dataclass(frozen=True)
class Provenance:
    """The artifact's provenance statement (DSSE over an in-toto Statement v1), as far as the binder shows it."""

    data: bytes
    predicate_type: str
    signers: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CheckpointFacts:
    size: int
    root_hex: str
    root_b64: str
    signatures: tuple[tuple[str, str], ...]   # (signed-note key name, key hash hex)


@dataclass(frozen=True)
class Cited:
    """A receipt the binder cites: a mismatch or a sample, with its report row and inclusion proof."""

    index: int
    why: str                                  # "mismatch" | "sample"
    row: Mapping[str, Any]
    findings: tuple[Mapping[str, Any], ...]
    receipt: Mapping[str, Any] | None         # None when the leaf is not a well-formed receipt
    signers: tuple[str, ...]
    leaf_hash: str
    proof: tuple[str, ...] | None             # None when no signed checkpoint covers the leaf


@dataclass(frozen=True)
class Evidence:
    report: Mapping[str, Any]
    report_digest: str
    created: datetime
    manifest: Mapping[str, Any]
    artifact_digest: str
    artifact_signers: tuple[str, ...]
    provenance: Provenance | None
    origin: str
    log_size: int
    checkpoints: tuple[CheckpointFacts, ...]
    first_time: str | None
    last_time: str | None
    cited: tuple[Cited, ...]
    more_mismatches: tuple[int, ...]          # mismatched indices beyond MISMATCH_DETAIL_LIMIT
    embedded_log: str                         # "full" | "excerpt"
    documents: tuple[Document, ...]

    @property
    def latest(self) -> CheckpointFacts | None:
        return max(self.checkpoints, key=lambda c: c.size) if self.checkpoints else None


def select_samples(indices: Sequence[int], *, seed: str, count: int) -> tuple[int, ...]:
    """``count`` of ``indices`` with the smallest sha256(seed:index), in log order."""
    ranked = sorted(indices, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return tuple(sorted(ranked[:count]))


def read_report(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read replay report ({exc.strerror})", file=str(path)) from None
    report = loads_strict(data, file=str(path))
    validate(report, "replay-report", source=str(path))
    if digest_of(report["results"]) != report["results_digest"]:
        raise SchemaError("results do not hash to results_digest (edited report)", file=str(path),
                          field="results_digest", expected=digest_of(report["results"]),
                          actual=report["results_digest"])
    return report, data


def report_time(report: Mapping[str, Any], manifest: Mapping[str, Any], *, file: str) -> datetime:
    """When the replay finished (``environment.finished``), else the artifact's creation time."""
    finished = report["environment"].get("finished")
    if isinstance(finished, str):
        return parse_time(finished, file=file, field="environment.finished")
    return parse_time(manifest["created"], file=file, field="manifest.created")


def read_provenance(path: Path, *, artifact_digest: str) -> Provenance:
    """Read a provenance statement strictly (:func:`kolm_audit.compile.provenance.read_provenance`) and check
    that it is about this artifact (its signature is checked by ``verify``)."""
    from kolm_audit.compile.provenance import read_provenance as read_statement

    prov = read_statement(path)
    if prov.subject_digest != artifact_digest:
        raise InputError("provenance statement is about another artifact", file=str(path),
                         field="subject[0].digest", expected=artifact_digest, actual=prov.subject_digest)
    # the file's bytes, as read: the reader accepts only the canonical envelope and one newline
    return Provenance(data=jcs(prov.envelope.to_json()) + b"\n", predicate_type=str(prov.statement["predicateType"]),
                      signers=tuple(sorted(s.keyid for s in prov.envelope.signatures)),
                      facts=tuple(flatten(prov.statement["predicate"], "", limit=60)))


def flatten(value: Any, path: str, *, limit: int) -> list[tuple[str, str]]:
    """Scalar leaves of a JSON value as (dotted path, text) rows, at most ``limit``."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack and len(out) < limit:
        where, item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend((f"{where}.{k}" if where else str(k), item[k]) for k in sorted(item, reverse=True))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
        else:
            out.append((where or "(value)", "null" if item is None else str(item)))
    return out


def _checkpoint_facts(notes: Sequence[tuple[str, str]]) -> tuple[CheckpointFacts, ...]:
    out = []
    for where, note in notes:
        sc = parse_checkpoint(note, source=where)
        cp = sc.checkpoint
        out.append(CheckpointFacts(size=cp.size, root_hex=cp.root.hex(), root_b64=cp.to_json()["root_hash"],
                                   signatures=tuple((s.name, s.key_hash.hex()) for s in sc.signatures)))
    return tuple(out)


def _receipt_of(leaf: bytes, index: int) -> tuple[Mapping[str, Any] | None, tuple[str, ...]]:
    try:
        signed = parse_leaf(leaf, field=f"leaf[{index}]")
    except Finding:
        return None, ()
    return signed.receipt, tuple(sorted(s.keyid for s in signed.envelope.signatures))


def _period(leaf: bytes) -> str | None:
    receipt, _ = _receipt_of(leaf, 0)
    return None if receipt is None else receipt["period"]["start"]


def _bundle_documents(out: Path) -> list[Document]:
    docs = []
    for file in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = file.relative_to(out).as_posix()
        media = {"json": "application/json", "jsonl": "application/x-ndjson", "note": "text/plain"}[file.suffix[1:]]
        what = {"manifest.json": "log bundle manifest (kolm.log-bundle/1)", "receipts.jsonl": "signed receipts",
                "proofs.json": "inclusion proofs (kolm.log-proofs/1)"}.get(rel, "signed checkpoint (C2SP note)")
        docs.append(Document(name=f"log/{rel}", data=file.read_bytes(), relationship="Data", media_type=media,
                             description=what))
    return docs


def gather(*, report_path: Path, artifact_path: Path, log_path: Path, provenance_path: Path | None = None,
           embed: str = "auto") -> Evidence:
    """Read and cross-check every input; raise :class:`InputError` when they do not belong together."""
    if embed not in EMBED_MODES:
        raise InputError("unknown log embedding", field="--embed-log", expected=" | ".join(EMBED_MODES), actual=embed)
    report, report_bytes = read_report(report_path)
    res = report["results"]
    art = read_artifact(artifact_path, check_tensors=True)
    if res["artifact"]["digest"] != art.digest:
        raise InputError("the artifact is not the one the report replayed", file=str(artifact_path),
                         field="artifact digest", expected=str(res["artifact"]["digest"]), actual=art.digest)
    if provenance_path is None:
        beside = artifact_path.with_name(artifact_path.name + ".provenance.json")
        provenance_path = beside if beside.is_file() else None
    provenance = None if provenance_path is None else read_provenance(provenance_path, artifact_digest=art.digest)
    documents = [
        Document(name="report.json", data=report_bytes, relationship="Source", media_type="application/json",
                 description="replay report (kolm.replay-report/1), as written by kolm-audit replay"),
        Document(name="artifact/manifest.json", data=jcs(art.manifest), relationship="Source",
                 media_type="application/json",
                 description="artifact manifest (kolm.manifest/1), JCS bytes: sha256 = the artifact digest"),
        Document(name="artifact/signatures.json", data=jcs(list(art.signatures)), relationship="Data",
                 media_type="application/json", description="the artifact's DSSE signature envelopes")]
    if provenance is not None:
        documents.append(Document(name="artifact/provenance.json", data=provenance.data, relationship="Source",
                                  media_type="application/json",
                                  description="provenance statement (in-toto Statement v1, SLSA Provenance v1)"))
    rows = res["receipts"]
    by_index: dict[int, list[Mapping[str, Any]]] = {}
    for f in res["findings"]:
        if f["index"] is not None:
            by_index.setdefault(f["index"], []).append(f)
    mismatched = [r["index"] for r in rows if r["status"] == "mismatch"]
    samples = select_samples([r["index"] for r in rows if r["status"] == "matched"], seed=report["results_digest"],
                             count=SAMPLES)
    why = {**{i: "sample" for i in samples}, **{i: "mismatch" for i in mismatched[:MISMATCH_DETAIL_LIMIT]}}
    row_of = {r["index"]: r for r in rows if r["index"] in why}
    with open_log_source(log_path) as src:
        if src.origin != res["log"]["origin"]:
            raise InputError("the log is not the one the report covers", file=str(log_path), field="origin",
                             expected=res["log"]["origin"], actual=src.origin)
        checkpoints = _checkpoint_facts(src.checkpoints())
        hashes: list[bytes] = []
        leaves: dict[int, bytes] = {}
        for index, data in src.iter_leaves():
            hashes.append(leaf_hash(data))
            if index in why:
                leaves[index] = data
        tree = MemoryTree(hashes)
        size = res["log"]["size"]
        root = res["log"]["root_hash"]
        if root is not None and (size > tree.size or tree.root(size).hex() != root):
            raise InputError("the log's tree is not the one the report verified", file=str(log_path),
                             field=f"root at size {size}", expected=res["log"]["root_hash"],
                             actual=tree.root(min(size, tree.size)).hex())
        first = _period(src.leaf(0)) if tree.size else None
        last = _period(src.leaf(tree.size - 1)) if tree.size else None
        latest = max(checkpoints, key=lambda c: c.size) if checkpoints else None
        cited = []
        missing = sorted(set(why) - set(leaves))
        if missing:
            raise InputError("the report cites a receipt the log does not have", file=str(log_path),
                             field=f"leaf {missing[0]}", expected=f"index < {tree.size}")
        for index in sorted(why):
            proof = None
            if latest is not None and index < latest.size:
                path = tree.inclusion_proof(index, latest.size)
                verify_inclusion(index=index, size=latest.size, leaf=hashes[index], proof=path,
                                 root=bytes.fromhex(latest.root_hex))
                proof = tuple(p.hex() for p in path)
            receipt, signers = _receipt_of(leaves[index], index)
            cited.append(Cited(index=index, why=why[index], row=row_of[index], findings=tuple(by_index.get(index, ())),
                               receipt=receipt, signers=signers, leaf_hash=hashes[index].hex(), proof=proof))
        mode = embed if embed != "auto" else ("full" if tree.size <= FULL_LOG_LIMIT else "excerpt")
        with tempfile.TemporaryDirectory(prefix="kolm-binder-") as tmp:
            out = Path(tmp) / "log"
            proven = None if mode == "full" else [c.index for c in cited if c.proof is not None]
            export_bundle(src, out, indices=proven)
            documents.extend(_bundle_documents(out))
    return Evidence(report=report, report_digest=digest(report_bytes),
                    created=report_time(report, art.manifest, file=str(report_path)), manifest=art.manifest,
                    artifact_digest=art.digest,
                    artifact_signers=tuple(sorted(s["keyid"] for e in art.signatures for s in e["signatures"])),
                    provenance=provenance, origin=src.origin, log_size=tree.size, checkpoints=checkpoints,
                    first_time=first, last_time=last, cited=tuple(cited),
                    more_mismatches=tuple(mismatched[MISMATCH_DETAIL_LIMIT:]), embedded_log=mode,
                    documents=tuple(sorted(documents, key=lambda d: d.name)))
