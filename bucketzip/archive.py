"""Streaming ZIP writer: entries and their bytes in, ZIP bytes out, in one pass and constant memory.

No I/O, no Celery, no boto. Two faces over one implementation:

* ``stream_zip(members)``: an iterable of ``Member`` -> an iterator of ZIP bytes (like stream-zip);
* ``ZipWriter``: the same as push calls (``add`` for a whole entry; ``begin``/``write``/``end`` for a streamed
  one; ``finish``), each returning bytes, which the engine drives from its pipeline.

What every reader can open, streaming ones included (each rule cites where a reader was seen to break):

* A STORED entry carries its CRC-32 and sizes in its local header and has no data descriptor: a reader that
  streams from the front cannot find the end of stored data otherwise. Java's ``ZipInputStream`` refuses it
  ("only DEFLATED entries can have EXT descriptor"), so does stream-unzip, and macOS Archive Utility expects a
  descriptor only after DEFLATE data (PHPZipStreamer#16; ZipStream-PHP#76 and #49 are streamed archives it
  refused). The writer therefore needs a stored entry's CRC-32 *before* its data: ``add`` computes it from the
  whole entry; a streamed stored entry is given it (``begin(crc32=...)``) and the data is checked against it
  (``EntryMismatch``).
* A streamed DEFLATE entry has a data descriptor (flag bit 3): DEFLATE marks its own end, so every streaming
  reader finds it. Its sizes are 4 bytes unless the entry is ZIP64 (zip4j#86: macOS Archive Utility fails on
  8-byte sizes in the descriptor of a non-ZIP64 entry).
* ZIP64 only where a field cannot hold the value: an entry whose size (or, for DEFLATE, its bound) reaches
  0xFFFFFFFF, a local header at or past that offset, 0xFFFF or more entries, a central directory at or past
  4 GiB. A value *equal* to 0xFFFF/0xFFFFFFFF is the "see ZIP64" marker, so it counts as overflowing
  (minizip-ng#596: 65,535 entries without a ZIP64 end record could not be opened; libarchive#1834: an entry
  of exactly 4294967295 bytes). ZIP64 on every entry is what broke Archive Utility in ZipStream-PHP#116, whose
  only way out was to turn ZIP64 off. An entry that is ZIP64 gets the ZIP64 extra field in its local header
  too, with both sizes (stream-zip#27: Archive Utility's "Error 79" when a local header says 0xFFFFFFFF
  without one; Java's ``ZipInputStream`` reads LOC ZIP64 sizes only from a 16-byte field).
* More than 65,535 entries: 0xFFFF in the classic end record and the true count in the ZIP64 end record
  (ZIPFoundation#197, minizip-ng#457, sharpcompress#792 show readers that trusted the 16-bit count).

Names are UTF-8, flagged (bit 11) when not ASCII. Times: the DOS date and time of the UTC wall clock, clamped
to DOS's 1980-2107, plus the extended timestamp (0x5455) with the exact second, written whenever it is in
0..2**31-1, the range every reader agrees on (the field is signed for Info-ZIP and Java, unsigned for 7-Zip
and libarchive).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

_isal: Any
try:  # ISA-L: ~7x zlib's DEFLATE speed at the same ratio, and a much faster CRC-32.
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - exercised only where isal is not installed
    _isal = None

Method = Literal["store", "deflate", "auto"]

STORE = 0  # compression method numbers from APPNOTE 4.4.5
DEFLATE = 8

ZIP32_MAX = 0xFFFF_FFFF  # a 32-bit field holding this value means "see the ZIP64 field"
ZIP32_MAX_ENTRIES = 0xFFFF  # likewise for the 16-bit entry counts
AUTO_PROBE_BYTES = 64 * 2**10  # how much of an entry 'auto' compresses to decide
AUTO_MIN_SAVING = 0.05  # store unless the probe shrank by at least this much
VERSION_MADE_BY = (3 << 8) | 45  # Unix, spec 4.5
FILE_MODE = 0o100644  # regular file, rw-r--r--

# Extensions whose content is already compressed: 'auto' stores them without probing.
COMPRESSED_EXTENSIONS = frozenset(
    """
    jpg jpeg png gif webp heic heif avif jxl tif tiff mp4 m4v mov avi mkv webm wmv flv mpg mpeg ts m2ts
    3gp mp3 m4a aac ogg oga opus flac wma zip gz tgz bz2 tbz xz txz zst lz4 lzma 7z rar cab jar war apk
    ipa dmg iso br docx xlsx pptx odt ods odp epub pdf woff woff2 parquet avro orc
    """.split()
)


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self, /) -> bytes: ...


def raw_deflate(level: int, zdict: bytes = b"") -> Any:
    """A raw DEFLATE compressor (zlib's ``compressobj`` interface) at zlib's ``level`` (1-9), using ISA-L when
    installed; ``zdict`` primes its window with the data that came before (see ``deflate``)."""
    primed = (9, 0, zdict) if zdict else ()  # memLevel and strategy at their defaults, then the dictionary
    if _isal is not None:
        # ISA-L's levels are 0-3; its 2 matches zlib 6's ratio within ~1% on text.
        isal_level = 1 if level <= 2 else 2 if level <= 6 else 3
        return _isal.compressobj(isal_level, _isal.DEFLATED, -15, *primed)
    return zlib.compressobj(level, zlib.DEFLATED, -15, *primed)


crc32: Callable[[bytes, int], int] = _isal.crc32 if _isal is not None else zlib.crc32


def choose_method(name: str, method: Method) -> Method:
    """Resolve 'auto' by extension where it can; 'auto' left means: probe the first block."""
    if method == "auto" and name.rpartition(".")[2].lower() in COMPRESSED_EXTENSIONS:
        return "store"
    return method


def resolve_method(name: str, method: Method, level: int, first: bytes) -> Literal["store", "deflate"]:
    """STORE or DEFLATE for an entry whose data starts with ``first``: level 0 stores everything; 'auto'
    stores by extension, else when the first ``AUTO_PROBE_BYTES`` do not shrink by ``AUTO_MIN_SAVING``."""
    if level == 0:
        return "store"
    method = choose_method(name, method)
    if method == "auto":
        return "deflate" if _shrinks(first[:AUTO_PROBE_BYTES], level) else "store"
    return method


def may_need_zip64(size: int | None) -> bool:
    """Whether an entry of ``size`` bytes might need ZIP64, whatever its method: DEFLATE can grow
    incompressible data by ~0.03%; the margin here is ~0.2%."""
    return size is None or size + size // 512 + 1024 >= ZIP32_MAX


class EntryMismatch(ValueError):
    """A streamed entry's data did not match the CRC-32 or size declared in its local header."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name, self.reason = name, reason

    def __str__(self) -> str:
        return f"{self.name!r}: {self.reason}"


@dataclass(frozen=True)
class Member:
    """One entry for ``stream_zip``: its name, time, method, size and CRC-32 if known, and its bytes.

    ``chunks`` as a list or tuple is data already in memory: the entry is written whole, with no data
    descriptor. Any other iterable is streamed; to STORE it the size and CRC-32 must be given, since a stored
    entry declares them before its data ('auto' deflates it otherwise).
    """

    name: str
    modified: datetime
    chunks: Iterable[bytes]
    method: Method = "auto"
    size: int | None = None  # None: unknown, so a streamed DEFLATE entry is written as ZIP64 to be safe
    crc32: int | None = None


@dataclass
class _Entry:
    name: bytes
    utf8: bool
    modified: datetime
    method: int
    zip64: bool
    offset: int
    descriptor: bool  # sizes and CRC-32 after the data (streamed DEFLATE), else in the local header
    # (crc-32, size) the data must have: a streamed STORED entry's header declares them; a DEFLATE entry may be
    # given them (a source's checksum) and is checked the same way, though its descriptor carries its own.
    declared: tuple[int, int] | None = None
    crc: int = 0
    compressed: int = 0
    uncompressed: int = 0


class ZipWriter:
    """Push-style ZIP writer. Each call returns the bytes to append to the output, in order.

    ``add`` writes a whole entry. ``begin`` records a streamed one; its local header is emitted with the first
    ``write`` (or ``end``), once an 'auto' entry has seen enough of its data to choose STORE or DEFLATE.
    """

    def __init__(self, level: int = 6, compressor: Callable[[int], Compressor] = raw_deflate) -> None:
        self._level = level
        self._make_compressor = compressor
        self._offset = 0
        self._entries: list[_Entry] = []
        self._current: _Entry | None = None
        self._pending: tuple[str, datetime, Method, int | None, int | None] | None = None
        self._compressor: Compressor | None = None
        self._finished = False

    @property
    def offset(self) -> int:
        """Bytes emitted so far."""
        return self._offset

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    def add(self, name: str, modified: datetime, method: Method = "auto", data: bytes = b"") -> bytes:
        """A whole entry: CRC-32 and sizes in its local header, no data descriptor. For data in memory."""
        self._check_begin(name)
        code = DEFLATE if resolve_method(name, method, self._level, data) == "deflate" else STORE
        body = data
        if code == DEFLATE:
            compressor = self._make_compressor(self._level)
            body = compressor.compress(data)
            body += compressor.flush()
        zip64 = len(data) >= ZIP32_MAX or len(body) >= ZIP32_MAX
        entry = _Entry(name.encode(), not name.isascii(), modified, code, zip64, self._offset, descriptor=False)
        entry.crc, entry.compressed, entry.uncompressed = crc32(data, 0), len(body), len(data)
        self._entries.append(entry)
        return self._emit(_local_header(entry, entry.crc, entry.compressed, entry.uncompressed) + body)

    def begin(
        self,
        name: str,
        modified: datetime,
        method: Method = "auto",
        size: int | None = None,
        crc32: int | None = None,
    ) -> bytes:
        """Start a streamed entry of ``size`` bytes. ``crc32`` (with ``size``) lets it be STORED; either way, with
        both given, ``end`` checks the data against them (``EntryMismatch``)."""
        self._check_begin(name)
        self._pending = (name, modified, method, size, crc32)
        return b""

    def write(self, data: bytes) -> bytes:
        out = self._open(data) if self._current is None else b""
        entry = self._current
        assert entry is not None
        if not data:
            return self._emit(out)  # the local header, when this empty write opened the entry
        entry.crc = crc32(data, entry.crc)
        entry.uncompressed += len(data)
        if entry.declared is not None and entry.uncompressed > entry.declared[1]:
            raise EntryMismatch(entry.name.decode(), f"more than the {entry.declared[1]} bytes declared")
        if self._compressor is not None:
            data = self._compressor.compress(data)
        entry.compressed += len(data)
        if not entry.zip64 and (entry.uncompressed >= ZIP32_MAX or entry.compressed >= ZIP32_MAX):
            raise ValueError(f"{entry.name!r} reached 4 GiB but was declared smaller; give its true size")
        return self._emit(out + data)

    def end(self) -> bytes:
        """Close the current entry: check the data against the CRC-32 and size declared for it, if any (always
        for STORE: its header declared them), then for DEFLATE flush the compressor and write the data
        descriptor."""
        out = self._open(b"") if self._current is None else b""
        entry = self._current
        assert entry is not None
        if entry.declared is not None:
            crc, size = entry.declared
            if (entry.crc, entry.uncompressed) != (crc, size):
                raise EntryMismatch(
                    entry.name.decode(),
                    f"read {entry.uncompressed} bytes with CRC-32 {entry.crc:08x}, "
                    f"but {size} bytes with CRC-32 {crc:08x} were declared",
                )
        if not entry.descriptor:
            self._entries.append(entry)
            self._current = None
            return self._emit(out)
        if self._compressor is not None:
            tail = self._compressor.flush()
            entry.compressed += len(tail)
            out += tail
            self._compressor = None
        if not entry.zip64 and entry.compressed >= ZIP32_MAX:
            raise ValueError(f"{entry.name!r} compressed to 4 GiB but was declared smaller")
        if entry.zip64:
            descriptor = struct.pack(
                "<IIQQ",
                0x08074B50,  # data descriptor signature
                entry.crc,  # crc-32
                entry.compressed,  # compressed size (8 bytes: the local header has a ZIP64 field)
                entry.uncompressed,  # uncompressed size
            )
        else:
            descriptor = struct.pack(
                "<IIII",
                0x08074B50,  # data descriptor signature
                entry.crc,  # crc-32
                entry.compressed,  # compressed size (4 bytes: zip4j#86, Archive Utility wants them so)
                entry.uncompressed,  # uncompressed size
            )
        self._entries.append(entry)
        self._current = None
        return self._emit(out + descriptor)

    def finish(self) -> bytes:
        """The central directory and end records. The writer takes nothing after this."""
        if self._current is not None or self._pending is not None:
            raise RuntimeError("finish() inside an entry")
        self._finished = True
        start = self._offset
        directory = b"".join(_central_record(e) for e in self._entries)
        end = start + len(directory)
        count = len(self._entries)
        # A value equal to a field's maximum already means "see ZIP64" to readers (minizip-ng#596).
        need64 = count >= ZIP32_MAX_ENTRIES or start >= ZIP32_MAX or len(directory) >= ZIP32_MAX
        tail = b""
        if need64:
            tail += struct.pack(
                "<IQHHIIQQQQ",
                0x06064B50,  # zip64 end of central directory signature
                44,  # size of the rest of this record
                VERSION_MADE_BY,  # version made by
                45,  # version needed to extract
                0,  # number of this disk
                0,  # disk where the central directory starts
                count,  # entries on this disk
                count,  # entries in total
                len(directory),  # size of the central directory
                start,  # offset of the central directory
            )
            tail += struct.pack(
                "<IIQI",
                0x07064B50,  # zip64 end of central directory locator signature
                0,  # disk with the zip64 end record
                end,  # offset of the zip64 end record
                1,  # total number of disks
            )
        tail += struct.pack(
            "<IHHHHIIH",
            0x06054B50,  # end of central directory signature
            0,  # number of this disk
            0,  # disk where the central directory starts
            min(count, ZIP32_MAX_ENTRIES),  # entries on this disk (0xFFFF: see zip64 record)
            min(count, ZIP32_MAX_ENTRIES),  # entries in total
            min(len(directory), ZIP32_MAX),  # size of the central directory
            min(start, ZIP32_MAX),  # offset of the central directory
            0,  # comment length
        )
        return self._emit(directory + tail)

    # --- internals ---

    def _check_begin(self, name: str) -> None:
        if self._current is not None or self._pending is not None:
            raise RuntimeError(f"entry {name!r} started before the previous entry ended")
        if self._finished:
            raise RuntimeError("the archive is finished")
        if not name or name.startswith("/"):
            raise ValueError(f"bad entry name {name!r}")

    def _open(self, first: bytes) -> bytes:
        """Emit the pending entry's local header, choosing STORE or DEFLATE for 'auto' from ``first``."""
        if self._pending is None:
            raise RuntimeError("write() or end() outside an entry")
        name, modified, method, size, crc = self._pending
        self._pending = None
        resolved = resolve_method(name, method, self._level, first)
        if resolved == "store" and (size is None or crc is None):
            if method != "auto" or self._level == 0:
                raise ValueError(
                    f"{name!r}: a streamed STORED entry needs its size and CRC-32 before its data "
                    "(begin(size=..., crc32=...)); or add() the whole entry"
                )
            resolved = "deflate"  # 'auto' without a CRC-32 up front: DEFLATE ends itself, STORE cannot
        encoded = name.encode()
        if resolved == "store":
            assert size is not None and crc is not None
            entry = _Entry(encoded, not name.isascii(), modified, STORE, size >= ZIP32_MAX, self._offset, False)
            entry.declared = (crc, size)
            self._current, self._compressor = entry, None
            return _local_header(entry, crc, size, size)
        entry = _Entry(encoded, not name.isascii(), modified, DEFLATE, may_need_zip64(size), self._offset, True)
        if size is not None and crc is not None:
            entry.declared = (crc, size)
        self._current = entry
        self._compressor = self._make_compressor(self._level)
        return _local_header(entry, 0, 0, 0)  # crc-32 and sizes: in the data descriptor

    def _emit(self, data: bytes) -> bytes:
        self._offset += len(data)
        return data


def stream_zip(members: Iterable[Member], level: int = 6) -> Iterator[bytes]:
    """Yield a ZIP archive of ``members``, one entry after another, in constant memory."""
    writer = ZipWriter(level)
    for member in members:
        if isinstance(member.chunks, list | tuple):
            yield writer.add(member.name, member.modified, member.method, b"".join(member.chunks))
            continue
        writer.begin(member.name, member.modified, member.method, member.size, member.crc32)
        for chunk in member.chunks:
            out = writer.write(chunk)
            if out:
                yield out
        yield writer.end()
    yield writer.finish()


def _shrinks(sample: bytes, level: int) -> bool:
    if not sample:
        return False  # nothing to gain on an empty entry: STORE is smaller
    c = raw_deflate(level)
    size = len(c.compress(sample)) + len(c.flush())
    return size <= len(sample) * (1 - AUTO_MIN_SAVING)


def _flags(entry: _Entry) -> int:
    return (0x0008 if entry.descriptor else 0) | (0x0800 if entry.utf8 else 0)  # bit 3: data descriptor


def _local_header(entry: _Entry, crc: int, compressed: int, uncompressed: int) -> bytes:
    """The local file header; ``crc`` and the sizes are zeros when a data descriptor follows the data."""
    extra = _timestamp_extra(entry.modified)
    if entry.zip64:
        extra = (
            struct.pack(
                "<HHQQ",
                0x0001,  # zip64 extended information extra field (both sizes: Java reads only 16 bytes)
                16,  # size of the data that follows
                uncompressed,  # uncompressed size
                compressed,  # compressed size
            )
            + extra
        )
        compressed = uncompressed = ZIP32_MAX
    dos_time, dos_date = _dos_datetime(entry.modified)
    header = struct.pack(
        "<IHHHHHIIIHH",
        0x04034B50,  # local file header signature
        45 if entry.zip64 else 20,  # version needed to extract
        _flags(entry),  # general purpose bit flag
        entry.method,  # compression method
        dos_time,  # last mod file time
        dos_date,  # last mod file date
        crc,  # crc-32
        compressed,  # compressed size (0xFFFFFFFF: in the ZIP64 field)
        uncompressed,  # uncompressed size
        len(entry.name),  # file name length
        len(extra),  # extra field length
    )
    return header + entry.name + extra


def _dos_datetime(moment: datetime) -> tuple[int, int]:
    """DOS date and time (2-second resolution), of the UTC wall clock; clamped to DOS's 1980-2107."""
    t = moment.astimezone(UTC) if moment.tzinfo else moment
    if t.year < 1980:
        return 0, (1 << 5) | 1  # 1980-01-01 00:00
    if t.year > 2107:
        return (23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31
    return (t.hour << 11) | (t.minute << 5) | (t.second // 2), ((t.year - 1980) << 9) | (t.month << 5) | t.day


def _unix_time(moment: datetime) -> int | None:
    ts = int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
    return ts if 0 <= ts < 2**31 else None  # the field is a signed 32-bit count of seconds


def _timestamp_extra(moment: datetime) -> bytes:
    ts = _unix_time(moment)
    if ts is None:
        return b""
    return struct.pack(
        "<HHBI",
        0x5455,  # extended timestamp extra field
        5,  # size of the data that follows
        1,  # flags: modification time present
        ts,  # modification time, seconds since 1970 UTC
    )


def _central_record(e: _Entry) -> bytes:
    zip64_fields: list[int] = []
    if e.zip64:  # sizes as in the local header's ZIP64 field
        zip64_fields += [e.uncompressed, e.compressed]
    offset64 = e.offset >= ZIP32_MAX
    if offset64:
        zip64_fields.append(e.offset)
    extra = b""
    if zip64_fields:
        extra = struct.pack(
            f"<HH{len(zip64_fields)}Q",
            0x0001,  # zip64 extended information extra field
            8 * len(zip64_fields),  # size of the data that follows
            *zip64_fields,  # uncompressed size, compressed size, local header offset: those that overflow
        )
    extra += _timestamp_extra(e.modified)
    dos_time, dos_date = _dos_datetime(e.modified)
    return (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,  # central file header signature
            VERSION_MADE_BY,  # version made by
            45 if zip64_fields else 20,  # version needed to extract
            _flags(e),  # general purpose bit flag
            e.method,  # compression method
            dos_time,  # last mod file time
            dos_date,  # last mod file date
            e.crc,  # crc-32
            ZIP32_MAX if e.zip64 else e.compressed,  # compressed size
            ZIP32_MAX if e.zip64 else e.uncompressed,  # uncompressed size
            len(e.name),  # file name length
            len(extra),  # extra field length
            0,  # file comment length
            0,  # disk number start
            0,  # internal file attributes
            FILE_MODE << 16,  # external file attributes: Unix mode in the high 16 bits
            ZIP32_MAX if offset64 else e.offset,  # relative offset of local header
        )
        + e.name
        + extra
    )


def size_bound(input_bytes: int, entries: int, name_bytes: int) -> int:
    """An upper bound on the archive's size, to size multipart parts before any byte is written."""
    per_entry = 30 + 20 + 9 + 24 + 46 + 28 + 9  # headers, ZIP64 fields, timestamps, descriptor
    deflate_growth = input_bytes // 512 + 1024 * entries  # worst-case DEFLATE expansion, generously
    return input_bytes + deflate_growth + entries * per_entry + 2 * name_bytes + 98
