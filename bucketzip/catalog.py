"""The archive catalog: every archive made, kept for years, searchable, and portable as JSON Lines.

A record says where the archive is (``url``: ``s3://bucket/key`` with its ``version_id``, or
``glacier://VAULT/ARCHIVE_ID``), what it is (size, ETag or SHA-256 tree hash, entries, input bytes, storage
class, description, a SHA-256 of its source list) and when and by which job it was made. Vaults cannot list
their archives back quickly, so for a vault archive this record is how it is found again.

Keys (under ``<key_prefix>:catalog:``), so that no search is a scan of the whole catalog::

    records     hash: record id -> the record (JSON)
    time        zset (lexicographic): record ids; an id starts with its creation time in microseconds, so
                the ids sort by time and a date range or a page after a cursor is one ZRANGEBYLEX
    url         zset (lexicographic): "<url>\\0<id>": a destination prefix (or a vault) is one range
    job         zset (lexicographic): "<job id>\\0<id>"
    archive     hash: "<vault>/<archive id>" -> record id: a vault archive is recorded once, however often
                it is imported

Searches return records newest first; ``cursor`` is the ``id`` of the last record of the previous page.
Nothing here trims the catalog: run Redis with persistence (AOF), and export it (``bucketzip archives export``)
to keep a copy outside Redis.
"""

from __future__ import annotations

import hashlib
import json
import shelve
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .config import Settings
from .errors import InvalidJob

TOP = "\U0010ffff"  # sorts after every character a URL or an id can hold: the open end of a prefix range
PAGE = 1000  # records per round trip when exporting
FIELDS = (
    "id",
    "url",
    "destination",
    "version_id",
    "vault",
    "archive_id",
    "size",
    "etag",
    "tree_hash",
    "entries",
    "input_bytes",
    "storage_class",
    "description",
    "job_id",
    "created",
    "sources_digest",
)


def record_id(created: float, identity: str | None = None) -> str:
    """``<microseconds, 16 digits>-<10 hex>``: sorts by time; the tail is random, or derived from ``identity``
    (a vault archive's id) so that importing the same archive twice gives the same id."""
    tail = hashlib.sha256(identity.encode()).hexdigest()[:10] if identity else uuid.uuid4().hex[:10]
    return f"{int(created * 1_000_000):016d}-{tail}"


def record_from_result(job_id: str | None, result: Mapping[str, Any], created: float) -> dict[str, Any]:
    """The catalog record of a job's result (``JobResult.to_dict()``)."""
    destination = result["destination"]
    archive_id = result.get("archive_id")
    vault = destination.removeprefix("glacier://") if destination.startswith("glacier://") else None
    url = f"{destination}/{archive_id}" if archive_id else destination
    record = {
        "id": record_id(created, f"{vault}/{archive_id}" if vault else None),
        "url": url,
        "destination": destination,
        "version_id": result.get("version_id"),
        "vault": vault,
        "archive_id": archive_id,
        "size": result.get("size"),
        "etag": result.get("etag"),
        "tree_hash": result.get("tree_hash"),
        "entries": result.get("entries"),
        "input_bytes": result.get("input_bytes"),
        "storage_class": result.get("storage_class"),
        "description": result.get("description"),
        "job_id": result.get("job_id") or job_id,
        "created": created,
        "sources_digest": result.get("sources_digest"),
    }
    return record


class Catalog:
    """The catalog in Redis. Cheap to construct; ``add`` queues its commands on a caller's pipeline, so the
    registry records a job's success and its archive in one transaction."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        if client is None:
            from .registry import redis_client

            client = redis_client(settings.redis_url)
        self.redis: Any = client
        self.prefix = f"{settings.key_prefix}:catalog:"

    def key(self, name: str) -> str:
        return self.prefix + name

    # --- writing ---

    def add(self, pipe: Any, record: Mapping[str, Any]) -> None:
        """Queue the commands that record ``record`` (which has its ``id``) on ``pipe``."""
        rid = record["id"]
        pipe.hset(self.key("records"), rid, json.dumps(dict(record), sort_keys=True))
        pipe.zadd(self.key("time"), {rid: 0})
        pipe.zadd(self.key("url"), {f"{record['url']}\0{rid}": 0})
        if record.get("job_id"):
            pipe.zadd(self.key("job"), {f"{record['job_id']}\0{rid}": 0})
        if record.get("vault") and record.get("archive_id"):
            pipe.hset(self.key("archive"), f"{record['vault']}/{record['archive_id']}", rid)

    def record(self, job_id: str | None, result: Mapping[str, Any], created: float | None = None) -> dict[str, Any]:
        """Record a job's archive on its own (``bucketzip run``; a worker records through the registry)."""
        record = record_from_result(job_id, result, time.time() if created is None else created)
        with self.redis.pipeline(transaction=True) as pipe:
            self.add(pipe, record)
            pipe.execute()
        return record

    def import_records(self, records: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
        """Add records (an export's lines): those already present (same id, or the same vault archive) are
        left alone, so importing a file twice changes nothing. Returns (added, already present)."""
        added = present = 0
        batch: list[dict[str, Any]] = []
        for n, raw in enumerate(records, 1):
            batch.append(_checked(raw, n))
            if len(batch) == PAGE:
                a, p = self._import(batch)
                added, present, batch = added + a, present + p, []
        if batch:
            a, p = self._import(batch)
            added, present = added + a, present + p
        return added, present

    def _import(self, batch: list[dict[str, Any]]) -> tuple[int, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for r in batch:
                pipe.hexists(self.key("records"), r["id"])
                pipe.hget(self.key("archive"), f"{r.get('vault')}/{r.get('archive_id')}")
            seen = pipe.execute()
        fresh, ids = [], set()
        for i, r in enumerate(batch):
            exists, archive = seen[2 * i], seen[2 * i + 1]
            if exists or (r.get("vault") and r.get("archive_id") and archive) or r["id"] in ids:
                continue
            fresh.append(r)
            ids.add(r["id"])
        with self.redis.pipeline(transaction=True) as pipe:
            for r in fresh:
                self.add(pipe, r)
            pipe.execute()
        return len(fresh), len(batch) - len(fresh)

    def import_shelve(self, path: str, vault: str, created: float | None = None) -> tuple[int, int]:
        """Import a catalog kept the classic way: a ``shelve`` file mapping a description (a file name,
        usually) to the vault archive id (or to the upload's response, a dict with ``archiveId``)."""
        created = time.time() if created is None else created
        try:
            db = shelve.open(path, flag="r")  # noqa: SIM115  (closed by the with below)
        except Exception as exc:  # dbm raises its own error types, one per backend
            raise InvalidJob("shelve", path, f"cannot be opened as a shelve file: {exc}") from None
        records = []
        with db:
            for description, value in db.items():
                archive_id = value if isinstance(value, str) else None
                if isinstance(value, Mapping):
                    archive_id = value.get("archiveId") or value.get("ArchiveId")
                if not archive_id:
                    raise InvalidJob(f"shelve[{description!r}]", repr(value)[:80], "is not a vault archive id")
                records.append(
                    {
                        "id": record_id(created, f"{vault}/{archive_id}"),
                        "url": f"glacier://{vault}/{archive_id}",
                        "destination": f"glacier://{vault}",
                        "vault": vault,
                        "archive_id": archive_id,
                        "description": description,
                        "created": created,
                        "imported_from": "shelve",
                    }
                )
        return self.import_records(records)

    def adopt_legacy(self) -> int:
        """Move records of the registry's former catalog (the ``archives`` zset) into this one."""
        legacy = self.prefix.removesuffix("catalog:") + "archives"
        rows = self.redis.zrange(legacy, 0, -1, withscores=True)
        records = []
        for raw, created in rows:
            old = json.loads(raw)
            identity = json.dumps(old, sort_keys=True)
            records.append({**old, "id": record_id(created, identity), "url": old["destination"]})
        added, _ = self.import_records(records)
        return added

    # --- reading ---

    def get(self, rid: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.key("records"), rid)
        return json.loads(raw) if raw else None

    def search(
        self,
        limit: int = 100,
        prefix: str | None = None,
        vault: str | None = None,
        job_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records newest first, filtered by destination URL ``prefix``, ``vault``, ``job_id`` and creation
        time (``since`` <= created < ``until``, Unix seconds); after ``cursor`` (a record id) if given."""
        low = f"{int(since * 1_000_000):016d}" if since is not None else None
        high = f"{int(until * 1_000_000):016d}" if until is not None else None
        if cursor is not None:
            high = cursor if high is None else min(high, cursor)
        wanted = [p for p in (prefix, f"glacier://{vault}/" if vault else None) if p]
        if job_id is not None:
            ids = self._range("job", f"{job_id}\0", f"{job_id}\1")
        elif wanted:
            longest = max(wanted, key=len)
            ids = self._range("url", longest, longest + TOP)
        else:
            ids = self.redis.zrevrangebylex(
                self.key("time"), f"({high}" if high else "+", f"[{low}" if low else "-", start=0, num=limit
            )
            return self._records(ids, wanted)
        ids = sorted((i for i in ids if (low is None or i >= low) and (high is None or i < high)), reverse=True)
        return self._records(ids, wanted)[:limit]

    def _range(self, index: str, low: str, high: str) -> list[str]:
        members = self.redis.zrangebylex(self.key(index), f"[{low}", f"({high}")
        return [m.rpartition("\0")[2] for m in members]

    def _records(self, ids: list[str], prefixes: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        rows = self.redis.hmget(self.key("records"), ids)
        out = [json.loads(r) for r in rows if r]
        return [r for r in out if all(r["url"].startswith(p) for p in prefixes)]

    def export(self) -> Iterator[dict[str, Any]]:
        """Every record, oldest first, a page at a time (memory does not grow with the catalog)."""
        low = "-"
        while True:
            ids = self.redis.zrangebylex(self.key("time"), low, "+", start=0, num=PAGE)
            if not ids:
                return
            yield from self._records(ids, [])
            low = f"({ids[-1]}"


def _checked(raw: Mapping[str, Any], n: int) -> dict[str, Any]:
    """A record read from an export: it must say where the archive is and when it was made."""
    if not isinstance(raw, Mapping):
        raise InvalidJob(f"line {n}", raw, "must be a JSON object (a catalog record)")
    for name in ("url", "destination", "created"):
        if raw.get(name) in (None, ""):
            raise InvalidJob(f"line {n}.{name}", raw.get(name), "is required in a catalog record")
    if not isinstance(raw["created"], int | float):
        raise InvalidJob(f"line {n}.created", raw["created"], "must be a Unix time in seconds")
    record = dict(raw)
    vault_id = f"{raw.get('vault')}/{raw.get('archive_id')}" if raw.get("vault") else None
    record.setdefault("id", record_id(float(raw["created"]), vault_id or json.dumps(dict(raw), sort_keys=True)))
    if not isinstance(record["id"], str) or "\0" in record["id"]:
        raise InvalidJob(f"line {n}.id", record["id"], "must be a string")
    return record
