"""A small local Glacier vault server for the tests and the benchmark (moto's Glacier has no multipart upload).

It implements the REST calls bucketzip makes - create vault, initiate / upload part / complete / abort / list
multipart uploads, initiate job (archive retrieval), describe job, list jobs, get job output - and checks what
the real service checks: a part size that is a power of two MiB from 1 MiB to 4 GiB, part ranges aligned to
it and all full but the last, each part's ``x-amz-sha256-tree-hash`` (and ``x-amz-content-sha256``), and on
completion the archive's size and tree hash. Every hash is checked against ``botocore.utils.calculate_tree_hash``,
an implementation independent of bucketzip's. Archives and uploads are kept in files, so a large archive does
not live in memory.

A repeated Complete of an upload answers with the archive the first one made, as Glacier's does for a while
(``forget_completed`` ends that while). Faults can be injected (``fail``), calls held (``hold``), retrieval jobs
finish when told to (``finish_jobs``) or at once (``jobs_finish_at_once``), and every call is counted
(``calls``).

    python -m tests.vaultserver --port 9100 --root /tmp/vaults     # stand-alone (the benchmark uses this)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.utils import calculate_tree_hash

MiB = 2**20
ARN = "arn:aws:glacier:us-east-1:012345678901:vaults/"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    id: str
    vault: str
    part_size: int
    description: str | None
    path: str
    created: str = field(default_factory=_now)
    parts: dict[int, tuple[int, str]] = field(default_factory=dict)  # start -> (length, tree hash)


@dataclass
class Archive:
    id: str
    vault: str
    size: int
    tree_hash: str
    description: str | None
    path: str
    created: str = field(default_factory=_now)


@dataclass
class Job:
    id: str
    vault: str
    archive: Archive
    tier: str
    created: str = field(default_factory=_now)
    done: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "JobId": self.id,
            "Action": "ArchiveRetrieval",
            "ArchiveId": self.archive.id,
            "ArchiveSizeInBytes": self.archive.size,
            "ArchiveSHA256TreeHash": self.archive.tree_hash,
            "SHA256TreeHash": self.archive.tree_hash,
            "Completed": self.done,
            "StatusCode": "Succeeded" if self.done else "InProgress",
            "StatusMessage": "Succeeded" if self.done else "In progress",
            "CreationDate": self.created,
            "CompletionDate": _now() if self.done else None,
            "Tier": self.tier,
            "VaultARN": ARN + self.vault,
            "RetrievalByteRange": f"0-{self.archive.size - 1}",
        }


@dataclass
class Fault:
    operation: str  # "initiate", "upload_part", "complete", "abort", "list_uploads", ...
    status: int
    code: str
    after: int = 0  # let this many calls of the operation through first
    times: int = 1


class VaultServer:
    """The server's state and its HTTP front; ``start()`` returns the endpoint URL."""

    def __init__(self, root: str | None = None, port: int = 0) -> None:
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="vaults-")
        os.makedirs(self.root, exist_ok=True)
        self.port = port
        self.lock = threading.Lock()
        self.vaults: set[str] = set()
        self.uploads: dict[str, Upload] = {}
        self.archives: dict[str, Archive] = {}
        self.completed: dict[str, Archive] = {}  # upload id -> the archive its Complete made (see forget_completed)
        self.jobs: dict[str, Job] = {}
        self.faults: list[Fault] = []
        self.holds: dict[str, threading.Event] = {}
        self.calls: Counter[str] = Counter()
        self.jobs_finish_at_once = False
        self.httpd: ThreadingHTTPServer | None = None
        self.url = ""  # set by start()
        self.vault = ""  # the tests' fixture keeps its vault's name here

    # --- control, for the tests ---

    def create_vault(self, name: str) -> None:
        with self.lock:
            self.vaults.add(name)

    def fail(self, operation: str, status: int, code: str, after: int = 0, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` (after ``after`` more) answer ``status``/``code``."""
        with self.lock:
            self.faults.append(Fault(operation, status, code, after, times))

    def hold(self, operation: str) -> threading.Event:
        """Hold every call of ``operation`` (counted as it arrives) until the returned event is set."""
        with self.lock:
            held = self.holds[operation] = threading.Event()
        return held

    def forget_completed(self) -> None:
        """Let the while pass in which Glacier answers a repeated Complete with the archive the first made: a
        completed upload is then unknown (ResourceNotFoundException), as an aborted one is."""
        with self.lock:
            self.completed.clear()

    def finish_jobs(self) -> None:
        with self.lock:
            for job in self.jobs.values():
                job.done = True

    def archive_bytes(self, archive_id: str) -> bytes:
        with open(self.archives[archive_id].path, "rb") as f:
            return f.read()

    def open_uploads(self, vault: str) -> list[Upload]:
        with self.lock:
            return [u for u in self.uploads.values() if u.vault == vault]

    # --- serving ---

    def start(self) -> str:
        server = self

        class Handler(_Handler):
            vaults = server

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, name="vaultserver", daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _fault(self, operation: str) -> None:
        with self.lock:
            self.calls[operation] += 1
            held = self.holds.get(operation)
            for fault in self.faults:
                if fault.operation == operation and fault.times > 0:
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.times -= 1
                    raise Refused(fault.status, fault.code, f"injected fault in {operation}")
        if held is not None:
            held.wait(60)

    def _vault(self, name: str) -> None:
        if name not in self.vaults:
            raise Refused(404, "ResourceNotFoundException", f"Vault not found for ARN: {ARN}{name}")

    def _upload(self, vault: str, upload_id: str) -> Upload:
        self._vault(vault)
        upload = self.uploads.get(upload_id)
        if upload is None or upload.vault != vault:
            raise Refused(404, "ResourceNotFoundException", f"The upload ID was not found: {upload_id}")
        return upload

    # --- the Glacier calls ---

    def initiate(self, vault: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        self._vault(vault)
        raw = headers.get("x-amz-part-size", "")
        part_size = int(raw) if raw.isdigit() else 0
        if not (MiB <= part_size <= 4 * 2**30 and part_size & (part_size - 1) == 0):
            raise Refused(400, "InvalidParameterValueException", f"Invalid part size: {raw}")
        description = headers.get("x-amz-archive-description")
        if description is not None and not re.fullmatch(r"[\x20-\x7e]{0,1024}", description):
            raise Refused(400, "InvalidParameterValueException", "Invalid archive description")
        upload_id = secrets.token_urlsafe(69)[:92]
        path = os.path.join(self.root, f"upload-{hashlib.sha1(upload_id.encode()).hexdigest()}")
        open(path, "wb").close()
        with self.lock:
            self.uploads[upload_id] = Upload(upload_id, vault, part_size, description, path)
        location = f"/012345678901/vaults/{vault}/multipart-uploads/{upload_id}"
        return 201, {"Location": location, "x-amz-multipart-upload-id": upload_id}, b""

    def upload_part(self, vault: str, upload_id: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        upload = self._upload(vault, upload_id)
        m = re.fullmatch(r"bytes (\d+)-(\d+)/\*", headers.get("Content-Range", ""))
        if m is None:
            raise Refused(400, "InvalidParameterValueException", "Content-Range must be bytes FIRST-LAST/*")
        first, last = int(m[1]), int(m[2])
        length = last - first + 1
        if length != len(body):
            raise Refused(400, "InvalidParameterValueException", "Content-Range does not match the body's length")
        if first % upload.part_size:
            raise Refused(400, "InvalidParameterValueException", "Content-Range is not aligned to the part size")
        if length > upload.part_size or length == 0:
            raise Refused(400, "InvalidParameterValueException", "a part is larger than the part size")
        if headers.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
            raise Refused(400, "InvalidParameterValueException", "x-amz-content-sha256 mismatch")
        expected = calculate_tree_hash(io.BytesIO(body))
        if headers.get("x-amz-sha256-tree-hash") != expected:
            raise Refused(400, "InvalidParameterValueException", "Checksum mismatch (tree hash)")
        with open(upload.path, "r+b") as f:
            f.seek(first)
            f.write(body)
        with self.lock:
            upload.parts[first] = (length, expected)
        return 204, {"x-amz-sha256-tree-hash": expected}, b""

    def complete(self, vault: str, upload_id: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        raw_size = headers.get("x-amz-archive-size", "")
        if not raw_size.isdigit():
            raise Refused(400, "MissingParameterValueException", "x-amz-archive-size is required")
        size = int(raw_size)
        done = self.completed.get(upload_id)
        if done is not None and done.vault == vault:  # Glacier's Complete is idempotent: the same archive again
            if (done.size, done.tree_hash) != (size, headers.get("x-amz-sha256-tree-hash")):
                raise Refused(400, "InvalidParameterValueException", "the upload was completed with another archive")
            return 201, self._archive_headers(done), b""
        upload = self._upload(vault, upload_id)
        at = 0
        starts = sorted(upload.parts)
        for i, start in enumerate(starts):
            length, _ = upload.parts[start]
            if start != at or (i < len(starts) - 1 and length != upload.part_size):
                raise Refused(400, "InvalidParameterValueException", f"parts do not cover the archive (at {at})")
            at += length
        if at != size:
            raise Refused(400, "InvalidParameterValueException", f"archive size {size} but parts cover {at}")
        with open(upload.path, "rb") as f:
            expected = calculate_tree_hash(f)
        if headers.get("x-amz-sha256-tree-hash") != expected:
            raise Refused(400, "InvalidParameterValueException", "Checksum mismatch (archive tree hash)")
        archive_id = secrets.token_urlsafe(104)[:138]
        path = os.path.join(self.root, f"archive-{hashlib.sha1(archive_id.encode()).hexdigest()}")
        os.replace(upload.path, path)
        archive = Archive(archive_id, vault, size, expected, upload.description, path)
        with self.lock:
            del self.uploads[upload_id]
            self.archives[archive_id] = self.completed[upload_id] = archive
        return 201, self._archive_headers(archive), b""

    def _archive_headers(self, archive: Archive) -> dict[str, str]:
        return {
            "Location": f"/012345678901/vaults/{archive.vault}/archives/{archive.id}",
            "x-amz-archive-id": archive.id,
            "x-amz-sha256-tree-hash": archive.tree_hash,
        }

    def abort(self, vault: str, upload_id: str) -> tuple[int, dict[str, str], bytes]:
        upload = self._upload(vault, upload_id)
        with self.lock:
            del self.uploads[upload_id]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upload.path)
        return 204, {}, b""

    def list_uploads(self, vault: str) -> tuple[int, dict[str, str], bytes]:
        self._vault(vault)
        listed = [
            {
                "ArchiveDescription": u.description,
                "CreationDate": u.created,
                "MultipartUploadId": u.id,
                "PartSizeInBytes": u.part_size,
                "VaultARN": ARN + vault,
            }
            for u in self.open_uploads(vault)
        ]
        return _json(200, {"Marker": None, "UploadsList": listed})

    def initiate_job(self, vault: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self._vault(vault)
        params = json.loads(body or b"{}")
        if params.get("Type") != "archive-retrieval":
            raise Refused(400, "InvalidParameterValueException", "only archive-retrieval jobs are served here")
        archive = self.archives.get(params.get("ArchiveId", ""))
        if archive is None or archive.vault != vault:
            raise Refused(404, "ResourceNotFoundException", "Archive not found")
        job_id = secrets.token_urlsafe(69)[:92]
        with self.lock:
            tier = params.get("Tier", "Standard")
            self.jobs[job_id] = Job(job_id, vault, archive, tier, done=self.jobs_finish_at_once)
        location = f"/012345678901/vaults/{vault}/jobs/{job_id}"
        return 202, {"Location": location, "x-amz-job-id": job_id}, b""

    def _job(self, vault: str, job_id: str) -> Job:
        self._vault(vault)
        job = self.jobs.get(job_id)
        if job is None or job.vault != vault:
            raise Refused(404, "ResourceNotFoundException", f"The job ID was not found: {job_id}")
        return job

    def describe_job(self, vault: str, job_id: str) -> tuple[int, dict[str, str], bytes]:
        return _json(200, self._job(vault, job_id).describe())

    def list_jobs(self, vault: str) -> tuple[int, dict[str, str], bytes]:
        self._vault(vault)
        with self.lock:
            listed = [j.describe() for j in self.jobs.values() if j.vault == vault]
        return _json(200, {"JobList": listed, "Marker": None})


def _json(status: int, value: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


ROUTES = [
    ("PUT", r"/-/vaults/([^/]+)", "create_vault"),
    ("POST", r"/-/vaults/([^/]+)/multipart-uploads", "initiate"),
    ("GET", r"/-/vaults/([^/]+)/multipart-uploads", "list_uploads"),
    ("PUT", r"/-/vaults/([^/]+)/multipart-uploads/([^/]+)", "upload_part"),
    ("POST", r"/-/vaults/([^/]+)/multipart-uploads/([^/]+)", "complete"),
    ("DELETE", r"/-/vaults/([^/]+)/multipart-uploads/([^/]+)", "abort"),
    ("POST", r"/-/vaults/([^/]+)/jobs", "initiate_job"),
    ("GET", r"/-/vaults/([^/]+)/jobs", "list_jobs"),
    ("GET", r"/-/vaults/([^/]+)/jobs/([^/]+)", "describe_job"),
    ("GET", r"/-/vaults/([^/]+)/jobs/([^/]+)/output", "job_output"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    vaults: VaultServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            for method, pattern, name in ROUTES:
                m = re.fullmatch(pattern, path)
                if method == self.command and m:
                    self.vaults._fault(name)
                    if name == "job_output":
                        self._output(*m.groups())
                        return
                    status, headers, out = self._call(name, m.groups(), body)
                    break
            else:
                raise Refused(400, "InvalidParameterValueException", f"not served here: {self.command} {path}")
        except Refused as exc:
            status, headers, out = _json(exc.status, {"code": exc.code, "message": exc.message, "type": "Client"})
        self._send(status, headers, out)

    def _call(self, name: str, groups: tuple[str, ...], body: bytes) -> tuple[int, dict[str, str], bytes]:
        v = self.vaults
        if name == "create_vault":
            v.create_vault(groups[0])
            return 201, {"Location": f"/012345678901/vaults/{groups[0]}"}, b""
        if name == "upload_part":
            return v.upload_part(groups[0], groups[1], self.headers, body)
        if name == "complete":
            return v.complete(groups[0], groups[1], self.headers)
        if name == "initiate":
            return v.initiate(groups[0], self.headers)
        if name == "initiate_job":
            return v.initiate_job(groups[0], body)
        result: tuple[int, dict[str, str], bytes] = getattr(v, name)(*groups)
        return result

    def _output(self, vault: str, job_id: str) -> None:
        job = self.vaults._job(vault, job_id)
        if not job.done:
            raise Refused(400, "InvalidParameterValueException", "The job is not currently available for download")
        archive = job.archive
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(archive.size))
        self.send_header("x-amz-sha256-tree-hash", archive.tree_hash)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with open(archive.path, "rb") as f:
            while chunk := f.read(MiB):
                self.wfile.write(chunk)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, value in headers.items():
            self.send_header(k, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", secrets.token_hex(8))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _dispatch


@contextlib.contextmanager
def vault_server(root: str | None = None) -> Iterator[tuple[VaultServer, str]]:
    server = VaultServer(root)
    url = server.start()
    try:
        yield server, url
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", default=None, help="where archives are kept (default: a temporary folder)")
    parser.add_argument("--vault", action="append", default=[], help="create this vault (repeatable)")
    args = parser.parse_args()
    server = VaultServer(args.root, args.port)
    for name in args.vault:
        server.create_vault(name)
    server.jobs_finish_at_once = True
    print(server.start(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
