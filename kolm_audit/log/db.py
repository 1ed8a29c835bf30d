"""The receipt log database: SQLite (WAL, ``synchronous=FULL``), append-only, RFC 6962 tree inside.

Tables: ``leaves(idx, hash, data)`` (leaf bytes and their RFC 6962 leaf hash), ``nodes(level, idx, hash)``
(every *perfect* subtree of the tree, written as soon as it is complete, so roots and proofs take
``O(log n)`` lookups), ``checkpoints(seq, size, note)`` (C2SP signed notes) and ``meta`` (schema,
origin). Triggers refuse UPDATE and DELETE, and refuse an INSERT that is not the next index.

Appends run in ``BEGIN IMMEDIATE`` transactions: the index is read under the write lock, the caller's
``build(index)`` makes the leaf (a receipt that records its own index), and the commit is durable
(WAL fsync) before ``append`` returns. Several processes may append to one file at once.

    >>> import tempfile, pathlib
    >>> log = ReceiptLog.open(pathlib.Path(tempfile.mkdtemp()) / "r.db", create=True, origin="example.org/log")
    >>> log.append(lambda i: b'{"index":%d}' % i)
    0
    >>> log.size(), log.leaf(0)
    (1, b'{"index":0}')
    >>> log.close()
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import rfc8785

from kolm_audit.canonical import loads_canonical
from kolm_audit.errors import InputError, LogError
from kolm_audit.keys import PrivateKey
from kolm_audit.log.checkpoint import Checkpoint, parse_checkpoint, sign_checkpoint
from kolm_audit.log.merkle import (
    Frontier,
    consistency_proof,
    fold_root,
    inclusion_proof,
    leaf_hash,
    perfect_decomposition,
    subtree_from_nodes,
    verify_consistency,
)

LOG_SCHEMA = "kolm.log/1"
ORIGIN_RE = re.compile(r"^[!-*,-~]{1,200}$")  # printable ASCII, no space, no '+': also a signed-note key name
BUSY_TIMEOUT_S = 120.0
_SQLITE_MAGIC = b"SQLite format 3\x00"

_DDL: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS leaves(idx INTEGER PRIMARY KEY, hash BLOB NOT NULL, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS nodes(level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, "
    "PRIMARY KEY(level, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS checkpoints(seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, note TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS leaves_next_index BEFORE INSERT ON leaves "
    "WHEN NEW.idx IS NOT (SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves) "
    "BEGIN SELECT RAISE(ABORT, 'kolm log: leaves are appended at the next index only'); END",
)
_TABLES = ("meta", "leaves", "nodes", "checkpoints")


def _ddl() -> list[str]:
    out = list(_DDL)
    for table in _TABLES:
        for op in ("UPDATE", "DELETE"):
            out.append(f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, 'kolm log: {table} is append-only'); END")
    return out


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.DatabaseError as exc:
        raise InputError(f"cannot open receipt log ({exc})", file=str(path)) from None
    return conn


class ReceiptLog:
    """An append-only receipt log in one SQLite file. Open with :meth:`ReceiptLog.open`."""

    def __init__(self, *, conn: sqlite3.Connection, path: Path, origin: str) -> None:
        self._conn = conn
        self.path = path
        self.origin = origin

    # --- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False, origin: str | None = None) -> ReceiptLog:
        path = Path(path)
        if not path.exists() and not create:
            raise InputError("receipt log does not exist", file=str(path), expected="an existing log (or create=True)")
        if origin is not None and not ORIGIN_RE.match(origin):
            raise InputError("bad log origin", field="origin", expected="printable ASCII without spaces or '+'",
                             actual=repr(origin)[:80])
        conn = _connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _ddl():
                    conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (LOG_SCHEMA,))
                fresh = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone() is None
                if fresh:
                    stem = re.sub(r"[^!-*,-~]", "_", path.stem)[:64] or "log"
                    new_origin = origin or f"kolm-audit.local/{stem}/{secrets.token_hex(8)}"
                    conn.execute("INSERT INTO meta VALUES ('origin', ?)", (new_origin,))
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InputError(f"not a receipt log ({exc})", file=str(path)) from None
        if meta.get("schema") != LOG_SCHEMA:
            conn.close()
            raise InputError("unknown receipt log schema", file=str(path), field="meta.schema",
                             expected=LOG_SCHEMA, actual=meta.get("schema"))
        if origin is not None and meta["origin"] != origin:
            conn.close()
            raise InputError("log origin differs", file=str(path), field="meta.origin", expected=origin,
                             actual=meta["origin"])
        return cls(conn=conn, path=path, origin=meta["origin"])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ReceiptLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------------

    def size(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone()[0])

    def leaf(self, index: int) -> bytes:
        row = self._conn.execute("SELECT data FROM leaves WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise LogError("no such leaf", file=str(self.path), field=f"leaf {index}",
                           expected=f"0 <= index < {self.size()}")
        return bytes(row[0])

    def _node(self, level: int, index: int) -> bytes:
        if level == 0:
            row = self._conn.execute("SELECT hash FROM leaves WHERE idx = ?", (index,)).fetchone()
        else:
            row = self._conn.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
        if row is None:
            raise LogError("stored tree node missing", file=str(self.path), field=f"node level {level} index {index}",
                           expected=f"leaves [{index << level}, {(index + 1) << level})")
        return bytes(row[0])

    def _check_size(self, size: int | None) -> int:
        current = self.size()
        if size is None:
            return current
        if not 0 <= size <= current:
            raise LogError("tree size beyond the log", file=str(self.path), field="size",
                           expected=f"0 <= size <= {current}", actual=str(size))
        return size

    def root(self, size: int | None = None) -> bytes:
        size = self._check_size(size)
        return fold_root([self._node(level, i) for level, i in perfect_decomposition(size)])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self._check_size(size)
        return inclusion_proof(index=index, size=size, subtree=subtree_from_nodes(self._node))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        new_size = self._check_size(new_size)
        return consistency_proof(old_size=old_size, new_size=new_size, subtree=subtree_from_nodes(self._node))

    def checkpoints(self) -> list[str]:
        return [row[0] for row in self._conn.execute("SELECT note FROM checkpoints ORDER BY seq")]

    def latest_checkpoint(self) -> str | None:
        row = self._conn.execute("SELECT note FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    # --- appending --------------------------------------------------------------------------------

    def _frontier(self, size: int) -> Frontier:
        return Frontier(size, [self._node(level, i) for level, i in perfect_decomposition(size)])

    def _begin(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise InputError(f"receipt log is busy or not writable ({exc})", file=str(self.path),
                             expected=f"the write lock within {BUSY_TIMEOUT_S:.0f} s") from None

    def _write(self, builders: Sequence[Callable[[int], bytes]]) -> list[int]:
        conn = self._conn
        self._begin()
        try:
            start = self.size()
            frontier = self._frontier(start)
            indices = []
            for offset, build in enumerate(builders):
                index = start + offset
                data = build(index)
                if not isinstance(data, bytes):
                    raise InputError("a log leaf must be bytes", field=f"leaf {index}", actual=type(data).__name__)
                try:
                    loads_canonical(data, file=str(self.path), field=f"leaf {index}", error=InputError)
                except rfc8785.IntegerDomainError:
                    raise InputError("integer outside the I-JSON safe range", file=str(self.path),
                                     field=f"leaf {index}", expected="|n| <= 2**53 - 1") from None
                h = leaf_hash(data)
                conn.execute("INSERT INTO leaves(idx, hash, data) VALUES (?, ?, ?)", (index, h, data))
                made = frontier.append(h)
                if made:
                    conn.executemany("INSERT INTO nodes(level, idx, hash) VALUES (?, ?, ?)", made)
                indices.append(index)
            conn.execute("COMMIT")  # WAL + synchronous=FULL: durable on return
            return indices
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def append(self, build: Callable[[int], bytes]) -> int:
        """Append one leaf; ``build(index)`` returns its canonical JSON bytes. Durable on return."""
        return self._write([build])[0]

    def append_many(self, builders: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Append several leaves in one transaction (one fsync); all or none are stored."""
        if not builders:
            return []
        return self._write(builders)

    # --- checkpoints ------------------------------------------------------------------------------

    def checkpoint(self, key: PrivateKey) -> str:
        """Sign, store and return a checkpoint of the current tree.

        Refuses (:class:`LogError`) unless the current tree is consistent with the last stored checkpoint:
        the leaves added since are rehashed, folded onto the old frontier, and an RFC 6962 consistency
        proof from the stored nodes must verify. So the log never signs two inconsistent checkpoints.
        """
        conn = self._conn
        self._begin()
        try:
            size = self.size()
            root = self.root(size)
            last = self.latest_checkpoint()
            old_size, old_root = 0, fold_root([])
            if last is not None:
                prev = parse_checkpoint(last, source=f"{self.path}: checkpoint").checkpoint
                if prev.origin != self.origin:
                    raise LogError("stored checkpoint has another origin", file=str(self.path),
                                   field="checkpoints", expected=self.origin, actual=prev.origin)
                if prev.size > size:
                    raise LogError("log is shorter than its last checkpoint", file=str(self.path),
                                   field="size", expected=f">= {prev.size}", actual=str(size))
                old_size, old_root = prev.size, prev.root
            self._check_extension(old_size, old_root, size, root)
            verify_consistency(old_size=old_size, new_size=size, old_root=old_root, new_root=root,
                               proof=self.consistency_proof(old_size, size))
            note = sign_checkpoint(Checkpoint(origin=self.origin, size=size, root=root), key)
            conn.execute("INSERT INTO checkpoints(size, note) VALUES (?, ?)", (size, note))
            conn.execute("COMMIT")
            return note
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _check_extension(self, old_size: int, old_root: bytes, size: int, root: bytes) -> None:
        frontier = self._frontier(old_size)
        if frontier.root() != old_root:
            raise LogError("stored tree no longer matches the last checkpoint", file=str(self.path),
                           field=f"leaves [0, {old_size})", expected=old_root.hex(), actual=frontier.root().hex())
        rows = self._conn.execute("SELECT idx, hash, data FROM leaves WHERE idx >= ? ORDER BY idx", (old_size,))
        for expected, (index, stored, data) in enumerate(rows, start=old_size):
            if index != expected:
                raise LogError("leaf missing", file=str(self.path), field=f"leaf {expected}")
            h = leaf_hash(bytes(data))
            if h != bytes(stored):
                raise LogError("leaf bytes do not match their stored hash", file=str(self.path), field=f"leaf {index}")
            frontier.append(h)
        if frontier.size != size or frontier.root() != root:
            raise LogError("stored tree nodes do not match the leaves", file=str(self.path),
                           field=f"leaves [{old_size}, {size})", expected=frontier.root().hex(), actual=root.hex())


class DatabaseSource:
    """A read-only snapshot of a receipt log database (one read transaction for the source's lifetime)."""

    kind: Literal["database"] = "database"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self.path.open("rb") as fh:
                magic = fh.read(16)
        except OSError as exc:
            raise InputError(f"cannot read receipt log ({exc.strerror})", file=str(self.path)) from None
        if magic != _SQLITE_MAGIC:
            raise InputError("not an SQLite receipt log", file=str(self.path), expected="SQLite database")
        try:
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("BEGIN")
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise InputError(f"not a receipt log ({exc})", file=str(self.path)) from None
        if meta.get("schema") != LOG_SCHEMA or "origin" not in meta:
            raise InputError("unknown receipt log schema", file=str(self.path), field="meta.schema",
                             expected=LOG_SCHEMA, actual=meta.get("schema"))
        self.origin: str = meta["origin"]

    def size(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM leaves").fetchone()[0])

    def iter_leaves(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        query = "SELECT idx, CAST(data AS BLOB) FROM leaves WHERE idx >= ? ORDER BY idx"
        for index, data in self._conn.execute(query, (start,)):
            yield int(index), bytes(data)

    def iter_rows(self) -> Iterator[tuple[int, bytes, bytes]]:
        """``(index, stored leaf hash, data)`` in index order."""
        query = "SELECT idx, CAST(hash AS BLOB), CAST(data AS BLOB) FROM leaves ORDER BY idx"
        for index, h, data in self._conn.execute(query):
            yield int(index), bytes(h), bytes(data)

    def node_levels(self) -> dict[int, tuple[int, int, int]]:
        """``level -> (count, min index, max index)`` of the stored perfect-subtree nodes."""
        query = "SELECT level, COUNT(*), MIN(idx), MAX(idx) FROM nodes GROUP BY level"
        return {int(level): (int(n), int(lo), int(hi)) for level, n, lo, hi in self._conn.execute(query)}

    def node_rows(self, level: int) -> list[tuple[int, bytes]]:
        """``(index, hash)`` of the stored nodes of one level, in index order."""
        query = "SELECT idx, CAST(hash AS BLOB) FROM nodes WHERE level = ? ORDER BY idx"
        return self._conn.execute(query, (level,)).fetchall()

    def leaf(self, index: int) -> bytes:
        row = self._conn.execute("SELECT data FROM leaves WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise LogError("no such leaf", file=str(self.path), field=f"leaf {index}")
        return bytes(row[0])

    def checkpoints(self) -> list[tuple[str, str]]:
        rows = self._conn.execute("SELECT seq, note FROM checkpoints ORDER BY seq")
        return [(f"{self.path}: checkpoint #{seq}", note) for seq, note in rows]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> DatabaseSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
