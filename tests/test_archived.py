"""Archived sources (archived.py): on_archived fail / skip / restore against moto's S3, whose archive classes
refuse a GET until RestoreObject (which moto completes at once). A restore "still running" is made by a proxy
in front of moto (tests/s3proxy.py) that answers HEAD with ``ongoing-request="true"`` while a key is held."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bucketzip.config import Settings
from bucketzip.engine import run_job
from bucketzip.errors import RestorePending, SourceArchived
from bucketzip.registry import SUCCEEDED, WAITING, Registry
from tests.conftest import queue_env
from tests.helpers import fetch_archive, keys, open_uploads
from tests.s3proxy import RestoreProxy
from tests.test_tasks import wait_until

FILES = {"hot.txt": b"hot " * 100, "cold.txt": b"cold " * 100, "deep.txt": b"deep " * 100}
CLASSES = {"hot.txt": "STANDARD", "cold.txt": "GLACIER", "deep.txt": "DEEP_ARCHIVE"}


@pytest.fixture
def archived(s3: Any, make_bucket: Any) -> tuple[str, str]:
    """A bucket with one STANDARD, one GLACIER and one DEEP_ARCHIVE object under in/, and an output bucket."""
    bucket = make_bucket()
    for name, data in FILES.items():
        s3.put_object(Bucket=bucket, Key=f"in/{name}", Body=data, StorageClass=CLASSES[name])
    return bucket, make_bucket()


def spec(bucket: str, out: str, **extra: Any) -> dict[str, Any]:
    return {"sources": [f"s3://{bucket}/in/"], "destination": f"s3://{out}/out.zip", **extra}


def restore(s3: Any, bucket: str, key: str) -> None:
    s3.restore_object(Bucket=bucket, Key=key, RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}})


def test_storage_class_is_listed_and_headed(s3: Any, archived: tuple[str, str], settings: Settings) -> None:
    from bucketzip.engine import run_sync
    from bucketzip.spec import Location
    from bucketzip.stores import store_for

    bucket, _ = archived
    store: Any = store_for("s3", settings)

    async def listing() -> list[Any]:
        return [o async for o in store.list(Location("s3", bucket, "in/"))]

    listed = {o.location.key: o.storage_class for o in run_sync(listing())}
    assert listed == {f"in/{n}": c for n, c in CLASSES.items()}
    head = run_sync(store.head(Location("s3", bucket, "in/cold.txt")))
    assert head.storage_class == "GLACIER" and head.archived
    assert run_sync(store.restore_state(head)) == "archived"


def test_fail_names_every_archived_object_and_writes_nothing(
    s3: Any, archived: tuple[str, str], settings: Settings
) -> None:
    bucket, out = archived
    with pytest.raises(SourceArchived) as caught:
        run_job(spec(bucket, out), settings)
    assert sorted(caught.value.urls) == [f"s3://{bucket}/in/cold.txt", f"s3://{bucket}/in/deep.txt"]
    assert "restore them first" in str(caught.value)
    assert keys(s3, out) == [] and open_uploads(s3, out) == []


def test_fail_accepts_restored_objects(s3: Any, archived: tuple[str, str], settings: Settings) -> None:
    bucket, out = archived
    restore(s3, bucket, "in/cold.txt")
    restore(s3, bucket, "in/deep.txt")
    result = run_job(spec(bucket, out), settings).to_dict()
    fetch_archive(s3, out, "out.zip", FILES)
    assert result["entries"] == 3 and result["skipped"] == []


def test_a_plain_object_url_is_checked_too(s3: Any, archived: tuple[str, str], settings: Settings) -> None:
    bucket, out = archived
    job = {"sources": [f"s3://{bucket}/in/deep.txt"], "destination": f"s3://{out}/o.zip"}
    with pytest.raises(SourceArchived, match=r"deep\.txt"):
        run_job(job, settings)


def test_skip_leaves_them_out(s3: Any, archived: tuple[str, str], settings: Settings) -> None:
    bucket, out = archived
    restore(s3, bucket, "in/cold.txt")
    result = run_job(spec(bucket, out, on_archived="skip"), settings).to_dict()
    fetch_archive(s3, out, "out.zip", {"hot.txt": FILES["hot.txt"], "cold.txt": FILES["cold.txt"]})
    assert result["skipped"] == [
        {"url": f"s3://{bucket}/in/deep.txt", "reason": "archived (DEEP_ARCHIVE) and not restored"}
    ]


def test_restore_raises_pending_then_succeeds_once_restored(
    s3: Any, archived: tuple[str, str], settings: Settings
) -> None:
    bucket, out = archived
    job = spec(bucket, out, on_archived="restore", restore_tier="Bulk", restore_days=2)
    with pytest.raises(RestorePending) as caught:
        run_job(job, settings)  # no on_waiting (a worker's run): it raises instead of waiting
    assert (caught.value.restored, caught.value.total) == (0, 2)
    assert keys(s3, out) == []
    # The restores were requested (moto finishes them at once): the next run makes the archive.
    head = s3.head_object(Bucket=bucket, Key="in/deep.txt")
    assert 'ongoing-request="false"' in head["Restore"]
    run_job(job, settings)
    fetch_archive(s3, out, "out.zip", FILES)


@pytest.fixture
def proxy(moto_url: str) -> Iterator[RestoreProxy]:
    p = RestoreProxy(moto_url)
    p.start()
    yield p
    p.stop()


def test_restores_in_progress_are_not_requested_again_and_waited_for(
    s3: Any, archived: tuple[str, str], settings: Settings, proxy: RestoreProxy
) -> None:
    bucket, out = archived
    restore(s3, bucket, "in/cold.txt")  # done at once by moto; the proxy says it is still running
    proxy.ongoing.add(f"{bucket}/in/cold.txt")
    waits: list[tuple[int, int]] = []

    def on_waiting(pending: RestorePending) -> None:
        waits.append((pending.restored, pending.total))
        proxy.ongoing.clear()  # the restore finishes while the job sleeps

    local = settings.replace(endpoint_url=proxy.url, restore_poll=0.05)
    run_job(spec(bucket, out, on_archived="restore"), local, on_waiting=on_waiting)
    fetch_archive(s3, out, "out.zip", FILES)
    assert waits == [(0, 2)]  # checked at once: neither readable yet (cold running, deep not requested)
    assert proxy.calls[("POST", "restore")] == 1  # deep.txt only: cold.txt's running restore was left alone


def test_a_worker_waits_without_holding_a_process(
    s3: Any, archived: tuple[str, str], proxy: RestoreProxy, s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    """The job goes to state waiting (with how many are restored), its message is re-queued with a countdown,
    and once every restore is done a later delivery makes the archive."""
    from celery.contrib.testing.worker import start_worker

    import bucketzip.tasks  # noqa: F401
    from bucketzip.cli import main
    from bucketzip.client import Client
    from bucketzip.worker import make_app

    bucket, out = archived
    restore(s3, bucket, "in/cold.txt")
    proxy.ongoing.add(f"{bucket}/in/cold.txt")
    env = queue_env({**s3_env, "AWS_ENDPOINT_URL_S3": proxy.url}, redis_url, queue_prefix, BUCKETZIP_RESTORE_POLL="0.3")
    settings = Settings.from_env(env)
    app = make_app(settings)
    client = Client(app=app)
    job_id = f"wait-{uuid.uuid4().hex[:8]}"
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"):
        client.submit(spec(bucket, out, on_archived="restore", job_id=job_id))
        job = wait_until(
            lambda: (j := client.status(job_id)).state == WAITING and j.restore["restored"] == 1 and j, "waiting"
        )
        assert job.restore["total"] == 2  # deep.txt restored (moto), cold.txt still "running"
        assert [j.id for j in client.jobs(WAITING)] == [job_id]
        assert Registry(settings).counts()[WAITING] == 1

        from click.testing import CliRunner

        listed = CliRunner().invoke(main, ["jobs", "--state", "waiting"], env=env)
        assert listed.exit_code == 0 and job_id in listed.output and "waiting" in listed.output
        shown = CliRunner().invoke(main, ["status", job_id], env=env)
        assert "1/2 restored" in shown.output
        # The worker (one thread) is free meanwhile: another job runs to the end while this one waits.
        other = client.submit({"sources": [f"s3://{bucket}/in/hot.txt"], "destination": f"s3://{out}/hot.zip"})
        assert other.wait(timeout=60)["entries"] == 1
        assert client.status(job_id).state == WAITING

        threading.Timer(0.5, proxy.ongoing.clear).start()
        result = client.wait(job_id, timeout=60)
    assert client.status(job_id).state == SUCCEEDED and client.status(job_id).runs >= 2
    assert proxy.calls[("POST", "restore")] == 1
    fetch_archive(s3, out, "out.zip", FILES)
    assert result["entries"] == 3
    app.close()
