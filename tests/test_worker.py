"""The Celery app: its configuration, a real worker process started with Celery's own CLI (killed with SIGKILL
halfway through a job, and stopped by a time limit), and RabbitMQ as the broker."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import bucketzip.worker
from bucketzip.client import Client
from bucketzip.config import Settings
from bucketzip.devserver import children, port_open, worker_process
from bucketzip.errors import JobTimedOut
from bucketzip.registry import FAILED, SUCCEEDED, TERMINAL, Registry
from bucketzip.tasks import sweep_uploads
from bucketzip.worker import SWEEP_TASK_NAME, TASK_NAME, make_app
from tests.conftest import MIDWAY, held_env, need, queue_env
from tests.faultproxy import holding
from tests.helpers import fetch_archive, keys, open_uploads
from tests.test_tasks import corpus_spec, wait_until

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def test_app_configuration() -> None:
    settings = Settings(job_time_limit=100, job_soft_time_limit=90, visibility_timeout=200, queue="q", max_retries=7)
    app = make_app(settings)
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 200
    assert conf.broker_transport_options["global_keyprefix"] == "bucketzip:"
    assert (conf.task_time_limit, conf.task_soft_time_limit) == (100, 90)
    assert conf.task_default_queue == "q" and conf.worker_send_task_events
    assert conf.beat_schedule["bucketzip-sweep"]["task"] == SWEEP_TASK_NAME
    import bucketzip.tasks

    task = app.tasks[TASK_NAME]
    assert task.max_retries == 7 and task.acks_late and task.autoretry_for == (bucketzip.errors.TransientError,)
    assert SWEEP_TASK_NAME in app.tasks
    app.close()


def test_visibility_timeout_must_outlast_the_longest_job() -> None:
    with pytest.raises(bucketzip.errors.ConfigError, match="VISIBILITY_TIMEOUT"):
        Settings.from_env({"BUCKETZIP_JOB_TIME_LIMIT": "3600", "BUCKETZIP_VISIBILITY_TIMEOUT": "600"})


def test_embedded_broker_settings() -> None:
    app = make_app(Settings(broker_url="sqla+sqlite:///x.db", result_backend="db+sqlite:///y.db"))
    assert not app.conf.worker_send_task_events and not app.conf.worker_enable_remote_control
    assert app.conf.broker_transport_options == {}
    app.close()


def test_celery_finds_the_app_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKETZIP_QUEUE", "from-env")
    monkeypatch.setattr(bucketzip.worker, "_app", None)
    from celery.app.utils import find_app

    app = find_app("bucketzip.worker")
    assert app is bucketzip.worker.app and app.conf.task_default_queue == "from-env"
    with pytest.raises(AttributeError):
        bucketzip.worker.nothing  # noqa: B018
    monkeypatch.setattr(bucketzip.worker, "_app", None)


def test_a_worker_process_killed_halfway_leaves_one_archive_and_no_upload(
    s3: Any, make_bucket: Any, big_corpus: Any, s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    bucket, files = big_corpus
    out = make_bucket()
    s3.put_bucket_versioning(Bucket=out, VersioningConfiguration={"Status": "Enabled"})
    env = queue_env(s3_env, redis_url, queue_prefix)
    settings = Settings.from_env(env)
    client = Client(settings)
    with worker_process(env, f"crash-{queue_prefix}"):
        handle = client.submit(corpus_spec(bucket, out, compression="store"))
        job = wait_until(lambda: (j := client.status(handle.id)).upload_id and j, "the first run's upload", 120)
        first_upload = job.upload_id
        child = int(job.worker.rsplit(":", 1)[1])
        os.kill(child, signal.SIGKILL)  # the pool process running the job, as the OOM killer would
        result = handle.wait(180)

    job = client.status(handle.id)
    assert job.state == SUCCEEDED and job.runs == 2  # redelivered, and run to the end once
    assert job.upload_id != first_upload
    versions = s3.list_object_versions(Bucket=out).get("Versions", [])
    assert len(versions) == 1  # published exactly once
    assert [a["job_id"] for a in client.archives()] == [handle.id]
    fetch_archive(s3, out, "out.zip", {k.removeprefix("in/"): v for k, v in files.items()})
    assert result["entries"] == len(files)

    # The killed run's upload is still open, billing; the sweep (as beat runs it) aborts it.
    assert [u["UploadId"] for u in open_uploads(s3, out)] == [first_upload]
    report = sweep_uploads(settings, Registry(settings), time.time() + settings.stale_upload_age + 1)
    assert report["aborted"] == [f"s3://{out}/out.zip"]
    assert open_uploads(s3, out) == []
    for v in versions:
        s3.delete_object(Bucket=out, Key="out.zip", VersionId=v["VersionId"])
    client.close()


def test_the_soft_time_limit_aborts_the_upload(
    s3: Any, make_bucket: Any, big_corpus: Any, moto_url: str, s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    bucket, _ = big_corpus
    out = make_bucket()
    with holding(moto_url, "get", bucket, MIDWAY) as (endpoint, _):
        env = held_env(
            s3_env, redis_url, queue_prefix, endpoint, BUCKETZIP_JOB_SOFT_TIME_LIMIT="1", BUCKETZIP_JOB_TIME_LIMIT="60"
        )
        client = Client(Settings.from_env(env))
        with worker_process(env, f"limit-{queue_prefix}"):
            handle = client.submit(corpus_spec(bucket, out, compression="store"))
            with pytest.raises(JobTimedOut, match=r"its soft time limit of 1s \(BUCKETZIP_JOB_SOFT_TIME_LIMIT"):
                handle.wait(120)
    job = client.status(handle.id)
    assert job.state == FAILED and job.error is not None and job.error["type"] == "JobTimedOut"  # our words too
    assert keys(s3, out) == [] and open_uploads(s3, out) == []
    client.close()


def test_the_hard_time_limit_alone_stops_a_job(
    s3: Any, make_bucket: Any, big_corpus: Any, moto_url: str, s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    """Only BUCKETZIP_JOB_TIME_LIMIT set: the soft limit follows it (prefork arms the hard timer only once the
    soft one fired, so a soft limit left at its old default of 21540 s let a 2 s limit do nothing)."""
    bucket, _ = big_corpus
    out = make_bucket()
    with holding(moto_url, "get", bucket, MIDWAY) as (endpoint, _):
        env = held_env(s3_env, redis_url, queue_prefix, endpoint, BUCKETZIP_JOB_TIME_LIMIT="2")
        client = Client(Settings.from_env(env))
        with worker_process(env, f"hard-{queue_prefix}"):
            handle = client.submit(corpus_spec(bucket, out, compression="store"))
            with pytest.raises(JobTimedOut, match="by default just under BUCKETZIP_JOB_TIME_LIMIT"):
                handle.wait(120)
    assert client.status(handle.id).state == FAILED
    assert keys(s3, out) == [] and open_uploads(s3, out) == []
    client.close()


def test_a_worker_shutting_down_hands_its_job_back_at_once(
    s3: Any,
    make_bucket: Any,
    big_corpus: Any,
    moto_url: str,
    s3_env: dict[str, str],
    redis_url: str,
    queue_prefix: str,
) -> None:
    """SIGTERM (a deploy, ``docker compose stop``) used to wait for the job, and after the grace period kill
    it, leaving its upload for the sweep and its message for the visibility timeout."""
    bucket, files = big_corpus
    out = make_bucket()
    client = Client(Settings.from_env(queue_env(s3_env, redis_url, queue_prefix)))
    with holding(moto_url, "get", bucket, MIDWAY) as (endpoint, held):
        env = held_env(s3_env, redis_url, queue_prefix, endpoint)
        with worker_process(env, f"stop-{queue_prefix}") as proc:
            handle = client.submit(corpus_spec(bucket, out, compression="store"))
            wait_until(lambda: held.held, "the job to reach the held object", 120)  # its upload begun, unfinished
            assert client.status(handle.id).upload_id
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            job = client.status(handle.id)
            assert job.state == "queued" and job.runs == 1, job
            assert keys(s3, out) == [] and open_uploads(s3, out) == []
        held.release()
        with worker_process(env, f"next-{queue_prefix}"):
            result = handle.wait(180)  # the message went back to the queue: the next worker makes the archive
    assert client.status(handle.id).runs == 2 and result["entries"] == len(files)
    fetch_archive(s3, out, "out.zip", {k.removeprefix("in/"): v for k, v in files.items()})
    client.close()


def test_each_pool_process_makes_its_stores_before_its_first_job(
    s3: Any, make_bucket: Any, put: Any, s3_env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    """A pool process used to import the SDKs and make its S3 clients in its first job (~0.6 s more than the
    next ones). The worker imports them before it forks, and each pool process makes its clients as it starts."""
    bucket, out = make_bucket(), make_bucket()
    files = {"a.txt": b"a" * 1000, "b.bin": os.urandom(1000)}
    put(bucket, {f"in/{name}": data for name, data in files.items()})
    env = queue_env(s3_env, redis_url, queue_prefix)
    client = Client(Settings.from_env(env))
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log, worker_process(env, f"warm-{queue_prefix}", log, concurrency=2) as proc:

        def ready() -> set[int]:
            found = {int(pid) for pid in re.findall(rb"pool process (\d+): stores ready", log_path.read_bytes())}
            return found if len(found) == 2 else set()

        ready_pids = wait_until(ready, "both pool processes to make their stores", 60)
        assert ready_pids == set(children(proc.pid))  # the pool's processes, before any job
        result = client.submit(corpus_spec(bucket, out)).wait(60)
    assert result["entries"] == 2
    fetch_archive(s3, out, "out.zip", files)
    client.close()


def test_task_events_carry_the_result_with_its_presigned_url_masked(
    s3: Any, make_bucket: Any, put: Any, s3_env: dict[str, str], redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    """Flower shows each job's result from the workers' task-succeeded events, and a result's presigned URL is a
    key to the archive. The event carries the URL with its signature and credential masked, as the worker's log
    does; the result backend keeps it whole, for the producer."""
    bucket, out = make_bucket(), make_bucket()
    put(bucket, {"in/a.txt": b"a" * 1000})
    env = queue_env(s3_env, redis_url, queue_prefix)
    settings = Settings.from_env(env)
    assert settings.task_events
    app = make_app(settings)
    client = Client(settings)
    seen: queue.Queue[dict[str, Any]] = queue.Queue()
    consuming = threading.Event()
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.put})
        receiver.on_consume_ready = lambda *args, **kwargs: consuming.set()
        listener = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        listener.start()
        try:
            assert consuming.wait(30), "the event receiver did not start"
            log_path = tmp_path / "worker.log"
            with open(log_path, "wb") as log, worker_process(env, f"events-{queue_prefix}", log, concurrency=1):
                # The worker's first heartbeat: the receiver is subscribed and hears this worker.
                wait_until(lambda: _next_event(seen, "worker-heartbeat"), "the worker's first heartbeat", 60)
                handle = client.submit(corpus_spec(bucket, out, presign_expires=600))
                result = handle.wait(60)
                succeeded = wait_until(lambda: _next_event(seen, "task-succeeded"), "the job's task-succeeded", 30)
        finally:
            receiver.should_stop = True
            listener.join(10)
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", result["url"])
    assert signature is not None, result["url"]  # the producer's URL works
    assert succeeded["uuid"] == handle.id
    assert "X-Amz-Signature=**" in succeeded["result"] and "X-Amz-Credential=**" in succeeded["result"]
    assert signature.group(1) not in succeeded["result"]
    assert f"s3://{out}/out.zip" in succeeded["result"]  # the rest of the result is there to read
    client.close()
    app.close()


def _next_event(seen: queue.Queue[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The first event of ``kind`` still queued in ``seen`` (others before it are dropped), or None."""
    while True:
        try:
            event = seen.get_nowait()
        except queue.Empty:
            return None
        if event.get("type") == kind:
            return event


def test_happy_path_with_rabbitmq_as_the_broker(
    s3: Any, make_bucket: Any, big_corpus: Any, queue_settings: Settings
) -> None:
    need(port_open("127.0.0.1", 5672), "RabbitMQ at 127.0.0.1:5672")
    from celery.contrib.testing.worker import start_worker

    import bucketzip.tasks  # noqa: F401

    settings = queue_settings.replace(broker_url=RABBITMQ_URL, queue=f"bucketzip-test-{uuid.uuid4().hex[:8]}")
    app = make_app(settings)
    assert app.connection_for_write().transport_cls == "amqp"
    bucket, files = big_corpus
    out = make_bucket()
    client = Client(app=app)
    try:
        # Closing an AMQP consumer waits out its drain timeout: give the shutdown more than the default 10s.
        embedded = start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=60
        )
        with embedded:
            batch = client.submit_many([corpus_spec(bucket, out, "big.zip"), corpus_spec(bucket, out, "again.zip")])
            readings: list[dict[str, Any]] = []

            def finished() -> bool:
                job = client.status(batch.accepted[0].id)
                if job.progress and job.progress not in readings:
                    readings.append(job.progress)
                return job.state in TERMINAL

            wait_until(finished, "the first job to end", 120)
            results = [h.wait(120) for h in batch.accepted]
        assert len(readings) >= 2
        assert [r["entries"] for r in results] == [len(files)] * 2
        expected = {k.removeprefix("in/"): v for k, v in files.items()}
        fetch_archive(s3, out, "big.zip", expected)
        fetch_archive(s3, out, "again.zip", expected)
        assert len(client.archives()) == 2
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(settings.queue)
        app.close()


def test_the_demo_runs_on_the_embedded_broker(s3_env: dict[str, str]) -> None:
    """README's first command, as on a fresh machine: SQLite broker and backend, fakeredis registry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETZIP_", "AWS_"))}
    env["BUCKETZIP_DEMO_EMBEDDED"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=root,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "broker and result backend: embedded" in r.stderr and "registry: fakeredis" in r.stderr
    assert "with zipfile: 48 entries, every byte and CRC matches" in r.stderr
    assert "files" in r.stderr  # at least one progress line
