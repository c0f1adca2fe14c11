"""The archive catalog (catalog.py) on fakeredis: records, searches, JSONL export/import round trips, the
classic shelve import; and the ``bucketzip archives`` commands against the real Redis."""

from __future__ import annotations

import json
import shelve
import subprocess
import sys
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from bucketzip.catalog import Catalog, record_from_result
from bucketzip.config import Settings
from bucketzip.errors import InvalidJob
from bucketzip.registry import Registry

DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14


def s3_result(key: str, job: str, size: int = 100) -> dict[str, Any]:
    return {
        "destination": f"s3://exports/{key}",
        "size": size,
        "etag": '"e"',
        "version_id": None,
        "entries": 3,
        "input_bytes": 300,
        "storage_class": "DEEP_ARCHIVE",
        "description": f"job {job}",
        "job_id": job,
        "sources_digest": "ab" * 32,
    }


def vault_result(vault: str, archive_id: str, job: str) -> dict[str, Any]:
    return {
        "destination": f"glacier://{vault}",
        "size": 5,
        "archive_id": archive_id,
        "tree_hash": "cd" * 32,
        "entries": 1,
        "job_id": job,
    }


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(Settings(key_prefix="t"), fakeredis.FakeRedis(decode_responses=True))


@pytest.fixture
def filled(catalog: Catalog) -> Catalog:
    catalog.record("j1", s3_result("user-1/a.zip", "j1"), created=T0)
    catalog.record("j2", s3_result("user-1/b.zip", "j2"), created=T0 + DAY)
    catalog.record("j3", s3_result("user-2/c.zip", "j3"), created=T0 + 2 * DAY)
    catalog.record("j4", vault_result("backups", "A1", "j4"), created=T0 + 3 * DAY)
    catalog.record("j5", vault_result("backups-old", "A2", "j5"), created=T0 + 4 * DAY)
    return catalog


def urls(records: list[dict[str, Any]]) -> list[str]:
    return [r["url"] for r in records]


def test_a_record_says_where_what_and_when(catalog: Catalog) -> None:
    r = catalog.record("j9", vault_result("v", "ARCH", "j9"), created=T0)
    assert r["url"] == "glacier://v/ARCH" and r["vault"] == "v" and r["archive_id"] == "ARCH"
    assert r["tree_hash"] == "cd" * 32 and r["job_id"] == "j9" and r["created"] == T0
    assert catalog.get(r["id"]) == r
    s = record_from_result("j", s3_result("k.zip", "j"), T0)
    assert (s["url"], s["vault"], s["storage_class"], s["sources_digest"]) == (
        "s3://exports/k.zip",
        None,
        "DEEP_ARCHIVE",
        "ab" * 32,
    )


def test_searches(filled: Catalog) -> None:
    assert urls(filled.search()) == [
        "glacier://backups-old/A2",
        "glacier://backups/A1",
        "s3://exports/user-2/c.zip",
        "s3://exports/user-1/b.zip",
        "s3://exports/user-1/a.zip",
    ]
    assert urls(filled.search(prefix="s3://exports/user-1/")) == [
        "s3://exports/user-1/b.zip",
        "s3://exports/user-1/a.zip",
    ]
    assert urls(filled.search(vault="backups")) == ["glacier://backups/A1"]  # not backups-old
    assert urls(filled.search(job_id="j3")) == ["s3://exports/user-2/c.zip"]
    assert urls(filled.search(job_id="j")) == []
    assert urls(filled.search(since=T0 + DAY, until=T0 + 3 * DAY)) == [
        "s3://exports/user-2/c.zip",
        "s3://exports/user-1/b.zip",
    ]
    assert urls(filled.search(prefix="s3://", since=T0 + DAY / 2, until=T0 + 1.5 * DAY)) == [
        "s3://exports/user-1/b.zip"
    ]
    assert urls(filled.search(prefix="s3://exports/user-1/", job_id="j2")) == ["s3://exports/user-1/b.zip"]


@pytest.mark.parametrize("search", [{}, {"prefix": "s3://exports/"}])
def test_pages_follow_the_cursor(filled: Catalog, search: dict[str, Any]) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        page = filled.search(limit=2, cursor=cursor, **search)
        if not page:
            break
        assert len(page) <= 2
        seen += urls(page)
        cursor = page[-1]["id"]
    assert seen == urls(filled.search(limit=100, **search))
    assert len(seen) == (5 if not search else 3)


def test_export_import_round_trip_is_idempotent(filled: Catalog, tmp_path: Path) -> None:
    exported = list(filled.export())
    assert [r["created"] for r in exported] == sorted(r["created"] for r in exported)  # oldest first
    other = Catalog(Settings(key_prefix="u"), fakeredis.FakeRedis(decode_responses=True))
    lines = [json.loads(json.dumps(r)) for r in exported]
    assert other.import_records(lines) == (5, 0)
    assert other.import_records(lines) == (0, 5)  # again: nothing changes
    assert list(other.export()) == exported
    assert urls(other.search(vault="backups")) == ["glacier://backups/A1"]


def test_import_checks_records(catalog: Catalog) -> None:
    with pytest.raises(InvalidJob, match=r"line 2\.url"):
        catalog.import_records([{"url": "s3://a/b", "destination": "s3://a/b", "created": T0}, {"created": T0}])
    with pytest.raises(InvalidJob, match=r"line 1\.created"):
        catalog.import_records([{"url": "s3://a/b", "destination": "s3://a/b", "created": "yesterday"}])


def test_shelve_import(catalog: Catalog, tmp_path: Path) -> None:
    path = str(tmp_path / "glacier.db")
    with shelve.open(path) as db:  # the classic catalog: description -> archive id
        db["photos-2019.tar"] = "ARCHIVE-1"
        db["photos-2020.tar"] = {"archiveId": "ARCHIVE-2", "checksum": "x"}
    assert catalog.import_shelve(path, "family", created=T0) == (2, 0)
    assert catalog.import_shelve(path, "family", created=T0 + 5) == (0, 2)  # idempotent, whatever the time
    found = {r["description"]: r["url"] for r in catalog.search(vault="family")}
    assert found == {"photos-2019.tar": "glacier://family/ARCHIVE-1", "photos-2020.tar": "glacier://family/ARCHIVE-2"}
    with pytest.raises(InvalidJob, match="shelve"):
        catalog.import_shelve(str(tmp_path / "nothing-here"), "family")


def test_a_success_and_its_catalog_record_are_one_transaction(catalog: Catalog) -> None:
    from bucketzip.lifecycle import SUCCEEDED, Lifecycle

    registry = Registry(Settings(key_prefix="t"), catalog.redis)
    life = Lifecycle(registry, catalog.redis)
    registry.queued([("j1", {}, "glacier://v")])
    lease = life.lease("j1", "glacier://v")
    assert lease.acquire() and life.start("j1", {}, "glacier://v", "host:1", lease).run
    assert registry.buckets() == {"glacier://v"}  # the sweeper asks the vault, not an S3 bucket "v"
    result = vault_result("v", "A9", "j1")
    fields = {"result": json.dumps(result)}
    assert life.finish("j1", lease, SUCCEEDED, fields, lambda pipe: registry.add_archive(pipe, "j1", result, None))
    [record] = registry.archives(vault="v")
    assert record["url"] == "glacier://v/A9" and record["job_id"] == "j1"


def test_legacy_records_are_adopted(catalog: Catalog) -> None:
    old = {"job_id": "j0", "destination": "s3://b/old.zip", "size": 1, "entries": 1, "created": T0}
    catalog.redis.zadd("t:archives", {json.dumps(old, sort_keys=True): T0})
    assert catalog.adopt_legacy() == 1
    assert catalog.adopt_legacy() == 0
    assert urls(catalog.search()) == ["s3://b/old.zip"]


# --- the command line, against the real Redis ---


def bz(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bucketzip", *args], env=env, capture_output=True, text=True, input=stdin, timeout=120
    )


def test_archives_commands(redis_url: str, queue_prefix: str, tmp_path: Path) -> None:
    import os

    env = {"PATH": os.environ["PATH"], "BUCKETZIP_REDIS_URL": redis_url, "BUCKETZIP_KEY_PREFIX": queue_prefix}
    settings = Settings.from_env(env)
    Catalog(settings).record("j1", vault_result("v1", "A1", "j1"), created=T0)
    Catalog(settings).record("j2", s3_result("x.zip", "j2"), created=T0 + DAY)

    listed = bz("archives", "--vault", "v1", env=env)
    assert listed.returncode == 0 and "glacier://v1/A1" in listed.stdout and "x.zip" not in listed.stdout
    by_date = bz("archives", "--json", "--since", "2023-11-15", env=env)
    assert [r["url"] for r in json.loads(by_date.stdout)] == ["s3://exports/x.zip"]

    out = tmp_path / "catalog.jsonl"
    r = bz("archives", "export", str(out), env=env)
    assert r.returncode == 0 and "2 record(s) exported" in r.stderr
    assert len(out.read_text().splitlines()) == 2

    other = {**env, "BUCKETZIP_KEY_PREFIX": f"{queue_prefix}:copy"}
    assert "2 record(s) added, 0 already present" in bz("archives", "import", str(out), env=other).stderr
    assert "0 record(s) added, 2 already present" in bz("archives", "import", str(out), env=other).stderr
    again = tmp_path / "again.jsonl"
    bz("archives", "export", str(again), env=other)
    assert again.read_text() == out.read_text()

    path = str(tmp_path / "classic.db")
    with shelve.open(path) as db:
        db["a.tar"] = "SHELVED-1"
    r = bz("archives", "import-shelve", path, "--vault", "old", env=env)
    assert r.returncode == 0 and "1 record(s) added" in r.stderr
    assert "glacier://old/SHELVED-1" in bz("archives", "--vault", "old", env=env).stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"url": "s3://a/b"}\n')
    r = bz("archives", "import", str(bad), env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = bz("archives", "export", str(tmp_path / "no" / "such" / "dir.jsonl"), env=env)
    assert r.returncode == 1 and r.stderr.startswith("bucketzip: error:") and "Traceback" not in r.stderr
