"""Getting archives back: restoring an S3 object from an archive class, retrieving a vault archive.

``restore_object`` asks S3 for a temporary readable copy of an object in GLACIER or DEEP_ARCHIVE (not twice:
a restore running or done is reported, not requested again). ``retrieve`` finds or starts the vault's
retrieval job for an archive (an ``archive-retrieval`` job: hours, usually), reports its status, and once
the vault has the bytes ready streams them - in constant memory, checking the archive's tree hash on the
way - into a local file or an S3 object, each written transactionally (nothing appears unless whole).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Callable
from typing import Any, cast

from .config import MAX_PARTS, MiB, Settings
from .errors import InvalidJob, SourceChanged, SourceMissing
from .spec import Location, parse_archive_url
from .stores import SinkOptions, store_for
from .stores.treehash import TreeHasher

READ_CHUNK = 1 * MiB


def parse_object_url(value: str) -> Location:
    """``s3://bucket/key``: one S3 object."""
    m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)", value)
    if m is None or m[2].endswith("/"):
        raise InvalidJob("url", value, "must be s3://BUCKET/KEY (one object)")
    return Location("s3", m[1], m[2])


async def restore_object(url: str, days: int, tier: str, settings: Settings) -> dict[str, Any]:
    """Request a restore of one S3 object in an archive class; report what was done."""
    loc = parse_object_url(url)
    store: Any = store_for("s3", settings)
    info = await store.head(loc)
    if info is None:
        raise SourceMissing([url])
    out: dict[str, Any] = {"url": url, "storage_class": info.storage_class or "STANDARD"}
    if not info.archived:
        return {**out, "state": "readable", "message": "not in an archive class: it can be read as it is"}
    state = await store.restore_state(info)
    if state == "archived":
        await store.request_restore(info, days, tier)
        return {**out, "state": "requested", "message": f"restore requested ({tier}, {days} day(s))"}
    message = "a restore is in progress" if state == "ongoing" else "restored: it can be read now"
    return {**out, "state": state, "message": message}


def _destination(to: str) -> Location:
    if to.startswith("s3://"):
        return parse_object_url(to)
    if "://" in to and not to.startswith("file://"):
        raise InvalidJob("--to", to, "must be a local file or s3://BUCKET/KEY")
    path = os.path.abspath(to.removeprefix("file://"))
    if os.path.isdir(path):
        raise InvalidJob("--to", to, "is a folder: name the file to write")
    return Location("file", "", path)


async def retrieve(
    url: str,
    settings: Settings,
    to: str | None = None,
    tier: str = "Standard",
    wait: bool = False,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Find or start the retrieval job of ``glacier://VAULT/ARCHIVE_ID``; once it has succeeded, write the
    archive to ``to`` (a file, or s3://BUCKET/KEY). With ``wait``, poll every ``restore_poll`` seconds until
    the job ends. Returns the status: job id, its state, whether it was started now, and what was written."""
    loc = parse_archive_url(url)
    dest = _destination(to) if to else None
    vault, archive_id = loc.bucket, loc.key
    store: Any = store_for("glacier", settings)
    jobs = await store.retrievals(vault, archive_id)
    started = not jobs
    job_id = await store.start_retrieval(vault, archive_id, tier) if started else jobs[0]["JobId"]
    while True:
        job = await store.describe(vault, job_id)
        status: dict[str, Any] = {
            "url": url,
            "job_id": job_id,
            "status": job.get("StatusCode"),
            "started": started,
            "size": job.get("ArchiveSizeInBytes"),
            "tree_hash": job.get("SHA256TreeHash") or job.get("ArchiveSHA256TreeHash"),
        }
        if job.get("StatusCode") == "Failed":
            raise SourceMissing([f"{url} (retrieval job {job_id} failed: {job.get('StatusMessage')})"])
        if job.get("StatusCode") == "Succeeded" or not wait:
            break
        if on_status:
            on_status(status)
        await asyncio.sleep(settings.restore_poll)
    if dest is None or status["status"] != "Succeeded":
        return status
    status["written"] = await _write(store, vault, job_id, status, dest, settings)
    return status


async def _write(
    store: Any, vault: str, job_id: str, status: dict[str, Any], dest: Location, settings: Settings
) -> str:
    size = status.get("size") or 0
    part_size = max(settings.part_size, math.ceil(size / MAX_PARTS / MiB) * MiB)
    options = SinkOptions(
        content_type="application/octet-stream", part_size=part_size, concurrency=settings.upload_concurrency
    )
    sink = await store_for(dest.protocol, settings).open_sink(dest, options)
    hasher = TreeHasher()
    try:
        async for chunk in cast(Any, store).output(vault, job_id, READ_CHUNK):
            hasher.update(chunk)
            await sink.write(chunk)
        if size and hasher.size != size:
            raise SourceChanged(status["url"], f"the vault sent {hasher.size} bytes of {size}")
        if status.get("tree_hash") and hasher.hexdigest() != status["tree_hash"]:
            raise SourceChanged(status["url"], "the bytes received do not match the archive's tree hash")
        await sink.commit()
    except BaseException:
        await asyncio.shield(sink.abort())
        raise
    return dest.url if dest.protocol == "s3" else dest.path
