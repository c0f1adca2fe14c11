"""What every multipart sink shares: cutting the stream into equal parts, uploading a few at a time on a thread
pool while the next one fills, and stopping cleanly. The S3 and vault sinks add their own calls around it.

``write`` waits while ``concurrency`` parts are in flight, which bounds memory at about
``(concurrency + 1) * part_size`` when the writer hands over whole parts (the ZIP stage fills each part in
place for an S3 sink), one part more when the sink cuts them itself (a vault's power-of-two parts). A part that
fails is recorded and raised by the next ``write`` or by the commit, so one failure stops the archive wherever
it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..spec import Location
from .base import error_code, translate

ABORT_ATTEMPTS = 3  # a store may need an abort repeated before every part is freed


def abort_retrying(abort: Callable[[], Any], gone: frozenset[str], url: str) -> None:
    """Call ``abort`` (blocking) until it succeeds, ``ABORT_ATTEMPTS`` times at most with backoff; an upload
    the store answers is gone (a code in ``gone``) counts as aborted."""
    for attempt in range(ABORT_ATTEMPTS):
        try:
            abort()
            return
        except Exception as exc:
            if error_code(exc) in gone:
                return
            if attempt == ABORT_ATTEMPTS - 1:
                raise translate(exc, url, "write") from exc
            time.sleep(0.2 * 2**attempt)


class PartedSink:
    """A sink's part machinery; subclasses define ``_submit(part)`` (which calls ``_spawn``)."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        dest: Location,
        part_size: int,
        concurrency: int,
        recycle: Callable[[bytearray], None] | None = None,
    ) -> None:
        self.pool, self.dest, self.part_size = pool, dest, part_size
        self._recycle = recycle  # takes back a whole part's bytearray once its upload is over
        self.upload_id: str | None = None
        self._buffer = bytearray()
        self._size = 0
        self._inflight: set[Future[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._failure: BaseException | None = None
        self._closed = False

    async def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """``fn(**kwargs)`` on the pool, its error translated."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, functools.partial(fn, **kwargs))
        except Exception as exc:
            raise translate(exc, self.dest.url, "write") from exc

    async def write(self, data: bytes | bytearray) -> None:
        """Take ``data``. A ``bytearray`` is taken over, not copied (the caller lets go of it): the ZIP stage
        hands over whole parts, and last the archive's tail, each in a buffer of its own."""
        self._check()
        self._size += len(data)
        size = self.part_size
        if not self._buffer and len(data) == size:
            await self._submit(data)  # a whole part already (the ZIP stage cuts them so): no copy
            return
        if not self._buffer and isinstance(data, bytearray) and len(data) < size:
            self._buffer = data  # the tail: the last part, or the whole archive if it fits in one
            return
        self._buffer += data
        while len(self._buffer) >= size:
            part = bytes(memoryview(self._buffer)[:size])
            del self._buffer[:size]
            await self._submit(part)

    async def _submit(self, part: bytes | bytearray) -> None:
        raise NotImplementedError

    async def _spawn(self, upload: Callable[[int, bytes | bytearray], None], at: int, part: bytes | bytearray) -> None:
        """Run ``upload(at, part)`` on the pool once a slot is free; its failure is kept for ``_check``."""
        await self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        loop = asyncio.get_running_loop()
        future = self.pool.submit(upload, at, part)
        self._inflight.add(future)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._uploaded, f, part))

    def _uploaded(self, future: Future[None], part: bytes | bytearray) -> None:  # back on the loop
        self._inflight.discard(future)
        self._slots.release()
        if self._recycle is not None and isinstance(part, bytearray):
            self._recycle(part)  # the upload is over (done, failed or never started): nobody reads it now
        exc = future.exception() if not future.cancelled() else None
        if exc is not None and self._failure is None:
            self._failure = translate(exc, self.dest.url, "write")

    async def _drain(self) -> None:
        """Wait for every part upload in flight (they cannot be interrupted mid-request)."""
        pending = [asyncio.wrap_future(f) for f in self._inflight]
        results = await asyncio.gather(*pending, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("the sink is closed")
        if self._failure is not None:
            raise self._failure

    async def _parts_done(self) -> None:
        """Before a commit: every part uploaded, or the first failure raised."""
        with contextlib.suppress(Exception):
            await self._drain()  # a failure is recorded by _uploaded and raised by _check
        await asyncio.sleep(0)  # let the last _uploaded callbacks run
        self._check()

    async def _stop_parts(self) -> None:
        """Before an abort: nothing more is written; parts not started never will be, the others finish."""
        self._closed = True
        self._buffer = bytearray()
        for future in list(self._inflight):
            future.cancel()
        with contextlib.suppress(Exception):
            await self._drain()  # a failed part changes nothing: the whole upload is being aborted
