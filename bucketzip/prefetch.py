"""Bounded read-ahead: fetch the next objects while the current one is compressed and uploaded.

Objects are fetched in archive order, up to ``concurrency`` at a time, into memory bounded by ``budget`` bytes.
The entry being consumed (the head) may always hold two chunks even when the budget is spent by entries behind
it, so the pipeline can never deadlock on its own read-ahead; memory stays below ``budget + 2 * chunk``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class _Slot:
    __slots__ = ("done", "error", "event", "queue")

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.event = asyncio.Event()
        self.done = False
        self.error: BaseException | None = None


class Prefetcher(Generic[T]):
    def __init__(
        self,
        items: Sequence[T],
        read: Callable[[T], AsyncIterator[bytes]],
        budget: int,
        concurrency: int,
    ) -> None:
        self._items = items
        self._read = read
        self._budget = budget
        self._used = 0
        self._head = 0
        self._room = asyncio.Condition()
        self._started = asyncio.Semaphore(concurrency)
        self._slots: dict[int, _Slot] = {}
        self._slot_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Prefetcher[T]:
        self._scheduler = asyncio.create_task(self._schedule())
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [*self._tasks, *([self._scheduler] if self._scheduler else [])]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _schedule(self) -> None:
        for i in range(len(self._items)):
            await self._started.acquire()
            self._slots[i] = _Slot()
            self._slot_ready.set()
            task = asyncio.create_task(self._fetch(i))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fetch(self, i: int) -> None:
        slot = self._slots[i]
        try:
            async for chunk in self._read(self._items[i]):
                await self._reserve(i, slot, len(chunk))
                slot.queue.append(chunk)
                slot.event.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            slot.error = exc
        finally:
            slot.done = True
            slot.event.set()
            self._started.release()

    async def _reserve(self, i: int, slot: _Slot, n: int) -> None:
        async with self._room:
            await self._room.wait_for(
                lambda: self._used + n <= self._budget or (i == self._head and len(slot.queue) < 2)
            )
            self._used += n

    async def _release(self, n: int) -> None:
        async with self._room:
            self._used -= n
            self._room.notify_all()

    async def chunks(self, i: int) -> AsyncIterator[bytes]:
        """The bytes of item ``i``; call for 0, 1, 2... in order. Raises what the read raised."""
        while i not in self._slots:
            self._slot_ready.clear()
            await self._slot_ready.wait()
        async with self._room:
            self._head = i
            self._room.notify_all()
        slot = self._slots[i]
        try:
            while True:
                if slot.queue:
                    chunk = slot.queue.popleft()
                    await self._release(len(chunk))
                    yield chunk
                elif slot.done:
                    if slot.error is not None:
                        raise slot.error
                    return
                else:
                    slot.event.clear()
                    await slot.event.wait()
        finally:
            held = sum(len(c) for c in slot.queue)
            slot.queue.clear()
            del self._slots[i]
            if held:
                await self._release(held)
