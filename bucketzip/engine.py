"""build_archive(spec, settings, on_progress) -> result: selection, read-ahead, ZIP writer and sink, wired.

The stages overlap instead of taking turns: the next objects are fetched (``prefetch``) while the current one
is checksummed and compressed on the ZIP stage's thread (``zipstage``; CRC-32 and DEFLATE release the GIL;
DEFLATE runs in blocks on ``deflate_threads`` threads, see ``deflate``), while finished parts are uploaded
concurrently (``S3Sink``). Each stage is bounded, so memory depends on the settings, not on the archive. Any
exception, cancellation included, aborts the sink: the archive is published whole or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from .allocator import release_memory, tune_allocator
from .archive import EntryMismatch, ZipWriter, may_need_zip64
from .archived import settle
from .buffers import Spares
from .config import MAX_PARTS, MiB, Settings
from .deflate import parallel_deflate
from .entries import EntryReader
from .errors import RestorePending, SourceChanged, SourceMissing
from .prefetch import Prefetcher
from .selection import Entry, Selection, select, sources_digest
from .spec import JobSpec
from .stores import ObjectInfo, Published, Sink, SinkOptions, Store, store_for, warm
from .stores.base import JOB_TAG, Completing, Sealing
from .zipstage import ZipStage

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Progress:
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    current: str | None
    rate: float  # input bytes per second since the job started
    eta: float | None  # seconds, at the current rate
    elapsed: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobResult:
    destination: str
    size: int
    etag: str | None
    version_id: str | None
    entries: int
    input_bytes: int
    duration: float
    parts: int
    part_size: int
    storage_class: str | None = None
    url: str | None = None
    job_id: str | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    renamed: list[dict[str, str]] = field(default_factory=list)
    description: str | None = None
    archive_id: str | None = None  # a vault archive's id
    tree_hash: str | None = None  # a vault archive's SHA-256 tree hash
    sources_digest: str | None = None  # SHA-256 of the entries' names, URLs, versions, ETags and sizes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Tracker:
    """Counts progress and calls ``on_progress`` at most once per ``interval`` (and always at the end)."""

    def __init__(self, sel: Selection, interval: float, on_progress: Callable[[Progress], None] | None):
        self.files_total = len(sel.entries)
        self.bytes_total = sel.input_bytes
        self.files_done = self.bytes_done = 0
        self.current: str | None = None
        self.interval = interval
        self.callback = on_progress
        self.started = time.monotonic()
        self.last = -math.inf

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback is None or (not force and now - self.last < self.interval):
            return
        self.last = now
        elapsed = now - self.started
        rate = self.bytes_done / elapsed if elapsed > 0 else 0.0
        left = self.bytes_total - self.bytes_done
        eta = left / rate if rate > 0 else None
        self.callback(
            Progress(
                self.files_done,
                self.files_total,
                self.bytes_done,
                self.bytes_total,
                self.current,
                round(rate, 1),
                round(eta, 1) if eta is not None else None,
                round(elapsed, 3),
            )
        )


def part_size_for(sel: Selection, settings: Settings) -> int:
    """The configured part size, raised (in whole MiB) so that the largest possible archive fits in
    MAX_PARTS parts. Every non-final part has this same size."""
    needed = math.ceil(sel.size_bound() / MAX_PARTS)
    return max(settings.part_size, math.ceil(needed / MiB) * MiB)


@dataclass(frozen=True)
class Publication:
    """How a queued run publishes: its archive is tagged with the job and the run, the commit is conditional
    on the destination being as the run found it, and ``fence`` - a blocking call that raises to stop -
    is passed right before the commit, with the result so far (all but the store's answer) and what a sealing
    sink sealed. ``sealed``: the mark an earlier run of the job left at its fence with a sealed upload, for
    this run to complete instead of making the archive again (``stores.base.Sealing``)."""

    job_id: str
    run: str
    fence: Callable[[dict[str, Any], dict[str, Any] | None], None]
    sealed: dict[str, Any] | None = None


class AlreadyPublished(Exception):
    """The destination already holds this job's archive (made by an earlier run that died before it could
    record it): nothing is made again. Carries what the store says of the object."""

    def __init__(self, info: ObjectInfo) -> None:
        super().__init__(info.location.url)
        self.info = info


async def build_archive(
    spec: JobSpec,
    settings: Settings,
    on_progress: Callable[[Progress], None] | None = None,
    stores: Callable[[str], Store] | None = None,
    on_upload: Callable[[str], None] | None = None,
    publication: Publication | None = None,
    on_waiting: Callable[[RestorePending], None] | None = None,
) -> JobResult:
    """Make the archive ``spec`` describes. Raises a BucketzipError; publishes nothing unless it returns.

    ``on_progress`` only takes the latest numbers: it must not raise (a run is stopped by cancelling it).
    Archived sources are handled per ``spec.on_archived`` first (``archived.settle``); while restores run it
    raises ``RestorePending``, or with ``on_waiting`` calls it and waits in process."""
    started = time.monotonic()
    stores = stores or (lambda protocol: store_for(protocol, settings))
    dest_store = stores(spec.destination.protocol)
    if publication is not None and publication.sealed is not None:
        completed = await _complete_sealed(spec, dest_store, publication.sealed, started)
        if completed is not None:
            return completed
    if publication is not None:
        # The destination as this run finds it, looked up while the sources are listed.
        sel, prior = await asyncio.gather(select(spec, settings, stores), dest_store.head(spec.destination))
        if prior is not None and prior.metadata.get(JOB_TAG) == publication.job_id:
            raise AlreadyPublished(prior)
    else:
        sel, prior = await select(spec, settings, stores), None
    if sel.missing and spec.on_missing == "fail":
        globs = {s.url for s in spec.sources if s.kind == "glob"}
        raise SourceMissing(sel.missing, [u for u in sel.missing if u in globs])
    await settle(sel, spec, settings, stores, on_waiting)
    skipped = [{"url": u, "reason": "not found"} for u in sel.missing] + sel.skipped

    part_size = part_size_for(sel, settings)
    # Part buffers go from the ZIP stage to the sink and, once uploaded, back (buffers.py). Two spares: the
    # parts whose uploads end while the stage fills one. On the mixed job, keeping 1, 2 or 4 left 84k, 70k and
    # 69k page faults (136k with none), at a peak RSS of 127-130, 127-129 and 131-132 MiB (127 with none).
    spares = Spares(part_size, keep=2)
    options = SinkOptions(
        storage_class=spec.storage_class,
        metadata=dict(spec.metadata),
        content_disposition=spec.content_disposition,
        part_size=part_size,
        concurrency=settings.upload_concurrency,
        on_upload=on_upload,
        tag=(publication.job_id, publication.run) if publication else None,
        if_none_match=publication is not None and prior is None,
        if_match=prior.etag if publication is not None and prior is not None else None,
        description=spec.description or default_description(spec),
        size_hint=sel.input_bytes,
        recycle=spares.give,
    )
    tracker = _Tracker(sel, settings.progress_interval, on_progress)
    level = settings.compression_level if spec.compression_level is None else spec.compression_level
    sink = await dest_store.open_sink(spec.destination, options)
    try:
        entries = zip64_not_first(sel.entries)
        written = await _pipeline(
            entries, spec, settings, stores, sink.write, level, part_size, tracker, skipped, spares.take
        )
        result = JobResult(
            destination=spec.destination.url,
            size=0,
            etag=None,
            version_id=None,
            entries=len(written),
            input_bytes=sum(e.obj.size for e in written),
            duration=0.0,
            parts=0,
            part_size=part_size,
            storage_class=spec.storage_class,
            job_id=spec.job_id,
            skipped=skipped,
            renamed=sel.renamed,
            description=options.description,
            sources_digest=sources_digest(written),
        )
        sealed = await sink.seal() if isinstance(sink, Sealing) else None  # a vault's: every part is up
        if publication is not None:
            await asyncio.to_thread(publication.fence, result.to_dict(), sealed)
    except BaseException as exc:
        await asyncio.shield(_abort(sink, exc))
        raise
    published = await _commit(sink)
    try:
        tracker.report(force=True)
    except Exception:  # the archive is published: a progress callback can no longer change the outcome
        log.warning("the last progress report failed", exc_info=True)
    result.size, result.etag, result.version_id, result.parts = (
        published.size,
        published.etag,
        published.version_id,
        published.parts,
    )
    result.part_size = published.part_size or part_size
    result.archive_id, result.tree_hash = published.archive_id, published.tree_hash
    if spec.presign_expires:
        result.url = await presign(spec, settings, published.version_id, stores)
    result.duration = round(time.monotonic() - started, 3)
    return result


async def _complete_sealed(spec: JobSpec, store: Store, mark: dict[str, Any], started: float) -> JobResult | None:
    """Complete the upload a dead run of this job sealed at its fence (``mark``), and its result; None when the
    store cannot, and the archive is made again."""
    published = None
    if isinstance(store, Completing):  # the dead run passed its fence: nothing stops this run now
        published = await _through(store.complete_sealed(spec.destination, mark["sealed"]))
    if published is None:
        log.warning("job %s: the upload an earlier run sealed is gone; making the archive again", spec.job_id)
        return None
    result = JobResult(**mark["result"])
    result.size, result.parts, result.part_size = published.size, published.parts, published.part_size or 0
    result.archive_id, result.tree_hash = published.archive_id, published.tree_hash
    result.duration = round(time.monotonic() - started, 3)
    log.info("job %s: completed the upload an earlier run sealed before it died", spec.job_id)
    return result


async def _commit(sink: Sink) -> Published:
    """Commit, and see the commit through (``_through``); a commit that fails aborts the upload."""
    try:
        return await _through(sink.commit())
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        await asyncio.shield(_abort(sink, exc))
        raise


async def _through(step: Coroutine[Any, Any, T]) -> T:
    """Run ``step``, a publication, to its end: once it has begun, being cancelled (a cancel, a time limit, a
    worker shutting down) must neither stop it nor hide that the archive was published."""
    task = asyncio.ensure_future(step)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise


async def _abort(sink: Sink, cause: BaseException) -> None:
    """Abort the sink on the way out of a failure. An abort that fails is logged, and the failure that caused it
    stays the one raised: it, not the abort's, says what went wrong and whether a retry can help."""
    try:
        await sink.abort()
    except Exception as exc:
        log.warning("%s; the job failed with %s: %s", exc, type(cause).__name__, cause)


async def presign(
    spec: JobSpec, settings: Settings, version_id: str | None, stores: Callable[[str], Store] | None = None
) -> str | None:
    """A presigned GET URL of the archive, for ``presign_expires`` seconds (None when the job asks none)."""
    if not spec.presign_expires:
        return None
    store = (stores or (lambda protocol: store_for(protocol, settings)))(spec.destination.protocol)
    return await store.presign(spec.destination, version_id, spec.presign_expires)


def default_description(spec: JobSpec) -> str:
    """A vault archive's description when the spec gives none: it names the job (printable ASCII)."""
    if spec.job_id:
        return f"bucketzip job {spec.job_id}"
    return f"bucketzip archive {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"


def zip64_not_first(entries: list[Entry]) -> list[Entry]:
    """The entries, with one that cannot need ZIP64 moved to the front if the first one might: a first entry
    that is ZIP64 is among the macOS Archive Utility failures collected in issue 10. Order is otherwise kept."""
    if entries and may_need_zip64(entries[0].obj.size):
        for k, entry in enumerate(entries):
            if not may_need_zip64(entry.obj.size):
                return [entry, *entries[:k], *entries[k + 1 :]]
    return entries


async def _pipeline(
    entries: list[Entry],
    spec: JobSpec,
    settings: Settings,
    stores: Callable[[str], Store],
    emit: Callable[[bytes | bytearray], Coroutine[Any, Any, None]],
    level: int,
    part_size: int,
    tracker: _Tracker,
    skipped: list[dict[str, str]],
    new_block: Callable[[], bytearray] | None = None,
) -> list[Entry]:
    written: list[Entry] = []
    reader = EntryReader(entries, stores, settings.chunk_size, spec.compression, level)
    threads = settings.deflate_threads
    pool = ThreadPoolExecutor(threads, thread_name_prefix="bucketzip-deflate") if threads > 1 else None
    # Up to two blocks per thread in flight: one deflating, one queued behind it.
    writer = ZipWriter(level, parallel_deflate(pool, 2 * threads)) if pool else ZipWriter(level)
    # With the allocator tuned (BUCKETZIP_MALLOC_ARENA_MAX), hand freed heap pages back after each part.
    stage = ZipStage(
        writer,
        emit,
        block=part_size,
        after_block=release_memory if settings.malloc_arena_max > 0 else None,
        new_block=new_block,
    )
    try:
        ahead = Prefetcher(range(len(entries)), reader.read, settings.read_buffer, settings.read_concurrency)
        async with ahead:
            for i, entry in enumerate(entries):
                tracker.current = entry.name
                started = False
                try:
                    if reader.whole(i):  # one chunk (or none): one hand-over, CRC-32 in the local header
                        data = b"".join([c async for c in ahead.chunks(i)])
                        await stage.entry(entry.name, entry.obj.modified, spec.compression, data)
                        tracker.bytes_done += len(data)
                    else:
                        async for chunk in ahead.chunks(i):
                            if not started:
                                plan = reader.plans.pop(i)
                                await stage.begin(
                                    entry.name, entry.obj.modified, plan.method, entry.obj.size, plan.crc32
                                )
                                started = True
                            await stage.write(chunk)
                            tracker.bytes_done += len(chunk)
                            tracker.report()
                        await stage.end()
                except SourceMissing:
                    # Deleted after it was listed. Under on_missing=skip, and if none of it is written yet,
                    # leave it out; otherwise the job fails (and the sink is aborted).
                    if spec.on_missing == "skip" and not started:
                        skipped.append({"url": entry.obj.location.url, "reason": "deleted while the job ran"})
                        continue
                    raise
                written.append(entry)
                tracker.files_done += 1
                tracker.report()
        await stage.finish()
    except EntryMismatch as exc:
        # A STORED entry's bytes differ from the CRC-32 its header declared: the object changed between its
        # two reads, or the store's checksum was not of these bytes. The archive would be wrong: fail.
        url = next((e.obj.location.url for e in entries if e.name == exc.name), exc.name)
        raise SourceChanged(url, f"its bytes do not match the CRC-32 declared for them ({exc.reason})") from exc
    finally:
        await stage.close()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)  # the stage has stopped: nothing more is submitted
    return written


# --- running a job from synchronous code (the CLI, the Celery task) ---


def _loop() -> asyncio.AbstractEventLoop:
    """fsspec's IO loop: one per process, in its own thread, shared with s3fs."""
    import fsspec.asyn

    return fsspec.asyn.get_loop()  # made once, under fsspec's own lock


class _Interrupted(Exception):
    """Wraps a KeyboardInterrupt or SystemExit raised on the IO loop (by a progress callback, say)."""


def run_sync(coro: Coroutine[Any, Any, T], bind: Callable[[Callable[[], None]], None] | None = None) -> T:
    """Run ``coro`` on the IO loop and wait. If the wait is interrupted (KeyboardInterrupt, Celery's
    SoftTimeLimitExceeded, any exception raised by a signal handler), cancel the coroutine and wait for its
    cleanup - the upload's abort - before re-raising. ``bind``, if given, receives a function that cancels the
    coroutine from any thread (how a heartbeat stops a run wherever it is: listing, reading or uploading).

    A coroutine that still returned (it had begun to publish, which nothing interrupts) returns its value:
    the archive exists, and saying so is the truth."""
    done = threading.Event()
    box: dict[str, Any] = {}

    async def wrapper() -> T:
        box["started"] = True
        try:
            value = box["value"] = await coro
            return value
        except (KeyboardInterrupt, SystemExit) as exc:
            # asyncio re-raises these out of the event loop itself, which would kill the shared IO thread and
            # leave this caller waiting forever: carry them to the caller's thread instead.
            raise _Interrupted() from exc
        finally:
            done.set()

    future = asyncio.run_coroutine_threadsafe(wrapper(), _loop())
    if bind is not None:

        def cancel() -> None:
            future.cancel()

        bind(cancel)
    try:
        return future.result()
    except _Interrupted as exc:
        assert exc.__cause__ is not None
        raise exc.__cause__ from None
    except BaseException:
        future.cancel()
        if box.get("started"):  # a coroutine cancelled before it began has nothing to clean up
            done.wait(60)
        if "value" in box:
            return box["value"]
        raise


def prepare(spec: JobSpec, settings: Settings) -> None:
    """Ready a process that has run no job for ``spec``: the allocator tuned, and the stores the job reads and
    writes made, clients included, before it starts (what a worker's pool process does as it starts). Blocks;
    sends no request. A store that fails here fails the job when it is used, with its error translated."""
    tune_allocator(settings.malloc_arena_max)  # before the stores' threads allocate: see tune_allocator
    protocols = {spec.destination.protocol, *(source.location.protocol for source in spec.sources)}
    try:
        warm(settings, protocols)
    except Exception:
        log.debug("the stores could not be made ahead of the job; it will meet the same error", exc_info=True)


def run_job(
    spec: JobSpec | dict[str, Any],
    settings: Settings | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_upload: Callable[[str], None] | None = None,
    publication: Publication | None = None,
    bind: Callable[[Callable[[], None]], None] | None = None,
    on_waiting: Callable[[RestorePending], None] | None = None,
) -> JobResult:
    """Validate ``spec`` and make its archive in this process. The synchronous face of ``build_archive``.
    With ``on_waiting``, restores of archived sources are waited for here; without, ``RestorePending``."""
    settings = settings or Settings.from_env()
    if not isinstance(spec, JobSpec):
        spec = JobSpec.from_dict(spec, settings)
    tune_allocator(settings.malloc_arena_max)
    coro = build_archive(
        spec, settings, on_progress, on_upload=on_upload, publication=publication, on_waiting=on_waiting
    )
    return run_sync(coro, bind)
