"""The ``bucketzip.zip`` and ``bucketzip.sweep`` tasks, run by a real Celery worker (threads pool, in this
process) against real Redis and the moto server. Every archive is read back with zipfile and unzip -t."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from bucketzip.errors import JobCancelled, SourceMissing, TransientError
from bucketzip.lifecycle import Lease, Lifecycle
from bucketzip.registry import CANCELLED, FAILED, RETRIED, RUNNING, SUCCEEDED, Registry
from bucketzip.tasks import sweep_uploads
from tests.helpers import fetch_archive, keys, open_uploads, wait_until


def unrenewed_lease(life: Lifecycle, job_id: str, destination: str) -> Lease:
    """The lease of a run the test plays itself, with no heartbeat to renew it: it lasts 120 s, past every wait
    in a test however slow the machine (the suite's 4 s TTL lapsed mid-test on a loaded CI run)."""
    return Lease(life.redis, life.lease(job_id, destination).keys, ttl=120)


RESULT_FIELDS = {
    "destination",
    "size",
    "etag",
    "version_id",
    "entries",
    "input_bytes",
    "duration",
    "parts",
    "part_size",
    "storage_class",
    "url",
    "job_id",
    "skipped",
    "renamed",
    "description",
    "archive_id",
    "tree_hash",
    "sources_digest",
}
PROGRESS_FIELDS = {"files_done", "files_total", "bytes_done", "bytes_total", "current", "rate", "eta"}

READER = """
import json, sys
from bucketzip.config import Settings
from bucketzip.worker import make_app
app = make_app(Settings.from_env())
result = app.AsyncResult(sys.argv[1])
print("ready", flush=True)
last = None
while True:
    meta = app.backend.get_task_meta(sys.argv[1])
    reading = {"state": meta["status"], "info": meta["result"] if meta["status"] == "PROGRESS" else None}
    if reading != last:
        print(json.dumps(reading), flush=True)
        last = reading
    if meta["status"] in ("SUCCESS", "FAILURE"):
        break
"""


def scheduled(client: Any) -> set[str]:
    """Ids of the messages the workers hold for later (a countdown)."""
    found = client.app.control.inspect(timeout=0.5).scheduled() or {}
    return {t["request"]["id"] for tasks in found.values() for t in tasks}


def active(client: Any) -> set[str]:
    found = client.app.control.inspect(timeout=0.5).active() or {}
    return {t["id"] for tasks in found.values() for t in tasks}


def corpus_spec(bucket: str, out_bucket: str, key: str = "out.zip", **extra: Any) -> dict[str, Any]:
    return {"sources": [f"s3://{bucket}/in/"], "destination": f"s3://{out_bucket}/{key}", **extra}


def test_progress_is_seen_from_another_process_then_success(
    worker: Any, client: Any, s3: Any, make_bucket: Any, big_corpus: Any, s3_env: dict[str, str], queue_settings: Any
) -> None:
    bucket, files = big_corpus
    out = make_bucket()
    job_id = f"progress-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        **s3_env,
        "BUCKETZIP_REDIS_URL": queue_settings.redis_url,
        "BUCKETZIP_KEY_PREFIX": queue_settings.key_prefix,
    }
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, job_id], stdout=subprocess.PIPE, text=True, env=env, cwd=os.getcwd()
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"
    started = time.monotonic()
    handle = client.submit(corpus_spec(bucket, out, job_id=job_id, compression="store"))
    result = handle.wait(120)
    readings = [json.loads(line) for line in reader.stdout]
    elapsed = time.monotonic() - started
    assert reader.wait(30) == 0

    progress = [r["info"] for r in readings if r["state"] == "PROGRESS"]
    assert len(progress) >= 2, readings
    for p in progress:
        assert set(p) >= PROGRESS_FIELDS
        assert p["files_total"] == len(files)
        assert p["bytes_total"] == sum(map(len, files.values()))
    assert [p["bytes_done"] for p in progress] == sorted(p["bytes_done"] for p in progress)
    assert readings[-1]["state"] == "SUCCESS"
    print(f"\nprogress: {len(progress)} distinct readings in {elapsed:.2f}s ({len(progress) / elapsed:.1f}/s)")

    assert set(result) == RESULT_FIELDS
    assert result["entries"] == len(files)
    assert result["input_bytes"] == sum(map(len, files.values()))
    assert result["job_id"] == job_id
    assert result["parts"] >= 2  # 30 MiB in 5 MiB parts: a real multipart upload
    zf = fetch_archive(s3, out, "out.zip", {k.removeprefix("in/"): v for k, v in files.items()})
    head = s3.head_object(Bucket=out, Key="out.zip")
    assert head["ContentLength"] == result["size"] and head["ETag"] == result["etag"]
    assert len(zf.namelist()) == result["entries"]

    job = client.status(job_id)
    assert job.state == SUCCEEDED and job.runs == 1 and job.result == result
    [entry] = client.archives()
    assert entry["destination"] == f"s3://{out}/out.zip"
    assert (entry["size"], entry["etag"], entry["entries"]) == (result["size"], result["etag"], len(files))
    assert open_uploads(s3, out) == []


def test_missing_object_fails_clearly_then_retry_succeeds(worker: Any, client: Any, s3: Any, make_bucket: Any) -> None:
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    spec = {"sources": [f"s3://{bucket}/a.txt", f"s3://{bucket}/b.txt"], "destination": f"s3://{bucket}/ab.zip"}
    handle = client.submit(spec)
    with pytest.raises(SourceMissing) as caught:
        handle.wait(60)
    # Rebuilt from the JSON result backend as the same type, with its arguments and its message.
    assert caught.value.urls == [f"s3://{bucket}/b.txt"]
    assert str(caught.value) == f"1 source(s) not found: s3://{bucket}/b.txt"

    job = client.status(handle.id)
    assert job.state == FAILED and job.runs == 1  # a permanent error is not retried
    assert job.error == {"type": "SourceMissing", "message": str(caught.value), "args": [[f"s3://{bucket}/b.txt"]]}
    assert [j.id for j in client.jobs(state=FAILED)] == [handle.id]
    assert keys(s3, bucket) == ["a.txt"] and open_uploads(s3, bucket) == []

    s3.put_object(Bucket=bucket, Key="b.txt", Body=b"beta")
    again = client.retry(handle.id)
    result = again.wait(60)
    fetch_archive(s3, bucket, "ab.zip", {"a.txt": b"alpha", "b.txt": b"beta"})

    original, retried = client.status(handle.id), client.status(again.id)
    assert original.state == RETRIED and original.retried_by == again.id
    assert retried.state == SUCCEEDED and retried.retry_of == handle.id and retried.attempt == 2
    assert client.jobs(state=FAILED) == []
    assert [a["job_id"] for a in client.archives()] == [again.id]
    assert client.archives()[0]["size"] == result["size"]


def test_transient_error_is_retried_with_backoff(
    worker: Any, client: Any, s3: Any, make_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bucketzip.engine

    real = bucketzip.engine.run_job
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("s3://somewhere/", "SlowDown: please reduce your request rate")
        return real(*args, **kwargs)

    monkeypatch.setattr(bucketzip.engine, "run_job", flaky)
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    handle = client.submit({"sources": [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/a.zip"})
    handle.wait(60)
    assert len(calls) == 2
    job = client.status(handle.id)
    assert job.state == SUCCEEDED and job.runs == 2 and job.error is None
    fetch_archive(s3, bucket, "a.zip", {"a.txt": b"alpha"})


def test_transient_error_fails_after_max_retries(
    worker: Any, client: Any, s3: Any, make_bucket: Any, monkeypatch: pytest.MonkeyPatch, queue_app: Any
) -> None:
    import bucketzip.engine

    def always(*args: Any, **kwargs: Any) -> Any:
        raise TransientError("s3://somewhere/", "503 ServiceUnavailable")

    monkeypatch.setattr(bucketzip.engine, "run_job", always)
    monkeypatch.setattr(queue_app.tasks["bucketzip.zip"], "max_retries", 1)
    monkeypatch.setattr(queue_app.tasks["bucketzip.zip"], "retry_backoff", False)
    monkeypatch.setattr(queue_app.tasks["bucketzip.zip"], "default_retry_delay", 0)
    bucket = make_bucket()
    handle = client.submit({"sources": [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/a.zip"})
    with pytest.raises(TransientError, match="503 ServiceUnavailable"):
        handle.wait(60)
    job = client.status(handle.id)
    assert job.state == FAILED and job.runs == 2 and job.error["type"] == "TransientError"


def test_a_held_job_waits_for_its_lock_and_runs_once(
    worker: Any, client: Any, s3: Any, make_bucket: Any, queue_settings: Any
) -> None:
    """A second delivery that finds the lock taken does not run; it looks again later."""
    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    job_id = f"held-{uuid.uuid4().hex}"
    other = unrenewed_lease(Lifecycle(Registry(queue_settings)), job_id, f"s3://{bucket}/a.zip")  # another run has it
    assert other.acquire()
    handle = client.submit(
        {"sources": [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/a.zip", "job_id": job_id}
    )
    wait_until(lambda: job_id in scheduled(client), "the delivery to step aside and send itself again later")
    assert client.status(job_id).runs == 0 and keys(s3, bucket) == ["a.txt"]
    other.release()
    handle.wait(60)
    assert client.status(job_id).runs == 1
    fetch_archive(s3, bucket, "a.zip", {"a.txt": b"alpha"})


def test_a_job_delivered_twice_concurrently_runs_once(
    worker: Any, client: Any, s3: Any, make_bucket: Any, big_corpus: Any
) -> None:
    bucket, files = big_corpus
    out = make_bucket()
    s3.put_bucket_versioning(Bucket=out, VersioningConfiguration={"Status": "Enabled"})
    handle = client.submit(corpus_spec(bucket, out, compression="store"))
    wait_until(lambda: client.status(handle.id).progress, "the first delivery to report progress")
    # The same message again, as after a visibility timeout: the second worker thread takes it at once.
    client._publish([(handle.id, corpus_spec(bucket, out, compression="store"), f"s3://{out}/out.zip")])
    result = handle.wait(120)
    # The second delivery stepped aside; it looks again after lock_ttl/2 and finds the job done.
    wait_until(lambda: handle.id not in scheduled(client) | active(client), "the second delivery to end")
    job = client.status(handle.id)
    assert job.state == SUCCEEDED and job.runs == 1
    versions = s3.list_object_versions(Bucket=out).get("Versions", [])
    assert [v["Key"] for v in versions] == ["out.zip"]  # published once
    assert [a["job_id"] for a in client.archives()] == [handle.id]
    assert client.app.AsyncResult(handle.id).get(timeout=10) == result
    fetch_archive(s3, out, "out.zip", {k.removeprefix("in/"): v for k, v in files.items()})
    for v in s3.list_object_versions(Bucket=out).get("Versions", []):
        s3.delete_object(Bucket=out, Key=v["Key"], VersionId=v["VersionId"])


def test_cancel_a_running_job_aborts_its_upload(
    worker: Any, client: Any, s3: Any, make_bucket: Any, big_corpus: Any
) -> None:
    bucket, _ = big_corpus
    out = make_bucket()
    handle = client.submit(corpus_spec(bucket, out, compression="store"))
    wait_until(lambda: client.status(handle.id).upload_id, "the job to start its multipart upload")
    assert client.cancel(handle.id) == "cancelling"
    with pytest.raises(JobCancelled):
        handle.wait(60)
    # A running job is stopped through the flag, never revoked: had its run handed the message back (a lost
    # lease), a revoked redelivery would be dropped and the job left "running" for ever.
    revoked = client.app.control.inspect(timeout=1).revoked() or {}
    assert not any(handle.id in ids for ids in revoked.values())
    job = client.status(handle.id)
    assert job.state == CANCELLED and job.error["type"] == "JobCancelled"
    assert keys(s3, out) == [] and open_uploads(s3, out) == []
    assert client.cancel(handle.id) == CANCELLED  # nothing left to do


def test_cancel_a_queued_job(client: Any, queue_app: Any, s3: Any, make_bucket: Any) -> None:
    from celery.contrib.testing.worker import start_worker

    bucket = make_bucket()
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    handle = client.submit({"sources": [f"s3://{bucket}/a.txt"], "destination": f"s3://{bucket}/a.zip"})
    assert client.cancel(handle.id) == CANCELLED  # no worker yet: it is still queued
    with pytest.raises(JobCancelled):
        handle.wait(5)
    with start_worker(queue_app, pool="threads", perform_ping_check=False, loglevel="WARNING"):
        # The worker that receives it never runs it (revoked, or the flag it checks first).
        wait_until(lambda: client.app.backend.get_task_meta(handle.id)["status"] != "PENDING", "the worker")
    assert client.status(handle.id).runs == 0
    assert keys(s3, bucket) == ["a.txt"]


def test_sweep_aborts_stale_uploads_of_no_running_job(
    s3: Any, make_bucket: Any, queue_settings: Any, worker: Any, client: Any
) -> None:
    registry = Registry(queue_settings)
    bucket = make_bucket()
    mine = s3.create_multipart_upload(Bucket=bucket, Key="dead.zip")["UploadId"]
    live = s3.create_multipart_upload(Bucket=bucket, Key="live.zip")["UploadId"]
    theirs = s3.create_multipart_upload(Bucket=bucket, Key="other-tool.bin")["UploadId"]
    registry.upload_started("dead-job", f"s3://{bucket}/dead.zip", mine)
    registry.upload_started("live-job", f"s3://{bucket}/live.zip", live)
    registry.redis.sadd(registry.key("buckets"), bucket)
    lock = unrenewed_lease(Lifecycle(registry), "live-job", f"s3://{bucket}/live.zip")  # held through both sweeps
    assert lock.acquire()
    later = time.time() + queue_settings.stale_upload_age + 1  # the uploads have gone stale by then
    try:
        # Through the worker, as beat would send it.
        report = client.app.send_task("bucketzip.sweep", kwargs={"now": later}).get(timeout=60)
        assert report["aborted"] == [f"s3://{bucket}/dead.zip"] and report["kept_running"] == 1
        assert {u["UploadId"] for u in open_uploads(s3, bucket)} == {live, theirs}
        # Buckets named explicitly are bucketzip's alone: every stale upload there goes, except a live one.
        report = sweep_uploads(queue_settings.replace(sweep_buckets=frozenset({bucket})), registry, later)
        assert report["aborted"] == [f"s3://{bucket}/other-tool.bin"]
        assert {u["UploadId"] for u in open_uploads(s3, bucket)} == {live}
    finally:
        lock.release()
    assert sweep_uploads(queue_settings, registry, later)["aborted"] == [f"s3://{bucket}/live.zip"]
    assert open_uploads(s3, bucket) == []


def test_a_deleted_bucket_does_not_stop_the_sweep(client: Any, s3: Any, make_bucket: Any, queue_settings: Any) -> None:
    registry = Registry(queue_settings)
    bucket = make_bucket()
    stale = s3.create_multipart_upload(Bucket=bucket, Key="dead.zip")["UploadId"]
    registry.upload_started("dead-job", f"s3://{bucket}/dead.zip", stale)
    registry.redis.sadd(registry.key("buckets"), bucket, "a-bucket-deleted-since")  # sorted first
    report = sweep_uploads(queue_settings, registry, time.time() + queue_settings.stale_upload_age + 1)
    assert report["aborted"] == [f"s3://{bucket}/dead.zip"] and open_uploads(s3, bucket) == []
    assert list(report["failed"]) == ["a-bucket-deleted-since"]


def test_running_state_is_recorded_with_the_worker(worker: Any, client: Any, make_bucket: Any, big_corpus: Any) -> None:
    bucket, _ = big_corpus
    out = make_bucket()
    handle = client.submit(corpus_spec(bucket, out))
    job = wait_until(lambda: (j := client.status(handle.id)).state == RUNNING and j, "the job to run")
    assert job.worker and job.started and job.runs == 1
    assert [j.id for j in client.jobs(state=RUNNING)] == [handle.id]
    handle.wait(120)
    assert client.jobs(state=RUNNING) == []


def test_a_redelivered_job_records_the_archive_its_dead_run_published(
    worker: Any, client: Any, s3: Any, make_bucket: Any, queue_settings: Any
) -> None:
    """A run published its archive and its worker died before recording it: the redelivery finds the job's
    archive at the destination and records it, instead of making it a second time."""
    from bucketzip.engine import Publication, run_job
    from bucketzip.spec import JobSpec

    bucket, out = make_bucket(), make_bucket()
    s3.put_bucket_versioning(Bucket=out, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"alpha")
    job_id = f"dead-{uuid.uuid4().hex}"
    spec = JobSpec.from_dict({**corpus_spec(bucket, out), "job_id": job_id}, queue_settings).to_dict()
    client.registry.queued([(job_id, spec, f"s3://{out}/out.zip")])
    # The first run, as a worker makes it: lease, start, fence, publish - and then it dies.
    life = Lifecycle(client.registry)
    lease = unrenewed_lease(life, job_id, f"s3://{out}/out.zip")
    assert lease.acquire() and life.start(job_id, spec, f"s3://{out}/out.zip", "dead:1", lease).run
    fence = functools.partial(life.fence, job_id, lease)
    run_job(spec, queue_settings, publication=Publication(job_id, lease.token, fence))
    lease.release()  # its lease runs out
    client._publish([(job_id, spec, f"s3://{out}/out.zip")])  # and its message is delivered again
    result = client.wait(job_id, 60)
    job = client.status(job_id)
    assert job.state == SUCCEEDED and job.runs == 2 and job.lost == 1
    assert result["entries"] == 1 and result["input_bytes"] == 5  # from what the dead run noted at its fence
    versions = s3.list_object_versions(Bucket=out).get("Versions", [])
    assert len(versions) == 1 and result["version_id"] == versions[0]["VersionId"]  # published once
    assert [a["job_id"] for a in client.archives()] == [job_id]
    fetch_archive(s3, out, "out.zip", {"a.txt": b"alpha"})
    for v in versions:
        s3.delete_object(Bucket=out, Key=v["Key"], VersionId=v["VersionId"])


def test_a_pool_process_releases_memory_after_each_job(monkeypatch: pytest.MonkeyPatch) -> None:
    import bucketzip.allocator
    from bucketzip.tasks import _on_task_done, zip_job

    calls: list[int] = []

    def release_memory() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(bucketzip.allocator, "release_memory", release_memory)
    _on_task_done(sender=zip_job)
    assert calls == [1]
    _on_task_done(sender=None)  # another task, or none: nothing to do
    assert calls == [1]


def test_a_new_pool_process_tunes_its_allocator_before_it_makes_its_stores(
    monkeypatch: pytest.MonkeyPatch, queue_settings: Any
) -> None:
    # The thread that makes the clients allocates first: untuned, it got an arena of its own, and the pool
    # process's RSS between jobs rose from ~82 to 88-119 MiB, its peak past 150 MiB.
    import signal
    import threading

    import bucketzip.allocator
    import bucketzip.tasks as tasks

    order: list[str] = []
    warmed = threading.Event()
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # not this test process's SIGTERM handler
    monkeypatch.setattr(tasks, "_current_settings", lambda: queue_settings)
    monkeypatch.setattr(bucketzip.allocator, "tune_allocator", lambda arena_max: order.append(f"tune {arena_max}"))

    def warm(settings: Any) -> None:
        order.append("warm")
        warmed.set()

    monkeypatch.setattr(tasks, "_warm", warm)
    tasks._on_process_init()
    assert warmed.wait(10)
    assert order == [f"tune {queue_settings.malloc_arena_max}", "warm"]
