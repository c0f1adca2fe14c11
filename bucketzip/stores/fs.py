"""Any fsspec filesystem (the local one, above all) as a store, for local use and tests.

Only reachable when ``BUCKETZIP_ALLOWED_PROTOCOLS`` names the protocol: job specs may come from untrusted web
requests, and ``file://`` would let them read the worker's disk. Blocking calls run in threads so the engine's
event loop keeps moving. The sink writes a hidden temporary file beside the destination and renames it into
place on commit, so the destination path never holds a partial archive.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import fsspec

from ..errors import SourceChanged
from ..spec import Location
from .base import ObjectInfo, Published, SinkOptions, translate


def _modified(info: dict[str, Any]) -> datetime:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
    return datetime.now(UTC)


class FsStore:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.fs = fsspec.filesystem(protocol)

    def _info(self, loc: Location, info: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(loc, int(info["size"]), _modified(info))

    async def head(self, loc: Location) -> ObjectInfo | None:
        try:
            info = await asyncio.to_thread(self.fs.info, loc.path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise translate(exc, loc.url, "read") from exc
        return self._info(loc, info) if info.get("type") != "directory" else None

    async def list(self, loc: Location) -> AsyncIterator[ObjectInfo]:
        root = loc.path if loc.path.endswith("/") else loc.path.rpartition("/")[0] + "/"
        try:
            found = await asyncio.to_thread(self.fs.find, root, detail=True)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise translate(exc, loc.url, "read") from exc
        for path in sorted(found):
            path = self.fs._strip_protocol(path)
            if path.startswith(self.fs._strip_protocol(loc.path)) or not loc.path:
                yield self._info(Location(loc.protocol, "", path), found.get(path, {}))

    async def read(
        self, obj: ObjectInfo, chunk_size: int, on_checksum: Callable[[int | None], None] | None = None
    ) -> AsyncIterator[bytes]:
        url = obj.location.url
        try:
            f = await asyncio.to_thread(self.fs.open, obj.location.path, "rb")
        except Exception as exc:
            raise translate(exc, url, "read") from exc
        done = 0
        try:
            while True:
                chunk = await asyncio.to_thread(f.read, chunk_size)
                if not chunk:
                    break
                done += len(chunk)
                yield chunk
        except Exception as exc:
            raise translate(exc, url, "read") from exc
        finally:
            f.close()
        if done != obj.size:
            raise SourceChanged(url, f"read {done} bytes, but it was listed with {obj.size}")

    async def checksum(self, obj: ObjectInfo) -> int | None:
        return None  # a file keeps no checksum: a STORED entry is read twice (CRC-32 first)

    async def open_sink(self, dest: Location, options: SinkOptions) -> FsSink:
        return await FsSink.open(self.fs, dest)

    async def presign(self, loc: Location, version_id: str | None, expires: int) -> str | None:
        return None  # a local file has no URL to sign


class FsSink:
    FLUSH_BYTES = 1 * 2**20  # small writes are gathered: a thread hop per entry header would cost more than it

    def __init__(self, fs: Any, dest: Location, tmp: str, f: Any) -> None:
        self.fs, self.dest, self.tmp, self.f = fs, dest, tmp, f
        self.size = 0
        self._pending: list[bytes | bytearray] = []
        self._pending_bytes = 0

    @classmethod
    async def open(cls, fs: Any, dest: Location) -> FsSink:
        head, _, name = dest.path.rpartition("/")
        tmp = f"{head}/.{name}.bucketzip-{uuid.uuid4().hex}.partial"
        try:
            f = await asyncio.to_thread(fs.open, tmp, "wb")
        except Exception as exc:
            raise translate(exc, dest.url, "write") from exc
        return cls(fs, dest, tmp, f)

    async def write(self, data: bytes | bytearray) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.size += len(data)
        if self._pending_bytes >= self.FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        try:
            await asyncio.to_thread(self.f.write, data)
        except Exception as exc:
            raise translate(exc, self.dest.url, "write") from exc

    async def commit(self) -> Published:
        await self._flush()
        try:
            await asyncio.to_thread(self.f.close)
            await asyncio.to_thread(self.fs.mv, self.tmp, self.dest.path)
        except Exception as exc:
            raise translate(exc, self.dest.url, "write") from exc
        return Published(self.size, None, None, 1)

    async def abort(self) -> None:
        def discard() -> None:
            self.f.close()
            if self.fs.exists(self.tmp):
                self.fs.rm(self.tmp)

        await asyncio.to_thread(discard)
