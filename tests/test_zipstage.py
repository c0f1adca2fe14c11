"""The ZIP stage's own memory: it holds the one part it fills, not that part's pieces and then their join."""

from __future__ import annotations

import asyncio
import tracemalloc
from datetime import UTC, datetime
from typing import Any, cast

from bucketzip.archive import ZipWriter
from bucketzip.zipstage import ZipStage

KiB, MiB = 2**10, 2**20


class Passing:
    """A writer whose output is its input, as a STORED entry's bytes are."""

    def begin(self, *args: Any) -> bytes:
        return b""

    def write(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""

    def finish(self) -> bytes:
        return b""


def test_the_stage_holds_the_part_it_fills_and_no_more() -> None:
    block, piece, pieces = 4 * MiB, 256 * KiB, 64  # 16 MiB in: four parts
    parts: list[int] = []
    after: list[int] = []  # how many parts had been handed over each time after_block ran

    async def main() -> int:
        async def emit(part: bytes | bytearray) -> None:
            parts.append(len(part))  # and dropped: what stays is the stage's

        stage = ZipStage(
            cast(ZipWriter, Passing()), emit, block=block, depth=1, after_block=lambda: after.append(len(parts))
        )
        tracemalloc.start()
        try:
            await stage.begin("a.bin", datetime(2024, 1, 1, tzinfo=UTC), "store", None)
            for _ in range(pieces):
                await stage.write(bytes(piece))
            await stage.end()
            await stage.finish()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak = asyncio.run(main())
    assert parts == [block] * 4
    assert after == [1, 2, 3, 4]  # after each part is handed over (how a job hands freed heap pages back)
    # One part, plus the few pieces in the queue and in hand; joining each part's pieces held two.
    assert peak < block + 8 * piece, f"peak {peak / MiB:.1f} MiB"
