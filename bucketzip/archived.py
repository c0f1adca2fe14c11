"""Sources in an archive class (S3 GLACIER, DEEP_ARCHIVE): what a job does with them, before it writes a byte.

The listing (or a plain object's HEAD) says each object's storage class. An archived object can be read only
while a restored copy of it exists, which a HEAD's ``x-amz-restore`` reports. The spec's ``on_archived``:

- ``fail`` (default): the job fails naming every archived object not restored (``SourceArchived``);
- ``skip``: those are left out and listed in the result's ``skipped``;
- ``restore``: a restore of each is requested (never twice: one running or done is left alone), and while
  any is still running the job raises ``RestorePending``, which a worker turns into a re-queue with a
  countdown (its process is free meanwhile); or, given ``on_waiting``, it waits here, polling every
  ``BUCKETZIP_RESTORE_POLL`` seconds (``bucketzip run``, which has no queue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from .config import Settings
from .errors import RestorePending, SourceArchived
from .selection import Entry, Selection
from .spec import JobSpec
from .stores import Archival, RestoreState, Store

DEFAULT_TIER = "Standard"
DEFAULT_DAYS = 1


async def settle(
    sel: Selection,
    spec: JobSpec,
    settings: Settings,
    stores: Callable[[str], Store],
    on_waiting: Callable[[RestorePending], None] | None = None,
) -> None:
    """Apply ``spec.on_archived`` to ``sel`` (in place). Returns once every remaining entry is readable."""
    archived = [e for e in sel.entries if e.obj.archived]
    if not archived:
        return
    limit = asyncio.Semaphore(settings.read_concurrency)

    async def state(entry: Entry) -> RestoreState:
        async with limit:
            return await _archival(stores, entry).restore_state(entry.obj)

    states = await asyncio.gather(*(state(e) for e in archived))
    unreadable = [e for e, s in zip(archived, states, strict=True) if s != "restored"]
    if spec.on_archived == "fail":
        if unreadable:
            raise SourceArchived([e.obj.location.url for e in unreadable])
        return
    if spec.on_archived == "skip":
        left_out = {id(e) for e in unreadable}
        sel.entries = [e for e in sel.entries if id(e) not in left_out]
        sel.skipped += [
            {"url": e.obj.location.url, "reason": f"archived ({e.obj.storage_class}) and not restored"}
            for e in unreadable
        ]
        return

    days, tier = spec.restore_days or DEFAULT_DAYS, spec.restore_tier or DEFAULT_TIER

    async def request(entry: Entry) -> None:
        async with limit:
            await _archival(stores, entry).request_restore(entry.obj, days, tier)

    pending = list(zip(unreadable, (s for s in states if s != "restored"), strict=True))
    while True:
        await asyncio.gather(*(request(e) for e, s in pending if s == "archived"))
        if not pending:
            return
        waiting = RestorePending(spec.job_id or spec.destination.url, len(archived) - len(pending), len(archived))
        if on_waiting is None:
            raise waiting
        on_waiting(waiting)
        await asyncio.sleep(settings.restore_poll)
        entries = [e for e, _ in pending]
        pending = [
            (e, s)
            for e, s in zip(entries, await asyncio.gather(*(state(e) for e in entries)), strict=True)
            if s != "restored"
        ]


def _archival(stores: Callable[[str], Store], entry: Entry) -> Archival:
    # Only a store that reports storage classes (S3) can hold an archived object.
    return cast(Archival, stores(entry.obj.location.protocol))
