"""A Merkle tree over a snapshot manifest: one top hash, and a short proof for any single entry.

Design (after RFC 6962, Certificate Transparency):
- leaf hash = SHA-256(0x00 || encoded entry); inner node = SHA-256(0x01 || left || right).
  The one-byte prefixes keep a leaf from ever being passed off as an inner node.
- Levels are built bottom-up in leaf order; an odd node at the end of a level is promoted
  unchanged to the next level (no duplication, so no CVE-2012-2459-style ambiguity).
- The root of zero leaves is SHA-256 of the empty string.

Hashes are held as ``(n, 32)`` uint8 numpy arrays so that a million-entry tree is built
level by level without a Python object per node.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mira.errors import InvalidInput

DIGEST_BYTES = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
FIELD_SEPARATOR = "\x00"
EMPTY_ROOT = hashlib.sha256(b"").hexdigest()
ENCODE_ROWS = 500_000  # rows encoded at once: bounded memory, offsets well inside int32


@dataclass(frozen=True)
class MerkleProof:
    """The sibling hashes (hex, bottom-up) that lead from leaf ``index`` to the root."""

    index: int
    leaf_count: int
    siblings: tuple[str, ...]


def encode_entries(table: pa.Table, columns: Sequence[str]) -> pa.Array:
    """Each row as ``0x00 || col1 || 0x00 || col2 ...`` (UTF-8; null as empty; ints in decimal).

    Joining with a leading empty field puts the leaf prefix byte first, so the encoded value
    is exactly what the leaf hash covers. Fields may not contain NUL, which keeps the
    encoding unambiguous.
    """
    fields: list[Any] = [""]
    for name in columns:
        text = pc.cast(table.column(name), pa.string())
        if pc.any(pc.match_substring(text, FIELD_SEPARATOR)).as_py():
            raise InvalidInput(f"manifest column {name!r} contains a NUL character")
        fields.append(pc.fill_null(text, ""))
    joined = pc.binary_join_element_wise(*fields, FIELD_SEPARATOR)
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    return joined


def leaf_hashes(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """The leaf hash of every row, in row order, as an ``(n, 32)`` uint8 array."""
    parts = [
        _hash_encoded(encode_entries(table.slice(start, ENCODE_ROWS), columns))
        for start in range(0, table.num_rows, ENCODE_ROWS)
    ]
    digests = b"".join(parts)
    return np.frombuffer(digests, np.uint8).reshape(-1, DIGEST_BYTES)


def _hash_encoded(encoded: pa.Array) -> bytes:
    """SHA-256 of each value, straight from the Arrow buffers (no Python object per row)."""
    if len(encoded) == 0:
        return b""
    offsets_buffer, data_buffer = encoded.buffers()[1:3]
    width = np.int64 if pa.types.is_large_string(encoded.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, width)[
        encoded.offset : encoded.offset + len(encoded) + 1
    ].tolist()
    data = memoryview(data_buffer) if data_buffer is not None else memoryview(b"")
    sha256 = hashlib.sha256
    return b"".join([sha256(data[a:b]).digest() for a, b in itertools.pairwise(offsets)])


def leaf_hash(encoded: bytes) -> bytes:
    """The leaf hash of one encoded entry (which starts with the 0x00 leaf prefix)."""
    if not encoded.startswith(LEAF_PREFIX):
        raise InvalidInput("an encoded entry must start with the leaf prefix byte")
    return hashlib.sha256(encoded).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The inner node over two child hashes."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def parent_level(nodes: np.ndarray) -> np.ndarray:
    """The level above ``nodes``: pairs hashed together, an odd last node promoted."""
    pairs = len(nodes) // 2
    record = 1 + 2 * DIGEST_BYTES
    buffer = np.empty((pairs, record), np.uint8)
    buffer[:, 0] = NODE_PREFIX[0]
    buffer[:, 1:] = nodes[: 2 * pairs].reshape(pairs, 2 * DIGEST_BYTES)
    data = memoryview(buffer.tobytes())
    sha256 = hashlib.sha256
    digests = b"".join([sha256(data[i : i + record]).digest() for i in range(0, len(data), record)])
    parents = np.frombuffer(digests, np.uint8).reshape(-1, DIGEST_BYTES)
    if len(nodes) % 2:
        parents = np.concatenate([parents, nodes[-1:]])
    return parents


def tree_levels(leaves: np.ndarray) -> list[np.ndarray]:
    """Every level of the tree, leaves first, the one-node root level last."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        levels.append(parent_level(levels[-1]))
    return levels


def merkle_root(leaves: np.ndarray) -> str:
    """The top hash (hex) over ``leaves``."""
    if len(leaves) == 0:
        return EMPTY_ROOT
    return bytes(tree_levels(leaves)[-1][0]).hex()


def proof_for(levels: Sequence[np.ndarray], index: int) -> MerkleProof:
    """The inclusion proof of leaf ``index`` from a tree built by ``tree_levels``."""
    count = len(levels[0]) if levels else 0
    if not 0 <= index < count:
        raise InvalidInput(f"leaf index {index} is outside a tree of {count} leaves")
    siblings: list[str] = []
    position = index
    for level in levels[:-1]:
        partner = position ^ 1
        if partner < len(level):
            siblings.append(bytes(level[partner]).hex())
        position //= 2
    return MerkleProof(index=index, leaf_count=count, siblings=tuple(siblings))


def root_from_proof(leaf: bytes, proof: MerkleProof) -> str | None:
    """The root that ``leaf`` and ``proof`` lead to, or None when the proof is malformed."""
    if not 0 <= proof.index < proof.leaf_count:
        return None
    try:
        siblings = [bytes.fromhex(s) for s in proof.siblings]
    except ValueError:
        return None
    current, position, width = leaf, proof.index, proof.leaf_count
    remaining = siblings[::-1]
    while width > 1:
        if position % 2 or position + 1 < width:
            if not remaining:
                return None
            sibling = remaining.pop()
            current = node_hash(sibling, current) if position % 2 else node_hash(current, sibling)
        position, width = position // 2, (width + 1) // 2
    return current.hex() if not remaining else None


def verify_path(root: str, leaf: bytes, proof: MerkleProof) -> bool:
    """Whether ``leaf`` sits at ``proof.index`` of the tree whose top hash is ``root``."""
    return root_from_proof(leaf, proof) == root
