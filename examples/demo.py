"""The quick-start demo: a producer enqueues a zip job, a worker process zips, progress and result are shown.

Run it with ``bash scripts/demo``. What it uses, in order of preference:

- S3: ``AWS_ENDPOINT_URL_S3`` (and the usual AWS variables) if set, else a local moto server it starts.
- Broker and result backend: ``BUCKETZIP_BROKER_URL`` / ``BUCKETZIP_RESULT_BACKEND`` if set; else Redis at
  127.0.0.1:6379 if it answers; else an *embedded* broker and backend in SQLite files under
  ``.bucketzip/demo/`` (kombu's ``sqla+sqlite://`` transport and Celery's ``db+sqlite://`` backend).
- The registry (job records, locks, cancel flags, the archive catalog) always needs a Redis protocol server. In
  the embedded case the demo runs a private ``redis-server`` when one is installed, and otherwise serves the
  registry itself with fakeredis's ``TcpFakeServer`` on a free local port: the worker process talks to it
  over TCP like to any Redis. It lives only as long as the demo.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3

from bucketzip.cli import ProgressPrinter
from bucketzip.client import Client
from bucketzip.config import Settings
from bucketzip.devserver import free_port, moto_server, port_open, redis_server, worker_process
from bucketzip.redact import redact

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".bucketzip" / "demo"
BUCKET = os.environ.get("BUCKETZIP_DEMO_BUCKET", "bucketzip-demo")
FILES = 48  # files in the sample corpus: a few text files that compress and binary ones that do not


def say(text: str) -> None:
    print(f"demo: {redact(text)}", file=sys.stderr, flush=True)  # no password of a broker URL, say


@contextlib.contextmanager
def s3_endpoint() -> Iterator[dict[str, str]]:
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        say(f"S3: {os.environ.get('AWS_ENDPOINT_URL_S3') or os.environ.get('AWS_ENDPOINT_URL')}")
        yield {}
        return
    with moto_server() as url:
        say(f"S3: a local moto server at {url}")
        yield {
            "AWS_ENDPOINT_URL_S3": url,
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_REGION": "us-east-1",
        }


@contextlib.contextmanager
def fake_redis() -> Iterator[str]:
    from fakeredis import TcpFakeServer

    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def queue_services(embedded: bool) -> Iterator[dict[str, str]]:
    env = {"BUCKETZIP_KEY_PREFIX": f"bucketzip-demo-{os.getpid()}", "BUCKETZIP_QUEUE": f"bucketzip-demo-{os.getpid()}"}
    if os.environ.get("BUCKETZIP_BROKER_URL"):
        say(f"broker: {os.environ['BUCKETZIP_BROKER_URL']} (from BUCKETZIP_BROKER_URL)")
        yield env
        return
    if not embedded and port_open("127.0.0.1", 6379):
        say("broker, result backend and registry: Redis at 127.0.0.1:6379")
        yield env
        return
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    env["BUCKETZIP_BROKER_URL"] = f"sqla+sqlite:///{STATE / 'broker.sqlite'}"
    env["BUCKETZIP_RESULT_BACKEND"] = f"db+sqlite:///{STATE / 'results.sqlite'}"
    say(f"broker and result backend: embedded, in SQLite under {STATE.relative_to(ROOT)}/")
    with contextlib.ExitStack() as stack:
        # Forced (BUCKETZIP_DEMO_EMBEDDED=1), the demo behaves as on a fresh machine: no redis-server either.
        url = None if embedded else stack.enter_context(redis_server(port=free_port()))
        if url is None:
            url = stack.enter_context(fake_redis())
            say(f"registry: fakeredis served by this process at {url}")
        else:
            say(f"registry: a private redis-server at {url}")
        env["BUCKETZIP_REDIS_URL"] = url
        yield env


def upload_corpus(settings: Settings) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region or "us-east-1")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=BUCKET)
    files: dict[str, bytes] = {}
    for i in range(FILES):
        if i % 3 == 0:
            data = os.urandom(512 * 1024)  # like a photo: stored as is
            name = f"photos/img_{i:03d}.jpg"
        else:
            data = (f"line {i}: the quick brown fox jumps over the lazy dog\n" * 6000).encode()
            name = f"logs/day_{i:03d}.log"
        files[name] = data
        s3.put_object(Bucket=BUCKET, Key=f"corpus/{name}", Body=data)
    say(f"uploaded {len(files)} objects, {sum(map(len, files.values())) / 2**20:.1f} MiB, to s3://{BUCKET}/corpus/")
    return files


@contextlib.contextmanager
def worker(env: dict[str, str]) -> Iterator[object]:
    log_path = Path(".bucketzip/demo-worker.log")
    log_path.parent.mkdir(exist_ok=True)
    say(f"worker: celery -A bucketzip.worker worker --pool=prefork -c 1  (its log: {log_path})")
    with log_path.open("wb") as log, worker_process(env, f"demo-{os.getpid()}", log) as proc:
        yield proc
    say("worker stopped")


def verify(settings: Settings, key: str, files: dict[str, bytes]) -> None:
    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region or "us-east-1")
    data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.testzip() is None, "a CRC does not match"
    assert sorted(zf.namelist()) == sorted(files), "the entries differ from the corpus"
    for name, content in files.items():
        assert zf.read(name) == content, f"{name} differs"
    say(f"verified s3://{BUCKET}/{key} with zipfile: {len(files)} entries, every byte and CRC matches")


def main() -> int:
    embedded = os.environ.get("BUCKETZIP_DEMO_EMBEDDED") == "1"  # act as on a fresh machine (the test does)
    with s3_endpoint() as s3_env, queue_services(embedded) as queue_env:
        env = {**os.environ, **s3_env, **queue_env, "BUCKETZIP_PROGRESS_INTERVAL": "0.1"}
        os.environ.update(env)
        settings = Settings.from_env()
        files = upload_corpus(settings)
        client = Client(settings)
        with worker(env):
            key = f"exports/demo-{int(time.time())}.zip"
            handle = client.submit({"sources": [f"s3://{BUCKET}/corpus/"], "destination": f"s3://{BUCKET}/{key}"})
            say(f"enqueued job {handle.id}; waiting for the worker")
            printer = ProgressPrinter()
            last = None
            while (job := client.status(handle.id)).state not in ("succeeded", "failed", "cancelled"):
                if job.progress and job.progress != last:
                    printer(job.progress)
                    last = job.progress
                time.sleep(0.05)
            printer.close()
            result = client.wait(handle.id, 60)
        print(json.dumps(result, indent=2))
        print(
            f"archive: {result['destination']}  {result['size'] / 2**20:.1f} MiB  {result['entries']} entries  "
            f"{result['parts']} part(s)  ETag {result['etag']}  in {result['duration']:.2f}s"
        )
        verify(settings, key, files)
        [entry] = [a for a in client.archives() if a["job_id"] == handle.id]
        say(f"catalog: {entry['destination']} recorded")
        client.registry.redis.delete(*client.registry.redis.keys(settings.key_prefix + ":*"))
        client.close()
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
