"""DEFLATE in blocks on a thread pool: one valid stream, in order, as small as one compressor's output.

Every stream is inflated by zlib (an independent inflater: ISA-L compresses) and whole archives are read by
zipfile and ``unzip -t``.
"""

from __future__ import annotations

import os
import threading
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest

from bucketzip.archive import ZipWriter, raw_deflate
from bucketzip.deflate import FINAL_BLOCK, INLINE_UP_TO, WINDOW, ParallelDeflate, deflate_block, parallel_deflate
from tests.helpers import check_zip_bytes
from tests.test_archive import T0, chunked, text


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2, thread_name_prefix="test-deflate") as p:
        yield p


def inflate(stream: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    out = d.decompress(stream)
    assert d.eof, "the stream has a final block"
    assert d.unused_data == b"", "nothing after the final block"
    return out


def deflate_all(pieces: list[bytes], pool: Executor, level: int = 6, ahead: int = 4) -> bytes:
    c = ParallelDeflate(level, pool, ahead)
    return b"".join([c.compress(p) for p in pieces]) + c.flush()


def one_compressor(data: bytes, level: int = 6) -> bytes:
    c = raw_deflate(level)
    return bytes(c.compress(data) + c.flush())


@pytest.mark.parametrize("block", [1, 1000, WINDOW - 1, WINDOW, INLINE_UP_TO + 1, 256 * 1024, 512 * 1024])
def test_blocks_make_one_stream(pool: ThreadPoolExecutor, block: int) -> None:
    data = text(min(1_500_000, 5000 * block), seed=block)
    out = deflate_all(chunked(data, block), pool)
    assert inflate(out) == data


@pytest.mark.parametrize("level", [1, 6, 9])
def test_size_matches_one_compressor(pool: ThreadPoolExecutor, level: int) -> None:
    """Each block is primed with the 32 KiB before it, so splitting costs only the sync-flush markers."""
    data = text(4 * 2**20, seed=level)
    blocks = chunked(data, 512 * 1024)
    ours, theirs = len(deflate_all(blocks, pool, level)), len(one_compressor(data, level))
    assert abs(ours - theirs) <= 64 * len(blocks), (ours, theirs)
    # Without the window each block would start cold: the priming is what keeps the ratio.
    cold = sum(len(deflate_block(level, b, b"")) for b in blocks)
    assert ours < cold


def test_back_references_reach_into_the_previous_block(pool: ThreadPoolExecutor) -> None:
    """The second block repeats the end of the first: primed, it is a few bytes of matches, not raw data."""
    first = os.urandom(100_000)
    second = first[-WINDOW:]
    stream = deflate_all([first, second], pool)
    assert inflate(stream) == first + second
    assert len(deflate_block(6, second, first[-WINDOW:])) < 1000
    assert len(stream) < len(first) + 2000


def test_incompressible_and_mixed_blocks(pool: ThreadPoolExecutor) -> None:
    pieces = [os.urandom(300_000), text(200_000), b"x", os.urandom(70_000), text(10), b"", text(600_000, 3)]
    assert inflate(deflate_all(pieces, pool)) == b"".join(pieces)


def test_empty_stream_is_just_the_final_block(pool: ThreadPoolExecutor) -> None:
    c = ParallelDeflate(6, pool, 2)
    assert c.compress(b"") == b""
    assert c.flush() == FINAL_BLOCK
    assert inflate(FINAL_BLOCK) == b""


class OutOfOrder(Executor):
    """Finishes each pair of submitted blocks in reverse order: the output must still be in input order."""

    def __init__(self) -> None:
        self.held: list[tuple[Future[Any], Any, tuple[Any, ...]]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.held.append((future, fn, args))
        if len(self.held) == 2:
            for f, g, a in reversed(self.held):
                f.set_result(g(*a))
            self.held.clear()
        return future

    def drain(self) -> None:
        for f, g, a in self.held:
            f.set_result(g(*a))
        self.held.clear()


def test_output_keeps_input_order_whatever_finishes_first() -> None:
    ex = OutOfOrder()
    c = ParallelDeflate(6, ex, ahead=8)
    blocks = [text(100_000, seed=i) for i in range(7)]
    out = b"".join(c.compress(b) for b in blocks)
    ex.drain()
    out += c.flush()
    assert inflate(out) == b"".join(blocks)


def test_at_most_ahead_blocks_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """compress() waits for the oldest block once ``ahead`` are in flight: memory stays bounded."""
    gate = threading.Event()

    def slow(level: int, data: bytes, window: bytes) -> bytes:
        gate.wait(5)
        return deflate_block(level, data, window)

    monkeypatch.setattr("bucketzip.deflate.deflate_block", slow)
    blocks = [text(100_000, seed=i) for i in range(3)]
    with ThreadPoolExecutor(4) as ex:
        c = ParallelDeflate(6, ex, ahead=2)
        assert c.compress(blocks[0]) == b"" and c.compress(blocks[1]) == b"", "none finished yet"
        threading.Timer(0.2, gate.set).start()
        head = c.compress(blocks[2])  # a third in flight: waits for the first
        assert head and len(c._pending) <= 2
        out = head + c.flush()
    assert inflate(out) == b"".join(blocks)


def test_small_blocks_with_nothing_in_flight_stay_on_the_callers_thread() -> None:
    class Refuses(Executor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            raise AssertionError("a small block was handed to the pool")

    c = ParallelDeflate(6, Refuses(), 2)
    data = [text(INLINE_UP_TO, 1), text(100, 2)]
    assert inflate(b"".join(c.compress(d) for d in data) + c.flush()) == b"".join(data)


def test_a_failing_block_raises_where_it_is_collected(monkeypatch: pytest.MonkeyPatch, pool: Executor) -> None:
    def fails(level: int, data: bytes, window: bytes) -> bytes:
        raise MemoryError("no room")

    c = ParallelDeflate(6, pool, 2)
    first = c.compress(text(100_000))
    monkeypatch.setattr("bucketzip.deflate.deflate_block", fails)
    c.compress(text(100_000, 1))
    with pytest.raises(MemoryError, match="no room"):
        c.flush()
    assert first == b"" or inflate(first + FINAL_BLOCK)


def test_archive_with_parallel_deflate_reads_back(pool: ThreadPoolExecutor) -> None:
    contents = {
        "big.txt": text(3_000_000, 7),
        "random.bin": os.urandom(900_000),
        "small.txt": text(5_000, 8),
        "empty.txt": b"",
    }

    def archive(writer: ZipWriter) -> bytes:
        out = []
        for name, data in contents.items():
            out.append(writer.begin(name, T0, "deflate", len(data)))
            out += [writer.write(c) for c in chunked(data, 512 * 1024)]
            out.append(writer.end())
        return b"".join([*out, writer.finish()])

    ours = archive(ZipWriter(6, parallel_deflate(pool, 4)))
    z = check_zip_bytes(ours, contents)  # zipfile (every CRC) and unzip -t
    assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    assert abs(len(ours) - len(archive(ZipWriter(6)))) < 200


def test_zlib_fallback_makes_the_same_kind_of_stream(monkeypatch: pytest.MonkeyPatch, pool: Executor) -> None:
    """Where ISA-L is not installed, zlib's compressors (primed the same way) make the blocks."""
    monkeypatch.setattr("bucketzip.archive._isal", None)
    data = text(1_200_000, 9)
    blocks = chunked(data, 256 * 1024)
    out = deflate_all(blocks, pool)
    assert inflate(out) == data
    assert abs(len(out) - len(zlib.compress(data, 6)) + 6) <= 64 * len(blocks), "zlib's own size, give or take"
