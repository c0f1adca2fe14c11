"""The streaming ZIP writer, in memory: contents, headers, names, times, methods, ZIP64 thresholds, and what
streaming readers need: STORED entries declare CRC-32 and sizes up front, with no data descriptor.

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

from bucketzip.archive import EntryMismatch, Member, Method, ZipWriter, size_bound, stream_zip
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
    """The local file header of ``info`` and the data descriptor after its data (None without flag bit 3),
    parsed from the bytes."""
    at = info.header_offset
    (sig, version, flags, method, _t, _d, crc, csize, usize, nlen, elen) = struct.unpack_from("<IHHHHHIIIHH", data, at)
    assert sig == 0x04034B50
    name = data[at + 30 : at + 30 + nlen]
    extra = extra_fields(data[at + 30 + nlen : at + 30 + nlen + elen])
    end = at + 30 + nlen + elen + info.compress_size
    descriptor: tuple[int, ...] | None = None
    if flags & 0x0008:
        if 0x0001 in extra:
            dsig, *rest = struct.unpack_from("<IIQQ", data, end)
        else:
            dsig, *rest = struct.unpack_from("<IIII", data, end)
        assert dsig == 0x08074B50, "no data descriptor after the entry's data"
        descriptor = tuple(rest)
    else:
        assert data[end : end + 4] in (b"PK\x03\x04", b"PK\x01\x02"), "something after an entry without descriptor"
    return {
        "version": version,
        "flags": flags,
        "method": method,
        "sizes": (crc, csize, usize),
        "name": name,
        "extra": extra,
        "descriptor": descriptor,
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


def test_whole_entries_declare_crc_and_sizes_in_the_local_header() -> None:
    """Data given whole (a list of chunks): no data descriptor, whatever the method."""
    expected = {"a.txt": text(10_000), "b.bin": os.urandom(5000), "c.txt": b"", "d.jpg": text(3000)}
    for method in ("auto", "store", "deflate"):
        data = build([Member(n, T0, [d], method, size=len(d)) for n, d in expected.items()])
        zf = check_zip_bytes(data, expected)
        for info in zf.infolist():
            h = local_header(data, info)
            assert not h["flags"] & 0x0008  # type: ignore[operator]
            assert h["descriptor"] is None
            assert h["sizes"] == (info.CRC, info.compress_size, info.file_size)
            assert zlib.crc32(expected[info.filename]) == info.CRC


def streamed(data: bytes, size: int = 65_536) -> Iterator[bytes]:
    yield from chunked(data, size)


def test_streamed_stored_entry_declares_crc_and_sizes_and_has_no_descriptor() -> None:
    """What Java's ZipInputStream and stream-unzip need: a STORED entry they can find the end of."""
    big, noise = text(300_000), os.urandom(200_000)
    members = [
        Member("big.txt", T0, streamed(big), "store", len(big), zlib.crc32(big)),
        Member("noise.bin", T0, streamed(noise), "auto", len(noise), zlib.crc32(noise)),  # auto: stored
    ]
    data = build(members)
    zf = check_zip_bytes(data, {"big.txt": big, "noise.bin": noise})
    for info in zf.infolist():
        assert info.compress_type == zipfile.ZIP_STORED
        h = local_header(data, info)
        assert h["descriptor"] is None and not h["flags"] & 0x0008  # type: ignore[operator]
        assert h["sizes"] == (info.CRC, info.file_size, info.file_size)
        assert h["version"] == 20 and 0x0001 not in h["extra"]  # type: ignore[operator]


def test_streamed_deflate_entry_has_a_descriptor_with_4_byte_sizes() -> None:
    body = text(300_000)
    data = build([Member("a.txt", T0, streamed(body), "deflate", len(body))])
    zf = check_zip_bytes(data, {"a.txt": body})
    info = zf.getinfo("a.txt")
    h = local_header(data, info)
    assert h["flags"] & 0x0008 and h["sizes"] == (0, 0, 0)  # type: ignore[operator]
    assert 0x0001 not in h["extra"]  # type: ignore[operator]
    assert h["descriptor"] == (info.CRC, info.compress_size, info.file_size)  # parsed as 4-byte sizes
    next_header = info.header_offset + 30 + len(b"a.txt") + 9 + info.compress_size + 16
    assert data[next_header : next_header + 4] == b"PK\x01\x02"  # nothing else: the sizes were 4 bytes


def test_streamed_store_needs_its_crc_up_front_and_auto_deflates_without_it() -> None:
    noise = os.urandom(100_000)
    with pytest.raises(ValueError, match="CRC-32"):
        build([Member("a.bin", T0, streamed(noise), "store", len(noise))])
    with pytest.raises(ValueError, match="CRC-32"):
        build([Member("a.bin", T0, streamed(noise), "auto", len(noise))], level=0)  # level 0: store it all
    data = build([Member("a.bin", T0, streamed(noise), "auto", len(noise))])  # would be stored, but no CRC
    info = check_zip_bytes(data, {"a.bin": noise}).getinfo("a.bin")
    assert info.compress_type == zipfile.ZIP_DEFLATED


@pytest.mark.parametrize("method", ["store", "deflate"])
@pytest.mark.parametrize(
    ("declared", "match"),
    [
        ((1, 100_000), "CRC-32 00000001"),  # wrong CRC-32
        (("crc", 99_999), "more than the 99999 bytes"),  # longer than declared
        (("crc", 100_001), "but 100001 bytes with CRC-32 [0-9a-f]{8} were declared"),  # shorter than declared
    ],
)
def test_streamed_entry_is_checked_against_what_was_declared(
    method: Method, declared: tuple[object, int], match: str
) -> None:
    """A STORED entry's header declares its CRC-32 and size; a DEFLATE entry given them (its source's checksum)
    is checked against them the same way, though its data descriptor says its own."""
    body = os.urandom(100_000)
    crc = zlib.crc32(body) if declared[0] == "crc" else declared[0]
    assert isinstance(crc, int)
    with pytest.raises(EntryMismatch, match=match):
        build([Member("a.bin", T0, streamed(body), method, declared[1], crc)])
    # What was declared, and true, passes either way.
    check_zip_bytes(build([Member("a.bin", T0, streamed(body), method, len(body), zlib.crc32(body))]), {"a.bin": body})


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


@pytest.mark.parametrize(
    ("modified", "dos", "unix"),
    [
        (datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), (1980, 1, 1, 0, 0, 0), 1),  # DOS clamped, UT exact
        (datetime(1979, 12, 31, 23, 59, 59, tzinfo=UTC), (1980, 1, 1, 0, 0, 0), 315532799),
        (datetime(2038, 1, 19, 3, 14, 7, tzinfo=UTC), (2038, 1, 19, 3, 14, 6), 2**31 - 1),  # UT's last second
        (datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC), (2038, 1, 19, 3, 14, 8), None),  # readers disagree past it
        (datetime(2107, 12, 31, 23, 59, 59, tzinfo=UTC), (2107, 12, 31, 23, 59, 58), None),  # DOS's last day
        (datetime(2150, 6, 1, 12, 0, 1, tzinfo=UTC), (2107, 12, 31, 23, 59, 58), None),  # far future: clamped
        (datetime(1960, 1, 1, tzinfo=UTC), (1980, 1, 1, 0, 0, 0), None),  # before 1970: 7-Zip would misread
    ],
)
def test_timestamps_at_both_ends(modified: datetime, dos: tuple[int, ...], unix: int | None) -> None:
    """DOS time clamped to 1980-2107; the extended timestamp exact to the second wherever every reader reads
    it the same (0 to 2**31-1: signed for Info-ZIP and Java, unsigned for 7-Zip and libarchive), else absent."""
    data = build([Member("a.txt", modified, [b"x"], size=1)])
    info = check_zip_bytes(data, {"a.txt": b"x"}).getinfo("a.txt")
    assert info.date_time == dos
    for extra in (extra_fields(info.extra), local_header(data, info)["extra"]):
        assert isinstance(extra, dict)
        if unix is None:
            assert 0x5455 not in extra
        else:
            assert struct.unpack("<BI", extra[0x5455]) == (1, unix)


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
    out += w.begin("b.txt", T0, "store", 0, 0) + w.end()  # an entry with no write at all
    out += w.add("c.txt", T0, "auto", b"whole")
    out += w.finish()
    assert w.offset == len(out) and w.entry_count == 3
    check_zip_bytes(out, {"a.txt": b"abc", "b.txt": b"", "c.txt": b"whole"})


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
    [(0, False), (2**31, False), (2**32 - 2**23, False), (None, True), (2**32 - 2**22, True), (5 * 2**30, True)],
)
def test_zip64_local_header_when_a_deflated_entry_may_reach_4_gib(size: int | None, zip64: bool) -> None:
    # The declared size decides the header (it is written before the data); the data here is small.
    body = b"payload"
    data = build([Member("e.bin", T0, streamed(body), "deflate", size)])
    zf = check_zip_bytes(data, {"e.bin": body})
    info = zf.getinfo("e.bin")
    h = local_header(data, info)
    assert (0x0001 in h["extra"]) is zip64  # type: ignore[operator]
    assert h["version"] == (45 if zip64 else 20)
    assert h["descriptor"] == (zlib.crc32(body), info.compress_size, 7)  # 8-byte sizes in a ZIP64 descriptor
    assert not zip64_end_records(data)  # one small entry near the start: no ZIP64 end records


@pytest.mark.parametrize(("size", "zip64"), [(2**32 - 2, False), (2**32 - 1, True), (2**32, True), (5 * 2**30, True)])
def test_a_stored_entry_is_zip64_exactly_when_its_size_needs_it(size: int, zip64: bool) -> None:
    """A stored entry's sizes are known: ZIP64 from 0xFFFFFFFF bytes on (that value itself means "see the
    ZIP64 field"), and then the local header's ZIP64 field holds both sizes (Java reads no less)."""
    w = ZipWriter()
    header = w.begin("e.bin", T0, "store", size, 0x12345678) + w.write(b"")
    (version, flags, method, crc, csize, usize) = struct.unpack_from("<HHHxxxxIII", header, 4)
    extra = extra_fields(header[30 + 5 :])
    assert (method, crc, flags & 0x0008) == (0, 0x12345678, 0)
    assert version == (45 if zip64 else 20)
    if zip64:
        assert (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF)
        assert struct.unpack("<QQ", extra[0x0001]) == (size, size)
    else:
        assert (csize, usize) == (size, size) and 0x0001 not in extra


def test_writer_refuses_to_pass_4_gib_in_an_entry_declared_smaller() -> None:
    class Nothing:  # a compressor that costs nothing: the check is on the sizes
        def compress(self, data: bytes, /) -> bytes:
            return b""

        def flush(self, /) -> bytes:
            return b""

    block = bytes(256 * 2**20)
    w = ZipWriter(compressor=lambda level: Nothing())
    w.begin("big.bin", T0, "deflate", size=len(block))
    with pytest.raises(ValueError, match="4 GiB"):
        for _ in range(17):
            w.write(block)


def tiny_archive(count: int) -> tuple[bytes, dict[str, bytes]]:
    expected = {f"d{i // 1000}/{i}": str(i).encode() for i in range(count)}
    return build([Member(n, T0, [d], "store", len(d)) for n, d in expected.items()]), expected


def test_65534_entries_need_no_zip64() -> None:
    data, _ = tiny_archive(65_534)
    assert not zip64_end_records(data)
    count, total = struct.unpack_from("<HH", data, len(data) - 22 + 8)
    assert count == total == 65_534
    assert len(check_zip_bytes(data).infolist()) == 65_534


def test_65535_entries_write_the_zip64_end_record() -> None:
    """0xFFFF in the classic record means "see ZIP64" to readers (minizip-ng#596 could not open 65,535
    entries without it): exactly 65,535 entries get the ZIP64 end record too."""
    data, _ = tiny_archive(65_535)
    assert zip64_end_records(data)
    count, total = struct.unpack_from("<HH", data, len(data) - 22 + 8)
    assert count == total == 0xFFFF
    assert struct.unpack_from("<Q", data, len(data) - 98 + 32)[0] == 65_535
    assert len(check_zip_bytes(data).infolist()) == 65_535


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
