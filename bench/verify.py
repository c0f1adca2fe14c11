"""Check an archive a contender produced: a benchmark of a broken archive is worthless.

The archive goes to a temp file on disk in chunks (it can be several GB) and is then read by two independent
readers: Python's ``zipfile`` (every CRC, the entry count, the total size) and Info-ZIP's ``unzip -t``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
import zlib
from typing import Any

MiB = 2**20


class VerifyError(Exception):
    """The archive is missing, unreadable, or does not hold what was put in."""


def verify(s3: Any, bucket: str, key: str, entries: int, input_bytes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        path = os.path.join(tmp, "archive.zip")
        # One whole GET: moto reads the whole object for every ranged GET, so a ranged download is quadratic.
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        with open(path, "wb") as f:
            for chunk in body.iter_chunks(8 * MiB):
                f.write(chunk)
        try:  # testzip() reads every entry and checks its CRC
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
                infos = [i for i in zf.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise VerifyError(f"zipfile cannot read s3://{bucket}/{key}: {exc}") from exc
        if bad is not None:
            raise VerifyError(f"zipfile: bad CRC or data in entry {bad!r}")
        if len(infos) != entries:
            raise VerifyError(f"zipfile: {len(infos)} entries, expected {entries}")
        if (total := sum(i.file_size for i in infos)) != input_bytes:
            raise VerifyError(f"zipfile: entries hold {total} bytes, expected {input_bytes}")
        if shutil.which("unzip"):
            proc = subprocess.run(["unzip", "-tqq", path], capture_output=True, text=True)
            if proc.returncode != 0:
                raise VerifyError(f"unzip -t exited {proc.returncode}: {(proc.stdout + proc.stderr)[-500:]}")
