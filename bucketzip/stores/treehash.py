"""Glacier's SHA-256 tree hash: the SHA-256 of each 1 MiB chunk, then of each adjacent pair, level by level,
an odd hash at the end of a level carried up as it is, until one is left.

A vault checks it for every part and for the whole archive. Because parts are a power of two MiB and start at
multiples of their size, each part's tree hash is a node of the archive's tree: the archive's hash is the tree
of its parts' hashes (``combine``), so the data is hashed once, as it is uploaded. ``TreeHasher`` does the
same for a stream of any length in O(log n) memory (a retrieval's output, say).
"""

from __future__ import annotations

import hashlib

CHUNK = 2**20  # the tree's leaves: 1 MiB


def combine(hashes: list[bytes]) -> bytes:
    """The root of the tree whose leaves (or aligned power-of-two subtrees) are ``hashes``, in order."""
    if not hashes:
        return hashlib.sha256(b"").digest()  # what Glacier (and botocore) give for no data
    level = list(hashes)
    while len(level) > 1:
        paired = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def tree_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The tree hash of ``data`` held in memory (one part)."""
    view = memoryview(data)
    return combine([hashlib.sha256(view[i : i + CHUNK]).digest() for i in range(0, len(view), CHUNK)] or [])


class TreeHasher:
    """The tree hash of a stream fed in pieces of any size. Keeps one partial 1 MiB chunk and one hash per
    level (the peaks of complete power-of-two subtrees), so memory does not grow with the stream."""

    def __init__(self) -> None:
        self._chunk = hashlib.sha256()
        self._filled = 0
        self._peaks: list[tuple[int, bytes]] = []  # (height, hash), heights strictly decreasing
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.size += len(view)
        while view:
            take = min(CHUNK - self._filled, len(view))
            self._chunk.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == CHUNK:
                self._push(self._chunk.digest())
                self._chunk, self._filled = hashlib.sha256(), 0

    def _push(self, leaf: bytes) -> None:
        height, node = 0, leaf
        while self._peaks and self._peaks[-1][0] == height:
            _, left = self._peaks.pop()
            node = hashlib.sha256(left + node).digest()
            height += 1
        self._peaks.append((height, node))

    def digest(self) -> bytes:
        """The tree hash of everything fed so far (the hasher can go on being fed)."""
        nodes = [h for _, h in self._peaks]
        if self._filled or not nodes:
            nodes.append(self._chunk.digest())
        # Glacier's tree carries an odd node up unchanged, so the root folds the peaks from the right.
        root = nodes[-1]
        for left in reversed(nodes[:-1]):
            root = hashlib.sha256(left + root).digest()
        return root

    def hexdigest(self) -> str:
        return self.digest().hex()
