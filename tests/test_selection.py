"""Sources -> entries, against a real S3 endpoint: objects, prefixes, globs, names, duplicates, missing, limits."""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bucketzip.config import Settings
from bucketzip.engine import run_sync
from bucketzip.errors import AccessDenied, InvalidJob, LimitExceeded
from bucketzip.selection import Selection, glob_regex, select
from bucketzip.spec import JobSpec, Location, check_entry_name
from bucketzip.stores import ObjectInfo, store_for

Put = Callable[[str, dict[str, bytes]], None]


def selection(sources: list[Any], settings: Settings, **options: Any) -> Selection:
    spec = JobSpec.from_dict({"sources": sources, "destination": "s3://dest/out.zip", **options}, settings)
    return run_sync(select(spec, settings, lambda protocol: store_for(protocol, settings)))


def names(sel: Selection) -> list[str]:
    return [e.name for e in sel.entries]


def test_plain_objects_are_named_by_key_or_name(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"2024/beach.jpg": b"jpg", "docs/report.pdf": b"pdf", "top.txt": b"t"})
    sel = selection(
        [
            f"s3://{b}/2024/beach.jpg",
            {"url": f"s3://{b}/docs/report.pdf", "name": "Report (final).pdf"},
            f"s3://{b}/top.txt",
        ],
        settings,
    )
    assert names(sel) == ["2024/beach.jpg", "Report (final).pdf", "top.txt"]
    assert [e.obj.size for e in sel.entries] == [3, 3, 1]
    assert sel.input_bytes == 7
    assert sel.missing == sel.skipped == sel.renamed == []


def test_prefix_is_every_object_under_it(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(
        b,
        {
            "2024/raw/IMG_1.cr2": b"1",
            "2024/raw/IMG_2.cr2": b"22",
            "2024/raw/sub/": b"",  # a folder marker: not a file
            "2024/raw/sub/IMG_3.cr2": b"333",
            "2024/rawish.txt": b"not under raw/",
            "2024/raw.txt": b"nor this",
        },
    )
    sel = selection([{"url": f"s3://{b}/2024/raw/", "name": "raw"}], settings)
    assert names(sel) == ["raw/IMG_1.cr2", "raw/IMG_2.cr2", "raw/sub/IMG_3.cr2"]
    sel = selection([f"s3://{b}/2024/raw/"], settings)
    assert names(sel) == ["IMG_1.cr2", "IMG_2.cr2", "sub/IMG_3.cr2"]
    sel = selection([f"s3://{b}/"], settings)  # the whole bucket
    assert sorted(names(sel)) == sorted(
        ["2024/raw/IMG_1.cr2", "2024/raw/IMG_2.cr2", "2024/raw/sub/IMG_3.cr2", "2024/rawish.txt", "2024/raw.txt"]
    )


def test_listing_keeps_what_a_read_needs(make_bucket: Callable[[], str], put: Put, s3: Any, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"p/a.txt": b"hello"})
    (entry,) = selection([f"s3://{b}/p/"], settings).entries
    head = s3.head_object(Bucket=b, Key="p/a.txt")
    assert entry.obj.size == 5
    assert entry.obj.etag == head["ETag"]  # reads are made with If-Match on it
    assert entry.obj.modified == head["LastModified"]
    (entry,) = selection([f"s3://{b}/p/a.txt"], settings).entries
    assert (entry.obj.etag, entry.obj.modified) == (head["ETag"], head["LastModified"])


def test_glob_matches_named_relative_to_its_fixed_part(
    make_bucket: Callable[[], str], put: Put, settings: Settings
) -> None:
    b = make_bucket()
    keys = [
        "logs/app/2024-11-01.log",
        "logs/app/2024-11-02.log",
        "logs/app/2024-12-01.log",
        "logs/app/2024-11-01.log.gz",
        "logs/app/old/2024-11-03.log",
        "logs/app/a1.txt",
        "logs/app/b2.txt",
        "logs/app/c3.txt",
        "logs/web/x/2024-11-04.log",
    ]
    put(b, {k: k.encode() for k in keys})

    def match(pattern: str, name: str | None = None) -> list[str]:
        source: Any = f"s3://{b}/{pattern}" if name is None else {"url": f"s3://{b}/{pattern}", "name": name}
        return names(selection([source], settings))

    assert match("logs/app/2024-11-*.log", "logs/") == ["logs/2024-11-01.log", "logs/2024-11-02.log"]
    assert match("logs/app/2024-1?-01.log") == ["2024-11-01.log", "2024-12-01.log"]
    assert match("logs/app/[ab]?.txt") == ["a1.txt", "b2.txt"]
    assert match("logs/app/[!ab]?.txt") == ["c3.txt"]
    assert match("logs/app/[a-b]*.txt") == ["a1.txt", "b2.txt"]
    # * stays within a segment; ** crosses them, zero or more of them.
    assert match("logs/*/2024-11-0?.log") == ["app/2024-11-01.log", "app/2024-11-02.log"]
    assert match("logs/**/2024-11-0?.log") == [
        "app/2024-11-01.log",
        "app/2024-11-02.log",
        "app/old/2024-11-03.log",
        "web/x/2024-11-04.log",
    ]
    assert match("logs/app/**/*.log") == [
        "2024-11-01.log",
        "2024-11-02.log",
        "2024-12-01.log",
        "old/2024-11-03.log",
    ]
    assert match("logs/**.gz") == ["app/2024-11-01.log.gz"]
    # The fixed part ends at the last "/" before the first glob character: here, nothing.
    assert match("lo*/web/**", "all") == ["all/logs/web/x/2024-11-04.log"]


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("a/*.txt", ["a/x.txt", "a/.txt"], ["a/b/x.txt", "a/x.txt.bak", "b/x.txt"]),
        ("a/?.txt", ["a/x.txt"], ["a/xy.txt", "a//.txt"]),
        ("a/**", ["a/x", "a/b/c/d"], ["b/a/x"]),
        ("a/**/z", ["a/z", "a/b/z", "a/b/c/z"], ["a/bz", "a/b/z/q"]),
        ("a/[0-9][!0-9]", ["a/1x"], ["a/11", "a/x1"]),
        ("a/[]", ["a/[]"], ["a/x"]),  # an unclosed class is literal
        ("a/(x)+.txt", ["a/(x)+.txt"], ["a/x.txt", "a/xx.txt"]),  # regex characters are literal
        ("a/*\nb", ["a/x\nb"], ["a/x\nc"]),
    ],
)
def test_glob_regex(pattern: str, yes: list[str], no: list[str]) -> None:
    regex = glob_regex(pattern)
    assert all(regex.match(k) for k in yes), [k for k in yes if not regex.match(k)]
    assert not any(regex.match(k) for k in no), [k for k in no if regex.match(k)]


def test_listing_reads_every_page(make_bucket: Callable[[], str], s3: Any, settings: Settings) -> None:
    b = make_bucket()
    with ThreadPoolExecutor(8) as pool:  # S3 returns at most 1,000 keys per page
        list(pool.map(lambda i: s3.put_object(Bucket=b, Key=f"many/{i:05}", Body=b""), range(1010)))
    sel = selection([f"s3://{b}/many/"], settings)
    assert names(sel) == [f"{i:05}" for i in range(1010)]
    for start in (0, 1000):  # two calls instead of the fixture's 1,010
        s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": f"many/{i:05}"} for i in range(start, start + 1000)]})


def test_missing_sources_are_listed(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"here.txt": b"x", "dir/": b""})
    urls = [
        f"s3://{b}/here.txt",
        f"s3://{b}/gone.txt",
        f"s3://{b}/empty/",
        f"s3://{b}/dir/",  # only a folder marker: nothing to archive
        f"s3://{b}/*.nothing",
        f"s3://{b}/here",  # not a prefix without its '/'
    ]
    sel = selection(urls, settings)
    assert names(sel) == ["here.txt"]
    assert sel.missing == urls[1:]


def test_a_literal_key_is_that_one_object_whatever_it_holds(
    make_bucket: Callable[[], str], put: Put, settings: Settings
) -> None:
    b = make_bucket()
    put(b, {"photos/photo[1].jpg": b"bracket", "photos/photo1.jpg": b"one", "photos/a*b": b"star", "photos/axb": b"x"})
    sel = selection(
        [
            {"url": f"s3://{b}/photos/photo[1].jpg", "literal": True},
            {"url": f"s3://{b}/photos/a*b", "name": "star.txt", "literal": True},
        ],
        settings,
    )
    assert [(e.name, e.obj.size) for e in sel.entries] == [("photos/photo[1].jpg", 7), ("star.txt", 4)]
    glob = selection([f"s3://{b}/photos/photo[1].jpg"], settings)  # without it, a glob: [1] is a class
    assert [(e.name, e.obj.size) for e in glob.entries] == [("photo1.jpg", 3)]
    missing = selection([{"url": f"s3://{b}/photos/photo[2].jpg", "literal": True}], settings)
    assert missing.entries == [] and missing.missing == [f"s3://{b}/photos/photo[2].jpg"]


def test_key_derived_names_are_sanitised_and_reported(
    make_bucket: Callable[[], str], put: Put, settings: Settings
) -> None:
    b = make_bucket()
    unsafe = ["p/../evil.txt", "p//double.txt", "p/back\\slash.txt", "p/ctl\x01.txt", "p/./dot.txt", "p/C:x.txt"]
    put(b, {k: k.encode() for k in [*unsafe, "p/fine.txt", "/abs.txt"]})
    sel = selection([f"s3://{b}/p/", f"s3://{b}//abs.txt"], settings)
    for entry in sel.entries:
        check_entry_name("name", entry.name)  # none can escape the root
    by_url = {r["url"]: r for r in sel.renamed}
    assert sorted(by_url) == sorted(f"s3://{b}/{k}" for k in [*unsafe, "/abs.txt"])
    for url, r in by_url.items():
        assert r["reason"] == "unsafe name"
        assert r["from"] != r["to"]
        assert url.endswith(r["from"].lstrip("/")) or r["from"] == "/abs.txt"
        assert r["to"] in names(sel)
    assert "fine.txt" in names(sel)
    assert by_url[f"s3://{b}/p/../evil.txt"]["to"] == "_/evil.txt"
    assert by_url[f"s3://{b}//abs.txt"]["to"] == "abs.txt"
    assert len(names(sel)) == 8


def test_duplicates_are_renamed(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    files = ["a.txt", "README", ".env", "dir/a.txt"]
    put(b, {f"{d}/{f}": f"{d}/{f}".encode() for d in ("x", "y", "z") for f in files})
    put(b, {"w/A.TXT": b"upper", "w/a (1).txt": b"taken"})
    sel = selection(
        [
            {"url": f"s3://{b}/w/a (1).txt", "name": "a (1).txt"},
            f"s3://{b}/x/",
            f"s3://{b}/y/",
            f"s3://{b}/z/",
            {"url": f"s3://{b}/w/A.TXT", "name": "A.TXT"},
        ],
        settings,
    )
    got = names(sel)
    assert len({n.casefold() for n in got}) == len(got) == 14, "names must differ even case-insensitively"
    expected = {
        "x/a.txt": "a.txt",
        "y/a.txt": "a (2).txt",  # "a (1).txt" was taken by the first source
        "z/a.txt": "a (3).txt",
        "x/README": "README",
        "y/README": "README (1)",
        "z/README": "README (2)",
        "x/.env": ".env",
        "y/.env": ".env (1)",
        "y/dir/a.txt": "dir/a (1).txt",
        "z/dir/a.txt": "dir/a (2).txt",
        "w/A.TXT": "A (4).TXT",  # A.TXT and a.txt collide on Windows and macOS
    }
    by_key = {e.obj.location.key: e.name for e in sel.entries}
    assert {k: by_key[k] for k in expected} == expected
    renamed = {r["url"].split("/", 3)[3]: (r["from"], r["to"], r["reason"]) for r in sel.renamed}
    assert renamed["y/README"] == ("README", "README (1)", "duplicate")
    assert len(renamed) == 9  # every entry not named as listed


def test_duplicates_fail(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"x/a.txt": b"1", "y/a.txt": b"2"})
    with pytest.raises(InvalidJob) as info:
        selection([f"s3://{b}/x/", f"s3://{b}/y/"], settings, on_duplicate="fail")
    assert info.value.field == "sources[1]"
    assert "'a.txt'" in str(info.value)


def test_duplicates_skipped(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"x/a.txt": b"1", "y/a.txt": b"2", "y/b.txt": b"3"})
    sel = selection([f"s3://{b}/x/", f"s3://{b}/y/"], settings, on_duplicate="skip")
    assert [(e.name, e.obj.location.key) for e in sel.entries] == [("a.txt", "x/a.txt"), ("b.txt", "y/b.txt")]
    assert sel.skipped == [{"url": f"s3://{b}/y/a.txt", "reason": "duplicate name 'a.txt'"}]
    assert sel.renamed == []


def test_entry_limit(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(b, {f"p/{i}": b"x" for i in range(6)})
    assert len(selection([f"s3://{b}/p/"], settings.replace(max_entries=6)).entries) == 6
    with pytest.raises(LimitExceeded) as info:
        selection([f"s3://{b}/p/"], settings.replace(max_entries=5))
    assert (info.value.field, info.value.value) == ("sources[0]", 6)
    assert f"s3://{b}/p/" in str(info.value) and "5" in str(info.value)
    # Across sources too.
    with pytest.raises(LimitExceeded) as info:
        selection([f"s3://{b}/p/0", f"s3://{b}/p/1", f"s3://{b}/p/2"], settings.replace(max_entries=2))
    assert info.value.field == "sources" and info.value.value == 3


def test_input_bytes_limit(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(b, {"p/a": bytes(600), "p/b": bytes(500)})
    assert selection([f"s3://{b}/p/"], settings.replace(max_input_bytes=1100)).input_bytes == 1100
    with pytest.raises(LimitExceeded) as info:
        selection([f"s3://{b}/p/"], settings.replace(max_input_bytes=1099))
    assert info.value.field == "sources" and info.value.value == 1100
    assert "max_input_bytes" in str(info.value)


def test_local_files_when_allowed(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    rng = random.Random(3)
    for rel in ("a.txt", "sub/b.bin", "sub/c.log"):
        (root / rel).write_bytes(rng.randbytes(100))
    local = Settings.from_env({}, allowed_protocols=frozenset({"s3", "file"}))
    spec = JobSpec.from_dict(
        {
            "sources": [f"file://{root}/", {"url": f"file://{root}/sub/*.log", "name": "logs"}],
            "destination": f"file://{tmp_path}/out.zip",
        },
        local,
    )
    sel = run_sync(select(spec, local, lambda protocol: store_for(protocol, local)))
    assert names(sel) == ["a.txt", "sub/b.bin", "sub/c.log", "logs/c.log"]
    assert all(e.obj.size == 100 for e in sel.entries)


# --- listings stream: limits apply as objects are listed, and a failing source stops the others ---


class FakeListing:
    """A store whose listings are generated (as many keys as asked, or endless), counting what they yield, so
    that a test can see how far selection let each listing run. Reads and writes are not needed here."""

    def __init__(self, keys: dict[str, int | None], fail: dict[str, BaseException] | None = None) -> None:
        self.keys = keys  # prefix -> how many keys its listing holds (None: endless)
        self.fail = fail or {}
        self.yielded = 0
        self.cancelled: list[str] = []
        self.release = asyncio.Event()

    async def head(self, loc: Location) -> ObjectInfo | None:
        return None

    async def list(self, loc: Location) -> AsyncIterator[ObjectInfo]:
        if loc.key in self.fail:
            await asyncio.sleep(0.01)  # the others are under way by then
            raise self.fail[loc.key]
        count = self.keys[loc.key]
        i = 0
        try:
            while count is None or i < count:
                if count is None and loc.key == "blocked/":
                    await self.release.wait()  # a listing that takes "forever"
                await asyncio.sleep(0)  # a page boundary: let the other listings run
                self.yielded += 1
                yield ObjectInfo(Location("s3", loc.bucket, f"{loc.key}{i:07d}.txt"), 10, NOW)
                i += 1
        except asyncio.CancelledError:
            self.cancelled.append(loc.key)
            raise


NOW = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def fake_select(store: FakeListing, sources: list[str], settings: Settings) -> Selection:
    spec = JobSpec.from_dict({"sources": sources, "destination": "s3://dest/out.zip"}, settings)
    return run_sync(asyncio.wait_for(select(spec, settings, lambda protocol: store), 30))


def test_entry_limit_applies_across_sources_as_they_are_listed() -> None:
    """Two endless listings, ten entries allowed: the job fails on the eleventh object listed in all, not after
    each source has gathered its own ten (1,000 sources x MAX_ENTRIES each, before)."""
    store = FakeListing({"a/": None, "b/": None})
    with pytest.raises(LimitExceeded) as info:
        fake_select(store, ["s3://src/a/", "s3://src/b/"], Settings(max_entries=10))
    assert (info.value.field, info.value.value) == ("sources", 11)
    assert store.yielded <= 12  # the one that crossed the limit, and at most one more in flight


def test_input_bytes_limit_applies_as_objects_are_listed() -> None:
    store = FakeListing({"a/": None, "b/": None})
    with pytest.raises(LimitExceeded) as info:
        fake_select(store, ["s3://src/a/", "s3://src/b/"], Settings(max_input_bytes=95))
    assert (info.value.field, info.value.value) == ("sources", 100)
    assert store.yielded <= 11


def test_keys_listed_are_capped_even_when_none_match() -> None:
    store = FakeListing({"p/": 5_000})
    with pytest.raises(LimitExceeded) as info:
        fake_select(store, ["s3://src/p/*.jpg"], Settings(max_keys_listed=1_000))
    assert (info.value.field, info.value.value) == ("sources", 1_001)
    assert "BUCKETZIP_MAX_KEYS_LISTED" in str(info.value)
    assert store.yielded == 1_001
    # Under the cap, the same listing runs to its end and matches nothing.
    sel = fake_select(FakeListing({"p/": 5_000}), ["s3://src/p/*.jpg"], Settings(max_keys_listed=5_000))
    assert sel.entries == [] and sel.missing == ["s3://src/p/*.jpg"]


def test_keys_listed_cap_against_s3(make_bucket: Callable[[], str], put: Put, settings: Settings) -> None:
    b = make_bucket()
    put(b, {f"p/{i:02d}.{'jpg' if i == 11 else 'txt'}": b"x" for i in range(12)})
    assert names(selection([f"s3://{b}/p/*.jpg"], settings.replace(max_keys_listed=12))) == ["11.jpg"]
    with pytest.raises(LimitExceeded, match="BUCKETZIP_MAX_KEYS_LISTED"):
        selection([f"s3://{b}/p/*.jpg"], settings.replace(max_keys_listed=11))


def test_a_failing_source_cancels_the_other_listings() -> None:
    store = FakeListing({"blocked/": None}, fail={"denied/": AccessDenied("s3://src/denied/", "read")})
    with pytest.raises(AccessDenied):
        fake_select(store, ["s3://src/blocked/", "s3://src/denied/"], Settings())
    # By the time select has raised, the listing still going on has been cancelled, not left running.
    assert store.cancelled == ["blocked/"]
