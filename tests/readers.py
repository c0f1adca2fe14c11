"""Independent ZIP readers for the reader matrix (tests/test_readers.py).

Each reader returns what it read from an archive: one ``Read(name, size, crc)`` per entry, where size and
CRC-32 are computed here (or by tests/java/ZipRead.java) over the bytes the reader produced, never taken from
the archive; the matrix compares them with the sources. Readers that extract to disk name their entries by
the files they made. ``TOOLS`` says what each reader needs and how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import NamedTuple

from bucketzip.archive import crc32

MiB = 2**20
JAVA_SOURCE = Path(__file__).parent / "java" / "ZipRead.java"
UTF8_LOCALE = {**os.environ, "LC_ALL": "C.UTF-8"}  # extractors turn UTF-8 names into the locale's charset


class Read(NamedTuple):
    name: str
    size: int
    crc: int


# reader -> (executables it needs, what to install)
TOOLS: dict[str, tuple[tuple[str, ...], str]] = {
    "zipfile": ((), ""),
    "unzip": (("unzip",), "Info-ZIP unzip (apt-get install unzip)"),
    "7z": (("7z",), "7-Zip (apt-get install p7zip-full)"),
    "bsdtar-pipe": (("bsdtar",), "bsdtar (apt-get install libarchive-tools)"),
    "java-zipfile": (("java", "javac"), "a JDK (apt-get install default-jdk-headless)"),
    "java-zipinputstream": (("java", "javac"), "a JDK (apt-get install default-jdk-headless)"),
    "stream-unzip": ((), ""),
}


def available(reader: str) -> bool:
    return all(shutil.which(tool) for tool in TOOLS[reader][0])


def _digest(chunks: Iterator[bytes]) -> tuple[int, int]:
    size = crc = 0
    for chunk in chunks:
        size += len(chunk)
        crc = crc32(chunk, crc)
    return size, crc


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            yield block


def read_zipfile(archive: Path) -> list[Read]:
    out = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:  # checks the CRC-32 at the end of each entry
                size, crc = _digest(iter(lambda f=f: f.read(4 * MiB), b""))  # type: ignore[misc]
            out.append(Read(info.filename, size, crc))
    return out


def read_stream_unzip(archive: Path) -> list[Read]:
    from stream_unzip import stream_unzip

    out = []
    for name, _size, chunks in stream_unzip(_file_chunks(archive)):
        out.append(Read(name.decode(), *_digest(chunks)))
    return out


def _run(argv: list[str] | str, **kwargs: object) -> None:
    r = subprocess.run(argv, capture_output=True, env=UTF8_LOCALE, **kwargs)  # type: ignore[call-overload]
    command = argv if isinstance(argv, str) else " ".join(argv)
    assert r.returncode == 0, f"{command} failed ({r.returncode}): {r.stdout[-3000:]!r} {r.stderr[-3000:]!r}"


def _extracted(folder: Path) -> list[Read]:
    """Every file under ``folder`` (names relative to it, with '/'), deleting each once it is read."""
    out = []
    for root, _dirs, files in os.walk(folder):
        for file in files:
            path = Path(root, file)
            out.append(Read(path.relative_to(folder).as_posix(), *_digest(_file_chunks(path))))
            path.unlink()  # the big case extracts gigabytes: give the space back at once
    return out


def _extract(command: Callable[[Path], list[str] | str], archive: Path) -> list[Read]:
    # Into memory when it fits (tens of thousands of small files are slow on a busy disk), else beside it.
    small = archive.stat().st_size < 2**30 and Path("/dev/shm").is_dir()
    with tempfile.TemporaryDirectory(prefix="bz-readers-", dir="/dev/shm" if small else archive.parent) as tmp:
        argv = command(Path(tmp))
        _run(argv, shell=isinstance(argv, str))
        return _extracted(Path(tmp))


def read_unzip(archive: Path) -> list[Read]:
    """``unzip -t`` (every CRC-32 checked), then an extraction."""
    _run(["unzip", "-tqq", str(archive)])
    return _extract(lambda d: ["unzip", "-qq", "-o", str(archive), "-d", str(d)], archive)


def read_7z(archive: Path) -> list[Read]:
    return _extract(lambda d: ["7z", "x", "-y", "-bd", "-bso0", f"-o{d}", str(archive)], archive)


def read_bsdtar_pipe(archive: Path) -> list[Read]:
    """libarchive's streaming ZIP reader: the archive comes through a pipe, so it cannot seek to the central
    directory and reads the local headers front to back."""
    return _extract(lambda d: f"cat '{archive}' | bsdtar -xf - -C '{d}'", archive)


@cache
def java_classes() -> Path:
    """ZipRead.java compiled once per test session, into a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="bz-java-"))
    _run(["javac", "-d", str(folder), str(JAVA_SOURCE)])
    return folder


def read_java(mode: str, archive: Path) -> list[tuple[Read, int]]:
    """(entry, modification time in ms) as java.util.zip reads them: mode "file" (ZipFile) or "stream"
    (ZipInputStream)."""
    r = subprocess.run(
        ["java", "-Duser.timezone=UTC", "-cp", str(java_classes()), "ZipRead", mode, str(archive)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"java ZipRead {mode} failed: {r.stderr[-3000:]}"
    out = []
    for line in r.stdout.splitlines():
        name, size, crc, modified = line.split("\t")
        out.append((Read(bytes.fromhex(name).decode(), int(size), int(crc, 16)), int(modified)))
    return out


READERS: dict[str, Callable[[Path], list[Read]]] = {
    "zipfile": read_zipfile,
    "unzip": read_unzip,
    "7z": read_7z,
    "bsdtar-pipe": read_bsdtar_pipe,
    "java-zipfile": lambda a: [r for r, _ in read_java("file", a)],
    "java-zipinputstream": lambda a: [r for r, _ in read_java("stream", a)],
    "stream-unzip": read_stream_unzip,
}
