"""How each entry's bytes are read, so that its local header can go out before them.

A STORED entry declares its CRC-32 and sizes in its local header (streaming readers need them: see
``archive``), so before an entry's first byte is passed on, its method, and for STORE its CRC-32, must be known:

* an object of at most one chunk is read whole and handed to the writer in one piece (``ZipWriter.add``
  computes everything, and decides 'auto' itself);
* for a larger one, ``EntryReader.read`` makes a ``Plan`` on the read-ahead's task, before yielding its first
  chunk: the method from the extension or, for 'auto', from the first 64 KiB; for STORE the CRC-32 from the
  store's full-object checksum when it keeps one (S3's ChecksumCRC32, which the GET itself says when asked;
  else ``Store.checksum``), else from a first read of the whole object, after which the object is read again
  for the archive. The writer checks the bytes against the declared CRC-32 either way, so an object that
  changed fails the job instead of the archive. A DEFLATE entry whose GET said the store's checksum is checked
  against it too: that is the only check of those bytes against the store's (botocore does not repeat it).

Memory stays bounded: the first read keeps no bytes, only the running CRC-32.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from .archive import Method, choose_method, crc32, resolve_method
from .selection import Entry
from .stores.base import Store


@dataclass(frozen=True)
class Plan:
    """How a streamed entry is written: its method, and the CRC-32 its data must have: for STORE the one its
    header declares; for DEFLATE the store's checksum, when its GET said one (the writer checks it at the end)."""

    method: Literal["store", "deflate"]
    crc32: int | None = None
    reads: int = 1  # 2 when the CRC-32 took a read of its own


@asynccontextmanager
async def _closing(chunks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """A store's read, closed when left early (its GET's connection goes back to the pool at once)."""
    try:
        yield chunks
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


class EntryReader:
    """``read(i)`` for the read-ahead: entry ``i``'s bytes, with ``plans[i]`` set before the first chunk of an
    entry that is not ``whole``."""

    def __init__(
        self,
        entries: Sequence[Entry],
        stores: Callable[[str], Store],
        chunk_size: int,
        compression: Method,
        level: int,
    ) -> None:
        self.entries = entries
        self.stores = stores
        self.chunk_size = chunk_size
        self.compression = compression
        self.level = level
        self.plans: dict[int, Plan] = {}

    def whole(self, i: int) -> bool:
        """Whether entry ``i`` is read whole and written in one piece."""
        return self.entries[i].obj.size <= self.chunk_size

    async def read(self, i: int) -> AsyncIterator[bytes]:
        entry = self.entries[i]
        obj = entry.obj
        store = self.stores(obj.location.protocol)
        whole = self.whole(i)
        method = "store" if self.level == 0 else choose_method(entry.name, self.compression)
        # An entry that may be stored asks its read for the store's checksum: no HEAD of its own then.
        answered: list[int | None] = []
        ask = None if whole or method == "deflate" else answered.append
        async with _closing(store.read(obj, self.chunk_size, ask)) as chunks:
            if whole:
                async for chunk in chunks:
                    yield chunk
                return
            first = await anext(aiter(chunks), b"")  # the read's answer, and its checksum, come with it
            if method == "auto":
                method = resolve_method(entry.name, method, self.level, first)
            # The GET's checksum, when it said one, is checked by the writer against the bytes (botocore does
            # not check them: see S3Store.read), whether the entry is then stored or deflated.
            crc = answered[0] if answered else None
            if method == "store" and crc is None:
                # A store may keep a checksum its GET does not say (or none, as for a multipart upload's
                # object): a HEAD is still cheaper than the second read that would otherwise follow.
                crc = await store.checksum(obj)
            if method == "deflate" or crc is not None:
                self.plans[i] = Plan("deflate", crc) if method == "deflate" else Plan("store", crc)
                if first:
                    yield first
                async for chunk in chunks:
                    yield chunk
                return
            # STORE without a checksum from the store: a first read for the CRC-32 alone.
            crc = crc32(first, 0)
            async for chunk in chunks:
                crc = crc32(chunk, crc)
        self.plans[i] = Plan("store", crc, reads=2)
        async with _closing(store.read(obj, self.chunk_size)) as again:
            async for chunk in again:
                yield chunk
