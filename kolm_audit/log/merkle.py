"""RFC 6962 / RFC 9162 Merkle trees: hashing, tree heads, inclusion and consistency proofs.

Definitions (RFC 6962 §2.1, restated in RFC 9162 §2.1.1):

* the hash of an empty list is ``SHA-256("")``;
* a leaf hash is ``SHA-256(0x00 ‖ leaf)``;
* an interior node is ``SHA-256(0x01 ‖ left ‖ right)`` where the left subtree holds the largest
  power of two strictly smaller than the number of leaves.

Proof *generation* is written against a ``subtree(start, end) -> MTH(D[start:end])`` oracle so the
log can answer from stored perfect-subtree hashes (``O(log n)`` lookups per proof, no rehashing).
Proof *verification* follows the iterative algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 step by step.

Example::

    >>> leaves = [b"a", b"b", b"c"]
    >>> tree = MemoryTree([leaf_hash(x) for x in leaves])
    >>> root = tree.root()
    >>> proof = inclusion_proof(index=2, size=3, subtree=tree.subtree)
    >>> verify_inclusion(index=2, size=3, leaf=leaf_hash(b"c"), proof=proof, root=root)
    >>> verify_consistency(old_size=2, new_size=3, old_root=tree.root(2), new_root=root,
    ...                    proof=consistency_proof(old_size=2, new_size=3, subtree=tree.subtree))
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from kolm_audit.errors import LogError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962 §2.1: MTH({}) = SHA-256()

Subtree = Callable[[int, int], bytes]
"""``subtree(start, end)`` returns MTH(D[start:end]) for the ranges the RFC recursion visits."""

_sha256 = hashlib.sha256


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 6962 §2.1: MTH({d0}) = SHA-256(0x00 ‖ d0)."""
    return _sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1: SHA-256(0x01 ‖ MTH(left) ‖ MTH(right))."""
    return _sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``), RFC 6962 §2.1's ``k``."""
    if n < 2:
        raise ValueError("split point needs n >= 2")
    return 1 << ((n - 1).bit_length() - 1)


def perfect_decomposition(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees ``(level, index)`` that make up ``[0, size)``, left to right."""
    out: list[tuple[int, int]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, start >> level))
            start += 1 << level
    return out


def fold_root(perfect: Sequence[bytes]) -> bytes:
    """Root of a tree given its perfect subtrees left to right (largest first): fold right to left."""
    if not perfect:
        return EMPTY_ROOT
    acc = perfect[-1]
    for h in reversed(perfect[:-1]):
        acc = node_hash(h, acc)
    return acc


# --- proof generation (RFC 6962 §2.1.1 PATH and §2.1.2 PROOF/SUBPROOF) -----------------------------


def _check_range(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise LogError("leaf index out of range", field="index", expected=f"0 <= index < {size}",
                       actual=str(index))


def inclusion_proof(*, index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 §2.1.1, listed from the leaf's sibling up to the root's children."""
    _check_range(index, size)
    path: list[bytes] = []
    start, n, m = 0, size, index
    while n > 1:
        k = split_point(n)
        if m < k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            path.append(subtree(start + k, start + n))
            n = k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            path.append(subtree(start, start + k))
            start, n, m = start + k, n - k, m - k
    path.reverse()
    return path


def consistency_proof(*, old_size: int, new_size: int, subtree: Subtree) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) of RFC 6962 §2.1.2 (empty when m == n or m == 0)."""
    if not 0 <= old_size <= new_size:
        raise LogError("consistency proof sizes out of order", field="old_size",
                       expected=f"0 <= old_size <= {new_size}", actual=str(old_size))
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, n, m, whole = 0, new_size, old_size, True
    while m != n:
        k = split_point(n)
        if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            proof.append(subtree(start + k, start + n))
            n = k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            proof.append(subtree(start, start + k))
            start, n, m, whole = start + k, n - k, m - k, False
    if not whole:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        proof.append(subtree(start, start + n))
    proof.reverse()
    return proof


# --- proof verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -------------------------------------------


def _check_hashes(hashes: Iterable[bytes], what: str) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise LogError("malformed hash", field=f"{what}[{i}]", expected=f"{HASH_SIZE} bytes")


def root_from_inclusion(*, index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof implies (RFC 9162 §2.1.3.2 steps 1-4, without the final compare)."""
    _check_hashes([leaf], "leaf")
    _check_hashes(proof, "proof")
    if not 0 <= index < size:  # step 1
        raise LogError("leaf index not below tree size", field="index", expected=f"< {size}", actual=str(index))
    fn, sn, r = index, size - 1, leaf  # step 2
    for p in proof:  # step 3
        if sn == 0:  # 3a
            raise LogError("inclusion proof too long", field="proof", expected="fewer hashes")
        if fn & 1 or fn == sn:  # 3b
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 3c
        sn >>= 1
    if sn != 0:  # step 4
        raise LogError("inclusion proof too short", field="proof", expected="more hashes")
    return r


def verify_inclusion(*, index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: raise :class:`LogError` unless ``proof`` shows leaf hash ``leaf`` at ``index``."""
    if root_from_inclusion(index=index, size=size, leaf=leaf, proof=proof) != root:
        raise LogError("inclusion proof does not lead to the root", field=f"leaf {index}",
                       expected=root.hex(), actual="a different root")


def verify_consistency(*, old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raise :class:`LogError` unless tree ``new`` extends tree ``old``.

    Edge cases as transparency-dev/merkle: sizes equal ⇒ empty proof and equal roots; old size 0 ⇒
    empty proof (every tree extends the empty tree).
    """
    _check_hashes([old_root, new_root], "root")
    _check_hashes(proof, "proof")
    if old_size < 0 or new_size < old_size:
        raise LogError("consistency proof sizes out of order", field="old_size",
                       expected=f"0 <= old_size <= {new_size}", actual=str(old_size))
    if old_size == new_size:
        if proof:
            raise LogError("consistency proof between equal sizes must be empty", field="proof")
        if old_root != new_root:
            raise LogError("two different roots for the same tree size", field=f"size {old_size}",
                           expected=old_root.hex(), actual=new_root.hex())
        return
    if old_size == 0:
        if proof:
            raise LogError("consistency proof from the empty tree must be empty", field="proof")
        if old_root != EMPTY_ROOT:
            raise LogError("root of the empty tree is wrong", field="old_root", expected=EMPTY_ROOT.hex())
        return
    if not proof:  # step 1
        raise LogError("empty consistency proof", field="proof", expected="at least one hash")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: first_size is an exact power of 2
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:  # 6a
            raise LogError("consistency proof too long", field="proof", expected="fewer hashes")
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    if sn != 0:  # step 7
        raise LogError("consistency proof too short", field="proof", expected="more hashes")
    if fr != old_root:
        raise LogError("old tree is not a prefix of the new tree", field=f"size {old_size}",
                       expected=old_root.hex(), actual=fr.hex())
    if sr != new_root:
        raise LogError("consistency proof does not lead to the new root", field=f"size {new_size}",
                       expected=new_root.hex(), actual=sr.hex())


# --- in-memory trees --------------------------------------------------------------------------------


def subtree_from_nodes(node: Callable[[int, int], bytes]) -> Subtree:
    """Build a :data:`Subtree` oracle from a ``node(level, index)`` lookup of perfect subtrees.

    Every range the RFC recursion asks for starts at a multiple of a power of two at least its left
    part, so it is the fold of O(log n) perfect subtrees.
    """

    def subtree(start: int, end: int) -> bytes:
        n = end - start
        if n <= 0:
            return EMPTY_ROOT
        parts: list[bytes] = []
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                if start % (1 << level):
                    raise ValueError(f"range [{start}, {end}) is not aligned for the RFC 6962 recursion")
                parts.append(node(level, start >> level))
                start += 1 << level
        return fold_root(parts)

    return subtree


class MemoryTree:
    """Every perfect subtree of a list of leaf hashes, kept level by level (for bundles and tests)."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.levels: list[list[bytes]] = [list(leaf_hashes)]
        level = self.levels[0]
        while len(level) > 1:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self.levels.append(level)
        self.size = len(self.levels[0])
        self.subtree = subtree_from_nodes(self.node)

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise LogError("tree size beyond the tree", field="size", expected=f"<= {self.size}", actual=str(size))
        return fold_root([self.node(level, i) for level, i in perfect_decomposition(size)])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index=index, size=self.size if size is None else size, subtree=self.subtree)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_proof(old_size=old_size, new_size=self.size if new_size is None else new_size,
                                 subtree=self.subtree)


class Frontier:
    """The compact range of a growing tree: one perfect subtree hash per set bit of its size.

    ``append`` returns the perfect nodes ``(level, index, hash)`` it completed (level >= 1), which is
    what the log stores so proofs never rehash the tree.
    """

    def __init__(self, size: int = 0, perfect: Sequence[bytes] = ()) -> None:
        if len(perfect) != size.bit_count():
            raise ValueError("frontier needs one hash per set bit of the size")
        self.size = size
        self._stack = list(perfect)  # largest subtree first

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        made: list[tuple[int, int, bytes]] = []
        h, index, level = leaf, self.size, 0
        while index & 1:
            h = node_hash(self._stack.pop(), h)
            index >>= 1
            level += 1
            made.append((level, index, h))
        self._stack.append(h)
        self.size += 1
        return made

    def root(self) -> bytes:
        return fold_root(self._stack)
