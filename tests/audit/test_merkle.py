"""audit.merkle against a literal transcription of RFC 9162 §2.1 and published CT vectors."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import merkle
from audit.merkle import ProofError

# --------------------------------------------------------------------------- reference (RFC 9162)
# Written straight from the recursive definitions, over a plain list of leaves; it shares
# no code with audit.merkle.


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + d[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return _h(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """§2.1.3.1 PATH(m, D[n])."""
    n = len(d)
    if n == 1 and m == 0:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """§2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


def leaves_of(n: int, salt: bytes = b"") -> list[bytes]:
    return [salt + b"leaf-%d" % i for i in range(n)]


# Count lookups to prove the algorithms are O(log n) in store accesses.
class CountingStore:
    def __init__(self, inner: merkle.MemoryNodeStore) -> None:
        self.inner = inner
        self.calls = 0

    def get_node(self, level: int, index: int) -> bytes:
        self.calls += 1
        return self.inner.get_node(level, index)


class BatchStore:
    def __init__(self, inner: merkle.MemoryNodeStore) -> None:
        self.inner = inner
        self.batches = 0

    def get_node(self, level: int, index: int) -> bytes:  # pragma: no cover - must not be used
        raise AssertionError("get_nodes should be preferred")

    def get_nodes(self, coords: list[tuple[int, int]]) -> list[bytes]:
        self.batches += 1
        return [self.inner.get_node(level, index) for level, index in coords]


# --------------------------------------------------------------------------- published vectors
# Leaves and roots of the RFC 6962 reference tree, from google/certificate-transparency
# python/ct/crypto/merkle_test.py (TreeHasherTest.test_vector_leaves/_hashes) and
# transparency-dev/merkle proof/verify_test.go (`leaves`, `roots`, `inclusionProofs`,
# `consistencyProofs`; that file numbers leaves from 1).
CT_LEAVES = [
    bytes.fromhex(x)
    for x in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
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
CT_EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# (leaf index 0-based, tree size, proof)
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CT_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
# A real-log audit path, google/certificate-transparency python/ct/crypto/merkle_test.py
# (MerkleVerifierTest: leaf_hash, leaf_index, tree_size, sha256_audit_path, expected_root_hash).
CT_REAL_LEAF_HASH = "7a395c866d5ecdb0cccb623e011dbc392cd348d1d1d72776174e127a24b09c78"
CT_REAL_INDEX = 848049
CT_REAL_SIZE = 3630887
CT_REAL_ROOT = "78316a05c9bcf14a3a4548f5b854a9adfcd46a4c034401b3ce7eb7ac2f1d0ecb"
CT_REAL_PATH = [
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


def _hx(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_empty_root_is_sha256_of_nothing() -> None:
    assert merkle.EMPTY_ROOT.hex() == CT_EMPTY_ROOT
    assert merkle.root_from_leaves([]).hex() == CT_EMPTY_ROOT
    assert merkle.MemoryNodeStore().root() == merkle.EMPTY_ROOT
    assert merkle.CompactRange().root() == merkle.EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_published_ct_roots(size: int) -> None:
    assert merkle.root_from_leaves(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]
    store = merkle.MemoryNodeStore.from_leaves(CT_LEAVES)
    assert store.root(size).hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), CT_INCLUSION)
def test_published_ct_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    store = merkle.MemoryNodeStore.from_leaves(CT_LEAVES)
    assert store.inclusion_proof(index, size) == _hx(proof)
    lh = merkle.leaf_hash(CT_LEAVES[index])
    assert merkle.verify_inclusion(lh, index, size, _hx(proof), bytes.fromhex(CT_ROOTS[size - 1]))


@pytest.mark.parametrize(("size1", "size2", "proof"), CT_CONSISTENCY)
def test_published_ct_consistency_proofs(size1: int, size2: int, proof: list[str]) -> None:
    store = merkle.MemoryNodeStore.from_leaves(CT_LEAVES)
    assert store.consistency_proof(size1, size2) == _hx(proof)
    r1, r2 = bytes.fromhex(CT_ROOTS[size1 - 1]), bytes.fromhex(CT_ROOTS[size2 - 1])
    assert merkle.verify_consistency(size1, size2, r1, r2, _hx(proof))
    with pytest.raises(ProofError):
        merkle.verify_consistency(size1, size2, r2, r1, _hx(proof))


def test_published_real_log_audit_path() -> None:
    lh, root, path = bytes.fromhex(CT_REAL_LEAF_HASH), bytes.fromhex(CT_REAL_ROOT), _hx(CT_REAL_PATH)
    assert merkle.verify_inclusion(lh, CT_REAL_INDEX, CT_REAL_SIZE, path, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(lh, CT_REAL_INDEX + 1, CT_REAL_SIZE, path, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(lh, CT_REAL_INDEX, CT_REAL_SIZE, path[:-1], root)


def test_leaf_and_node_hash_vectors() -> None:
    # google/certificate-transparency merkle_test.py TreeHasherTest.sha256_leaves / sha256_nodes
    assert merkle.leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert merkle.leaf_hash(bytes.fromhex("101112131415161718191a1b1c1d1e1f")).hex() == (
        "3bfb960453ebaebf33727da7a1f4db38acc051d381b6da20d6d4e88f0eabfd7a"
    )
    left = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    right = bytes.fromhex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
    assert merkle.node_hash(left, right).hex() == ("1a378704c17da31e2d05b6d121c2bb2c7d76f6ee6fa8f983e596c2d034963c57")


# --------------------------------------------------------------------------- exhaustive 1..70

MAX_N = 70
LEAVES = leaves_of(MAX_N)
STORE = merkle.MemoryNodeStore.from_leaves(LEAVES)
REF_ROOTS = [ref_mth(LEAVES[:n]) for n in range(MAX_N + 1)]


def test_roots_all_sizes() -> None:
    compact = merkle.CompactRange()
    for n in range(MAX_N + 1):
        assert merkle.root_from_leaves(LEAVES[:n]) == REF_ROOTS[n]
        assert STORE.root(n) == REF_ROOTS[n]
        assert compact.root() == REF_ROOTS[n]
        assert merkle.CompactRange.from_store(STORE, n).root() == REF_ROOTS[n]
        if n < MAX_N:
            compact.append(merkle.leaf_hash(LEAVES[n]))


def test_store_holds_exactly_the_perfect_subtrees() -> None:
    for n in range(MAX_N + 1):
        store = merkle.MemoryNodeStore.from_leaves(LEAVES[:n])
        assert len(store._nodes) == 2 * n - n.bit_count()
        for (level, index), value in store._nodes.items():
            assert value == ref_mth(LEAVES[index << level : (index + 1) << level])


@pytest.mark.parametrize("size", range(1, MAX_N + 1))
def test_inclusion_all_indices(size: int) -> None:
    root = REF_ROOTS[size]
    for index in range(size):
        expected = ref_path(index, LEAVES[:size])
        proof = STORE.inclusion_proof(index, size)
        assert proof == expected, (index, size)
        lh = merkle.leaf_hash(LEAVES[index])
        assert merkle.verify_inclusion(lh, index, size, proof, root)
        # The same proof must not verify anything else.
        for bad_index in {index - 1, index + 1, index ^ 2, size}:
            if bad_index != index and bad_index >= 0:
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(lh, bad_index, size, proof, root)
        with pytest.raises(ProofError):
            merkle.verify_inclusion(merkle.leaf_hash(b"other"), index, size, proof, root)
        with pytest.raises(ProofError):
            merkle.verify_inclusion(lh, index, size, [*proof, root], root)
        if proof:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(lh, index, size, proof[:-1], root)
            flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
            with pytest.raises(ProofError):
                merkle.verify_inclusion(lh, index, size, flipped, root)
            # (A proof may also fit another size when the right edge happens to fold the
            # same way: size is bound by the signed checkpoint, not by the proof.)
            with pytest.raises(ProofError):
                merkle.verify_inclusion(lh, index, size * 2, proof, root)


@pytest.mark.parametrize("size2", range(1, MAX_N + 1))
def test_consistency_all_pairs(size2: int) -> None:
    root2 = REF_ROOTS[size2]
    for size1 in range(0, size2 + 1):
        root1 = REF_ROOTS[size1]
        expected = [] if size1 in (0, size2) else ref_proof(size1, LEAVES[:size2])
        proof = STORE.consistency_proof(size1, size2)
        assert proof == expected, (size1, size2)
        assert merkle.verify_consistency(size1, size2, root1, root2, proof)
        if 0 < size1 < size2:
            with pytest.raises(ProofError):
                merkle.verify_consistency(size1, size2, root1, root2, [])
            with pytest.raises(ProofError):
                merkle.verify_consistency(size1, size2, root1, root2, proof[:-1])
            with pytest.raises(ProofError):
                merkle.verify_consistency(size1, size2, root1, root2, [*proof, root1])
            with pytest.raises(ProofError):
                merkle.verify_consistency(size1, size2, root1, REF_ROOTS[size2 - 1], proof)
            with pytest.raises(ProofError):
                merkle.verify_consistency(size1, size2, REF_ROOTS[size1 - 1], root2, proof)
            for i in range(len(proof)):
                bad = list(proof)
                bad[i] = bytes([bad[i][0] ^ 0x10]) + bad[i][1:]
                with pytest.raises(ProofError):
                    merkle.verify_consistency(size1, size2, root1, root2, bad)
            # A different history of the same sizes must not be consistent.
            other_root1 = ref_mth(leaves_of(size1, b"x"))
            with pytest.raises(ProofError):
                merkle.verify_consistency(size1, size2, other_root1, root2, proof)
            if size1 + 1 < size2:
                with pytest.raises(ProofError):
                    merkle.verify_consistency(size1 + 1, size2, REF_ROOTS[size1 + 1], root2, proof)


def test_consistency_edge_cases() -> None:
    r = REF_ROOTS
    assert merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, r[5], [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(0, 5, r[1], r[5], [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, r[5], [r[5]])
    assert merkle.verify_consistency(5, 5, r[5], r[5], [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(5, 5, r[4], r[5], [])
    with pytest.raises(ProofError):
        merkle.verify_consistency(5, 5, r[5], r[5], [r[5]])
    with pytest.raises(ProofError):
        merkle.verify_consistency(6, 5, r[6], r[5], [])
    with pytest.raises(ProofError):
        merkle.consistency_proof(STORE, 6, 5)
    with pytest.raises(ProofError):
        merkle.verify_consistency(2, 5, b"short", r[5], [])


def test_inclusion_edge_cases() -> None:
    lh = merkle.leaf_hash(LEAVES[0])
    assert merkle.verify_inclusion(lh, 0, 1, [], lh)
    for index, size in [(0, 0), (1, 1), (-1, 3)]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(lh, index, size, [], lh)
        with pytest.raises(ProofError):
            merkle.inclusion_proof(STORE, index, size)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(lh, 0, 2, [b"\x00" * 31], lh)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(b"", 0, 1, [], lh)


def test_compact_range_append_reports_new_nodes() -> None:
    compact = merkle.CompactRange()
    created = compact.append(merkle.leaf_hash(b"a"))
    assert [(lv, ix) for lv, ix, _ in created] == [(0, 0)]
    created = compact.append(merkle.leaf_hash(b"b"))
    assert [(lv, ix) for lv, ix, _ in created] == [(0, 1), (1, 0)]
    compact.append(merkle.leaf_hash(b"c"))
    created = compact.append(merkle.leaf_hash(b"d"))
    assert [(lv, ix) for lv, ix, _ in created] == [(0, 3), (1, 1), (2, 0)]
    assert compact.root() == ref_mth([b"a", b"b", b"c", b"d"])
    with pytest.raises(ProofError):
        merkle.CompactRange(3, [compact.root()])  # popcount(3) == 2 hashes needed
    compact.append(merkle.leaf_hash(b"e"))
    restored = merkle.CompactRange.from_dict(compact.to_dict())
    assert restored == compact and restored.root() == ref_mth([b"a", b"b", b"c", b"d", b"e"])
    for bad in [{"size": 2, "hashes": ["zz"]}, {"size": "1", "hashes": []}, {"size": 1, "hashes": []}]:
        with pytest.raises(ProofError):
            merkle.CompactRange.from_dict(bad)


def test_lookups_are_logarithmic_and_batched() -> None:
    n = 1 << 12
    big = merkle.MemoryNodeStore()
    for i in range(n + 77):
        big.append_hash(hashlib.sha256(i.to_bytes(4, "big")).digest())
    size = big.size
    bound = 2 * size.bit_length() + 2
    counting = CountingStore(big)
    for index in (0, 1, size // 3, size - 2, size - 1):
        counting.calls = 0
        merkle.inclusion_proof(counting, index, size)
        assert counting.calls <= bound
    for size1 in (1, 3, size // 2, size - 5, size - 1):
        counting.calls = 0
        merkle.consistency_proof(counting, size1, size)
        assert counting.calls <= bound
    counting.calls = 0
    merkle.tree_root(counting, size)
    assert counting.calls == size.bit_count()
    batch = BatchStore(big)
    proof = merkle.inclusion_proof(batch, 1234, size)
    merkle.consistency_proof(batch, 1000, size)
    assert batch.batches == 2
    assert merkle.verify_inclusion(big.get_node(0, 1234), 1234, size, proof, big.root())


def test_range_coords_rejects_unaligned_ranges() -> None:
    assert merkle.range_coords(8, 13) == [(2, 2), (0, 12)]
    with pytest.raises(ProofError):
        merkle.range_coords(3, 7)
    with pytest.raises(ProofError):
        merkle.range_coords(4, 4)


# --------------------------------------------------------------------------- hypothesis, larger sizes


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=1, max_value=600), data=st.data())
def test_random_inclusion_matches_reference(size: int, data: st.DataObject) -> None:
    leaves = leaves_of(size, b"h")
    store = merkle.MemoryNodeStore.from_leaves(leaves)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = store.inclusion_proof(index, size)
    assert proof == ref_path(index, leaves)
    root = store.root()
    assert root == ref_mth(leaves)
    assert merkle.verify_inclusion(merkle.leaf_hash(leaves[index]), index, size, proof, root)


@settings(max_examples=60, deadline=None)
@given(size2=st.integers(min_value=1, max_value=600), data=st.data())
def test_random_consistency_matches_reference(size2: int, data: st.DataObject) -> None:
    leaves = leaves_of(size2, b"c")
    store = merkle.MemoryNodeStore.from_leaves(leaves)
    size1 = data.draw(st.integers(min_value=1, max_value=size2))
    proof = store.consistency_proof(size1, size2)
    assert proof == ([] if size1 == size2 else ref_proof(size1, leaves))
    assert merkle.verify_consistency(size1, size2, store.root(size1), store.root(size2), proof)


@settings(max_examples=40, deadline=None)
@given(size2=st.integers(min_value=2, max_value=5000), data=st.data())
def test_random_large_proofs_verify(size2: int, data: st.DataObject) -> None:
    store = merkle.MemoryNodeStore()
    for i in range(size2):
        store.append_hash(hashlib.sha256(b"%d" % i).digest())
    size1 = data.draw(st.integers(min_value=1, max_value=size2 - 1))
    index = data.draw(st.integers(min_value=0, max_value=size2 - 1))
    r1, r2 = store.root(size1), store.root(size2)
    assert merkle.verify_consistency(size1, size2, r1, r2, store.consistency_proof(size1, size2))
    assert merkle.verify_inclusion(store.get_node(0, index), index, size2, store.inclusion_proof(index), r2)
    if index < size1:
        assert merkle.verify_inclusion(store.get_node(0, index), index, size1, store.inclusion_proof(index, size1), r1)
