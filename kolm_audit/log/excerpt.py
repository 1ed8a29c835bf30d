"""Log excerpts: a bundle that carries *some* leaves of a log, each proven against a signed checkpoint.

A full bundle (:func:`kolm_audit.log.source.export_bundle`) holds every leaf; a log of 100,000 receipts makes a
bundle of ~160 MB. An *excerpt* holds only the leaves it cites, with what proves that they are in the log: the
stored checkpoints, an RFC 6962 inclusion proof of every cited leaf against the latest one, and RFC 9162
consistency proofs between consecutive checkpoints (format: docs/formats.md, "Log excerpts")::

    manifest.json        kolm.log-bundle/1 with "excerpt": true; "size" = the tree size of the latest checkpoint
    receipts.jsonl       the cited leaves, one per line, in log order: line k is the leaf at proofs[k].index
    checkpoints/         every stored checkpoint (C2SP signed notes), oldest first
    proofs.json          kolm.log-proofs/1: one inclusion proof per line of receipts.jsonl, plus "consistency"

``log verify`` and ``replay`` read an excerpt like any bundle (:class:`~kolm_audit.log.bundle.BundleSource`);
verification (:func:`check_excerpt`) proves each present leaf instead of rebuilding the tree.

    >>> import tempfile, pathlib
    >>> from kolm_audit.keys import generate_key
    >>> from kolm_audit.log.db import ReceiptLog
    >>> from kolm_audit.log.source import export_bundle
    >>> from kolm_audit.log.verify import verify_log
    >>> from kolm_audit.trust import TrustPolicy
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> key = generate_key(key_type="ed25519")
    >>> with ReceiptLog.open(d / "r.db", create=True, origin="example.org/log") as log:
    ...     _ = log.append_many([lambda i: b'{"i":%d}' % i] * 5)
    ...     _ = log.checkpoint(key)
    >>> _ = export_bundle(d / "r.db", d / "excerpt", indices=[1, 3])
    >>> report = verify_log(d / "excerpt", policy=TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",)))
    >>> report.size, report.leaves_rehashed, report.proofs_checked
    (5, 2, 2)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit.errors import InputError, LogError
from kolm_audit.log.bundle import BUNDLE_SCHEMA, PROOFS_SCHEMA, BundleSource
from kolm_audit.log.checkpoint import Checkpoint, SignedCheckpoint, parse_checkpoint, verify_checkpoint
from kolm_audit.log.merkle import MemoryTree, leaf_hash, verify_consistency, verify_inclusion
from kolm_audit.schemas import validate
from kolm_audit.trust import TrustPolicy


def write_excerpt(source: Any, out: Path, *, indices: Sequence[int]) -> Path:
    """Write an excerpt of ``source`` (a log source) with the leaves at ``indices`` to the empty directory ``out``.

    Every index must lie under the latest stored checkpoint (a leaf no signed checkpoint covers cannot be proven).
    """
    wanted = sorted(set(indices))
    if len(wanted) != len(indices) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
        raise InputError("excerpt indices must be distinct non-negative integers", field="indices")
    notes = [(where, note, parse_checkpoint(note, source=where).checkpoint) for where, note in source.checkpoints()]
    if not notes:
        raise InputError("an excerpt needs a signed checkpoint to prove its leaves against", file=str(source.path),
                         field="checkpoints", expected="kolm-audit log checkpoint LOG --key KEY")
    latest = max((cp for _, _, cp in notes), key=lambda cp: cp.size)
    if wanted and wanted[-1] >= latest.size:
        raise InputError("leaf not covered by a signed checkpoint", file=str(source.path), field=f"leaf {wanted[-1]}",
                         expected=f"index < {latest.size} (the latest checkpoint's size)")
    hashes: list[bytes] = []
    cited: list[bytes] = []
    want = iter(wanted)
    nxt = next(want, None)
    for expected, (index, data) in enumerate(source.iter_leaves()):
        if index != expected or b"\n" in data:
            raise LogError("log leaf missing or malformed; verify the log first", file=str(source.path),
                           field=f"leaf {expected}")
        if expected >= latest.size:
            break
        hashes.append(leaf_hash(data))
        if index == nxt:
            cited.append(data)
            nxt = next(want, None)
    if len(hashes) < latest.size:
        raise LogError("log has fewer leaves than its latest checkpoint", file=str(source.path),
                       field=f"leaf {len(hashes)}", expected=f"size >= {latest.size}")
    tree = MemoryTree(hashes)
    if tree.root() != latest.root:
        raise LogError("log does not match its latest checkpoint; verify the log first", file=str(source.path),
                       field="checkpoints", expected=latest.root.hex(), actual=tree.root().hex())
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    with (out / "receipts.jsonl").open("wb") as fh:
        for data in cited:
            fh.write(data + b"\n")
    names = []
    for seq, (_, note, _) in enumerate(notes, start=1):
        name = f"checkpoints/{seq:06d}.note"
        (out / name).write_text(note, encoding="utf-8")
        names.append(name)
    sizes = sorted({cp.size for _, _, cp in notes})
    doc = {"schema": PROOFS_SCHEMA, "tree_size": latest.size, "root_hash": latest.root.hex(),
           "proofs": [{"index": i, "leaf_hash": hashes[i].hex(), "path": [p.hex() for p in tree.inclusion_proof(i)]}
                      for i in wanted],
           "consistency": [{"old_size": a, "new_size": b, "path": [p.hex() for p in tree.consistency_proof(a, b)]}
                           for a, b in itertools.pairwise(sizes)]}
    validate(doc, "log-proofs")
    (out / "proofs.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    manifest = {"schema": BUNDLE_SCHEMA, "origin": source.origin, "size": latest.size, "receipts": "receipts.jsonl",
                "checkpoints": names, "proofs": "proofs.json", "excerpt": True}
    validate(manifest, "log-bundle")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


@dataclass(frozen=True)
class ExcerptCheck:
    """What :func:`check_excerpt` established: the latest checkpoint, every checkpoint's signers, the leaves proven."""

    latest: Checkpoint
    checkpoints: tuple[dict[str, Any], ...]
    leaves: int
    proofs: int
    supplied: dict[str, Any] | None


def check_excerpt(src: BundleSource, *, policy: TrustPolicy, supplied_checkpoint: str | None = None) -> ExcerptCheck:
    """Verify an excerpt: signed checkpoints, consistent with each other, every present leaf proven by inclusion.

    Raises :class:`LogError` (or a signature finding) naming the file and leaf; a checkpoint the user kept must be
    one the excerpt carries (an excerpt holds no consistency proof to any other tree size).
    """
    where = str(src.path)
    proofs_file = str(src.path / "proofs.json")
    doc = src.proofs()
    if doc is None:
        raise LogError("an excerpt must carry proofs.json", file=where, field="proofs")
    signed: list[SignedCheckpoint] = []
    results = []
    for cp_where, note in src.checkpoints():
        sc = verify_checkpoint(note, policy=policy, source=cp_where)
        if sc.checkpoint.origin != src.origin:
            raise LogError("checkpoint is for another log", file=cp_where, field="origin", expected=src.origin,
                           actual=sc.checkpoint.origin)
        if signed and sc.checkpoint.size < signed[-1].checkpoint.size:
            raise LogError("checkpoints are not listed oldest first", file=cp_where, field="checkpoints",
                           expected=f"size >= {signed[-1].checkpoint.size}", actual=str(sc.checkpoint.size))
        signed.append(sc)
        results.append({"where": cp_where, "size": sc.checkpoint.size, "root_hex": sc.checkpoint.root.hex(),
                         "signers": [s.to_json() for s in sc.signers]})
    if not signed:
        raise LogError("no signed checkpoint in the excerpt", file=where, field="checkpoints")
    latest = max((s.checkpoint for s in signed), key=lambda cp: cp.size)
    if (doc["tree_size"], doc["root_hash"], src.manifest["size"]) != (latest.size, latest.root.hex(), latest.size):
        raise LogError("proofs and manifest are not for the latest checkpoint", file=proofs_file, field="tree_size",
                       expected=f"size {latest.size}, root {latest.root.hex()}", actual=str(doc["tree_size"]))
    _check_consistency(signed, doc.get("consistency", []), file=proofs_file)
    proofs = doc["proofs"]
    previous = -1
    count = 0
    for (index, data), entry in itertools.zip_longest(src.iter_leaves(), proofs, fillvalue=(None, None)):
        if not isinstance(entry, dict) or index is None or data is None:
            raise LogError("receipts.jsonl and proofs.json list a different number of leaves", file=where,
                           field=f"leaf {count}", expected=f"{len(proofs)} leaves")
        if entry["index"] <= previous:
            raise LogError("proofs out of order", file=proofs_file, field=f"proofs[{count}].index",
                           expected=f"> {previous}", actual=str(entry["index"]))
        previous = entry["index"]
        if leaf_hash(data) != bytes.fromhex(entry["leaf_hash"]):
            raise LogError("leaf differs from the one its inclusion proof was made for", file=where,
                           field=f"leaf {index}", expected=entry["leaf_hash"], actual=leaf_hash(data).hex())
        try:
            verify_inclusion(index=index, size=latest.size, leaf=leaf_hash(data),
                             proof=[bytes.fromhex(p) for p in entry["path"]], root=latest.root)
        except LogError as exc:
            raise LogError(f"inclusion proof fails: {exc.message}", file=proofs_file, field=f"leaf {index}") from None
        count += 1
    supplied = None
    if supplied_checkpoint is not None:
        sc = verify_checkpoint(supplied_checkpoint, policy=policy, source="supplied checkpoint")
        carried = {(s.checkpoint.size, s.checkpoint.root) for s in signed}
        if sc.checkpoint.origin != src.origin or (sc.checkpoint.size, sc.checkpoint.root) not in carried:
            raise InputError("an excerpt can be checked only against a checkpoint it carries", file=where,
                             field="--checkpoint", expected="one of sizes " + ", ".join(str(s) for s, _ in
                                                                                       sorted(carried)))
        supplied = {"size": sc.checkpoint.size, "root_hex": sc.checkpoint.root.hex(),
                    "signers": [s.to_json() for s in sc.signers]}
    return ExcerptCheck(latest=latest, checkpoints=tuple(results), leaves=count, proofs=count, supplied=supplied)


def _check_consistency(signed: list[SignedCheckpoint], entries: list[dict[str, Any]], *, file: str) -> None:
    by_size: dict[int, bytes] = {}
    for s in signed:
        cp = s.checkpoint
        if by_size.setdefault(cp.size, cp.root) != cp.root:
            raise LogError("two different signed roots for the same tree size (a forked log)", file=file,
                           field=f"size {cp.size}", expected=by_size[cp.size].hex(), actual=cp.root.hex())
    sizes = sorted(by_size)
    given = {(e["old_size"], e["new_size"]): e["path"] for e in entries}
    needed = list(itertools.pairwise(sizes))
    if set(given) != set(needed):
        raise LogError("consistency proofs do not match the checkpoints", file=file, field="consistency",
                       expected=", ".join(f"{a}->{b}" for a, b in needed) or "none")
    for a, b in needed:
        try:
            verify_consistency(old_size=a, new_size=b, old_root=by_size[a], new_root=by_size[b],
                               proof=[bytes.fromhex(p) for p in given[(a, b)]])
        except LogError as exc:
            raise LogError(f"checkpoints are not consistent: {exc.message}", file=file,
                           field=f"consistency {a}->{b}") from None
