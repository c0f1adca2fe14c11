"""ZIP64 for real: an archive over 4 GiB holding an entry over 4 GiB (and an entry whose header lies past 4 GiB),
and an archive of more than 65,535 entries. Fed from cheap local data (a sparse file, tiny files) through
fsspec's local filesystem, and read back by both zipfile and ``unzip -t``."""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bucketzip.config import Settings
from bucketzip.engine import run_job
from tests.helpers import check_zip_file

pytestmark = pytest.mark.slow

MiB = 2**20
LOCAL = Settings.from_env(
    {"BUCKETZIP_CHUNK_SIZE": "8MiB", "BUCKETZIP_READ_BUFFER": "64MiB"}, allowed_protocols=frozenset({"s3", "file"})
)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied as soon as the test ends: these tests write gigabytes."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def crc_of(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(64 * MiB):
            crc = zlib.crc32(block, crc)
    return crc


def end_records(path: Path) -> tuple[int, int]:
    """(entries in the classic end record, entries in the ZIP64 end record or -1 when there is none)."""
    with path.open("rb") as f:
        f.seek(-98, os.SEEK_END)
        tail = f.read()
    (classic,) = struct.unpack_from("<H", tail, 98 - 22 + 10)
    if tail[:4] != b"PK\x06\x06":
        return classic, -1
    (zip64,) = struct.unpack_from("<Q", tail, 32)
    return classic, zip64


def test_archive_and_entry_over_4_gib(workdir: Path) -> None:
    assert shutil.disk_usage(workdir).free > 12 * 2**30, "needs ~5 GiB for the archive, with room to spare"
    src = workdir / "src"
    src.mkdir()
    big = src / "big.bin"
    size = int(4.2 * 2**30)
    with big.open("wb") as f:
        os.truncate(f.fileno(), size)  # sparse: costs no disk
        for offset in (0, 2**32 - MiB // 2, size - MiB):  # real bytes at the start, across 4 GiB, at the end
            f.seek(offset)
            f.write(os.urandom(MiB))
    after = os.urandom(100_000)
    (src / "z-after.bin").write_bytes(after)  # archived after the big one: its header lies past 4 GiB
    expected_crc = crc_of(big)

    out = workdir / "out"
    out.mkdir()
    spec = {"sources": [f"file://{src}/"], "destination": f"file://{out}/big.zip", "compression": "store"}
    result = run_job(spec, LOCAL)

    archive = out / "big.zip"
    assert os.listdir(out) == ["big.zip"]
    assert result.size == archive.stat().st_size > size > 2**32
    assert (result.entries, result.input_bytes) == (2, size + len(after))

    zf = check_zip_file(str(archive))  # unzip -t and zipfile's testzip both read every byte and check CRCs
    info = zf.getinfo("big.bin")
    assert (info.file_size, info.compress_size, info.CRC) == (size, size, expected_crc)
    assert info.compress_type == zipfile.ZIP_STORED
    tail = zf.getinfo("z-after.bin")
    assert tail.header_offset > 2**32
    assert zf.read("z-after.bin") == after
    with zf.open("big.bin") as f:  # spot-check the bytes around the 4 GiB boundary
        f.seek(2**32 - MiB // 2)
        with big.open("rb") as g:
            g.seek(2**32 - MiB // 2)
            assert f.read(MiB) == g.read(MiB)
    zf.close()
    # Two entries, but the central directory starts past 4 GiB: the ZIP64 end record is needed.
    assert end_records(archive) == (2, 2)


def test_more_than_65535_entries(workdir: Path) -> None:
    # 1,000 small files listed by 66 sources, each into its own folder: 66,000 entries from cheap local data.
    src = workdir / "files"
    src.mkdir()
    files = {f"f{i:03}.txt": f"file {i}\n".encode() * (i % 3) for i in range(1000)}  # a third of them empty
    for name, data in files.items():
        (src / name).write_bytes(data)
    folders = 66
    spec = {
        "sources": [{"url": f"file://{src}/", "name": f"d{n:02}"} for n in range(folders)],
        "destination": f"file://{workdir}/many.zip",
    }
    result = run_job(spec, LOCAL)
    count = folders * len(files)
    assert result.entries == count > 65_535

    archive = workdir / "many.zip"
    expected = {f"d{n:02}/{name}": data for n in range(folders) for name, data in files.items()}
    zf = check_zip_file(str(archive), expected)  # both readers; every entry compared byte for byte
    assert len(zf.infolist()) == count
    zf.close()
    assert end_records(archive) == (0xFFFF, count)
