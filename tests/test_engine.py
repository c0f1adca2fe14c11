"""The engine end to end against a real S3 endpoint: the happy path, every spec rule, and the transactional
guarantee (any failure leaves no object and no in-progress multipart upload)."""

from __future__ import annotations

import os
import random
import signal
import threading
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import bucketzip.engine
from bucketzip.config import MAX_PARTS, MIN_PART_SIZE, Settings
from bucketzip.engine import AlreadyPublished, Progress, Publication, part_size_for, run_job
from bucketzip.errors import InvalidJob, JobCancelled, LimitExceeded, SourceChanged, SourceMissing
from bucketzip.selection import Entry, Selection
from bucketzip.spec import Location, check_entry_name
from bucketzip.stores.base import ObjectInfo
from tests.helpers import fetch_archive, keys, open_uploads

MiB = 2**20
Put = Callable[[str, dict[str, bytes]], None]


def text(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex() for _ in range(300)]
    block = "\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(2000)).encode()
    return (block * (n // len(block) + 1))[:n]


@pytest.fixture(scope="module")
def corpus(s3: Any) -> Iterator[tuple[str, dict[str, bytes]]]:
    """About 60 MB of mixed objects in one bucket, shared by the tests that only read it."""
    rng = random.Random(42)
    objects = {
        "docs/readme.txt": text(200_000, 1),
        "docs/big.log": text(20 * MiB, 2),
        "media/photo.jpg": rng.randbytes(8 * MiB),
        "media/video.mp4": rng.randbytes(12 * MiB),
        "data/random.bin": rng.randbytes(12 * MiB + 1234),
        "data/zeros.bin": bytes(3 * MiB),
        "data/empty.dat": b"",
        "unicode/naïve café/日本語.txt": text(100_000, 3),
        "nested/a/b/c/d/deep.csv": text(3 * MiB, 4),
        **{f"small/{i:02}.txt": text(rng.randint(1, 5000), 10 + i) for i in range(20)},
    }
    bucket = "corpus-" + os.urandom(6).hex()
    s3.create_bucket(Bucket=bucket)
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    s3.put_object(Bucket=bucket, Key="nested/a/", Body=b"")  # a folder marker
    yield bucket, objects
    for key in [*objects, "nested/a/"]:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)


def nothing_written(s3: Any, bucket: str, before: list[str] | None = None) -> None:
    assert keys(s3, bucket) == (before or []), "an object was published"
    assert open_uploads(s3, bucket) == [], "a multipart upload was left open"


def test_happy_path(
    corpus: tuple[str, dict[str, bytes]],
    make_bucket: Callable[[], str],
    s3: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, objects = corpus
    dest = make_bucket()
    reports: list[Progress] = []
    uploads: list[str] = []
    trims: list[int] = []

    def trim() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(bucketzip.engine, "release_memory", trim)
    spec = {
        "sources": [f"s3://{src}/"],
        "destination": f"s3://{dest}/exports/all.zip",
        "metadata": {"owner": "user-42"},
        "content_disposition": 'attachment; filename="all.zip"',
        "presign_expires": 600,
        "job_id": "job-happy-1",
    }
    result = run_job(spec, settings.replace(part_size=5 * MiB), reports.append, on_upload=uploads.append)

    head = s3.head_object(Bucket=dest, Key="exports/all.zip")
    r = result.to_dict()
    assert r["destination"] == f"s3://{dest}/exports/all.zip"
    assert r["size"] == head["ContentLength"]
    assert r["etag"] == head["ETag"]
    assert r["entries"] == len(objects)
    assert r["input_bytes"] == sum(len(d) for d in objects.values())
    assert r["part_size"] == 5 * MiB
    assert r["parts"] == -(-r["size"] // (5 * MiB)) > 1
    assert len(trims) >= r["parts"] - 1  # freed heap pages handed back after each whole part
    assert r["duration"] > 0
    assert r["job_id"] == "job-happy-1"
    assert r["skipped"] == [] and r["renamed"] == []
    assert len(uploads) == 1

    zf = fetch_archive(s3, dest, "exports/all.zip", objects)  # both readers, byte for byte
    methods = {i.filename: i.compress_type for i in zf.infolist()}
    for name in ("media/photo.jpg", "media/video.mp4", "data/random.bin", "data/empty.dat"):
        assert methods[name] == zipfile.ZIP_STORED, name
    for name in ("docs/big.log", "data/zeros.bin", "nested/a/b/c/d/deep.csv"):
        assert methods[name] == zipfile.ZIP_DEFLATED, name
    assert zf.getinfo("unicode/naïve café/日本語.txt").flag_bits & 0x0800

    # Equal parts, only the last one shorter.
    sizes = [s3.head_object(Bucket=dest, Key="exports/all.zip", PartNumber=n)["ContentLength"] for n in (1, r["parts"])]
    assert sizes[0] == 5 * MiB and sizes[1] == r["size"] - (r["parts"] - 1) * 5 * MiB

    assert (head["ContentType"], head["Metadata"]) == ("application/zip", {"owner": "user-42"})
    assert head["ContentDisposition"] == 'attachment; filename="all.zip"'
    with urllib.request.urlopen(r["url"], timeout=30) as response:
        assert response.read() == s3.get_object(Bucket=dest, Key="exports/all.zip")["Body"].read()

    last = reports[-1]
    assert (last.files_done, last.files_total) == (len(objects), len(objects))
    assert last.bytes_done == last.bytes_total == r["input_bytes"]
    done = [p.bytes_done for p in reports]
    assert done == sorted(done) and len(reports) > 10
    assert open_uploads(s3, dest) == []


def test_timestamps_come_from_last_modified(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    s3.put_object(Bucket=b, Key="a.txt", Body=b"x")
    modified = s3.head_object(Bucket=b, Key="a.txt")["LastModified"].astimezone(UTC)
    run_job({"sources": [f"s3://{b}/a.txt"], "destination": f"s3://{b}/out.zip"}, settings)
    info = fetch_archive(s3, b, "out.zip", {"a.txt": b"x"}).getinfo("a.txt")
    assert datetime(*info.date_time, tzinfo=UTC) == modified.replace(second=modified.second // 2 * 2, microsecond=0)


def test_small_archive_is_a_single_put(make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"a.txt": b"hello", "b.bin": os.urandom(100_000)})
    uploads: list[str] = []
    result = run_job(
        {"sources": [f"s3://{b}/a.txt", f"s3://{b}/b.bin"], "destination": f"s3://{b}/out.zip"},
        settings.replace(part_size=5 * MiB),
        on_upload=uploads.append,
    )
    assert result.parts == 1 and uploads == [], "no multipart upload for an archive smaller than a part"
    assert result.url is None and result.job_id is None
    fetch_archive(s3, b, "out.zip", {"a.txt": b"hello", "b.bin": s3.get_object(Bucket=b, Key="b.bin")["Body"].read()})


def test_the_issues_example(make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings) -> None:
    photos, logs, docs, exports = make_bucket(), make_bucket(), make_bucket(), make_bucket()
    put(photos, {"2024/beach.jpg": b"beach", "2024/raw/IMG_1.cr2": b"raw1", "2024/raw/x/IMG_2.cr2": b"raw2"})
    put(logs, {"app/2024-11-01.log": b"l1", "app/2024-11-02.log": b"l2", "app/2024-10-31.log": b"old"})
    put(docs, {"report.pdf": b"%PDF"})
    spec = {
        "sources": [
            f"s3://{photos}/2024/beach.jpg",
            {"url": f"s3://{photos}/2024/raw/", "name": "raw/"},
            {"url": f"s3://{logs}/app/2024-11-*.log", "name": "logs/"},
            {"url": f"s3://{docs}/report.pdf", "name": "Report (final).pdf"},
        ],
        "destination": f"s3://{exports}/user-42/trip.zip",
        "compression": "auto",
        "on_missing": "fail",
        "on_duplicate": "rename",
    }
    result = run_job(spec, settings)
    expected = {
        "2024/beach.jpg": b"beach",
        "raw/IMG_1.cr2": b"raw1",
        "raw/x/IMG_2.cr2": b"raw2",
        "logs/2024-11-01.log": b"l1",
        "logs/2024-11-02.log": b"l2",
        "Report (final).pdf": b"%PDF",
    }
    zf = fetch_archive(s3, exports, "user-42/trip.zip", expected)
    assert zf.namelist() == list(expected)  # in the order of the sources
    assert result.entries == 6 and result.input_bytes == sum(len(v) for v in expected.values())


@pytest.mark.parametrize(
    ("compression", "level", "stored", "deflated"),
    [
        ("store", None, {"t.txt", "p.jpg", "r.bin"}, set()),
        ("deflate", None, set(), {"t.txt", "p.jpg", "r.bin"}),
        ("auto", None, {"p.jpg", "r.bin"}, {"t.txt"}),
        ("deflate", 0, {"t.txt", "p.jpg", "r.bin"}, set()),  # level 0 is no compression at all
    ],
)
def test_compression(
    compression: str,
    level: int | None,
    stored: set[str],
    deflated: set[str],
    make_bucket: Callable[[], str],
    put: Put,
    s3: Any,
    settings: Settings,
) -> None:
    b = make_bucket()
    objects = {"t.txt": text(300_000, 5), "p.jpg": text(300_000, 6), "r.bin": os.urandom(300_000)}
    put(b, {f"src/{k}": v for k, v in objects.items()})
    spec: dict[str, Any] = {"sources": [f"s3://{b}/src/"], "destination": f"s3://{b}/out.zip"}
    spec["compression"] = compression
    if level is not None:
        spec["compression_level"] = level
    run_job(spec, settings)
    zf = fetch_archive(s3, b, "out.zip", objects)
    assert {i.filename for i in zf.infolist() if i.compress_type == zipfile.ZIP_STORED} == stored
    assert {i.filename for i in zf.infolist() if i.compress_type == zipfile.ZIP_DEFLATED} == deflated


@pytest.mark.parametrize("threads", [1, 3])
def test_deflate_threads_make_the_same_entries(
    threads: int, corpus: tuple[str, dict[str, bytes]], make_bucket: Callable[[], str], s3: Any, settings: Settings
) -> None:
    """One DEFLATE thread or several (blocks deflated apart, pigz-style): the same entries, every CRC right,
    sizes within a few bytes per 512 KiB chunk of each other."""
    bucket, objects = corpus
    out = make_bucket()
    spec = {"sources": [f"s3://{bucket}/"], "destination": f"s3://{out}/{threads}.zip"}
    result = run_job(spec, settings.replace(deflate_threads=threads))
    zf = fetch_archive(s3, out, f"{threads}.zip", objects)  # zipfile, every CRC, and unzip -t
    deflated = {i.filename for i in zf.infolist() if i.compress_type == zipfile.ZIP_DEFLATED}
    assert {"docs/big.log", "nested/a/b/c/d/deep.csv"} <= deflated
    if threads > 1:
        one = run_job({**spec, "destination": f"s3://{out}/one.zip"}, settings.replace(deflate_threads=1))
        assert abs(result.size - one.size) <= 16 * (result.input_bytes // (512 * 1024) + len(objects))


def test_compression_level_is_used(make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings) -> None:
    b = make_bucket()
    data = text(2 * MiB, 7)
    put(b, {"t.txt": data})
    sizes = {}
    for level in (1, 9):
        spec = {"sources": [f"s3://{b}/t.txt"], "destination": f"s3://{b}/{level}.zip", "compression_level": level}
        sizes[level] = run_job(spec, settings).size
        fetch_archive(s3, b, f"{level}.zip", {"t.txt": data})
    assert sizes[9] < sizes[1]


def test_on_missing_fail_names_them_and_writes_nothing(
    make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    put(b, {"here.txt": b"x"})
    missing = [f"s3://{b}/gone.txt", f"s3://{b}/empty/", f"s3://{b}/*.nope"]
    with pytest.raises(SourceMissing) as info:
        run_job({"sources": [f"s3://{b}/here.txt", *missing], "destination": f"s3://{b}/out.zip"}, settings)
    assert info.value.urls == missing
    assert all(u in str(info.value) for u in missing)
    assert info.value.globs == [f"s3://{b}/*.nope"]  # the one glob: the message points to "literal"
    assert f"s3://{b}/*.nope is a glob pattern" in str(info.value) and '"literal": true' in str(info.value)
    nothing_written(s3, b, ["here.txt"])


def test_a_glob_matching_nothing_suggests_literal(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"photo1.jpg": b"x"})
    with pytest.raises(SourceMissing, match=r'"literal": true') as info:
        run_job({"sources": [f"s3://{b}/photo[2].jpg"], "destination": f"s3://{b}/out.zip"}, settings)
    assert info.value.args == ([f"s3://{b}/photo[2].jpg"], [f"s3://{b}/photo[2].jpg"])  # survives Celery
    with pytest.raises(SourceMissing) as plain:
        run_job({"sources": [f"s3://{b}/gone.jpg"], "destination": f"s3://{b}/out.zip"}, settings)
    assert "literal" not in str(plain.value)


def test_on_missing_skip_lists_them(make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"here.txt": b"x"})
    spec = {
        "sources": [f"s3://{b}/here.txt", f"s3://{b}/gone.txt"],
        "destination": f"s3://{b}/out.zip",
        "on_missing": "skip",
    }
    result = run_job(spec, settings)
    assert result.skipped == [{"url": f"s3://{b}/gone.txt", "reason": "not found"}]
    assert result.entries == 1
    fetch_archive(s3, b, "out.zip", {"here.txt": b"x"})


def test_on_duplicate(make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"x/a.txt": b"from x", "y/a.txt": b"from y", "z/A.TXT": b"from z"})
    sources = [f"s3://{b}/x/", f"s3://{b}/y/", f"s3://{b}/z/"]

    result = run_job({"sources": sources, "destination": f"s3://{b}/rename.zip"}, settings)
    fetch_archive(s3, b, "rename.zip", {"a.txt": b"from x", "a (1).txt": b"from y", "A (2).TXT": b"from z"})
    assert [(r["url"], r["to"]) for r in result.renamed] == [
        (f"s3://{b}/y/a.txt", "a (1).txt"),
        (f"s3://{b}/z/A.TXT", "A (2).TXT"),
    ]

    result = run_job({"sources": sources, "destination": f"s3://{b}/skip.zip", "on_duplicate": "skip"}, settings)
    fetch_archive(s3, b, "skip.zip", {"a.txt": b"from x"})
    assert [s["url"] for s in result.skipped] == [f"s3://{b}/y/a.txt", f"s3://{b}/z/A.TXT"]

    before = keys(s3, b)
    with pytest.raises(InvalidJob) as info:
        run_job({"sources": sources, "destination": f"s3://{b}/fail.zip", "on_duplicate": "fail"}, settings)
    assert info.value.field == "sources[1]" and "a.txt" in str(info.value)
    nothing_written(s3, b, before)


def test_storage_class(make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"a.txt": b"cold"})
    result = run_job(
        {"sources": [f"s3://{b}/a.txt"], "destination": f"s3://{b}/cold.zip", "storage_class": "GLACIER"}, settings
    )
    assert result.storage_class == "GLACIER"
    assert s3.head_object(Bucket=b, Key="cold.zip")["StorageClass"] == "GLACIER"
    s3.restore_object(Bucket=b, Key="cold.zip", RestoreRequest={"Days": 1})
    fetch_archive(s3, b, "cold.zip", {"a.txt": b"cold"})


def test_unsafe_keys_are_sanitised_and_folder_markers_skipped(
    make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings
) -> None:
    b = make_bucket()
    put(
        b,
        {
            "p/../escape.txt": b"1",
            "p//double.txt": b"2",
            "p/back\\slash.txt": b"3",
            "p/ctl\x01.txt": b"4",
            "p/ok.txt": b"5",
            "p/folder/": b"",
            "p/folder/inside.txt": b"6",
        },
    )
    result = run_job({"sources": [f"s3://{b}/p/"], "destination": f"s3://{b}/out.zip"}, settings)
    expected = {
        "_/escape.txt": b"1",
        "double.txt": b"2",
        "back_slash.txt": b"3",
        "ctl_.txt": b"4",
        "ok.txt": b"5",
        "folder/inside.txt": b"6",
    }
    zf = fetch_archive(s3, b, "out.zip", expected)
    for name in zf.namelist():
        check_entry_name("entry", name)
    assert {(r["from"], r["to"]) for r in result.renamed} == {
        ("../escape.txt", "_/escape.txt"),
        ("/double.txt", "double.txt"),
        ("back\\slash.txt", "back_slash.txt"),
        ("ctl\x01.txt", "ctl_.txt"),
    }


def test_unsafe_explicit_name_is_invalid(make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"a.txt": b"x"})
    for name in ("../a.txt", "/a.txt", "C:a.txt", "a\x00.txt"):
        with pytest.raises(InvalidJob) as info:
            run_job({"sources": [{"url": f"s3://{b}/a.txt", "name": name}], "destination": f"s3://{b}/o.zip"}, settings)
        assert info.value.field == "sources[0].name" and repr(name) in str(info.value)
    nothing_written(s3, b, ["a.txt"])


@pytest.mark.parametrize(
    ("limits", "exc", "field"),
    [
        ({"max_entries": 2}, LimitExceeded, "sources[0]"),
        ({"max_input_bytes": 299}, LimitExceeded, "sources"),
        ({"allowed_buckets": frozenset({"somewhere-else"})}, InvalidJob, "sources[0]"),
        ({"allowed_destination_buckets": frozenset({"somewhere-else"})}, InvalidJob, "destination"),
    ],
)
def test_over_a_limit_writes_nothing(
    limits: dict[str, Any],
    exc: type[Exception],
    field: str,
    make_bucket: Callable[[], str],
    put: Put,
    s3: Any,
    settings: Settings,
) -> None:
    b = make_bucket()
    put(b, {"p/1": bytes(100), "p/2": bytes(100), "p/3": bytes(100)})
    with pytest.raises(exc) as info:
        run_job({"sources": [f"s3://{b}/p/"], "destination": f"s3://{b}/out.zip"}, settings.replace(**limits))
    assert type(info.value) is exc and info.value.field == field  # type: ignore[attr-defined]
    nothing_written(s3, b, ["p/1", "p/2", "p/3"])


def test_local_files_are_refused_by_default(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    with pytest.raises(InvalidJob) as info:
        run_job({"sources": ["file:///etc/passwd"], "destination": f"s3://{b}/out.zip"}, settings)
    assert info.value.field == "sources[0]" and "file:///etc/passwd" in str(info.value)
    nothing_written(s3, b)


def test_part_size_is_raised_to_fit_max_parts(settings: Settings) -> None:
    def selection(*sizes: int) -> Selection:
        when = datetime(2024, 1, 1, tzinfo=UTC)
        return Selection(
            [Entry(f"f{i}", ObjectInfo(Location("s3", "b", f"k{i}"), s, when)) for i, s in enumerate(sizes)]
        )

    small = selection(10 * MiB, 1000)
    assert part_size_for(small, settings) == settings.part_size
    for sel in (selection(2**40), selection(*[4 * 2**30] * 300), selection(100 * 2**30 - 1)):
        size = part_size_for(sel, settings)
        assert size % MiB == 0 and size >= MIN_PART_SIZE
        assert size * MAX_PARTS >= sel.size_bound(), "the largest possible archive must fit in 10,000 parts"
        assert (size - MiB) * MAX_PARTS < sel.size_bound(), "raised no further than needed"


# --- transactional: any failure leaves no object and no in-progress upload ---

SLOW = {"part_size": 5 * MiB, "read_buffer": 1 * MiB, "read_concurrency": 1, "chunk_size": 256 * 1024}


@pytest.fixture
def twenty(make_bucket: Callable[[], str], put: Put) -> tuple[str, str, dict[str, bytes]]:
    """A source bucket with 20 random 1 MiB objects (stored, so the archive is ~20 MiB: four parts of 5 MiB),
    and an empty destination bucket."""
    src, dest = make_bucket(), make_bucket()
    objects = {f"src/{i:02}.bin": os.urandom(MiB) for i in range(20)}
    put(src, objects)
    return src, dest, objects


def job(src: str, dest: str, **extra: Any) -> dict[str, Any]:
    return {"sources": [f"s3://{src}/src/"], "destination": f"s3://{dest}/out.zip", **extra}


def upload_open(s3: Any, dest: str, state: dict[str, Any]) -> bool:
    if not state.get("upload_seen") and open_uploads(s3, dest):
        state["upload_seen"] = True
    return bool(state.get("upload_seen"))


@pytest.mark.parametrize("on_missing", ["fail", "skip"])
def test_source_deleted_while_running(
    twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings, on_missing: str
) -> None:
    src, dest, objects = twenty
    state: dict[str, Any] = {}

    def on_progress(p: Progress) -> None:
        if not state:
            state["deleted_at"] = p.bytes_done
            s3.delete_object(Bucket=src, Key="src/15.bin")  # read-ahead is ~1 MiB: not read yet
        upload_open(s3, dest, state)

    if on_missing == "fail":
        with pytest.raises(SourceMissing) as info:
            run_job(job(src, dest), settings.replace(**SLOW), on_progress)
        assert info.value.urls == [f"s3://{src}/src/15.bin"]
        assert state["upload_seen"], "the failure came after parts were uploaded: the upload was aborted"
        nothing_written(s3, dest)
    else:
        result = run_job(job(src, dest, on_missing="skip"), settings.replace(**SLOW), on_progress)
        assert result.skipped == [{"url": f"s3://{src}/src/15.bin", "reason": "deleted while the job ran"}]
        assert result.entries == 19 and result.parts > 1
        del objects["src/15.bin"]
        fetch_archive(s3, dest, "out.zip", {k.removeprefix("src/"): v for k, v in objects.items()})
        assert open_uploads(s3, dest) == []
    assert state["deleted_at"] < MiB


def test_source_overwritten_while_running(
    twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings
) -> None:
    src, dest, _ = twenty
    state: dict[str, Any] = {}

    def on_progress(p: Progress) -> None:
        if not state:
            state["overwritten"] = True
            s3.put_object(Bucket=src, Key="src/15.bin", Body=os.urandom(MiB))  # same size, other bytes
        upload_open(s3, dest, state)

    with pytest.raises(SourceChanged) as info:
        run_job(job(src, dest), settings.replace(**SLOW), on_progress)
    assert info.value.url == f"s3://{src}/src/15.bin"
    assert state["upload_seen"]
    nothing_written(s3, dest)


def test_exception_mid_stream_aborts(twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings) -> None:
    src, dest, _ = twenty
    state: dict[str, Any] = {}

    class Boom(Exception):
        pass

    def on_progress(p: Progress) -> None:
        # Mid-stream: past the first part (the upload itself is open from the start: see the sink's size_hint).
        if p.bytes_done > 5 * MiB and upload_open(s3, dest, state):
            state["raised_at"] = p.bytes_done
            raise Boom("injected")

    with pytest.raises(Boom):
        run_job(job(src, dest), settings.replace(**SLOW), on_progress)
    assert 5 * MiB <= state["raised_at"] < 20 * MiB
    nothing_written(s3, dest)


def test_a_job_fills_the_same_few_part_buffers_again(
    make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each part's buffer comes back from the sink once uploaded and is filled again: a 13-part archive is made
    in a handful of buffers, not thirteen (each new one cost ~2,000 page faults before its first byte). The
    archive is right although every reused buffer still held an earlier part's bytes."""
    made: list[int] = []

    class Counting(bucketzip.engine.Spares):
        def take(self) -> bytearray:
            with self._lock:
                spare = bool(self._free)
            if not spare:
                made.append(1)
            return super().take()

    monkeypatch.setattr(bucketzip.engine, "Spares", Counting)
    b = make_bucket()
    rng = random.Random(7)
    objects = {f"in/{i}.bin": rng.randbytes(3 * MiB) for i in range(20)}  # 60 MiB that do not compress
    put(b, objects)
    settings = settings.replace(part_size=5 * MiB)
    result = run_job({"sources": [f"s3://{b}/in/"], "destination": f"s3://{b}/out.zip"}, settings)
    assert result.parts == 13  # 60 MiB of entries and their headers, in 5 MiB parts
    fetch_archive(s3, b, "out.zip", {k.removeprefix("in/"): v for k, v in objects.items()})
    # The parts in flight (upload_concurrency), the one being filled, one handed over and waiting for a slot,
    # and the two spares at most: never a new buffer per part.
    assert 1 <= len(made) <= settings.upload_concurrency + 4 < result.parts, made


def test_the_upload_is_created_while_the_first_objects_are_read(
    twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings
) -> None:
    """An input of several parts: CreateMultipartUpload goes out with the first reads, not after part 1."""
    src, dest, objects = twenty
    early: list[int] = []

    def on_progress(p: Progress) -> None:
        if p.bytes_done < 5 * MiB and not early and open_uploads(s3, dest):
            early.append(p.bytes_done)

    run_job(job(src, dest), settings.replace(**SLOW), on_progress)
    assert early, "no upload was open before the first part was full"
    fetch_archive(s3, dest, "out.zip", {k.removeprefix("src/"): v for k, v in objects.items()})


def test_keyboard_interrupt_in_the_job_aborts(
    twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings
) -> None:
    src, dest, objects = twenty
    state: dict[str, Any] = {}

    def on_progress(p: Progress) -> None:
        if upload_open(s3, dest, state) and "raised" not in state:
            state["raised"] = True
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(job(src, dest), settings.replace(**SLOW), on_progress)
    nothing_written(s3, dest)
    # The process's IO loop survived: the next job runs.
    run_job(job(src, dest), settings.replace(**SLOW))
    fetch_archive(s3, dest, "out.zip", {k.removeprefix("src/"): v for k, v in objects.items()})


def test_interrupt_of_the_waiting_thread_aborts(
    twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings
) -> None:
    """SIGINT, or Celery's soft time limit, arrives in the main thread while it waits for the job."""
    src, dest, _ = twenty
    state: dict[str, Any] = {}
    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def on_progress(p: Progress) -> None:
        if upload_open(s3, dest, state) and "signalled" not in state:
            state["signalled"] = p.bytes_done
            signal.pthread_kill(main, signal.SIGINT)

    # Python's own handler turns SIGINT into KeyboardInterrupt; a library loaded by another test in this
    # process (Celery's worker installs shutdown handlers) may have replaced it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run_job(job(src, dest), settings.replace(**SLOW), on_progress)
    except KeyboardInterrupt:
        pass
    else:
        sent, seen = state.get("signalled"), state.get("upload_seen")
        pytest.fail(f"no KeyboardInterrupt: signal sent at byte {sent}, upload seen {seen}")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert state["signalled"] < 20 * MiB
    nothing_written(s3, dest)


@pytest.mark.parametrize("size", [100_000, 12 * MiB], ids=["single-put", "multipart"])
def test_version_id_is_the_archives_version(
    make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings, size: int
) -> None:
    src, dst, plain = make_bucket(), make_bucket(), make_bucket()
    put(src, {"blob.bin": random.Random(size).randbytes(size)})
    s3.put_bucket_versioning(Bucket=dst, VersioningConfiguration={"Status": "Enabled"})
    tuned = settings.replace(part_size=MIN_PART_SIZE)
    versioned = run_job({"sources": [f"s3://{src}/blob.bin"], "destination": f"s3://{dst}/a.zip"}, tuned)
    assert versioned.version_id and versioned.version_id != "null"
    assert versioned.version_id == s3.head_object(Bucket=dst, Key="a.zip")["VersionId"]
    assert (versioned.parts > 1) == (size > MIN_PART_SIZE)
    # An unversioned bucket has no version to report (some stores answer the string "null").
    unversioned = run_job({"sources": [f"s3://{src}/blob.bin"], "destination": f"s3://{plain}/a.zip"}, tuned)
    assert unversioned.version_id is None


# --- publication: the fence, and nothing after the commit changes the outcome ---


def test_a_progress_callback_failing_after_the_commit_does_not_hide_the_archive(
    twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings
) -> None:
    """The queue's old progress callback raised JobCancelled from the report made after the commit: the
    archive was published while the job was recorded cancelled."""
    src, dest, objects = twenty

    def on_progress(p: Progress) -> None:
        if p.files_done == p.files_total:
            raise JobCancelled("j1")  # a cancel that arrives as the job ends

    quiet = settings.replace(progress_interval=3600.0)  # only the first report and the final one
    result = run_job(job(src, dest), quiet, on_progress)
    assert result.entries == 20
    fetch_archive(s3, dest, "out.zip", {k.removeprefix("src/"): v for k, v in objects.items()})


def test_a_run_stopped_at_the_fence_publishes_nothing(
    twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings
) -> None:
    src, dest, _ = twenty
    seen: list[dict[str, Any]] = []

    def fence(pending: dict[str, Any], sealed: dict[str, Any] | None) -> None:
        seen.append(pending)
        assert sealed is None  # an S3 sink seals nothing: its last part may be the whole archive, in one PUT
        raise JobCancelled("j1")

    with pytest.raises(JobCancelled):
        run_job(job(src, dest), settings, publication=Publication("j1", "run-1", fence))
    assert seen and seen[0]["entries"] == 20 and seen[0]["input_bytes"] == 20 * MiB
    nothing_written(s3, dest)


def test_a_run_finds_its_jobs_archive_already_published(
    twenty: tuple[str, str, dict[str, bytes]], s3: Any, settings: Settings
) -> None:
    src, dest, _ = twenty
    run_job(job(src, dest), settings, publication=Publication("j1", "run-1", lambda pending, sealed: None))
    head = s3.head_object(Bucket=dest, Key="out.zip")
    assert head["Metadata"] == {"bucketzip-job": "j1", "bucketzip-run": "run-1"}
    with pytest.raises(AlreadyPublished) as found:
        run_job(job(src, dest), settings, publication=Publication("j1", "run-2", lambda pending, sealed: None))
    assert found.value.info.etag == head["ETag"] and found.value.info.metadata["bucketzip-run"] == "run-1"
    # Another job writing the same key goes ahead, and overwrites it only as it found it (If-Match).
    result = run_job(job(src, dest), settings, publication=Publication("j2", "run-1", lambda pending, sealed: None))
    assert result.entries == 20
    assert s3.head_object(Bucket=dest, Key="out.zip")["Metadata"]["bucketzip-job"] == "j2"
    assert open_uploads(s3, dest) == []


RELEASE = """
import sys
from bucketzip.allocator import release_memory

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))

blocks = [bytes(4096) for _ in range(40_000)]  # ~160 MiB from malloc's heap (below its mmap threshold)
kept = blocks[::50]  # pinned here and there, so the freed pages are inside the heap, not only at its top
del blocks
before = rss()
released = release_memory()
print(released, before, rss())
"""


def test_release_memory_gives_freed_heap_pages_back() -> None:
    """What a worker process does after each job (tasks' task_postrun): its RSS falls back to what it holds."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True).stdout.split()
    released, before, after = out[0] == "True", int(out[1]), int(out[2])
    if not released:
        pytest.skip("not glibc: no malloc_trim")
    assert before - after > 100 * MiB, f"RSS {before / MiB:.0f} -> {after / MiB:.0f} MiB"
