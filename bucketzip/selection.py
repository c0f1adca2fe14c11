"""Sources -> the concrete list of objects and entry names.

Prefixes and globs are expanded by listing (the listing's sizes, times and ETags are kept, so no object needs a
HEAD); plain objects get one HEAD each, concurrently. Names are derived, sanitised and de-duplicated here, and
the job's limits are enforced here, as objects are listed, before the first byte of the archive is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .archive import size_bound
from .config import MAX_OBJECT_SIZE, Settings
from .errors import InvalidJob, LimitExceeded
from .spec import GLOB_CHARS, JobSpec, Location, Source, sanitise_name
from .stores import ObjectInfo, Store


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the archive: its name and the object it comes from."""

    name: str
    obj: ObjectInfo


@dataclass
class Selection:
    entries: list[Entry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # URLs of sources that matched nothing
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"url", "reason"}
    renamed: list[dict[str, str]] = field(default_factory=list)  # {"url", "from", "to", "reason"}

    @property
    def input_bytes(self) -> int:
        return sum(e.obj.size for e in self.entries)

    def size_bound(self) -> int:
        names = sum(len(e.name.encode()) for e in self.entries)
        return size_bound(self.input_bytes, len(self.entries), names)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one path segment, ``**`` crosses them, ``[...]``/``[!...]`` are classes."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more whole segments: "a/**/b" matches "a/b" too, as in every glob
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


class _Budget:
    """The job's limits, counted across every source as objects are listed: a listing stops as soon as the job
    is over one, so memory holds at most ``max_entries`` matched objects however many sources or keys there are.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listed = 0  # keys seen in listings, matched or not
        self.matched = 0  # objects that will be entries (before names are de-duplicated)
        self.bytes = 0

    def saw(self, n: int = 1) -> None:
        self.listed += n
        if self.listed > self.settings.max_keys_listed:
            raise LimitExceeded(
                "sources",
                self.listed,
                f"listing went past {self.settings.max_keys_listed} keys (BUCKETZIP_MAX_KEYS_LISTED); "
                "name a narrower prefix or glob",
            )

    def take(self, where: str, source: Source, mine: int, obj: ObjectInfo) -> None:
        """Count one matched object; ``mine`` is how many its own source has matched, this one included."""
        limit = self.settings.max_entries
        self.matched += 1
        self.bytes += obj.size
        if mine > limit:
            raise LimitExceeded(where, mine, f"{source.url} matches more than {limit} entries")
        if self.matched > limit:
            raise LimitExceeded("sources", self.matched, f"more than {limit} entries")
        if self.bytes > self.settings.max_input_bytes:
            raise LimitExceeded(
                "sources", self.bytes, f"more than {self.settings.max_input_bytes} bytes of input (max_input_bytes)"
            )


async def select(spec: JobSpec, settings: Settings, stores: Callable[[str], Store]) -> Selection:
    """Expand ``spec.sources`` into entries, applying naming, on_duplicate and the limits.

    Sources are listed concurrently; the limits apply as objects are listed, and the first source that fails
    (a limit, a denied bucket) cancels the listings still going on.
    """
    budget = _Budget(settings)
    found: list[list[ObjectInfo]] = [[] for _ in spec.sources]
    try:
        async with asyncio.TaskGroup() as group:
            for i, s in enumerate(spec.sources):
                group.create_task(_expand(f"sources[{i}]", s, stores(s.location.protocol), budget, found[i]))
    except BaseExceptionGroup as group_error:
        raise _first(group_error) from None
    sel = Selection()
    seen: dict[str, int] = {}  # casefolded name -> next duplicate number
    for index, (source, objects) in enumerate(zip(spec.sources, found, strict=True)):
        if not objects:
            sel.missing.append(source.url)
            continue
        for obj in objects:
            raw, name = _name(source, obj)
            if not name:
                sel.skipped.append({"url": obj.location.url, "reason": "no usable name"})
                continue
            if name != raw:
                sel.renamed.append({"url": obj.location.url, "from": raw, "to": name, "reason": "unsafe name"})
            key = name.casefold()  # Windows and macOS extract case-insensitively: A.txt would overwrite a.txt
            if key in seen:
                if spec.on_duplicate == "fail":
                    raise InvalidJob(f"sources[{index}]", name, "two objects would have this entry name")
                if spec.on_duplicate == "skip":
                    sel.skipped.append({"url": obj.location.url, "reason": f"duplicate name {name!r}"})
                    continue
                new = _dedupe(name, seen)
                sel.renamed.append({"url": obj.location.url, "from": name, "to": new, "reason": "duplicate"})
                name, key = new, new.casefold()
            seen[key] = 1
            sel.entries.append(Entry(name, obj))
        objects.clear()  # the entries hold what is still needed
    if spec.destination.protocol == "s3" and sel.size_bound() > MAX_OBJECT_SIZE:
        raise LimitExceeded("sources", sel.input_bytes, "the archive could exceed S3's 5 TiB object limit")
    return sel


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error to raise for a failed TaskGroup: the first that is not a cancellation, unwrapped."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def _expand(where: str, source: Source, store: Store, budget: _Budget, out: list[ObjectInfo]) -> None:
    loc = source.location
    if source.kind == "object":
        info = await store.head(loc)
        if info is not None:
            budget.take(where, source, 1, info)
            out.append(info)
        return
    if source.kind == "prefix":
        listing = Location(loc.protocol, loc.bucket, loc.key)
        match: Callable[[str], Any] = lambda key: True  # noqa: E731
    else:
        first = GLOB_CHARS.search(loc.key)
        listing = Location(loc.protocol, loc.bucket, loc.key[: first.start() if first else None])
        match = glob_regex(loc.key).match
    async with contextlib.aclosing(store.list(listing)) as objects:  # type: ignore[type-var]
        async for obj in objects:
            budget.saw()
            key = obj.location.key if obj.location.protocol == "s3" else obj.location.path
            if key.endswith("/") and obj.size == 0:
                continue  # a "folder marker", not a file
            if match(key):
                budget.take(where, source, len(out) + 1, obj)
                out.append(obj)


def _name(source: Source, obj: ObjectInfo) -> tuple[str, str]:
    """The entry name before and after sanitising. Explicit names were validated with the spec."""
    key = obj.location.key if obj.location.protocol == "s3" else obj.location.path
    if source.kind == "object":
        if source.name is not None:
            return source.name, source.name
        return key, sanitise_name(key)
    relative = key[len(source.fixed_prefix) :] if key.startswith(source.fixed_prefix) else key
    folder = source.name or ""
    return folder + relative, folder + sanitise_name(relative) if sanitise_name(relative) else ""


def _dedupe(name: str, seen: dict[str, int]) -> str:
    """``a.txt`` -> ``a (1).txt``, ``a (2).txt``...: the first number not already taken."""
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not stem:  # no extension, or a dotfile such as ".env"
        stem, dot, ext = base, "", ""
    n = seen[name.casefold()]
    while True:
        candidate = f"{folder}{slash}{stem} ({n}){dot}{ext}"
        if candidate.casefold() not in seen:
            seen[name.casefold()] = n + 1
            return candidate
        n += 1


def sources_digest(entries: list[Entry]) -> str:
    """SHA-256 (hex) of the archive's source list: each entry's name, URL, version, ETag and size, in order.
    The catalog keeps it, so an archive can be matched to the exact objects it was made from years later."""
    h = hashlib.sha256()
    for e in entries:
        o = e.obj
        h.update(f"{e.name}\t{o.location.url}\t{o.version_id or ''}\t{o.etag or ''}\t{o.size}\n".encode())
    return h.hexdigest()
