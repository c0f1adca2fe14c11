"""/metrics: Prometheus text, read from the registry at scrape time (so every web process reports the same).

Gauges come from what the registry holds now (jobs by state, the broker's queue, workers online); counters
from the ``stats`` hash the workers bump in the same round trip as the transition they count (runs started,
jobs finished by outcome, bytes in and out, the duration histogram, uploads the sweep aborted).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..client import Client
from ..registry import DURATION_BUCKETS, STAT_BYTES_IN, STAT_BYTES_OUT, STAT_STARTED, STAT_SWEPT
from .live import Gauges

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("succeeded", "failed", "cancelled")


class RegistryCollector:
    def __init__(self, client: Client, gauges: Gauges) -> None:
        self.client, self.gauges = client, gauges

    def collect(self) -> Iterator[Metric]:
        snap = self.gauges.snapshot()
        stats = self.client.stats()

        jobs = GaugeMetricFamily("bucketzip_jobs", "Recorded jobs by state.", labels=["state"])
        for state, n in snap.counts.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("bucketzip_jobs_running", "Jobs running now.", value=snap.counts.get("running", 0))
        if snap.queue_depth is not None:
            yield GaugeMetricFamily(
                "bucketzip_queue_depth", "Messages waiting in the broker's jobs queue.", value=snap.queue_depth
            )
        if snap.workers is not None:
            yield GaugeMetricFamily("bucketzip_workers_online", "Workers answering a ping.", value=len(snap.workers))

        yield CounterMetricFamily(
            "bucketzip_jobs_started", "Job runs started (a redelivery counts again).", value=stats.get(STAT_STARTED, 0)
        )
        finished = CounterMetricFamily("bucketzip_jobs_finished", "Jobs finished, by outcome.", labels=["outcome"])
        for outcome in OUTCOMES:
            finished.add_metric([outcome], stats.get(f"finished:{outcome}", 0))
        yield finished
        yield CounterMetricFamily(
            "bucketzip_jobs_failed", "Jobs that failed (a permanent error).", value=stats.get("finished:failed", 0)
        )
        yield CounterMetricFamily(
            "bucketzip_job_retries",
            "Runs that failed transiently and were retried automatically.",
            value=stats.get("finished:retrying", 0),
        )
        yield CounterMetricFamily(
            "bucketzip_input_bytes", "Bytes read into succeeded archives.", value=stats.get(STAT_BYTES_IN, 0)
        )
        yield CounterMetricFamily(
            "bucketzip_output_bytes", "Bytes of succeeded archives written.", value=stats.get(STAT_BYTES_OUT, 0)
        )
        yield CounterMetricFamily(
            "bucketzip_sweep_aborted_uploads",
            "Stale multipart uploads the sweep aborted.",
            value=stats.get(STAT_SWEPT, 0),
        )
        cumulative, buckets = 0.0, []
        for i, le in enumerate(DURATION_BUCKETS):
            cumulative += stats.get(f"duration:{i}", 0)
            buckets.append(("+Inf" if le == float("inf") else f"{le:g}", cumulative))
        yield HistogramMetricFamily(
            "bucketzip_job_duration_seconds",
            "How long succeeded jobs ran.",
            buckets=buckets,
            sum_value=stats.get("duration:sum", 0.0),
        )


def exposition(client: Client, gauges: Gauges) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RegistryCollector(client, gauges))
    return generate_latest(registry)
