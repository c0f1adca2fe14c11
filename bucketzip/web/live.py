"""What the dashboard and /metrics read over and over, and the readiness probes.

``Gauges`` reads the job counts (one pipelined round trip), and reuses the queue depth for a second, so a
dozen open dashboards refreshing every second do not each ask the broker. Workers are counted by
a Celery ping, which always waits its whole timeout: a daemon thread pings in the background and the pages
read its latest answer, never waiting for it.

``readiness`` probes the broker, the result backend, the registry and S3 side by side, each with a timeout.
The S3 probe is a plain HTTP request to the endpoint (any answer, even 403, means it is up): the web process
never loads s3fs or boto3. ``bucketzip check`` verifies the credentials too.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..client import Client

log = logging.getLogger(__name__)

GAUGE_TTL = 1.0  # seconds the counts and queue depth are reused
WORKER_PING_EVERY = 10.0  # seconds between background pings
WORKER_PING_TIMEOUT = 1.0  # seconds a ping waits for replies
WORKERS_STALE = 60.0  # a ping answer older than this is no answer


@dataclass
class Snapshot:
    counts: dict[str, int]
    queue_depth: int | None
    workers: list[str] | None  # None: not known yet (or the broker cannot broadcast)
    taken: float


class Gauges:
    def __init__(self, client: Client, ping: bool = True) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._depth: tuple[float, int | None] | None = None
        self._workers: tuple[float, list[str]] | None = None
        self._pinger: threading.Thread | None = None
        self._ping = ping
        self._stop = threading.Event()

    def snapshot(self) -> Snapshot:
        """Counts read now (one round trip: they must agree with the job lists beside them); the queue depth
        reused for ``GAUGE_TTL``; the workers from the background ping."""
        self._start_pinger()
        counts = self.client.counts()
        with self._lock:
            if self._depth is None or time.monotonic() - self._depth[0] >= GAUGE_TTL:
                try:
                    self._depth = (time.monotonic(), self.client.queue_depth())
                except Exception as exc:  # the broker being down must not take the dashboard with it
                    log.warning("queue depth: %s", exc)
                    self._depth = (time.monotonic(), None)
            depth = self._depth[1]
        workers = None
        if self._workers is not None and time.monotonic() - self._workers[0] < WORKERS_STALE:
            workers = self._workers[1]
        return Snapshot(counts, depth, workers, time.monotonic())

    def _start_pinger(self) -> None:
        if self._pinger is None and self._ping:
            self._pinger = threading.Thread(target=self._ping_loop, name="bucketzip-web-ping", daemon=True)
            self._pinger.start()

    def _ping_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._workers = (time.monotonic(), self.client.workers(WORKER_PING_TIMEOUT))
            except Exception as exc:
                log.debug("worker ping: %s", exc)
            self._stop.wait(WORKER_PING_EVERY)

    def close(self) -> None:
        self._stop.set()


_probe_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="bucketzip-readyz")


def readiness(client: Client, timeout: float) -> dict[str, str | None]:
    """``{service: None (answers) or the error}`` for the broker, the result backend, the registry and S3."""
    probes: dict[str, Callable[[], Any]] = {
        "broker": lambda: _broker(client, timeout),
        "result backend": lambda: client.app.backend.get_task_meta(f"bucketzip-ready-{uuid.uuid4().hex}"),
        "registry": lambda: client.registry.redis.ping(),
        "s3": lambda: _s3_answers(client, timeout),
    }
    futures = {name: _probe_pool.submit(probe) for name, probe in probes.items()}
    deadline = time.monotonic() + timeout
    report: dict[str, str | None] = {}
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
            report[name] = None
        except concurrent.futures.TimeoutError:
            report[name] = f"no answer within {timeout:g}s"
        except Exception as exc:
            report[name] = f"{type(exc).__name__}: {exc}"
    return report


def _broker(client: Client, timeout: float) -> None:
    with client.app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def _s3_answers(client: Client, timeout: float) -> None:
    settings = client.settings
    url = settings.endpoint_url or f"https://s3.{settings.region or 'us-east-1'}.amazonaws.com/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (an anonymous request is usually refused): the endpoint is up
