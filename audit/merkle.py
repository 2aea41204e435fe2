"""RFC 9162 (Certificate Transparency v2) §2.1 Merkle tree, without Django.

Hashing (SHA-256):

* leaf hash  = SHA-256(0x00 || leaf bytes)
* node hash  = SHA-256(0x01 || left || right)
* MTH({})    = SHA-256("")   (the root of the empty tree)

Node coordinates
----------------
Every *perfect* (complete, power-of-two sized) subtree of the log is addressed by
``(level, index)``: it covers leaves ``[index * 2**level, (index + 1) * 2**level)``.
Level 0 holds the leaf hashes.  Such a node never changes once the log has grown past
its last leaf, so a storage backend can persist each one exactly once (about two
nodes per leaf, see :meth:`CompactRange.append`).

Any range ``[start, end)`` that occurs in the RFC 9162 recursion (``start`` aligned,
``end`` either aligned or the tree size) is the right fold of at most ``log2(n) + 1``
perfect subtrees, so roots, inclusion proofs and consistency proofs for any size are
computed from O(log n) node lookups (:class:`NodeStore`), never O(n).

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MemoryNodeStore",
    "NodeStore",
    "ProofError",
    "consistency_proof",
    "consistency_proof_coords",
    "frontier_coords",
    "inclusion_proof",
    "inclusion_proof_coords",
    "leaf_hash",
    "node_hash",
    "range_coords",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "root_from_leaves",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Coord = tuple[int, int]
"""``(level, index)`` of a perfect subtree."""


class ProofError(Exception):
    """A proof is malformed, does not verify, or cannot be produced for the given sizes."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes")


# --------------------------------------------------------------------------- roots from data


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, in O(n) time and O(log n) memory."""
    compact = CompactRange()
    for h in hashes:
        compact.append(h)
    return compact.root()


def root_from_leaves(leaves: Iterable[bytes]) -> bytes:
    """MTH(D[n]) of the raw leaf byte strings ``leaves``."""
    compact = CompactRange()
    for leaf in leaves:
        compact.append(leaf_hash(leaf))
    return compact.root()


# --------------------------------------------------------------------------- compact range


@dataclass
class CompactRange:
    """The frontier of an append-only tree: one hash per set bit of ``size``.

    ``hashes[i]`` is the perfect subtree at ``frontier_coords(size)[i]`` (largest,
    leftmost first).  Appending a leaf touches O(log n) hashes; persisting
    ``(size, hashes)`` is enough to continue the log and to compute its root.
    """

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ProofError("size must be non-negative")
        if len(self.hashes) != self.size.bit_count():
            raise ProofError(f"a frontier of size {self.size} needs {self.size.bit_count()} hashes")
        for h in self.hashes:
            _check_hash(h, "frontier hash")

    @classmethod
    def from_store(cls, store: NodeStore, size: int) -> CompactRange:
        """Load the frontier for ``size`` from a node store (popcount(size) lookups)."""
        return cls(size, list(_fetch(store, frontier_coords(size))))

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return the perfect nodes it completes as ``(level, index, hash)``.

        The first element is always the leaf itself at level 0.  A store that saves every
        returned node holds every perfect subtree of the log (2n - popcount(n) nodes).
        """
        _check_hash(leaf_hash, "leaf hash")
        index = self.size
        created = [(0, index, bytes(leaf_hash))]
        h = bytes(leaf_hash)
        level = 0
        # Merge with the rightmost frontier entries while they are the same size.
        while (index >> level) & 1:
            left = self.hashes.pop()
            h = node_hash(left, h)
            level += 1
            created.append((level, index >> level, h))
        self.hashes.append(h)
        self.size += 1
        return created

    def root(self) -> bytes:
        """MTH of the leaves appended so far (right fold of the frontier)."""
        if not self.hashes:
            return EMPTY_ROOT
        acc = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            acc = node_hash(h, acc)
        return acc

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.hashes))

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form, e.g. for a ``JSONField``: ``{"size": n, "hashes": [hex, ...]}``."""
        return {"size": self.size, "hashes": [h.hex() for h in self.hashes]}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CompactRange:
        size, hashes = data.get("size"), data.get("hashes")
        if not isinstance(size, int) or not isinstance(hashes, list):
            raise ProofError("frontier must be {'size': int, 'hashes': [hex, ...]}")
        try:
            return cls(size, [bytes.fromhex(h) for h in hashes])
        except (TypeError, ValueError) as exc:
            raise ProofError("frontier hashes must be hex strings") from exc


# --------------------------------------------------------------------------- node stores


@runtime_checkable
class NodeStore(Protocol):
    """Where the algorithms read perfect subtree hashes from.

    ``get_node(level, index)`` returns the hash of a perfect subtree that is complete in
    the tree (raise ``KeyError`` if unknown).  A backend may also provide
    ``get_nodes(coords: Sequence[tuple[int, int]]) -> Sequence[bytes]`` to answer a whole
    proof in one round trip (e.g. one SQL query); it is used when present.
    """

    def get_node(self, level: int, index: int) -> bytes: ...


def _fetch(store: NodeStore, coords: Sequence[Coord]) -> list[bytes]:
    batch = getattr(store, "get_nodes", None)
    if batch is not None:
        values = list(batch(coords))
        if len(values) != len(coords):
            raise ProofError("node store returned the wrong number of nodes")
    else:
        values = [store.get_node(level, index) for level, index in coords]
    # Database drivers may hand back memoryview/bytearray (e.g. a PostgreSQL bytea).
    values = [bytes(v) for v in values]
    for v in values:
        _check_hash(v, "stored node")
    return values


class MemoryNodeStore:
    """In-memory log: keeps every perfect subtree node, appends in O(log n).

    Used by tests and by the offline verifier; also the reference for what a database
    backend has to store.
    """

    def __init__(self) -> None:
        self._nodes: dict[Coord, bytes] = {}
        self._frontier = CompactRange()

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MemoryNodeStore:
        store = cls()
        for leaf in leaves:
            store.append_leaf(leaf)
        return store

    @property
    def size(self) -> int:
        return self._frontier.size

    def append_leaf(self, data: bytes) -> int:
        """Hash and append raw leaf bytes; return the new leaf's index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, h: bytes) -> int:
        index = self._frontier.size
        for level, idx, value in self._frontier.append(h):
            self._nodes[(level, idx)] = value
        return index

    def get_node(self, level: int, index: int) -> bytes:
        return self._nodes[(level, index)]

    def root(self, size: int | None = None) -> bytes:
        return tree_root(self, self.size if size is None else size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self, index, self.size if size is None else size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        return consistency_proof(self, size1, self.size if size2 is None else size2)


# --------------------------------------------------------------------------- coordinates


def frontier_coords(size: int) -> list[Coord]:
    """Perfect subtrees that make up a tree of ``size`` leaves, leftmost first."""
    return range_coords(0, size) if size else []


def range_coords(start: int, end: int) -> list[Coord]:
    """Perfect subtrees whose right fold is MTH(D[start:end]).

    Valid for the ranges of the RFC 9162 recursion: ``start`` is a multiple of the
    largest power of two not above ``end - start`` (always true for ranges the proof
    definitions produce).  The result has popcount(end - start) entries.
    """
    if not 0 <= start < end:
        raise ProofError(f"empty or invalid range [{start}, {end})")
    coords: list[Coord] = []
    pos = start
    remaining = end - start
    for level in range(remaining.bit_length() - 1, -1, -1):
        if remaining >> level & 1:
            if pos % (1 << level):
                raise ProofError(f"range [{start}, {end}) is not a subtree of the RFC 9162 tree")
            coords.append((level, pos >> level))
            pos += 1 << level
    return coords


def _fold(values: Sequence[bytes]) -> bytes:
    if not values:
        raise ProofError("no nodes to fold (a range of the empty tree)")
    acc = values[-1]
    for h in reversed(values[:-1]):
        acc = node_hash(h, acc)
    return acc


def _resolve(store: NodeStore, groups: Sequence[Sequence[Coord]]) -> list[bytes]:
    """Fetch all coordinates of all groups in one batch; fold each group into one hash."""
    flat = [c for g in groups for c in g]
    values = _fetch(store, flat)
    out: list[bytes] = []
    pos = 0
    for g in groups:
        out.append(_fold(values[pos : pos + len(g)]))
        pos += len(g)
    return out


def tree_root(store: NodeStore, size: int) -> bytes:
    """MTH of the first ``size`` leaves of the log in ``store`` (popcount(size) lookups)."""
    if size < 0:
        raise ProofError("size must be non-negative")
    if size == 0:
        return EMPTY_ROOT
    return _resolve(store, [frontier_coords(size)])[0]


def inclusion_proof_coords(index: int, size: int) -> list[list[Coord]]:
    """RFC 9162 §2.1.3.1 PATH(index, D[size]) as groups of perfect-subtree coordinates.

    Each group folds (right fold of node hashes) into one proof element; elements are in
    proof order (the leaf's sibling first).
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    top_down: list[list[Coord]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            top_down.append(range_coords(lo + k, hi))
            hi = lo + k
        else:
            top_down.append(range_coords(lo, lo + k))
            lo = lo + k
    top_down.reverse()
    return top_down


def inclusion_proof(store: NodeStore, index: int, size: int) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the tree of ``size`` leaves, from O(log n) lookups."""
    return _resolve(store, inclusion_proof_coords(index, size))


def consistency_proof_coords(size1: int, size2: int) -> list[list[Coord]]:
    """RFC 9162 §2.1.4.1 PROOF(size1, D[size2]) as groups of perfect-subtree coordinates.

    Empty when ``size1 == 0`` or ``size1 == size2`` (those are consistent by definition).
    """
    if not 0 <= size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    if size1 in (0, size2):
        return []
    top_down: list[list[Coord]] = []
    lo, hi = 0, size2
    m = size1  # relative to lo
    complete = True  # the "b" flag of SUBPROOF
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            top_down.append(range_coords(lo + k, hi))
            hi = lo + k
        else:
            top_down.append(range_coords(lo, lo + k))
            lo, m = lo + k, m - k
            complete = False
    if not complete:
        top_down.append(range_coords(lo, hi))
    top_down.reverse()
    return top_down


def consistency_proof(store: NodeStore, size1: int, size2: int) -> list[bytes]:
    """Consistency proof between the trees of ``size1`` and ``size2`` leaves (O(log n) lookups)."""
    return _resolve(store, consistency_proof_coords(size1, size2))


# --------------------------------------------------------------------------- verification


def root_from_inclusion_proof(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2 steps 1-5: the root an inclusion proof leads to; raises ProofError."""
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is not in a tree of size {tree_size}")
    _check_hash(leaf_hash, "leaf hash")
    fn, sn = index, tree_size - 1
    r = bytes(leaf_hash)
    for p in proof:
        _check_hash(p, "proof element")
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2.  Returns True; raises :class:`ProofError` if the proof does not verify."""
    _check_hash(root, "root")
    if root_from_inclusion_proof(leaf_hash, index, tree_size, proof) != root:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the root of size {tree_size}")
    return True


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2.  Returns True; raises :class:`ProofError` if not consistent.

    Edge cases RFC 9162 leaves to the caller: ``size1 == size2`` needs equal roots and an
    empty proof; ``size1 == 0`` needs ``root1`` to be the empty root and an empty proof.
    """
    _check_hash(root1, "first root")
    _check_hash(root2, "second root")
    for p in proof:
        _check_hash(p, "proof element")
    if not 0 <= size1 <= size2:
        raise ProofError(f"size {size1} cannot be consistent with the smaller size {size2}")
    if size1 == size2:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if root1 != root2:
            raise ProofError(f"different roots for the same size {size1}")
        return True
    if size1 == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        if root1 != EMPTY_ROOT:
            raise ProofError("root of the empty tree is not SHA-256('')")
        return True
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # exact power of two: the old root is itself a node
        path.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != root1:
        raise ProofError(f"consistency proof does not lead to the root of size {size1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not lead to the root of size {size2}")
    return True
