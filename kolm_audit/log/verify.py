"""Verify a receipt log (database or bundle): every leaf rehashed, the tree rebuilt, every checkpoint checked.

What :func:`verify_log` checks, in order (the first finding raises :class:`LogError` naming the leaf index,
checkpoint or node; exit code 1 on the command line):

1. leaves are numbered ``0..n-1`` without gaps; each is rehashed (RFC 6962 leaf hash) and, in a database,
   compared with the hash stored when it was appended; in a bundle, with the leaf hash in ``proofs.json``;
2. the tree is rebuilt from the leaf hashes; in a database every stored perfect-subtree node must match;
3. every stored checkpoint: strict C2SP parse, a signature by a key the trust policy allows for role
   ``checkpoint``, the log's origin, and a root equal to the rebuilt tree's root at that size; stored
   checkpoints are pairwise consistent (RFC 9162 §2.1.4 proofs between consecutive sizes);
4. a checkpoint the user kept (``supplied_checkpoint``) must be signed, and the log must extend it: a
   forked or rewritten log, or one truncated below it, is a finding;
5. a bundle's inclusion proofs must each verify (RFC 9162 §2.1.3) against the latest checkpoint;
6. optionally ``verify_leaf(index, bytes)`` on every leaf (receipt signatures), in parallel worker processes.

An excerpt bundle (:mod:`kolm_audit.log.excerpt`) is checked without rebuilding the tree: signed checkpoints,
consistency proofs between them, and an inclusion proof of every leaf it carries.

    >>> import tempfile, pathlib
    >>> from kolm_audit.keys import generate_key
    >>> from kolm_audit.log.db import ReceiptLog
    >>> from kolm_audit.trust import TrustPolicy
    >>> key = generate_key(key_type="ed25519")
    >>> with ReceiptLog.open(pathlib.Path(tempfile.mkdtemp()) / "r.db", create=True, origin="ex.org/l") as log:
    ...     _ = log.append(lambda i: b'{"i":%d}' % i); _ = log.checkpoint(key); path = log.path
    >>> policy = TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",))
    >>> verify_log(path, policy=policy).size
    1
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785
from tqdm import tqdm

from kolm_audit.canonical import MAX_SAFE_INT, loads_canonical
from kolm_audit.errors import KolmError, LogError
from kolm_audit.log.bundle import BundleSource
from kolm_audit.log.checkpoint import Checkpoint, SignedCheckpoint, verify_checkpoint
from kolm_audit.log.db import DatabaseSource
from kolm_audit.log.excerpt import check_excerpt
from kolm_audit.log.merkle import MemoryTree, leaf_hash, verify_consistency, verify_inclusion
from kolm_audit.log.source import open_log_source
from kolm_audit.trust import TrustPolicy

REPORT_SCHEMA = "kolm.log-verify-report/1"
PARALLEL_MIN_LEAVES = 2048
_CHUNK = 1024
LeafCheck = Callable[[int, bytes], None]


def _reject_literal(text: str) -> None:
    raise ValueError(f"not allowed: {text}")


def _safe_int(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_SAFE_INT:
        raise LogError("integer outside the I-JSON safe range (RFC 8785 §3.2.2.3)", field=text[:40])
    return value


def check_leaf_canonical(index: int, data: bytes) -> None:
    r"""The default per-leaf check: the leaf is strict, canonical (RFC 8785) JSON.

    Fast path for ASCII leaves: for a document of ASCII strings, safe integers, booleans and nulls, RFC 8785
    output equals ``json.dumps(sort_keys=True, separators=(",", ":"))``, so byte equality with that proves
    canonical form (duplicate keys, floats, NaN, escapes like ``\/`` or ``\u00e9`` all make it differ).
    Anything else takes the reference path through ``loads_canonical``.
    """
    try:
        if data.isascii():
            obj = json.loads(data, parse_float=_reject_literal, parse_constant=_reject_literal, parse_int=_safe_int)
            if json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode() == data:
                return
    except (ValueError, RecursionError):
        pass  # the reference path below reports the precise problem
    except LogError as exc:
        raise LogError(exc.message, field=f"leaf {index}", actual=exc.field) from None
    try:
        loads_canonical(data, field=f"leaf {index}", error=LogError)
    except rfc8785.IntegerDomainError:
        raise LogError("integer outside the I-JSON safe range (RFC 8785 §3.2.2.3)", field=f"leaf {index}") from None


def unanchored_text(first: int, last: int) -> str:
    """What an unanchored tail of the log means, with its count and index range."""
    n = last - first + 1
    where = f"log index {first}" if n == 1 else f"log indices {first}..{last}"
    return (f"{n} receipt(s) at {where} are not covered by any signed checkpoint: they are not tamper-evident until "
            "one is signed (kolm-audit log checkpoint)")


@dataclass(frozen=True)
class LogVerifyReport:
    source: str
    kind: str
    origin: str
    mode: str  # "full" (per-leaf callback ran) | "checkpoint-only"
    size: int
    root_hex: str
    leaves_rehashed: int
    nodes_checked: int
    leaves_checked: int  # by the per-leaf callback
    proofs_checked: int
    checkpoints: tuple[dict[str, Any], ...]
    latest_checkpoint_size: int
    supplied_checkpoint: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def unsigned_leaves(self) -> int:
        return self.size - self.latest_checkpoint_size

    @property
    def unanchored(self) -> tuple[int, int] | None:
        """(first, last) log index of the leaves no signed checkpoint covers yet, or None when all are covered."""
        return None if self.unsigned_leaves == 0 else (self.latest_checkpoint_size, self.size - 1)

    @property
    def warnings(self) -> tuple[str, ...]:
        """What verified but is not yet evidence: leaves after the latest checkpoint."""
        return () if self.unanchored is None else (unanchored_text(*self.unanchored),)

    def to_json(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, "verified": True, "source": self.source, "kind": self.kind,
                "origin": self.origin, "mode": self.mode, "size": self.size, "root_hex": self.root_hex,
                "leaves_rehashed": self.leaves_rehashed, "nodes_checked": self.nodes_checked,
                "leaves_checked": self.leaves_checked, "proofs_checked": self.proofs_checked,
                "checkpoints": list(self.checkpoints), "latest_checkpoint_size": self.latest_checkpoint_size,
                "unsigned_leaves": self.unsigned_leaves, "supplied_checkpoint": self.supplied_checkpoint,
                "notes": list(self.notes) + list(self.warnings)}


def _rehash(src: DatabaseSource | BundleSource, leaf_hashes_expected: list[bytes] | None, *,
            progress: bool) -> list[bytes]:
    where = str(src.path)
    hashes: list[bytes] = []
    append = hashes.append
    bar = {"disable": not progress, "total": src.size() if progress else None, "unit": "leaf", "unit_scale": True,
           "desc": "rehash", "mininterval": 0.5}
    if isinstance(src, DatabaseSource):
        for expected, (index, stored, data) in enumerate(tqdm(src.iter_rows(), **bar)):
            if index != expected:
                raise LogError("leaf missing or out of order (deleted or inserted)", file=where,
                               field=f"leaf {expected}", expected=f"index {expected}", actual=f"index {index}")
            h = leaf_hash(data)
            if h != stored:
                raise LogError("leaf bytes differ from the hash stored when it was appended", file=where,
                               field=f"leaf {index}", expected=stored.hex(), actual=h.hex())
            append(h)
        return hashes
    for index, data in tqdm(src.iter_leaves(), **bar):
        h = leaf_hash(data)
        if leaf_hashes_expected is not None and index < len(leaf_hashes_expected) and h != leaf_hashes_expected[index]:
            raise LogError("leaf differs from the one the bundle's proofs were made for (edited, moved, "
                           "inserted or deleted)", file=where, field=f"leaf {index}",
                           expected=leaf_hashes_expected[index].hex(), actual=h.hex())
        append(h)
    return hashes


def _check_nodes(src: DatabaseSource, tree: MemoryTree) -> int:
    where = str(src.path)
    for level in src.node_levels():
        if not 1 <= level < len(tree.levels):
            raise LogError("stored tree nodes at a level the tree does not have (inserted)", file=where,
                           field=f"nodes at level {level}", expected=f"levels 1..{len(tree.levels) - 1}")
    checked = 0
    for level in range(1, len(tree.levels)):
        expected = tree.levels[level]
        rows = src.node_rows(level)
        if [h for _, h in rows] == expected and (not rows or (rows[0][0], rows[-1][0]) == (0, len(rows) - 1)):
            checked += len(rows)  # same hashes, and indices 0..n-1 (unique primary key)
            continue
        for index, h in enumerate(expected):
            span = f"leaves [{index << level}, {(index + 1) << level})"
            if index >= len(rows) or rows[index][0] != index:
                raise LogError(f"stored tree node (level {level}, index {index}) over {span} is missing (deleted)",
                               file=where, field=f"leaf {index << level}")
            if rows[index][1] != h:
                raise LogError(f"stored tree node (level {level}, index {index}) does not match the leaves: a leaf "
                               f"in {span} was altered, moved or inserted", file=where, field=f"leaf {index << level}",
                               expected=h.hex(), actual=rows[index][1].hex())
        raise LogError("stored tree nodes beyond the tree (inserted)", file=where,
                       field=f"leaf {len(expected) << level}", expected=f"{len(expected)} nodes at level {level}",
                       actual=str(len(rows)))
    return checked


def _check_checkpoint(sc: SignedCheckpoint, *, tree: MemoryTree, origin: str, where: str, prev_ok: int) -> None:
    cp = sc.checkpoint
    if cp.origin != origin:
        raise LogError("checkpoint is for another log", file=where, field="origin", expected=origin, actual=cp.origin)
    if cp.size > tree.size:
        raise LogError(f"log has fewer leaves than a signed checkpoint covers (leaves {tree.size}..{cp.size - 1} "
                       "were removed, or the log was rolled back)", file=where, field=f"leaf {tree.size}",
                       expected=f"size >= {cp.size}", actual=str(tree.size))
    if tree.root(cp.size) != cp.root:
        raise LogError(f"leaves do not match the signed root: a leaf in [{prev_ok}, {cp.size}) was altered, "
                       "or the log was forked", file=where, field=f"leaf {prev_ok}",
                       expected=cp.root.hex(), actual=tree.root(cp.size).hex())


def _run_chunk(chunk: list[tuple[int, bytes]]) -> tuple[Any, ...] | None:
    fn = _WORKER_FN
    assert fn is not None
    for index, data in chunk:
        try:
            fn(index, data)
        except KolmError as exc:
            return (index, type(exc), exc.message, exc.file, exc.field, exc.expected, exc.actual)
    return None


_WORKER_FN: LeafCheck | None = None


def _chunks(src: DatabaseSource | BundleSource) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for item in src.iter_leaves():
        chunk.append(item)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_leaves(src: DatabaseSource | BundleSource, fn: LeafCheck, *, size: int, workers: int) -> int:
    global _WORKER_FN
    methods = multiprocessing.get_all_start_methods()
    if workers <= 1 or size < PARALLEL_MIN_LEAVES or "fork" not in methods:
        for index, data in src.iter_leaves():
            try:
                fn(index, data)
            except KolmError as exc:
                if exc.file is None:  # name the log the leaf came from
                    raise type(exc)(exc.message, file=str(src.path), field=exc.field or f"leaf {index}",
                                    expected=exc.expected, actual=exc.actual) from None
                raise
        return size
    _WORKER_FN = fn  # inherited by forked workers: the callback need not be picklable
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            pending: deque[Future[tuple[Any, ...] | None]] = deque()
            chunks = _chunks(src)
            while True:  # a bounded window of chunks in flight, results in order (first failure wins)
                for chunk in itertools.islice(chunks, 4 * workers - len(pending)):
                    pending.append(pool.submit(_run_chunk, chunk))
                if not pending:
                    break
                failure = pending.popleft().result()
                if failure is not None:
                    for future in pending:
                        future.cancel()
                    index, cls, message, file, fld, expected, actual = failure
                    raise cls(message, file=file or str(src.path), field=fld or f"leaf {index}",
                              expected=expected, actual=actual)
    finally:
        _WORKER_FN = None
    return size


def _bundle_proofs(src: BundleSource) -> tuple[dict[str, Any] | None, list[bytes] | None]:
    doc = src.proofs()
    if doc is None:
        return None, None
    hashes = []
    for i, entry in enumerate(doc["proofs"]):
        if entry["index"] != i:
            raise LogError("proofs out of order", file=str(src.path / "proofs.json"), field=f"proofs[{i}].index",
                           expected=str(i), actual=str(entry["index"]))
        hashes.append(bytes.fromhex(entry["leaf_hash"]))
    return doc, hashes


def _verify_bundle_proofs(src: BundleSource, doc: dict[str, Any], latest: Checkpoint | None) -> int:
    where = str(src.path / "proofs.json")
    if latest is None:
        raise LogError("the bundle carries inclusion proofs but no checkpoint they could be checked against",
                       file=where, field="tree_size", expected="a signed checkpoint in the bundle")
    if doc["tree_size"] != latest.size:
        raise LogError("proofs are not for the latest checkpoint", file=where, field="tree_size",
                       expected=str(latest.size), actual=str(doc["tree_size"]))
    if bytes.fromhex(doc["root_hash"]) != latest.root:
        raise LogError("proofs name another root hash than the latest checkpoint", file=where, field="root_hash",
                       expected=latest.root.hex(), actual=doc["root_hash"])
    if len(doc["proofs"]) != latest.size:
        raise LogError("a proof is missing", file=where, field=f"proofs[{len(doc['proofs'])}]",
                       expected=f"{latest.size} proofs", actual=str(len(doc["proofs"])))
    for entry in doc["proofs"]:
        try:
            verify_inclusion(index=entry["index"], size=latest.size, leaf=bytes.fromhex(entry["leaf_hash"]),
                             proof=[bytes.fromhex(p) for p in entry["path"]], root=latest.root)
        except LogError as exc:
            raise LogError(f"inclusion proof fails: {exc.message}", file=where,
                           field=f"leaf {entry['index']}") from None
    return latest.size


def _verify_excerpt(src: BundleSource, *, policy: TrustPolicy, supplied_checkpoint: str | None,
                    verify_leaf: LeafCheck | None, workers: int | None) -> LogVerifyReport:
    """An excerpt: checkpoints signed and consistent, every present leaf proven by inclusion (no tree rebuilt)."""
    ex = check_excerpt(src, policy=policy, supplied_checkpoint=supplied_checkpoint)
    checked = 0
    if verify_leaf is not None:
        checked = _check_leaves(src, verify_leaf, size=ex.leaves, workers=workers or os.cpu_count() or 1)
    note = (f"excerpt: {ex.leaves} of {ex.latest.size} leaves present, each proven by inclusion against the "
            f"checkpoint at size {ex.latest.size}")
    return LogVerifyReport(
        source=str(src.path), kind=src.kind, origin=src.origin,
        mode="checkpoint-only" if verify_leaf is None else "full",
        size=ex.latest.size, root_hex=ex.latest.root.hex(), leaves_rehashed=ex.leaves, nodes_checked=0,
        leaves_checked=checked, proofs_checked=ex.proofs, checkpoints=ex.checkpoints,
        latest_checkpoint_size=ex.latest.size, supplied_checkpoint=ex.supplied, notes=(note,))


def verify_log(source: str | Path | DatabaseSource | BundleSource, *, policy: TrustPolicy,
               supplied_checkpoint: str | None = None, verify_leaf: LeafCheck | None = None,
               workers: int | None = None, require_checkpoint: bool = True, progress: bool = False
               ) -> LogVerifyReport:
    """Verify a log; return a report or raise the first finding (:class:`LogError`, ``SignatureError``...)."""
    if isinstance(source, str | Path):
        with open_log_source(source) as src:
            return verify_log(src, policy=policy, supplied_checkpoint=supplied_checkpoint, verify_leaf=verify_leaf,
                              workers=workers, require_checkpoint=require_checkpoint, progress=progress)
    src = source
    if isinstance(src, BundleSource) and src.excerpt:
        return _verify_excerpt(src, policy=policy, supplied_checkpoint=supplied_checkpoint, verify_leaf=verify_leaf,
                               workers=workers)
    where = str(src.path)
    proofs_doc, proof_hashes = _bundle_proofs(src) if isinstance(src, BundleSource) else (None, None)
    hashes = _rehash(src, proof_hashes, progress=progress)
    tree = MemoryTree(hashes)
    nodes = _check_nodes(src, tree) if isinstance(src, DatabaseSource) else 0
    results: list[dict[str, Any]] = []
    parsed: list[SignedCheckpoint] = []
    good_sizes: list[int] = []
    for cp_where, note in src.checkpoints():
        sc = verify_checkpoint(note, policy=policy, source=cp_where)
        if parsed and sc.checkpoint.size < parsed[-1].checkpoint.size:
            raise LogError("checkpoints are not listed oldest first", file=cp_where, field="checkpoints",
                           expected=f"size >= {parsed[-1].checkpoint.size}", actual=str(sc.checkpoint.size))
        # the tree up to `below` matched a signed root already
        below = max([s for s in good_sizes if s < sc.checkpoint.size], default=0)
        _check_checkpoint(sc, tree=tree, origin=src.origin, where=cp_where, prev_ok=below)
        good_sizes.append(sc.checkpoint.size)
        parsed.append(sc)
        results.append({"where": cp_where, "size": sc.checkpoint.size, "root_hex": sc.checkpoint.root.hex(),
                        "signers": [s.to_json() for s in sc.signers]})
    ordered = sorted(parsed, key=lambda s: s.checkpoint.size)
    for old, new in itertools.pairwise(ordered):
        verify_consistency(old_size=old.checkpoint.size, new_size=new.checkpoint.size, old_root=old.checkpoint.root,
                           new_root=new.checkpoint.root,
                           proof=tree.consistency_proof(old.checkpoint.size, new.checkpoint.size))
    latest = ordered[-1].checkpoint if ordered else None
    if require_checkpoint and latest is None and tree.size > 0:
        raise LogError("no signed checkpoint covers the log", file=where, field="checkpoints",
                       expected="at least one checkpoint (kolm-audit log checkpoint LOG --key KEY)")
    supplied = None
    if supplied_checkpoint is not None:
        sc = verify_checkpoint(supplied_checkpoint, policy=policy, source="supplied checkpoint")
        cp = sc.checkpoint
        try:
            _check_checkpoint(sc, tree=tree, origin=src.origin, where=where, prev_ok=0)
        except LogError as exc:
            raise LogError(f"the checkpoint you supplied is not consistent with this log (forked, rewritten or "
                           f"truncated log): {exc.message}", file=where, field=exc.field, expected=exc.expected,
                           actual=exc.actual) from None
        top = latest if latest is not None and latest.size >= cp.size else Checkpoint(
            origin=src.origin, size=tree.size, root=tree.root())
        verify_consistency(old_size=cp.size, new_size=top.size, old_root=cp.root, new_root=top.root,
                           proof=tree.consistency_proof(cp.size, top.size))
        supplied = {"size": cp.size, "root_hex": cp.root.hex(), "signers": [s.to_json() for s in sc.signers]}
    proofs = _verify_bundle_proofs(src, proofs_doc, latest) if proofs_doc is not None else 0
    if isinstance(src, BundleSource) and proof_hashes is not None and len(proof_hashes) > tree.size:
        raise LogError("leaf missing (deleted from the bundle)", file=where, field=f"leaf {tree.size}")
    if isinstance(src, BundleSource) and src.manifest["size"] != tree.size:
        raise LogError("the bundle's manifest names another number of receipts than receipts.jsonl holds",
                       file=str(src.path / "manifest.json"), field="size", expected=str(tree.size),
                       actual=str(src.manifest["size"]))
    checked = 0
    if verify_leaf is not None:
        checked = _check_leaves(src, verify_leaf, size=tree.size, workers=workers or os.cpu_count() or 1)
    return LogVerifyReport(
        source=where, kind=src.kind, origin=src.origin, mode="checkpoint-only" if verify_leaf is None else "full",
        size=tree.size, root_hex=tree.root().hex(), leaves_rehashed=tree.size, nodes_checked=nodes,
        leaves_checked=checked, proofs_checked=proofs, checkpoints=tuple(results),
        latest_checkpoint_size=0 if latest is None else latest.size, supplied_checkpoint=supplied)
