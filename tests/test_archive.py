"""The streaming ZIP writer, in memory: contents, headers, names, times, methods, ZIP64 thresholds.

Every archive is read back by Python's zipfile and Info-ZIP's ``unzip -t`` and compared byte for byte; the
binary fields the readers do not expose (local headers, data descriptors, extra fields) are parsed here from
the bytes themselves.
"""

from __future__ import annotations

import os
import random
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bucketzip.archive import Member, ZipWriter, size_bound, stream_zip
from tests.helpers import check_zip_bytes

T0 = datetime(2024, 11, 3, 14, 7, 59, tzinfo=UTC)
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rng.choice(WORDS) for _ in range(12)) + "\n").encode()
    return bytes(out[:n])


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def build(members: list[Member], level: int = 6) -> bytes:
    return b"".join(stream_zip(members, level))


def extra_fields(extra: bytes) -> dict[int, bytes]:
    fields, i = {}, 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, i)
        fields[tag] = extra[i + 4 : i + 4 + size]
        i += 4 + size
    assert i == len(extra), "extra field is malformed"
    return fields


def local_header(data: bytes, info: zipfile.ZipInfo) -> dict[str, object]:
    """The local file header of ``info`` and the data descriptor after its data, parsed from the bytes."""
    at = info.header_offset
    (sig, version, flags, method, _t, _d, crc, csize, usize, nlen, elen) = struct.unpack_from("<IHHHHHIIIHH", data, at)
    assert sig == 0x04034B50
    name = data[at + 30 : at + 30 + nlen]
    extra = extra_fields(data[at + 30 + nlen : at + 30 + nlen + elen])
    end = at + 30 + nlen + elen + info.compress_size
    if 0x0001 in extra:
        dsig, dcrc, dcsize, dusize = struct.unpack_from("<IIQQ", data, end)
    else:
        dsig, dcrc, dcsize, dusize = struct.unpack_from("<IIII", data, end)
    assert dsig == 0x08074B50, "no data descriptor after the entry's data"
    return {
        "version": version,
        "flags": flags,
        "method": method,
        "sizes": (crc, csize, usize),
        "name": name,
        "extra": extra,
        "descriptor": (dcrc, dcsize, dusize),
    }


def test_contents_are_byte_exact_for_every_method() -> None:
    rng = random.Random(7)
    expected = {
        "text/small.txt": b"hello, world\n",
        "text/big.txt": text(700_000),
        "random.bin": rng.randbytes(300_000),
        "empty.txt": b"",
        "one.txt": b"x",
        "photo.jpg": text(50_000, seed=1),  # compressible, but stored by extension under auto
    }
    for method in ("store", "deflate", "auto"):
        members = [
            Member(name, T0, chunked(data, 65_536 - i), method=method, size=len(data))
            for i, (name, data) in enumerate(expected.items())
        ]
        zf = check_zip_bytes(build(members), expected)
        want = zipfile.ZIP_STORED if method == "store" else zipfile.ZIP_DEFLATED
        assert zf.getinfo("text/big.txt").compress_type == want


def test_every_entry_has_a_data_descriptor() -> None:
    expected = {"a.txt": text(10_000), "b.bin": os.urandom(5000), "c.txt": b""}
    data = build([Member(n, T0, [d], size=len(d)) for n, d in expected.items()])
    zf = check_zip_bytes(data, expected)
    for info in zf.infolist():
        h = local_header(data, info)
        assert h["flags"] & 0x0008  # type: ignore[operator]
        assert h["sizes"] == (0, 0, 0), "sizes belong in the descriptor of a streamed entry"
        assert h["descriptor"] == (info.CRC, info.compress_size, info.file_size)
        assert zlib.crc32(expected[info.filename]) == info.CRC


@pytest.mark.parametrize(
    ("name", "utf8"),
    [("plain.txt", False), ("dir/Report (final).pdf", False), ("café.txt", True), ("日本語/ファイル.txt", True)],
)
def test_utf8_flag_only_for_non_ascii_names(name: str, utf8: bool) -> None:
    data = build([Member(name, T0, [b"data"], size=4)])
    zf = check_zip_bytes(data, {name: b"data"})  # zipfile decodes as cp437 unless bit 11 is set
    info = zf.getinfo(name)
    assert bool(info.flag_bits & 0x0800) is utf8
    assert local_header(data, info)["name"] == name.encode("utf-8")
    assert bool(local_header(data, info)["flags"] & 0x0800) is utf8  # type: ignore[operator]


@pytest.mark.parametrize(
    ("modified", "dos"),
    [
        (T0, (2024, 11, 3, 14, 7, 58)),  # DOS time has 2-second resolution
        (datetime(2024, 11, 3, 19, 7, 59, tzinfo=timezone(timedelta(hours=5))), (2024, 11, 3, 14, 7, 58)),
        (datetime(2024, 11, 3, 14, 7, 59), (2024, 11, 3, 14, 7, 58)),  # naive: taken as UTC
        (datetime(2000, 2, 29, 23, 59, 59, tzinfo=UTC), (2000, 2, 29, 23, 59, 58)),
        (datetime(1975, 6, 1, tzinfo=UTC), (1980, 1, 1, 0, 0, 0)),  # before DOS time began: clamped
    ],
)
def test_dos_time_and_extended_timestamp(modified: datetime, dos: tuple[int, ...]) -> None:
    data = build([Member("a.txt", modified, [b"x"], size=1)])
    zf = check_zip_bytes(data, {"a.txt": b"x"})
    info = zf.getinfo("a.txt")
    assert info.date_time == dos
    expected_ts = int((modified if modified.tzinfo else modified.replace(tzinfo=UTC)).timestamp())
    for extra in (extra_fields(info.extra), local_header(data, info)["extra"]):
        assert isinstance(extra, dict)
        flags, ts = struct.unpack("<BI", extra[0x5455])
        assert flags & 1 and ts == expected_ts


def test_no_extended_timestamp_before_1970() -> None:
    data = build([Member("old.txt", datetime(1960, 1, 1, tzinfo=UTC), [b"x"], size=1)])
    info = check_zip_bytes(data, {"old.txt": b"x"}).getinfo("old.txt")
    assert 0x5455 not in extra_fields(info.extra)
    assert info.date_time == (1980, 1, 1, 0, 0, 0)


def test_unix_mode_is_a_regular_readable_file() -> None:
    info = check_zip_bytes(build([Member("a.txt", T0, [b"x"], size=1)])).getinfo("a.txt")
    assert info.create_system == 3  # Unix: extractors apply the mode
    mode = info.external_attr >> 16
    assert stat.S_ISREG(mode) and mode & 0o444 == 0o444 and not mode & 0o111


@pytest.mark.parametrize(
    ("name", "data", "method"),
    [
        ("photo.jpg", text(100_000), zipfile.ZIP_STORED),  # by extension, without looking
        ("VIDEO.MP4", text(100_000), zipfile.ZIP_STORED),
        ("backup.tar.gz", text(100_000), zipfile.ZIP_STORED),
        ("noise.bin", random.Random(1).randbytes(200_000), zipfile.ZIP_STORED),  # first block does not shrink
        ("noise.txt", random.Random(2).randbytes(200_000), zipfile.ZIP_STORED),
        ("notes.txt", text(200_000), zipfile.ZIP_DEFLATED),
        ("data.bin", bytes(200_000), zipfile.ZIP_DEFLATED),
        ("empty.txt", b"", zipfile.ZIP_STORED),
        # Decided by the first block: random first, text after, is stored.
        ("mixed.log", random.Random(3).randbytes(70_000) + text(500_000), zipfile.ZIP_STORED),
    ],
)
def test_auto_stores_what_is_already_compressed(name: str, data: bytes, method: int) -> None:
    archive = build([Member(name, T0, chunked(data, 2**20), method="auto", size=len(data))])
    info = check_zip_bytes(archive, {name: data}).getinfo(name)
    assert info.compress_type == method
    if method == zipfile.ZIP_DEFLATED:
        assert info.compress_size < len(data) // 2


def test_deflate_is_honoured_even_when_it_does_not_help() -> None:
    data = os.urandom(100_000)
    info = check_zip_bytes(build([Member("x.jpg", T0, [data], "deflate", len(data))]), {"x.jpg": data}).infolist()[0]
    assert info.compress_type == zipfile.ZIP_DEFLATED


def test_compression_level() -> None:
    data = text(1_000_000, seed=5)
    sizes = {}
    for level in (0, 1, 9):
        archive = build([Member("a.txt", T0, [data], "deflate", len(data))], level=level)
        info = check_zip_bytes(archive, {"a.txt": data}).getinfo("a.txt")
        sizes[level] = info.compress_size
        assert info.compress_type == (zipfile.ZIP_STORED if level == 0 else zipfile.ZIP_DEFLATED)
    assert sizes[0] == len(data)
    assert sizes[9] <= sizes[1] < len(data) // 2


def test_empty_entries() -> None:
    members = [
        Member("none.txt", T0, [], size=0),
        Member("blank.txt", T0, [b""], size=0),
        Member("unknown-size.txt", T0, [b"", b""], size=None),
        Member("dir/empty.dat", T0, [], "deflate", size=0),
    ]
    zf = check_zip_bytes(build(members), {m.name: b"" for m in members})
    assert all(i.file_size == 0 for i in zf.infolist())


def test_stream_zip_is_lazy() -> None:
    """One pass: the first entry's bytes come out before the second entry's data is even asked for."""
    pulled: list[str] = []

    def chunks(name: str, n: int) -> Iterator[bytes]:
        for i in range(n):
            pulled.append(f"{name}{i}")
            yield text(100_000, seed=i)

    stream = stream_zip([Member("a.txt", T0, chunks("a", 3)), Member("b.txt", T0, chunks("b", 3))])
    first = next(stream)
    assert first.startswith(b"PK\x03\x04")
    assert pulled == ["a0"]
    rest = b"".join(stream)
    assert pulled == ["a0", "a1", "a2", "b0", "b1", "b2"]
    expected = {"a.txt": b"".join(text(100_000, seed=i) for i in range(3))}
    expected["b.txt"] = expected["a.txt"]
    check_zip_bytes(first + rest, expected)


def test_writer_offset_and_count_track_the_output() -> None:
    w = ZipWriter()
    out = w.begin("a.txt", T0, "deflate", 3) + w.write(b"abc") + w.end()
    assert w.offset == len(out) and w.entry_count == 1
    out += w.begin("b.txt", T0, "store", 0) + w.end()  # an entry with no write at all
    out += w.finish()
    assert w.offset == len(out) and w.entry_count == 2
    check_zip_bytes(out, {"a.txt": b"abc", "b.txt": b""})


def test_writer_misuse_raises() -> None:
    w = ZipWriter()
    with pytest.raises(RuntimeError):
        w.write(b"x")  # outside an entry
    w.begin("a.txt", T0)
    with pytest.raises(RuntimeError):
        w.begin("b.txt", T0)
    with pytest.raises(RuntimeError):
        w.finish()
    w.end()
    w.finish()
    with pytest.raises(RuntimeError):
        w.begin("c.txt", T0)
    for bad in ("", "/abs.txt"):
        with pytest.raises(ValueError):
            ZipWriter().begin(bad, T0)


# --- ZIP64, exactly where needed ---


def zip64_end_records(data: bytes) -> bool:
    return b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]


@pytest.mark.parametrize(
    ("size", "zip64"),
    [(0, False), (2**31, False), (None, True), (2**32 - 1, True), (2**32, True), (5 * 2**30, True)],
)
def test_zip64_local_header_when_the_entry_may_reach_4_gib(size: int | None, zip64: bool) -> None:
    # The declared size decides the header (it is written before the data); the data here is small.
    data = build([Member("e.bin", T0, [b"payload"], "store", size)])
    zf = check_zip_bytes(data, {"e.bin": b"payload"})
    h = local_header(data, zf.getinfo("e.bin"))
    assert (0x0001 in h["extra"]) is zip64  # type: ignore[operator]
    assert h["version"] == (45 if zip64 else 20)
    assert h["descriptor"] == (zlib.crc32(b"payload"), 7, 7)  # 8-byte sizes in a ZIP64 entry's descriptor
    assert not zip64_end_records(data)  # one small entry near the start: no ZIP64 end records


def test_writer_refuses_to_pass_4_gib_in_an_entry_declared_smaller() -> None:
    block = bytes(256 * 2**20)
    w = ZipWriter(level=0)
    w.begin("big.bin", T0, "store", size=len(block))
    with pytest.raises(ValueError, match="4 GiB"):
        for _ in range(17):
            w.write(block)


def tiny_archive(count: int) -> tuple[bytes, dict[str, bytes]]:
    expected = {f"d{i // 1000}/{i}": str(i).encode() for i in range(count)}
    return build([Member(n, T0, [d], "store", len(d)) for n, d in expected.items()]), expected


def test_65535_entries_need_no_zip64() -> None:
    data, _ = tiny_archive(65_535)
    assert not zip64_end_records(data)
    count, total = struct.unpack_from("<HH", data, len(data) - 22 + 8)
    assert count == total == 65_535
    zf = check_zip_bytes(data)
    assert len(zf.infolist()) == 65_535


def test_more_than_65535_entries_write_the_zip64_end_record() -> None:
    data, expected = tiny_archive(70_000)
    assert zip64_end_records(data)
    count, total = struct.unpack_from("<HH", data, len(data) - 22 + 8)
    assert count == total == 0xFFFF  # "see the ZIP64 record"
    sig, _size, _made, _need, _disk, _cd_disk, on_disk, entries = struct.unpack_from("<IQHHIIQQ", data, len(data) - 98)
    assert sig == 0x06064B50 and on_disk == entries == 70_000
    zf = check_zip_bytes(data)
    assert len(zf.infolist()) == 70_000
    for name in ("d0/0", "d34/34567", "d69/69999"):
        assert zf.read(name) == expected[name]
    assert {i.filename: zf.read(i) for i in zf.infolist()} == expected


def test_size_bound_is_an_upper_bound() -> None:
    rng = random.Random(11)
    members, total, names = [], 0, 0
    for i in range(200):
        n = rng.choice([0, 1, 100, 5000, 70_000])
        data = rng.randbytes(n) if i % 2 else text(n, seed=i)
        name = f"dir{i % 7}/é{i}.bin"
        members.append(Member(name, T0, [data], "deflate", None if i % 3 == 0 else n))
        total += n
        names += len(name.encode())
    archive = build(members)
    assert len(archive) <= size_bound(total, len(members), names)
