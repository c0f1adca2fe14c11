"""The fault matrix (issue 8): real Redis, real Celery worker processes, the moto server behind a fault-injecting
proxy (tests/faultproxy.py). Workers are killed (SIGKILL), stopped (SIGTERM), frozen (SIGSTOP) at each stage of
a job, Redis restarts under them, messages are delivered twice, jobs are cancelled at every stage, and S3
misbehaves. The proxy's stalls hold a job at a known stage; the tests poll the registry and the proxy, never
sleep.

Every case ends with the same checks (``Case.settle``): the job's final state; the archive absent, or complete
and byte-exact (zipfile and ``unzip -t``, every entry compared with its source); no open multipart upload once
the sweep has run; at most one publication (PUT or CompleteMultipartUpload the server accepted for the key, and
the versions of the key in a versioned bucket); and a record that tells the truth (succeeded with the archive in
the catalog, or failed/cancelled with no archive). Each case adds a row to the matrix printed at the end of the
run and written to .bucketzip/fault-matrix.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from bucketzip.client import Client
from bucketzip.config import Settings
from bucketzip.devserver import children, free_port, redis_process, worker_process
from bucketzip.registry import CANCELLED, FAILED, RUNNING, SUCCEEDED, TERMINAL, Job, Registry
from bucketzip.tasks import sweep_uploads
from bucketzip.worker import TASK_NAME
from tests import helpers
from tests.conftest import CREDENTIALS, QUEUE_ENV, need
from tests.faultmatrix import FAULT_MATRIX
from tests.faultproxy import FaultProxy, Rule
from tests.helpers import check_zip_bytes

OBJECTS = 24  # x 256 KiB, stored: a 6 MiB archive, two parts of 5 MiB + 1 MiB
OBJECT_SIZE = 256 * 2**10
STREAMING_KEY = f"in/{OBJECTS - 2:03d}.bin"  # read after the first part was cut: the upload is open by then
FAULT_ENV = {
    **QUEUE_ENV,
    "BUCKETZIP_LOCK_TTL": "2",
    "BUCKETZIP_RETRY_BACKOFF_MAX": "2",
    "BUCKETZIP_DEFLATE_THREADS": "1",
    "BUCKETZIP_JOB_TIME_LIMIT": "90",
    "BUCKETZIP_JOB_SOFT_TIME_LIMIT": "80",
    "BUCKETZIP_VISIBILITY_TIMEOUT": "120",
}
WAIT = 90  # seconds: only bounds a broken run


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return helpers.wait_until(predicate, what, timeout, interval=0.02)


# --- the parts: a corpus, the proxy, worker processes ---


@pytest.fixture(scope="module")
def corpus(s3: Any) -> Iterator[tuple[str, dict[str, bytes]]]:
    bucket = f"t-faults-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    files = {f"in/{i:03d}.bin": os.urandom(OBJECT_SIZE) for i in range(OBJECTS)}
    for key, data in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    yield bucket, {k.removeprefix("in/"): v for k, v in files.items()}
    for key in files:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url, seed=8) as p:
        yield p


class Workers:
    """Celery worker processes (prefork, one child each) on one key prefix and queue."""

    def __init__(self, env: dict[str, str], logdir: str) -> None:
        self.env, self.logdir = env, logdir
        self.stack = contextlib.ExitStack()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 1) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(n):
            name = f"w{len(self.procs)}-{uuid.uuid4().hex[:6]}"
            log = self.stack.enter_context(open(os.path.join(self.logdir, f"{name}.log"), "wb"))  # noqa: SIM115
            proc = self.stack.enter_context(worker_process(self.env, name, log))
            self.procs.append(proc)
            started.append(proc)
        return started

    def close(self) -> None:
        for proc in self.procs:  # a frozen pool process would hold its master's shutdown forever
            for child in children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGCONT)
        self.stack.close()


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


@dataclass
class Case:
    """One job of the matrix, and everything needed to check it."""

    name: str
    fault: str
    env: dict[str, str]
    proxy: FaultProxy
    s3: Any
    moto_url: str
    corpus: tuple[str, dict[str, bytes]]
    out: str
    row: dict[str, Any]
    key: str = "out.zip"
    client: Client = field(init=False)
    registry: Registry = field(init=False)
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = Settings.from_env(self.env)
        self.client = Client(self.settings)
        self.registry = Registry(self.settings)
        self.row.update(case=self.name, fault=self.fault, jobs=0)

    @property
    def spec(self) -> dict[str, Any]:
        bucket = self.corpus[0]
        return {"sources": [f"s3://{bucket}/in/"], "destination": f"s3://{self.out}/{self.key}", "compression": "store"}

    def submit(self) -> str:
        self.row["jobs"] += 1
        return self.client.submit(self.spec).id

    def deliver_again(self, job_id: str) -> None:
        """Publish the job's message once more (same task id), as a broker redelivery would."""
        self.client.app.send_task(TASK_NAME, args=[self.spec], task_id=job_id, queue=self.settings.queue)

    def job(self, job_id: str) -> Job:
        job = self.registry.get(job_id)
        assert job is not None, f"job {job_id} has no record"
        return job

    def running_child(self, job_id: str) -> int:
        """The pool process running the job (its record names it)."""
        job = wait_until(lambda: (j := self.registry.get(job_id)) and j.state == RUNNING and j.worker and j, "run")
        return int(job.worker.rsplit(":", 1)[1])

    def stall(self, stage: str, times: int | None = None) -> Rule:
        """A rule that holds the first request of ``stage`` (listing, streaming, completing, published)."""
        bucket = self.corpus[0]
        # By default every matching request is held until released: a client that times out (s3fs reads give
        # up after 15 s) and retries is held again, so the job stays at its stage however slow the machine.
        if stage == "listing":
            return self.proxy.add("list", "stall", bucket=bucket, times=times, hold=WAIT)
        if stage == "streaming":
            return self.proxy.add("get", "stall", bucket=bucket, key=STREAMING_KEY, times=times, hold=WAIT)
        if stage == "completing":
            return self.proxy.add("complete", "stall", bucket=self.out, times=times, hold=WAIT)
        if stage == "published":
            return self.proxy.add("complete", "stall_response", bucket=self.out, times=times, hold=WAIT)
        raise ValueError(stage)

    def hold(self, stage: str, job_id: str) -> Rule:
        """Wait until the job is held at ``stage`` (a rule made by ``stall``)."""
        rule = next(r for r in reversed(self.proxy.rules) if r.fault in ("stall", "stall_response"))
        self.proxy.wait_held(rule, WAIT)
        if stage == "streaming":  # the first part is out: an upload is open
            wait_until(lambda: self.job(job_id).upload_id, "the upload to open")
        return rule

    def wait_final(self, job_id: str) -> Job:
        return wait_until(lambda: (j := self.registry.get(job_id)) and j.state in TERMINAL and j, "the job to end")

    def queued(self) -> int:
        n: int = self.registry.redis.llen(f"{self.settings.key_prefix}:{self.settings.queue}")
        return n

    def broker_idle(self) -> bool:
        """Nothing queued and nothing delivered-but-unacknowledged under this test's prefix."""
        r = self.registry.redis
        prefix = self.settings.key_prefix
        return not self.queued() and not r.hlen(f"{prefix}:unacked")

    # --- the checks every case ends with ---

    def settle(self, job_id: str, states: tuple[str, ...]) -> Job | None:
        """Sweep, then establish and record the facts, then assert them."""
        direct = self.settings.replace(endpoint_url=self.moto_url)  # the sweep as beat runs it, past the proxy
        sweep_uploads(direct, Registry(direct))
        job = self.registry.get(job_id)
        versions = [
            v for v in self.s3.list_object_versions(Bucket=self.out).get("Versions", []) if v["Key"] == self.key
        ]
        publications = max(self.proxy.publications(self.out, self.key), len(versions))
        uploads = self.s3.list_multipart_uploads(Bucket=self.out).get("Uploads", [])
        catalog = [a for a in self.registry.archives(10_000) if a["job_id"] == job_id]
        archive = "absent"
        problem = None
        if versions:
            data = self.s3.get_object(Bucket=self.out, Key=self.key)["Body"].read()
            try:
                check_zip_bytes(data, self.corpus[1])
                archive = "complete"
            except AssertionError as exc:
                archive, problem = "PARTIAL", str(exc)
        state = job.state if job else "LOST"
        truthful = job is not None and (
            (state == SUCCEEDED and archive == "complete" and len(catalog) == 1)
            or (state in (FAILED, CANCELLED) and archive == "absent" and not catalog)
        )
        self.row.update(
            state=state,
            runs=job.runs if job else None,
            archive=archive,
            publications=publications,
            orphans=len(uploads),
            record="true" if truthful else ("LOST" if job is None else "WRONG"),
        )
        assert job is not None, "the job's record was lost"
        assert problem is None, f"a partial archive was published: {problem}"
        assert state in states, f"final state {state}, expected {states}: {job.error}"
        commits = [
            (e.op, e.upload_id, e.upstream_status, e.answered)
            for e in self.proxy.exchanges(key=self.key)
            if e.bucket == self.out and e.op in ("create", "complete", "put", "abort")
        ]
        assert publications <= 1, f"published {publications} times: {commits}"
        assert uploads == [], f"open uploads after the sweep: {uploads}"
        assert truthful, f"the record says {state} (catalog {catalog}) but the archive is {archive}"
        if state == SUCCEEDED:
            assert publications == 1 and job.result is not None and job.result["entries"] == OBJECTS
        return job


@pytest.fixture(scope="module")
def shared_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"bzfault-{uuid.uuid4().hex[:10]}"
    yield prefix
    drop_prefix(redis.Redis.from_url(redis_url), prefix)


def drop_prefix(client: Any, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


def fault_env(proxy: FaultProxy, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": proxy.url,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_REGION": CREDENTIALS["region_name"],
        **FAULT_ENV,
        "BUCKETZIP_REDIS_URL": redis_url,
        "BUCKETZIP_KEY_PREFIX": prefix,
        "BUCKETZIP_QUEUE": prefix,
        **extra,
    }


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("worker-logs"))


@pytest.fixture(scope="module")
def pair(proxy: FaultProxy, redis_url: str, shared_prefix: str, logdir: str) -> Iterator[Workers]:
    """Two worker processes shared by the cases that do not stop a worker for good."""
    workers = Workers(fault_env(proxy, redis_url, shared_prefix), logdir)
    workers.start(2)
    yield workers
    workers.close()


@pytest.fixture
def make_case(
    request: pytest.FixtureRequest, proxy: FaultProxy, s3: Any, moto_url: str, corpus: Any, make_bucket: Any
) -> Iterator[Callable[..., Case]]:
    cases: list[Case] = []

    def make(fault: str, env: dict[str, str]) -> Case:
        out = make_bucket()
        s3.put_bucket_versioning(Bucket=out, VersioningConfiguration={"Status": "Enabled"})
        row: dict[str, Any] = {"nodeid": request.node.nodeid}
        FAULT_MATRIX.append(row)
        case = Case(request.node.name.removeprefix("test_"), fault, env, proxy, s3, moto_url, corpus, out, row)
        cases.append(case)
        return case

    yield make
    proxy.clear()  # releases whatever is still held
    for case in cases:
        # make_bucket deletes the bucket now: the registry must not send the next case's sweep to it.
        with contextlib.suppress(redis.RedisError):  # (a private Redis may be gone already)
            case.registry.redis.srem(case.registry.key("buckets"), case.out)
        case.client.close()


STAGES = ["listing", "streaming", "completing", "published"]


# --- SIGKILL of the process running the job, at each stage (the OOM killer, a crash) ---


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill(stage: str, pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case(f"SIGKILL of the job's process while {stage}", pair.env)
    case.stall(stage)
    job_id = case.submit()
    child = case.running_child(job_id)
    rule = case.hold(stage, job_id)
    os.kill(child, signal.SIGKILL)
    # Reaped, not only a zombie: a zombie's other threads may still hold its sockets open for a moment.
    wait_until(lambda: not os.path.exists(f"/proc/{child}"), "the process to be gone")
    rule.release()  # a held request whose client died is dropped; a held answer goes nowhere
    case.wait_final(job_id)
    job = case.settle(job_id, (SUCCEEDED,))
    assert job is not None and job.runs >= 2  # redelivered, run to the end once


# --- SIGTERM of the worker (a deploy, docker compose stop), at each stage ---


@pytest.mark.parametrize("stage", STAGES)
def test_sigterm(
    stage: str, proxy: FaultProxy, redis_url: str, logdir: str, make_case: Callable[..., Case], request: Any
) -> None:
    prefix = f"bzfault-{uuid.uuid4().hex[:10]}"
    request.addfinalizer(lambda: drop_prefix(redis.Redis.from_url(redis_url), prefix))
    workers = Workers(fault_env(proxy, redis_url, prefix), logdir)
    request.addfinalizer(workers.close)
    case = make_case(f"SIGTERM of the worker while {stage}", workers.env)
    case.stall(stage)
    workers.start(2)
    job_id = case.submit()
    child = case.running_child(job_id)
    rule = case.hold(stage, job_id)
    first_upload = case.job(job_id).upload_id
    master = next(p for p in workers.procs if p.pid == parent(child))
    master.send_signal(signal.SIGTERM)
    if stage in ("listing", "streaming"):
        # The job is aborted and requeued at once: the worker does not wait for a job held at the proxy.
        with contextlib.suppress(subprocess.TimeoutExpired):
            master.wait(30)  # the stall holds the job for 90 s: a worker that waits for it is not done in 30
        case.row["shutdown"] = "prompt" if master.returncode is not None else "waited for the job"
        rule.release()
        assert master.returncode is not None, "the worker waited for its job instead of requeueing it"
        # Its upload was aborted by the shutdown itself, not left for the sweep (the other worker may have
        # opened its own already).
        open_now = [u["UploadId"] for u in case.s3.list_multipart_uploads(Bucket=case.out).get("Uploads", [])]
        assert first_upload is None or first_upload not in open_now
    else:
        rule.release()  # the commit has begun: finishing it is the right thing to do
    case.wait_final(job_id)
    case.settle(job_id, (SUCCEEDED,))


# --- cancel at every stage ---


def test_cancel_queued(pair: Workers, make_case: Callable[..., Case], proxy: FaultProxy) -> None:
    case = make_case("cancel while queued", pair.env)
    # Two jobs of our own held at their listing keep both workers busy, so this one stays in the queue.
    rule = proxy.add("list", "stall", bucket=case.corpus[0], times=2, hold=WAIT)
    blockers = [case.client.submit({**case.spec, "destination": f"s3://{case.out}/b{i}.zip"}).id for i in (1, 2)]
    wait_until(lambda: rule.held == 2, "both workers to be busy")
    case.key = "queued.zip"
    job_id = case.submit()
    assert case.client.cancel(job_id) == CANCELLED
    rule.release()
    for blocker in blockers:
        case.wait_final(blocker)
    wait_until(case.broker_idle, "the cancelled message to be consumed")
    case.settle(job_id, (CANCELLED,))


@pytest.mark.parametrize("stage", ["listing", "streaming", "completing"])
def test_cancel(stage: str, pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case(f"cancel while {stage}", pair.env)
    rule = case.stall(stage)
    job_id = case.submit()
    case.running_child(job_id)
    case.hold(stage, job_id)
    assert case.client.cancel(job_id) == "cancelling"
    rule.release()
    job = case.wait_final(job_id)
    # Cancelled before the commit: nothing published. During the commit either outcome is honest, as long as
    # the record says which (settle checks that): a published archive is a succeeded job.
    states = (CANCELLED, SUCCEEDED) if stage == "completing" else (CANCELLED,)
    case.settle(job_id, states)
    assert job.state in states


# --- Redis restarts under a running job ---


def test_redis_restart(proxy: FaultProxy, logdir: str, make_case: Callable[..., Case]) -> None:
    need(_which("redis-server") is not None, "redis-server")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    data = tempfile.mkdtemp(prefix="bz-redis-")
    first = contextlib.ExitStack()
    first.enter_context(redis_process(port, data))  # with appendonly: what was written survives the restart
    try:
        workers = Workers(fault_env(proxy, url, "bzfault"), logdir)
        case = make_case("Redis restarts while streaming (AOF)", workers.env)
        rule = case.stall("streaming")
        workers.start(1)
        job_id = case.submit()
        case.running_child(job_id)
        case.hold("streaming", job_id)
        first.close()  # Redis stops while the job streams
        with redis_process(port, data):
            try:
                rule.release()
                case.wait_final(job_id)
                wait_until(case.broker_idle, "the job's message to be acknowledged")
                case.settle(job_id, (SUCCEEDED,))
            finally:
                rule.release()
                workers.close()
    finally:
        first.close()
        shutil.rmtree(data, ignore_errors=True)


def _which(name: str) -> str | None:
    return shutil.which(name)


# --- a heartbeat frozen past the lease; a second delivery takes over ---


def test_frozen_heartbeat(pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case("SIGSTOP past the lease, a second delivery takes over, SIGCONT", pair.env)
    rule = case.stall("streaming", times=1)  # only the first run: the second one must get through
    job_id = case.submit()
    child = case.running_child(job_id)
    case.hold("streaming", job_id)
    first_upload = case.job(job_id).upload_id
    os.kill(child, signal.SIGSTOP)
    try:
        wait_until(lambda: not case.registry.is_running(job_id), "the frozen run's lease to expire")
        case.deliver_again(job_id)  # the other worker is idle: it takes the job over
        job = wait_until(lambda: (j := case.job(job_id)).state == SUCCEEDED and j, "the second run to succeed")
        winner = job.worker
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
    rule.release()
    # The frozen run wakes up without its lease: it must stop, abort its upload and record nothing.
    open_ids = lambda: [u["UploadId"] for u in case.s3.list_multipart_uploads(Bucket=case.out).get("Uploads", [])]  # noqa: E731
    wait_until(lambda: first_upload not in open_ids(), "the first run to end")
    wait_until(case.broker_idle, "both deliveries to be acknowledged")
    job = case.settle(job_id, (SUCCEEDED,))
    assert job is not None and job.worker == winner


# --- the same message delivered twice ---


def test_duplicate_delivery(pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case("the same message delivered twice while running, and again after success", pair.env)
    rule = case.stall("streaming", times=1)
    job_id = case.submit()
    case.running_child(job_id)
    case.hold("streaming", job_id)
    case.deliver_again(job_id)
    wait_until(lambda: case.queued() == 0, "the second delivery to be taken")  # it steps aside: the job is held
    rule.release()
    case.wait_final(job_id)
    case.deliver_again(job_id)  # and a third, after the job succeeded
    wait_until(case.broker_idle, "the late delivery to be acknowledged")
    job = case.settle(job_id, (SUCCEEDED,))
    assert job is not None and job.runs == 1


# --- S3 misbehaving ---


def _s3_fault(case: Case, setup: Callable[[Case], Any], states: tuple[str, ...]) -> Job | None:
    setup(case)
    job_id = case.submit()
    case.wait_final(job_id)
    wait_until(case.broker_idle, "the job's message to be acknowledged")
    return case.settle(job_id, states)


def test_5xx_and_slowdown_on_a_fifth_of_requests(pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case("500/503/SlowDown on 20% of every request (seeded)", pair.env)

    def setup(c: Case) -> None:
        for code, status in (("InternalError", 500), ("ServiceUnavailable", 503), ("SlowDown", 503)):
            c.proxy.add("any", "error", status=status, code=code, times=None, probability=0.07)

    _s3_fault(case, setup, (SUCCEEDED, FAILED))


def test_connections_reset(pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case("GET bodies cut mid-way (30%), part uploads reset (30%)", pair.env)

    def setup(c: Case) -> None:
        c.proxy.add("get", "truncate", bucket=c.corpus[0], times=None, probability=0.3)
        c.proxy.add("part", "reset", times=None, probability=0.3)

    _s3_fault(case, setup, (SUCCEEDED, FAILED))


def test_complete_answered_200_with_an_error(pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case("CompleteMultipartUpload answered 200 with an error body", pair.env)
    job = _s3_fault(case, lambda c: c.proxy.add("complete", "error_body", bucket=c.out), (SUCCEEDED,))
    assert job is not None


def test_lost_create_response(pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case("CreateMultipartUpload response lost (botocore retries)", pair.env)
    _s3_fault(case, lambda c: c.proxy.add("create", "lose_response", bucket=c.out), (SUCCEEDED,))


def test_lost_complete_response(pair: Workers, make_case: Callable[..., Case]) -> None:
    case = make_case("CompleteMultipartUpload response lost; the retry gets NoSuchUpload", pair.env)
    _s3_fault(case, lambda c: c.proxy.add("complete", "lose_response", bucket=c.out), (SUCCEEDED,))
