"""Reading archives back with independent readers: Python's zipfile and Info-ZIP's ``unzip -t``."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from typing import Any


def unzip_test(path: str) -> None:
    """``unzip -tqq``; asserts it reports no error."""
    exe = shutil.which("unzip")
    assert exe is not None, "Info-ZIP unzip is required (apt-get install unzip)"
    r = subprocess.run([exe, "-tqq", path], capture_output=True, text=True)
    assert r.returncode == 0, f"unzip -t failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}"


def check_zip_file(path: str, expected: Mapping[str, bytes] | None = None) -> zipfile.ZipFile:
    """Verify the archive at ``path`` with both readers; compare contents byte for byte with ``expected``."""
    unzip_test(path)
    zf = zipfile.ZipFile(path)
    assert zf.testzip() is None
    if expected is not None:
        assert sorted(zf.namelist()) == sorted(expected)
        for name, data in expected.items():
            assert zf.read(name) == data, f"{name} differs"
    return zf


def check_zip_bytes(data: bytes, expected: Mapping[str, bytes] | None = None) -> zipfile.ZipFile:
    fd, path = tempfile.mkstemp(suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        check_zip_file(path, expected)
    finally:
        os.unlink(path)
    return zipfile.ZipFile(io.BytesIO(data))


def fetch_archive(s3: Any, bucket: str, key: str, expected: Mapping[str, bytes] | None = None) -> zipfile.ZipFile:
    """Download an archive from S3 and check it with both readers."""
    return check_zip_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), expected)


def open_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something true, and return that. The timeout only bounds a broken
    run: every wait in the suite is for a condition, never for time to pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what}")
