"""DEFLATE on several threads, the way pigz does it, as one ordinary DEFLATE stream.

Each ``compress`` call's data is a block, deflated on its own compressor primed with the 32 KiB that came before
it (so matches may still reach back into the previous block) and ended with a sync flush (so it ends on a byte
boundary and is not final). The blocks' outputs, concatenated in order and followed by an empty final block, are
one valid raw DEFLATE stream: any inflater reads it, and it is the same size as one compressor's output within
a few bytes per block. ISA-L and zlib release the GIL while they compress, so blocks on N threads deflate about
N times as fast as one compressor.

Pure computation: the caller owns the thread pool. The ZIP stage uses it for entries it deflates.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Callable
from concurrent.futures import Executor, Future

from .archive import Compressor, raw_deflate

WINDOW = 32 * 1024  # how far back DEFLATE may refer: what a block needs of the one before it
FINAL_BLOCK = b"\x03\x00"  # an empty final block (fixed Huffman codes): ends the stream
INLINE_UP_TO = 64 * 1024  # a block this small is deflated on the caller's thread: a hand-over costs more


def deflate_block(level: int, data: bytes, window: bytes) -> bytes:
    """``data`` as non-final DEFLATE blocks ending on a byte boundary, matches reaching back into ``window``."""
    c = raw_deflate(level, window)
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


class ParallelDeflate:
    """A ``Compressor`` that deflates each ``compress`` call's data as a block on ``pool``, keeping up to
    ``ahead`` blocks in flight, and returns finished blocks' bytes in order (``b""`` while none is ready)."""

    def __init__(self, level: int, pool: Executor, ahead: int) -> None:
        self._level = level
        self._pool = pool
        self._ahead = max(1, ahead)
        self._window = b""
        self._pending: collections.deque[Future[bytes]] = collections.deque()

    def compress(self, data: bytes, /) -> bytes:
        if not data:
            return b""
        window = self._window
        self._window = bytes(data[-WINDOW:]) if len(data) >= WINDOW else (window + data)[-WINDOW:]
        if len(data) <= INLINE_UP_TO and not self._pending:
            return deflate_block(self._level, data, window)
        self._pending.append(self._pool.submit(deflate_block, self._level, data, window))
        return self._collect(len(self._pending) - self._ahead)

    def flush(self, /) -> bytes:
        """Everything still in flight, then the final block."""
        return self._collect(len(self._pending)) + FINAL_BLOCK

    def _collect(self, must: int) -> bytes:
        """The outputs of the blocks at the head that are done, waiting for the first ``must`` of them."""
        out: list[bytes] = []
        while self._pending and (must > 0 or self._pending[0].done()):
            out.append(self._pending.popleft().result())
            must -= 1
        return out[0] if len(out) == 1 else b"".join(out)


def parallel_deflate(pool: Executor, ahead: int) -> Callable[[int], Compressor]:
    """A compressor factory for ``ZipWriter``: each entry's DEFLATE runs on ``pool``."""
    return lambda level: ParallelDeflate(level, pool, ahead)
