"""RFC 6962 Merkle tree: spec vectors, an independent recursive reference, and property tests."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm_audit.errors import LogError
from kolm_audit.log.merkle import (
    EMPTY_ROOT,
    Frontier,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# --- an independent reference, written straight from RFC 6962 §2.1 with hashlib ---------------------


def _ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _ref_mth(d[:k]) + _ref_mth(d[k:])).digest()


def _ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*_ref_path(m, d[:k]), _ref_mth(d[k:])]
    return [*_ref_path(m - k, d[k:]), _ref_mth(d[:k])]


def _ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*_ref_subproof(m, d[:k], b), _ref_mth(d[k:])]
    return [*_ref_subproof(m - k, d[k:], False), _ref_mth(d[:k])]


def _tree(leaves: list[bytes]) -> MemoryTree:
    return MemoryTree([leaf_hash(x) for x in leaves])


# --- exact-byte spec vectors ------------------------------------------------------------------------

# The certificate-transparency reference inputs d0..d7 and the roots of their first n entries
# (google/certificate-transparency python/ct/crypto/merkle_test.py, also used by Trillian).
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (old size, new size, proof) from the same file ("lifted from the C++ branch").
CT_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
# A real CT log audit path (same file): leaf 848049 of a tree of 3630887 entries.
CT_AUDIT_PATH = [
    "1a208aeebcd1b39fe2de247ee8db9454e1e93a312d206b87f6ca9cc6ec6f1ddd",
    "0a1b78b383f580856f433c01a5741e160d451c185910027f6cc9f828687a40c4",
    "3d1745789bc63f2da15850de1c12a5bf46ed81e1cc90f086148b1662e79aab3d",
    "9095b61e14d8990acf390905621e62b1714fb8e399fbb71de5510e0aef45affe",
    "0a332b91b8fab564e6afd1dd452449e04619b18accc0ff9aa8393cd4928451f2",
    "2336f0181d264aed6d8f3a6507ca14a8d3b3c3a23791ac263e845d208c1ee330",
    "b4ce56e300590500360c146c6452edbede25d4ed83919278749ee5dbe178e048",
    "933f6ddc848ea562e4f9c5cfb5f176941301dad0c6fdb9d1fbbe34fac1be6966",
    "b95a6222958a86f74c030be27c44f57dbe313e5e7c7f4ffb98bcbd3a03bb52f2",
    "daeeb3ce5923defd0faeb8e0c210b753b85b809445d7d3d3cd537a9aabaa9c45",
    "7fadd0a13e9138a2aa6c3fdec4e2275af233b94812784f66bcca9aa8e989f2bc",
    "1864e6ba3e32878610546539734fb5eeae2529991f130c575c73a7e25a2a7c56",
    "12842d1202b1dc6828a17ab253c02e7ce9409b5192430feba44189f39cc02d66",
    "29af64b16fa3053c13d02ac63aa75b23aa468506e44c3a2315edc85d2dc22b11",
    "b527b99934a0bd9edd154e449b0502e2c499bba783f3bc3dfe23364b6b532009",
    "4584db8ae8e351ace08e01f306378a92bfd43611714814f3d834a2842d69faa8",
    "86a9a41573b0d6e4292f01e93243d6cc65b30f06606fc6fa57390e7e90ed580f",
    "a88b98fbe84d4c6aae8db9d1605dfac059d9f03fe0fcb0d5dff1295dacba09e6",
    "06326dc617a6d1f7021dc536026dbfd5fffc6f7c5531d48ef6ccd1ed1569f2a1",
    "f41fe8fdc3a2e4e8345e30216e7ebecffee26ff266eeced208a6c2a3cf08f960",
    "40cf5bde8abb76983f3e98ba97aa36240402975674e120f234b3448911090f8d",
    "b3222dc8658538079883d980d7fdc2bef9285344ea34338968f736b04aeb387a",
]
CT_AUDIT_LEAF = "7a395c866d5ecdb0cccb623e011dbc392cd348d1d1d72776174e127a24b09c78"
CT_AUDIT_ROOT = "78316a05c9bcf14a3a4548f5b854a9adfcd46a4c034401b3ce7eb7ac2f1d0ecb"


def test_empty_tree_is_hash_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert MemoryTree([]).root() == EMPTY_ROOT


def test_hash_prefixes() -> None:
    assert leaf_hash(b"ab") == hashlib.sha256(b"\x00ab").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()


@pytest.mark.parametrize("n", range(9))
def test_roots_equal_hand_computed_reference(n: int) -> None:
    leaves = [f"leaf-{i}".encode() for i in range(n)]
    tree = _tree(leaves)
    assert tree.root() == _ref_mth(leaves)
    for m in range(n):
        assert tree.inclusion_proof(m) == _ref_path(m, leaves)
    for m in range(1, n):
        assert tree.consistency_proof(m) == _ref_subproof(m, leaves, True)


def test_hand_computed_tree_of_three() -> None:
    a, b, c = (hashlib.sha256(b"\x00" + x).digest() for x in (b"a", b"b", b"c"))
    ab = hashlib.sha256(b"\x01" + a + b).digest()
    root = hashlib.sha256(b"\x01" + ab + c).digest()
    tree = _tree([b"a", b"b", b"c"])
    assert tree.root() == root
    assert tree.inclusion_proof(2) == [ab]
    assert tree.inclusion_proof(0) == [b, c]
    assert tree.consistency_proof(2) == [c]


@pytest.mark.parametrize("n", range(1, 9))
def test_certificate_transparency_roots(n: int) -> None:
    assert _tree(CT_LEAVES[:n]).root().hex() == CT_ROOTS[n - 1]


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_certificate_transparency_consistency(old: int, new: int, proof: list[str]) -> None:
    tree = _tree(CT_LEAVES[:new])
    assert [p.hex() for p in tree.consistency_proof(old)] == proof
    verify_consistency(old_size=old, new_size=new, old_root=bytes.fromhex(CT_ROOTS[old - 1]),
                       new_root=bytes.fromhex(CT_ROOTS[new - 1]), proof=[bytes.fromhex(p) for p in proof])


def test_certificate_transparency_real_audit_path() -> None:
    proof = [bytes.fromhex(p) for p in CT_AUDIT_PATH]
    verify_inclusion(index=848049, size=3630887, leaf=bytes.fromhex(CT_AUDIT_LEAF), proof=proof,
                     root=bytes.fromhex(CT_AUDIT_ROOT))
    with pytest.raises(LogError):
        verify_inclusion(index=848050, size=3630887, leaf=bytes.fromhex(CT_AUDIT_LEAF), proof=proof,
                         root=bytes.fromhex(CT_AUDIT_ROOT))


def test_consistency_edge_cases() -> None:
    tree = _tree([b"x", b"y", b"z"])
    verify_consistency(old_size=0, new_size=3, old_root=EMPTY_ROOT, new_root=tree.root(), proof=[])
    verify_consistency(old_size=3, new_size=3, old_root=tree.root(), new_root=tree.root(), proof=[])
    with pytest.raises(LogError):
        verify_consistency(old_size=3, new_size=3, old_root=tree.root(2), new_root=tree.root(), proof=[])
    with pytest.raises(LogError):
        verify_consistency(old_size=3, new_size=2, old_root=tree.root(), new_root=tree.root(2), proof=[])
    with pytest.raises(LogError):
        verify_consistency(old_size=1, new_size=3, old_root=tree.root(1), new_root=tree.root(), proof=[])
    with pytest.raises(LogError):
        tree.inclusion_proof(3)


def test_frontier_matches_memory_tree() -> None:
    hashes = [leaf_hash(bytes([i])) for i in range(100)]
    frontier = Frontier()
    made = []
    for h in hashes:
        made += frontier.append(h)
        assert frontier.root() == MemoryTree(hashes[: frontier.size]).root()
    tree = MemoryTree(hashes)
    assert all(tree.levels[level][index] == h for level, index, h in made)
    assert len(made) == sum(len(level) for level in tree.levels[1:])


# --- properties ---------------------------------------------------------------------------------------


def _flip(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    out = list(proof)
    h = bytearray(out[which])
    h[bit // 8] ^= 1 << (bit % 8)
    out[which] = bytes(h)
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=1, max_value=70), data=st.data())
def test_every_inclusion_proof_verifies_and_every_alteration_fails(n: int, data: st.DataObject) -> None:
    tree = _tree([i.to_bytes(4, "big") for i in range(n)])
    size = data.draw(st.integers(min_value=1, max_value=n))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof, root, leaf = tree.inclusion_proof(index, size), tree.root(size), tree.levels[0][index]
    verify_inclusion(index=index, size=size, leaf=leaf, proof=proof, root=root)
    if proof:
        which = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=255))
        with pytest.raises(LogError):
            verify_inclusion(index=index, size=size, leaf=leaf, proof=_flip(proof, which, bit), root=root)
        with pytest.raises(LogError):
            verify_inclusion(index=index, size=size, leaf=leaf, proof=proof[:-1], root=root)
    with pytest.raises(LogError):
        verify_inclusion(index=index, size=size, leaf=leaf, proof=[*proof, root], root=root)
    with pytest.raises(LogError):
        verify_inclusion(index=index, size=size, leaf=_flip([leaf], 0, 0)[0], proof=proof, root=root)
    other = data.draw(st.integers(min_value=0, max_value=size).filter(lambda x: x != index))
    with pytest.raises(LogError):
        verify_inclusion(index=other, size=size, leaf=leaf, proof=proof, root=root)
    if n > 1:  # the same proof against another size's (genuine) root
        wrong_size = data.draw(st.integers(min_value=1, max_value=n).filter(lambda x: x != size))
        with pytest.raises(LogError):
            verify_inclusion(index=index, size=wrong_size, leaf=leaf, proof=proof, root=tree.root(wrong_size))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=2, max_value=70), data=st.data())
def test_every_consistency_proof_verifies_and_every_alteration_fails(n: int, data: st.DataObject) -> None:
    tree = _tree([i.to_bytes(4, "big") for i in range(n)])
    new = data.draw(st.integers(min_value=2, max_value=n))
    old = data.draw(st.integers(min_value=1, max_value=new - 1))
    proof = tree.consistency_proof(old, new)
    old_root, new_root = tree.root(old), tree.root(new)
    assert proof == consistency_proof(old_size=old, new_size=new, subtree=tree.subtree)
    verify_consistency(old_size=old, new_size=new, old_root=old_root, new_root=new_root, proof=proof)
    which = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=255))
    with pytest.raises(LogError):
        verify_consistency(old_size=old, new_size=new, old_root=old_root, new_root=new_root,
                           proof=_flip(proof, which, bit))
    with pytest.raises(LogError):
        verify_consistency(old_size=old, new_size=new, old_root=old_root, new_root=new_root, proof=proof[:-1])
    with pytest.raises(LogError):
        verify_consistency(old_size=old, new_size=new, old_root=old_root, new_root=new_root,
                           proof=[*proof, new_root])
    with pytest.raises(LogError):
        verify_consistency(old_size=old, new_size=new, old_root=_flip([old_root], 0, 7)[0], new_root=new_root,
                           proof=proof)
    if new > 2:
        wrong_old = data.draw(st.integers(min_value=1, max_value=new - 1).filter(lambda x: x != old))
        with pytest.raises(LogError):
            verify_consistency(old_size=wrong_old, new_size=new, old_root=tree.root(wrong_old), new_root=new_root,
                               proof=proof)
    if n > old + 1:  # the same proof against another size's (genuine) root
        wrong_new = data.draw(st.integers(min_value=old + 1, max_value=n).filter(lambda x: x != new))
        with pytest.raises(LogError):
            verify_consistency(old_size=old, new_size=wrong_new, old_root=old_root, new_root=tree.root(wrong_new),
                               proof=proof)


@settings(max_examples=40, deadline=None)
@given(leaves=st.lists(st.binary(max_size=12), min_size=1, max_size=40))
def test_random_leaves_match_reference(leaves: list[bytes]) -> None:
    tree = _tree(leaves)
    assert tree.root() == _ref_mth(leaves)
    frontier = Frontier()
    for h in tree.levels[0]:
        frontier.append(h)
    assert frontier.root() == tree.root()


def test_inclusion_proof_with_subtree_oracle_rejects_bad_index() -> None:
    tree = _tree([b"a"])
    with pytest.raises(LogError):
        inclusion_proof(index=-1, size=1, subtree=tree.subtree)
