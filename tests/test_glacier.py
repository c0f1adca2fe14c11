"""Glacier vault destinations (stores/glacier.py, stores/treehash.py) against the local vault server, which
checks part sizes, ranges and every tree hash with botocore's own ``calculate_tree_hash``. Sources come from
the moto S3 server; archives are read back with zipfile and unzip -t."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.utils import calculate_tree_hash

from bucketzip.config import Settings
from bucketzip.engine import run_job
from bucketzip.errors import LimitExceeded, TransientError, UploadFailed
from bucketzip.registry import Registry
from bucketzip.stores import translate
from bucketzip.stores.glacier import vault_part_size
from bucketzip.stores.treehash import TreeHasher, combine, tree_hash
from bucketzip.tasks import sweep_uploads
from tests.helpers import check_zip_bytes

MiB = 2**20


@pytest.fixture
def vault_settings(settings: Settings, vaults: Any) -> Settings:
    return settings.replace(glacier_endpoint_url=vaults.url, part_size=5 * MiB)


def corpus(s3: Any, bucket: str, n: int = 6, size: int = 3 * MiB) -> dict[str, bytes]:
    files = {f"in/{i}.bin": os.urandom(size) for i in range(n)}
    for key, data in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    return {k.removeprefix("in/"): v for k, v in files.items()}


# --- the tree hash, against botocore's as the reference ---


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB, 4 * MiB, 5 * MiB + 17, 9 * MiB])
def test_tree_hash_matches_botocore(size: int) -> None:
    data = os.urandom(size)
    reference = calculate_tree_hash(io.BytesIO(data))
    assert tree_hash(data).hex() == reference
    streamed = TreeHasher()
    for i in range(0, size, 700_001):  # pieces that straddle the 1 MiB leaves
        streamed.update(data[i : i + 700_001])
    assert streamed.hexdigest() == reference and streamed.size == size


@pytest.mark.parametrize("parts_of", [1, 2, 4])
def test_archive_hash_from_part_hashes(parts_of: int) -> None:
    data = os.urandom(11 * MiB + 5)
    step = parts_of * MiB
    hashes = [tree_hash(data[i : i + step]) for i in range(0, len(data), step)]
    assert combine(hashes).hex() == calculate_tree_hash(io.BytesIO(data))


def test_vault_part_size_is_a_power_of_two_mib() -> None:
    assert vault_part_size(8 * MiB) == 8 * MiB
    assert vault_part_size(5 * MiB) == 8 * MiB
    assert vault_part_size(9 * MiB) == 16 * MiB
    assert vault_part_size(8 * MiB, size_bound=100_000 * MiB) == 16 * MiB  # 10,000 parts of 10 MiB needed
    assert vault_part_size(4 * 2**30) == 4 * 2**30
    with pytest.raises(LimitExceeded, match="40 TiB"):
        vault_part_size(8 * MiB, size_bound=41 * 2**40)


# --- errors from a vault ---


def vault_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadMultipartPart"
    )


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("InvalidParameterValueException", 400, UploadFailed),  # a 4xx: permanent, the job fails at once
        ("ResourceNotFoundException", 404, UploadFailed),
        ("MissingParameterValueException", 400, UploadFailed),
        ("RequestTimeoutException", 408, TransientError),
        ("ServiceUnavailableException", 500, TransientError),
        ("InternalFailure", 500, TransientError),  # any 5xx, whatever its code
    ],
)
def test_vault_errors(code: str, status: int, kind: type[Exception]) -> None:
    assert type(translate(vault_error(code, status), "glacier://v", "write")) is kind


# --- jobs into a vault ---


def test_job_into_a_vault(s3: Any, make_bucket: Any, vaults: Any, glacier: Any, vault_settings: Settings) -> None:
    bucket = make_bucket()
    files = corpus(s3, bucket)
    spec = {"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}", "job_id": "cold-1"}
    result = run_job(spec, vault_settings).to_dict()

    data = vaults.archive_bytes(result["archive_id"])
    check_zip_bytes(data, files)
    assert result["destination"] == f"glacier://{vaults.vault}" and result["size"] == len(data)
    assert result["tree_hash"] == calculate_tree_hash(io.BytesIO(data))
    # BUCKETZIP_PART_SIZE 5 MiB is sent as 8 MiB parts (the server refuses anything but a power of two)
    assert result["part_size"] == 8 * MiB and result["parts"] == -(-len(data) // (8 * MiB)) > 1
    assert vaults.calls["upload_part"] == result["parts"] and vaults.calls["complete"] == 1
    assert result["description"] == "bucketzip job cold-1"  # the default names the job
    assert result["etag"] is None and result["url"] is None
    assert glacier.list_multipart_uploads(vaultName=vaults.vault)["UploadsList"] == []


def test_description_is_sent(s3: Any, make_bucket: Any, vaults: Any, vault_settings: Settings) -> None:
    bucket = make_bucket()
    corpus(s3, bucket, n=1, size=1000)
    spec = {"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}", "description": "2024 logs"}
    result = run_job(spec, vault_settings).to_dict()
    assert vaults.archives[result["archive_id"]].description == "2024 logs"
    assert result["parts"] == 1  # smaller than a part: one (short) part


def test_a_refused_part_aborts_the_vault_upload(
    s3: Any, make_bucket: Any, vaults: Any, glacier: Any, vault_settings: Settings
) -> None:
    bucket = make_bucket()
    corpus(s3, bucket)
    vaults.fail("upload_part", 400, "InvalidParameterValueException", after=1)
    spec = {"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}"}
    with pytest.raises(UploadFailed, match="InvalidParameterValueException"):
        run_job(spec, vault_settings)
    assert vaults.calls["initiate"] == 1 and vaults.calls["abort"] == 1
    assert vaults.calls["upload_part"] <= 3  # a 4xx is not retried
    assert glacier.list_multipart_uploads(vaultName=vaults.vault)["UploadsList"] == []
    assert vaults.archives == {}


def test_a_refused_completion_aborts(s3: Any, make_bucket: Any, vaults: Any, vault_settings: Settings) -> None:
    bucket = make_bucket()
    corpus(s3, bucket, n=2)
    vaults.fail("complete", 400, "InvalidParameterValueException")
    spec = {"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}"}
    with pytest.raises(UploadFailed):
        run_job(spec, vault_settings)
    assert vaults.open_uploads(vaults.vault) == [] and vaults.archives == {}


def test_a_missing_vault_fails_at_once(s3: Any, make_bucket: Any, vaults: Any, vault_settings: Settings) -> None:
    bucket = make_bucket()
    corpus(s3, bucket, n=1, size=10)
    spec = {"sources": [f"s3://{bucket}/in/"], "destination": "glacier://no-such-vault"}
    with pytest.raises(UploadFailed, match="vault"):
        run_job(spec, vault_settings)
    assert vaults.calls["initiate"] == 1  # not retried


def test_a_server_error_is_retried(s3: Any, make_bucket: Any, vaults: Any, vault_settings: Settings) -> None:
    bucket = make_bucket()
    files = corpus(s3, bucket, n=2)
    vaults.fail("upload_part", 500, "ServiceUnavailableException")
    spec = {"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}"}
    result = run_job(spec, vault_settings).to_dict()
    check_zip_bytes(vaults.archive_bytes(result["archive_id"]), files)
    assert vaults.calls["upload_part"] == result["parts"] + 1


def test_sweep_aborts_stale_vault_uploads(
    vaults: Any, glacier: Any, vault_settings: Settings, fake_registry: Any
) -> None:
    mine = glacier.initiate_multipart_upload(vaultName=vaults.vault, partSize=str(MiB))["uploadId"]
    other = glacier.initiate_multipart_upload(vaultName=vaults.vault, partSize=str(MiB))["uploadId"]
    from bucketzip.lifecycle import Lifecycle

    life = Lifecycle(fake_registry, fake_registry.redis)
    dest = f"glacier://{vaults.vault}"
    assert life.start("j1", {}, dest, "host:1", life.lease("j1", dest)).run  # a run that died: no lease held
    fake_registry.upload_started("j1", f"glacier://{vaults.vault}", mine)
    assert fake_registry.buckets() == {f"glacier://{vaults.vault}"}

    later = datetime.now(UTC).timestamp() + vault_settings.stale_upload_age + 60  # both uploads are stale then
    report = sweep_uploads(vault_settings, fake_registry, now=later)
    assert report["aborted"] == [f"glacier://{vaults.vault}"]
    left = [u["MultipartUploadId"] for u in glacier.list_multipart_uploads(vaultName=vaults.vault)["UploadsList"]]
    assert left == [other]  # another tool's upload in the vault is left alone


@pytest.fixture
def fake_registry(vault_settings: Settings) -> Registry:
    import fakeredis

    return Registry(
        vault_settings.replace(key_prefix=f"t{hashlib.sha1(os.urandom(8)).hexdigest()[:6]}"),
        fakeredis.FakeRedis(decode_responses=True),
    )


def test_a_worker_fills_a_vault_and_the_catalog(
    s3: Any, make_bucket: Any, vaults: Any, s3_env: dict[str, str], redis_url: str, queue_prefix: str
) -> None:
    """On a worker: the archive goes into the vault and into the catalog (in the success's transaction); a
    vault's 4xx fails the job at once, without the retries a transient error gets."""
    from celery.contrib.testing.worker import start_worker

    import bucketzip.tasks  # noqa: F401
    from bucketzip.client import Client
    from bucketzip.errors import UploadFailed
    from bucketzip.registry import FAILED
    from bucketzip.worker import make_app
    from tests.conftest import queue_env

    bucket = make_bucket()
    files = corpus(s3, bucket, n=3)
    env = queue_env({**s3_env, "AWS_ENDPOINT_URL_GLACIER": vaults.url}, redis_url, queue_prefix)
    app = make_app(Settings.from_env(env))
    client = Client(app=app)
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"):
        good = client.submit({"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}"})
        result = good.wait(timeout=120)
        bad = client.submit({"sources": [f"s3://{bucket}/in/"], "destination": "glacier://missing-vault"})
        with pytest.raises(UploadFailed, match="vault"):
            bad.wait(timeout=120)
    app.close()
    check_zip_bytes(vaults.archive_bytes(result["archive_id"]), files)
    [record] = client.archives(vault=vaults.vault)
    assert record["archive_id"] == result["archive_id"] and record["job_id"] == good.id
    assert record["tree_hash"] == result["tree_hash"] and record["description"] == f"bucketzip job {good.id}"
    failed = client.status(bad.id)
    assert failed.state == FAILED and failed.runs == 1 and failed.error["type"] == "UploadFailed"


# --- a run that dies after its fence: its sealed upload is completed by the next run, not made again ---


def test_a_sealed_upload_is_completed_again_into_the_same_archive(
    s3: Any, make_bucket: Any, vaults: Any, vault_settings: Settings
) -> None:
    """The sink seals (every part up, the tree hash known) before the fence, which records it; a later run
    completes that upload again and gets the archive the first Complete made. Once the vault no longer knows the
    upload, the later run makes the archive again."""
    from bucketzip.engine import Publication

    bucket = make_bucket()
    files = corpus(s3, bucket)
    spec = {"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}", "job_id": "j1"}
    marks: list[dict[str, Any]] = []

    def fence(pending: dict[str, Any], sealed: dict[str, Any] | None) -> None:
        assert sealed is not None and sealed["upload_id"] in vaults.uploads  # sealed: uploaded, not completed
        marks.append({"run": "run-1", "result": pending, "sealed": sealed})

    first = run_job(spec, vault_settings, publication=Publication("j1", "run-1", fence)).to_dict()
    [mark] = marks
    assert mark["sealed"]["upload_id"] and mark["sealed"]["size"] == first["size"]
    assert mark["sealed"]["tree_hash"] == first["tree_hash"] and vaults.calls["upload_part"] == first["parts"]

    again = run_job(spec, vault_settings, publication=Publication("j1", "run-2", fence, sealed=mark)).to_dict()
    assert again == {**first, "duration": again["duration"]}  # the same archive, the same result
    assert list(vaults.archives) == [first["archive_id"]] and vaults.calls["complete"] == 2
    assert vaults.calls["initiate"] == 1 and vaults.calls["upload_part"] == first["parts"]  # nothing made again
    check_zip_bytes(vaults.archive_bytes(first["archive_id"]), files)

    vaults.forget_completed()
    anew = run_job(spec, vault_settings, publication=Publication("j1", "run-3", fence, sealed=mark)).to_dict()
    assert anew["archive_id"] != first["archive_id"] and vaults.calls["initiate"] == 2
    check_zip_bytes(vaults.archive_bytes(anew["archive_id"]), files)


def test_a_cancel_does_not_stop_the_completion_of_a_sealed_upload(
    s3: Any, make_bucket: Any, vaults: Any, vault_settings: Settings
) -> None:
    """The run that completes a dead run's sealed upload is past that run's fence: a cancel (or a time limit, or
    a worker shutting down) that arrives while the vault answers neither stops it nor hides the archive."""
    import threading

    from bucketzip.engine import Publication
    from tests.helpers import wait_until

    bucket = make_bucket()
    corpus(s3, bucket, n=2)
    spec = {"sources": [f"s3://{bucket}/in/"], "destination": f"glacier://{vaults.vault}", "job_id": "j1"}
    marks: list[dict[str, Any]] = []
    publication = Publication("j1", "run-1", lambda p, sealed: marks.append({"result": p, "sealed": sealed}))
    first = run_job(spec, vault_settings, publication=publication)
    held = vaults.hold("complete")
    cancels: list[Any] = []
    outcome: dict[str, Any] = {}

    def resume() -> None:
        again = Publication("j1", "run-2", lambda p, sealed: None, sealed=marks[0])
        try:
            outcome["result"] = run_job(spec, vault_settings, publication=again, bind=cancels.append)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=resume)
    thread.start()
    wait_until(lambda: vaults.calls["complete"] == 2, "the repeated Complete at the vault")
    cancels[0]()  # as the heartbeat stops a run
    held.set()
    thread.join(60)
    assert "error" not in outcome and outcome["result"].archive_id == first.archive_id
    assert list(vaults.archives) == [first.archive_id]


# A worker's run of the job, as tasks.py makes it (lease, start, fence, publish), that dies - at its fence, before
# the vault's Complete, or after it, before recording the archive: os._exit, as a killed worker.
DYING_RUN = """
import json, os, sys
from bucketzip.config import Settings
from bucketzip.engine import Publication, run_job
from bucketzip.lifecycle import Lifecycle
from bucketzip.registry import Registry

job_id, spec, dies = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
settings = Settings.from_env()
life = Lifecycle(Registry(settings))
lease = life.lease(job_id, spec["destination"])
assert lease.acquire() and life.start(job_id, spec, spec["destination"], "dying:1", lease).run


def fence(pending, sealed=None):
    life.fence(job_id, lease, pending, sealed)
    if dies == "at the fence":
        os._exit(3)


run_job(spec, settings, publication=Publication(job_id, lease.token, fence))
os._exit(3)
"""


@pytest.mark.parametrize(("dies", "completes"), [("at the fence", 1), ("after the Complete", 2)])
def test_a_redelivered_vault_job_completes_the_upload_its_dead_run_sealed(
    dies: str,
    completes: int,
    s3: Any,
    make_bucket: Any,
    vaults: Any,
    s3_env: dict[str, str],
    redis_url: str,
    queue_prefix: str,
) -> None:
    """A run passed its fence and died, before or after the vault's Complete: the redelivered job, on a worker,
    completes that upload (Glacier answers a repeat with the same archive) and records it. One archive in the
    vault, no upload left open, no part sent twice."""
    import json
    import subprocess
    import sys
    import uuid

    from celery.contrib.testing.worker import start_worker

    import bucketzip.tasks  # noqa: F401
    from bucketzip.client import Client
    from bucketzip.registry import SUCCEEDED
    from bucketzip.spec import JobSpec
    from bucketzip.worker import make_app
    from tests.conftest import queue_env

    bucket = make_bucket()
    files = corpus(s3, bucket)
    env = queue_env({**s3_env, "AWS_ENDPOINT_URL_GLACIER": vaults.url}, redis_url, queue_prefix)
    app = make_app(Settings.from_env(env))
    client = Client(app=app)
    job_id, dest = f"dying-{uuid.uuid4().hex}", f"glacier://{vaults.vault}"
    spec = JobSpec.from_dict({"sources": [f"s3://{bucket}/in/"], "destination": dest}, app.settings).to_dict()
    client.registry.queued([(job_id, spec, dest)])
    dying = subprocess.run(
        [sys.executable, "-c", DYING_RUN, job_id, json.dumps(spec), dies],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dying.returncode == 3, dying.stderr
    assert vaults.calls["complete"] == completes - 1 and vaults.calls["initiate"] == 1
    parts = vaults.calls["upload_part"]
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING"):
        client._publish([(job_id, spec, dest)])  # the dead run's message, delivered again
        result = client.wait(job_id, 120)
    app.close()
    job = client.status(job_id)
    assert job.state == SUCCEEDED and job.runs == 2 and job.lost == 1
    assert list(vaults.archives) == [result["archive_id"]] and vaults.calls["complete"] == completes
    assert vaults.calls["initiate"] == 1 and vaults.calls["upload_part"] == parts == result["parts"]
    assert vaults.open_uploads(vaults.vault) == []
    check_zip_bytes(vaults.archive_bytes(result["archive_id"]), files)
    [record] = client.archives(vault=vaults.vault)
    assert record["archive_id"] == result["archive_id"] and record["job_id"] == job_id
    assert result["entries"] == len(files) and result["input_bytes"] == sum(map(len, files.values()))
