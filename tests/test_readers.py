"""The reader matrix: every archive below, made by the real engine, read byte-exact (names, sizes, CRC-32 of the
bytes each reader produced) by Python's zipfile, Info-ZIP unzip (-t and extraction), 7-Zip, bsdtar reading
from a pipe, java.util.zip's ZipFile and ZipInputStream, and stream-unzip; plus the format rules streaming
readers and macOS need, checked on the bytes (see bucketzip/archive.py).

The archives are built once per module from cheap local data (sparse files, tiny files) through fsspec's local
filesystem, and from moto for the store's-checksum path; each is deleted when the module ends. A reader that
is not installed is skipped on a laptop and fails under CI=true.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from boto3.s3.transfer import TransferConfig

from bucketzip.archive import crc32
from bucketzip.config import Settings
from bucketzip.engine import run_job
from tests.conftest import CREDENTIALS, need
from tests.readers import READERS, TOOLS, Read, available, read_java

MiB = 2**20
FAR_FUTURE = datetime(2150, 6, 1, 12, 0, 1, tzinfo=UTC)
LOCAL = {"BUCKETZIP_CHUNK_SIZE": "128KiB", "BUCKETZIP_READ_BUFFER": "4MiB"}  # small chunks: streamed entries


class Case(NamedTuple):
    archive: Path
    expected: list[Read]


def text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex()[: rng.randint(2, 9)] for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rng.choice(words) for _ in range(12)) + "\n").encode()
    return bytes(out[:n])


def noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def read(data: bytes, name: str) -> Read:
    return Read(name, len(data), crc32(data, 0))


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def local_settings(**extra: str) -> Settings:
    return Settings.from_env({**LOCAL, **extra}, allowed_protocols=frozenset({"s3", "file"}))


# --- the archives ---


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    """'auto' over stored and deflated entries, whole and streamed; empty entries; unicode and deep names;
    duplicate names renamed; times at both ends of DOS time."""
    root = tmp_path_factory.mktemp("mixed")
    deep = "/".join(f"level{i}" for i in range(40)) + "/deep.txt"
    first = {
        "empty.txt": b"",
        "empty.jpg": b"",
        "small.txt": text(10_000, 1),  # whole, deflated
        "small.bin": noise(100_000, 2),  # whole, stored (its first 64 KiB does not shrink)
        "photo.jpg": text(700_000, 3),  # streamed, stored by extension (CRC-32 from a first read)
        "big.txt": text(3 * MiB, 4),  # streamed, deflated: a data descriptor
        "noise.dat": noise(2 * MiB, 5),  # streamed, stored after probing
        "été/naïve café ☃.txt": text(5000, 6),
        "日本語/ファイル.txt": text(300_000, 7),
        "emoji 😀/bin.bin": noise(MiB, 8),
        deep: b"deep\n",
        "times/1970.txt": b"one second after the epoch",
        "times/2150.txt": b"far future",
    }
    second = {"small.txt": b"another small.txt", "PHOTO.jpg": noise(200_000, 9), "日本語/ファイル.txt": b"dup"}
    write_files(root / "a", first)
    write_files(root / "b", second)
    os.utime(root / "a/times/1970.txt", (1, 1))
    os.utime(root / "a/times/2150.txt", (FAR_FUTURE.timestamp(), FAR_FUTURE.timestamp()))
    spec = {
        "sources": [{"url": f"file://{root}/a/", "name": "docs"}, {"url": f"file://{root}/b/", "name": "docs"}],
        "destination": f"file://{root}/mixed.zip",
    }
    result = run_job(spec, local_settings())
    renamed = {"small.txt": "small (1).txt", "PHOTO.jpg": "PHOTO (1).jpg"}
    renamed["日本語/ファイル.txt"] = "日本語/ファイル (1).txt"
    assert sorted(r["to"] for r in result.renamed) == sorted(f"docs/{n}" for n in renamed.values())
    expected = [read(d, f"docs/{n}") for n, d in first.items()]
    expected += [read(d, f"docs/{renamed[n]}") for n, d in second.items()]
    yield Case(root / "mixed.zip", expected)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def from_s3(moto_url: str, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    """'store' over objects in S3: the stored entries' CRC-32 from S3's full-object checksums (boto3 sends
    CRC-32 with each PUT), and from a first read for a multipart upload (its checksum is COMPOSITE)."""
    bucket = "t-readers-matrix"
    s3.create_bucket(Bucket=bucket)
    objects = {"s3/a.txt": text(300_000, 10), "s3/b.bin": noise(MiB, 11), "s3/c.txt": b"c", "s3/empty": b""}
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    multi = noise(6 * MiB, 12)
    s3.upload_fileobj(io.BytesIO(multi), bucket, "s3/multi.bin", Config=TransferConfig(multipart_threshold=5 * MiB))
    objects["s3/multi.bin"] = multi
    env = {
        **LOCAL,
        "AWS_ENDPOINT_URL_S3": moto_url,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_REGION": CREDENTIALS["region_name"],
    }
    spec = {"sources": [f"s3://{bucket}/s3/"], "destination": f"s3://{bucket}/out.zip", "compression": "store"}
    run_job(spec, Settings.from_env(env))
    archive = tmp_path_factory.mktemp("s3") / "s3.zip"
    s3.download_file(bucket, "out.zip", str(archive))
    yield Case(archive, [read(d, k.removeprefix("s3/")) for k, d in objects.items()])
    for key in [*objects, "out.zip"]:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    archive.unlink()


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    """More than 65,535 entries: 1,000 small files (a third of them empty) listed by 66 sources."""
    root = tmp_path_factory.mktemp("many")
    files = {f"f{i:03}.txt": f"file {i}\n".encode() * (i % 3) for i in range(1000)}
    write_files(root / "src", files)
    spec = {
        "sources": [{"url": f"file://{root}/src/", "name": f"d{n:02}"} for n in range(66)],
        "destination": f"file://{root}/many.zip",
    }
    run_job(spec, local_settings())
    yield Case(root / "many.zip", [read(d, f"d{n:02}/{name}") for n in range(66) for name, d in files.items()])
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    """An entry over 4 GiB (sparse: real bytes at the start, across 4 GiB and at the end), stored, and entries
    whose local headers lie past 4 GiB; the central directory starts past 4 GiB too."""
    root = tmp_path_factory.mktemp("big")
    assert shutil.disk_usage(root).free > 12 * 2**30, "needs ~5 GiB for the archive, with room to spare"
    src = root / "src"
    size = 2**32 + 3 * MiB
    small = {"b-before.txt": text(50_000, 20), "c-after.bin": noise(MiB, 21), "d-after.txt": text(400_000, 22)}
    write_files(src, small)
    pieces = {0: noise(MiB, 23), 2**32 - MiB // 2: noise(MiB, 24), size - MiB: noise(MiB, 25)}
    with (src / "a-big.bin").open("wb") as f:
        os.truncate(f.fileno(), size)  # sparse: costs no disk
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    crc, at = 0, 0
    for offset, data in sorted(pieces.items()):
        crc = crc32(data, crc32(bytes(offset - at), crc))
        at = offset + len(data)
    spec = {"sources": [f"file://{src}/"], "destination": f"file://{root}/big.zip"}
    result = run_job(spec, local_settings(BUCKETZIP_CHUNK_SIZE="8MiB", BUCKETZIP_READ_BUFFER="64MiB"))
    assert (result.entries, result.input_bytes) == (4, size + sum(map(len, small.values())))
    assert result.size == (root / "big.zip").stat().st_size > size
    assert sorted(os.listdir(root)) == ["big.zip", "src"]  # nothing left beside it
    expected = [Read("a-big.bin", size, crc), *(read(d, n) for n, d in small.items())]
    (src / "a-big.bin").unlink()
    yield Case(root / "big.zip", expected)
    shutil.rmtree(root, ignore_errors=True)


CASES = ("mixed", "from_s3", "many", "big")


def cases(*readers: str) -> list[Any]:
    """(case, reader) parameters, case by case; the multi-GiB case is marked slow."""
    marks = {"big": pytest.mark.slow}
    if not readers:
        return [pytest.param(c, marks=marks.get(c, ())) for c in CASES]
    return [pytest.param(c, r, marks=marks.get(c, ())) for c in CASES for r in readers]


def archive_of(request: pytest.FixtureRequest, case: str) -> Case:
    return request.getfixturevalue(case)


# --- every reader, every archive ---


@pytest.mark.timeout(900)  # the first big case builds a 4 GiB archive
@pytest.mark.parametrize(("case", "reader"), cases(*READERS))
def test_reader_reads_every_entry_byte_exact(case: str, reader: str, request: pytest.FixtureRequest) -> None:
    need(available(reader), TOOLS[reader][1])
    archive, expected = archive_of(request, case)
    got = READERS[reader](archive)
    assert len(got) == len(expected), f"{reader} read {len(got)} entries, not {len(expected)}"
    assert sorted(got) == sorted(expected)


# --- the format, on the bytes ---


def extra_fields(extra: bytes) -> dict[int, bytes]:
    fields, i = {}, 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, i)
        fields[tag] = extra[i + 4 : i + 4 + size]
        i += 4 + size
    assert i == len(extra), "extra field is malformed"
    return fields


class Local(NamedTuple):
    flags: int
    method: int
    crc: int
    compressed: int
    uncompressed: int
    extra: dict[int, bytes]


def local_headers(archive: Path) -> Iterator[tuple[zipfile.ZipInfo, Local]]:
    with zipfile.ZipFile(archive) as zf, archive.open("rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset)
            sig, _v, flags, method, _t, _d, crc, csize, usize, nlen, elen = struct.unpack("<IHHHHHIIIHH", f.read(30))
            assert sig == 0x04034B50
            extra = extra_fields(f.read(nlen + elen)[nlen:])
            if 0x0001 in extra:
                usize, csize = struct.unpack_from("<QQ", extra[0x0001])
            yield info, Local(flags, method, crc, csize, usize, extra)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", cases())
def test_stored_entries_declare_crc_and_sizes_up_front(case: str, request: pytest.FixtureRequest) -> None:
    """Streaming readers: a STORED entry has no data descriptor and its local header holds its CRC-32 and
    sizes; only streamed DEFLATE entries have a descriptor. ZIP64 extras only on entries over 4 GiB."""
    methods = set()
    for info, local in local_headers(archive_of(request, case).archive):
        methods.add(local.method)
        descriptor = bool(local.flags & 0x0008)
        if local.method == zipfile.ZIP_STORED:
            assert not descriptor, f"{info.filename}: STORED with a data descriptor"
        if descriptor:
            assert local.method == zipfile.ZIP_DEFLATED and (local.crc, local.compressed) == (0, 0)
        else:
            assert (local.crc, local.compressed, local.uncompressed) == (info.CRC, info.compress_size, info.file_size)
        assert (0x0001 in local.extra) is (info.file_size >= 2**32)
    assert zipfile.ZIP_STORED in methods
    if case == "mixed":
        assert zipfile.ZIP_DEFLATED in methods


def central_zip64(info: zipfile.ZipInfo) -> bool:
    return 0x0001 in extra_fields(info.extra)


def test_mixed_needs_no_zip64_and_has_both_kinds_of_deflate_entries(mixed: Case) -> None:
    kinds = set()
    for info, local in local_headers(mixed.archive):
        assert not central_zip64(info)
        kinds.add((local.method, bool(local.flags & 0x0008)))
    # stored (never a descriptor), deflated whole (no descriptor), deflated streamed (a descriptor)
    assert kinds == {(0, False), (8, False), (8, True)}
    with mixed.archive.open("rb") as f:
        assert b"PK\x06\x06" not in f.read()[-200:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_big_archive_uses_zip64_exactly_where_needed(big: Case) -> None:
    with zipfile.ZipFile(big.archive) as zf:
        infos = zf.infolist()
    first = infos[0]
    assert first.filename == "b-before.txt" and not central_zip64(first), "the first entry must not be ZIP64"
    sizes = {i.filename: i.file_size for i in infos}
    assert sizes["a-big.bin"] > 2**32
    past = [i.filename for i in infos if i.header_offset > 2**32]
    assert past == ["c-after.bin", "d-after.txt"]
    for info in infos:
        assert central_zip64(info) is (info.file_size >= 2**32 or info.header_offset >= 2**32)
    with big.archive.open("rb") as f:
        f.seek(-98, os.SEEK_END)
        tail = f.read()
    assert tail[:4] == b"PK\x06\x06"  # the central directory starts past 4 GiB
    assert struct.unpack_from("<QQ", tail, 24) == (4, 4)


def test_many_entries_write_both_counts(many: Case) -> None:
    with many.archive.open("rb") as f:
        f.seek(-98, os.SEEK_END)
        tail = f.read()
    assert struct.unpack_from("<Q", tail, 32)[0] == 66_000  # the ZIP64 end record
    assert struct.unpack_from("<HH", tail, 98 - 22 + 8) == (0xFFFF, 0xFFFF)  # "see the ZIP64 record"


# --- times ---


@pytest.mark.parametrize("mode", ["file", "stream"])
def test_times_at_both_ends(mode: str, mixed: Case) -> None:
    """DOS time clamped to 1980-2107 (what zipfile shows); the extended timestamp exact where every reader reads
    it alike (what Java shows): one second after the epoch, and 2150 clamped to DOS's last second."""
    need(available("java-zipfile"), TOOLS["java-zipfile"][1])
    with zipfile.ZipFile(mixed.archive) as zf:
        assert zf.getinfo("docs/times/1970.txt").date_time == (1980, 1, 1, 0, 0, 0)
        assert zf.getinfo("docs/times/2150.txt").date_time == (2107, 12, 31, 23, 59, 58)
    times = {r.name: ms for r, ms in read_java(mode, mixed.archive)}
    assert times["docs/times/1970.txt"] == 1000  # from the extended timestamp: exact
    assert times["docs/times/2150.txt"] == datetime(2107, 12, 31, 23, 59, 58, tzinfo=UTC).timestamp() * 1000
