"""Warm mode: what a queue's users get. ``python -m bench.warm`` (see bench/README.md).

Starts, all private to this run: a moto server, a ``redis-server`` on a free port (never the shared one), and
a real Celery worker (``celery -A bucketzip.worker worker --pool=prefork -c CPUs``) on them, plus the naive
pipeline as a long-lived process (``bench.naive --serve``: one s3fs filesystem for all its jobs). Then:

- **warm, by size**: each corpus zipped by both, runs interleaved (the order alternating each round).
  bucketzip's time is submit-to-succeeded as the producer sees it (``Client.submit`` then ``wait``), queue
  and result backend included; naive's is its request's round trip. The first archive of each is verified.
- **latency**: the runs on ``tiny`` (20 objects, 5 MB) give p50 and p99 (use --runs 20 or more).
- **throughput**: ``--small-jobs`` tiny jobs submitted at once (jobs/s) and ``--medium-jobs`` medium ones
  (MB/s), on the worker's CPUs-many processes; the server's CPU over the same time; each pool process's
  peak RSS (``VmHWM``) and its RSS after every phase (flat, or growing from job to job).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bucketzip.config import Settings, usable_cpus
from bucketzip.devserver import children, cpu_seconds, free_port, moto_process, redis_server, worker_process

from . import corpus as corpora
from .report import SPEEDUP_TARGETS, TINY_P50_TARGET, cpu_bound, verdict
from .runner import child_env, harness_s3, settle
from .verify import verify

BUCKET = "bench"
OUT_BUCKET = "bench-out"
MB = 1e6
MiB = 2**20


class Server:
    """A contender in a warm process (``python -m bench.naive --serve``, ``bench.bound --serve``): one JSON
    request a line on its stdin, one JSON answer a line on its stdout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        assert proc.stdin and proc.stdout
        self.stdin: IO[str] = proc.stdin
        self.stdout: IO[str] = proc.stdout
        ready = self.stdout.readline()
        if not ready:
            raise RuntimeError("the naive server did not start")

    def ask(self, request: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Send ``request``; return the round trip's seconds and the answer."""
        started = time.perf_counter()
        self.stdin.write(json.dumps(request) + "\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args!r} died")
        return time.perf_counter() - started, dict(json.loads(line))


@contextlib.contextmanager
def serving(module: str, endpoint: str, env: dict[str, str]) -> Iterator[Server]:
    cmd = [sys.executable, "-m", module, "--endpoint", endpoint, "--serve"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield Server(proc)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of ``pid``, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        s3: Any,
        client: Any,
        servers: dict[str, Server],
        server_pid: int | None,
        worker_pid: int,
    ):
        self.args, self.s3, self.client, self.servers = args, s3, client, servers
        self.server_pid = server_pid  # the S3 server's process when it runs here: its CPU is measured
        self.worker_pid = worker_pid
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-warm-"))

    def settle(self) -> None:
        if self.server_pid is not None:
            settle(self.server_pid)

    def server_cpu(self) -> float:
        return cpu_seconds(self.server_pid) if self.server_pid is not None else math.nan

    def own_cpu(self, contender: str) -> float:
        """CPU seconds the contender's processes have used so far: the worker and its pool for bucketzip."""
        if contender == "bucketzip":
            return sum(cpu_seconds(pid) for pid in [self.worker_pid, *children(self.worker_pid)])
        return cpu_seconds(self.servers[contender].proc.pid)

    def spec(self, c: corpora.Corpus, key: str) -> dict[str, Any]:
        return {
            "sources": [{"url": f"s3://{BUCKET}/{c.prefix}"}],
            "destination": f"s3://{OUT_BUCKET}/{key}",
            "compression": "auto",
        }

    def bucketzip(self, c: corpora.Corpus, key: str) -> tuple[float, int, float]:
        """Submit-to-succeeded seconds, the archive's size, and the engine's own seconds (the result's
        ``duration``: from the listing to the archive published), so that the queue's share shows."""
        started = time.perf_counter()
        handle = self.client.submit(self.spec(c, key))
        result = handle.wait(timeout=self.args.timeout)
        return time.perf_counter() - started, int(result["size"]), float(result["duration"])

    def keys_file(self, c: corpora.Corpus) -> Path:
        path = self.tmp / f"{c.name}-keys.txt"
        path.write_text("".join(f"s3://{BUCKET}/{o.key}\n" for o in c.objects))
        return path

    def by_size(self, c: corpora.Corpus, runs: int) -> dict[str, Any]:
        keys = self.keys_file(c)
        contenders = self.args.contenders
        times: dict[str, list[float]] = {name: [] for name in contenders}
        bound_parts: dict[str, list[float]] = {"read": [], "write": [], "complete": []}
        cpu: dict[str, dict[str, list[float]]] = {name: {"server": [], "own": []} for name in contenders}
        engine: list[float] = []
        archive_bytes = c.input_bytes  # the bound writes as much as bucketzip's archive, once known
        for i in range(runs):
            for contender in contenders[i % len(contenders) :] + contenders[: i % len(contenders)]:
                self.settle()
                key = f"{c.name}/{contender}-{i}.zip"
                out = f"s3://{OUT_BUCKET}/{key}"
                server_before, own_before = self.server_cpu(), self.own_cpu(contender)
                if contender == "naive":
                    seconds, _ = self.servers["naive"].ask({"keys_file": str(keys), "out": out})
                elif contender == "bucketzip":
                    seconds, archive_bytes, engine_seconds = self.bucketzip(c, key)
                    engine.append(engine_seconds)
                else:
                    request = {"keys_file": str(keys), "write_to": out, "write_bytes": archive_bytes}
                    _, r = self.servers["bound"].ask(request)
                    seconds = r["duration"]
                    bound_parts["read"].append(r["read_seconds"])
                    bound_parts["write"].append(r["write_seconds"])
                    bound_parts["complete"].append(r["complete_seconds"])
                cpu[contender]["server"].append(self.server_cpu() - server_before)
                cpu[contender]["own"].append(self.own_cpu(contender) - own_before)
                if i == 0 and contender != "bound":
                    verify(self.s3, OUT_BUCKET, key, len(c.objects), c.input_bytes)
                times[contender].append(seconds)
                corpora.delete(self.s3, OUT_BUCKET, f"{c.name}/")
                print(f"  {c.name} run {i + 1}/{runs} {contender:9} {seconds:8.3f} s", file=sys.stderr, flush=True)
        # The producer's latency needs more jobs than the ratio: bucketzip alone runs until it has done
        # --latency-jobs of them (the ratio's medians stay those of the interleaved runs above).
        latency = list(times["bucketzip"])
        latency_engine = list(engine)
        for i in range(runs, self.args.latency_jobs):
            self.settle()
            seconds, _, engine_seconds = self.bucketzip(c, f"{c.name}/latency-{i}.zip")
            latency.append(seconds)
            latency_engine.append(engine_seconds)
            corpora.delete(self.s3, OUT_BUCKET, f"{c.name}/")
            print(f"  {c.name} latency job {i + 1} {seconds:8.3f} s", file=sys.stderr, flush=True)
        med = {
            name: statistics.median(times[name]) if times.get(name) else math.nan
            for name in ("naive", "bucketzip", "bound")
        }
        read, write, complete = (statistics.median(v) if v else math.nan for v in bound_parts.values())
        cpu_med = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in cpu.items()}
        return {
            "objects": len(c.objects),
            "input_bytes": c.input_bytes,
            "archive_bytes": archive_bytes,
            "runs": times,
            "median": med,
            "bound_read": read,
            "bound_write": write,
            "latency": latency,
            "bucketzip_p50": percentile(latency, 50),
            "bucketzip_p99": percentile(latency, 99),
            "engine_p50": percentile(latency_engine, 50),
            "queue_p50": percentile([t - e for t, e in zip(latency, latency_engine, strict=True)], 50),
            "naive_p50": percentile(times["naive"], 50) if times.get("naive") else math.nan,
            "speedup": med["naive"] / med["bucketzip"],
            "of_bound": med["bound"] / med["bucketzip"],
            "of_floor": (read + write) / med["bucketzip"],
            "bound_complete": complete,
            "cpu": cpu_med,
            "cpu_bound": cpu_bound(cpu_med["bucketzip"], complete, usable_cpus(), self.args.server_cores),
        }

    def throughput(self, c: corpora.Corpus, jobs: int) -> dict[str, Any]:
        self.settle()
        cpu_before = self.server_cpu()
        started = time.perf_counter()
        batch = self.client.submit_many([self.spec(c, f"tp-{c.name}/{i}.zip") for i in range(jobs)])
        for handle in batch.accepted:
            handle.wait(timeout=self.args.timeout)
        seconds = time.perf_counter() - started
        server_cpu = self.server_cpu() - cpu_before
        corpora.delete(self.s3, OUT_BUCKET, f"tp-{c.name}/")
        row = {
            "corpus": c.name,
            "jobs": jobs,
            "seconds": seconds,
            "jobs_per_s": jobs / seconds,
            "input_mb_per_s": jobs * c.input_bytes / MB / seconds,
            "server_cpu_seconds": server_cpu,
        }
        print(f"  throughput {c.name}: {jobs} jobs in {seconds:.2f} s", file=sys.stderr, flush=True)
        return row


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.warm", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="tiny,twenty,medium", help="comma-separated (default: %(default)s)")
    p.add_argument("--runs", type=int, default=20, help="runs per contender on tiny (default: %(default)s)")
    p.add_argument("--big-runs", type=int, default=3, help="runs per contender on the other corpora")
    p.add_argument(
        "--latency-jobs",
        type=int,
        default=20,
        help="bucketzip jobs per corpus for its latency percentiles, the runs included (default: %(default)s)",
    )
    p.add_argument("--concurrency", type=int, default=usable_cpus(), help="worker processes (default: CPUs)")
    p.add_argument("--small-jobs", type=int, default=40, help="tiny jobs at once for throughput (0: skip)")
    p.add_argument("--medium-jobs", type=int, default=4, help="medium jobs at once for throughput (0: skip)")
    p.add_argument("--contenders", default="naive,bucketzip,bound", help="comma-separated (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument(
        "--worker-python",
        help="the interpreter the worker runs on, e.g. a venv's with only bucketzip's own dependencies, as "
        "deployed (default: this one; a development venv's test tools, imported by some libraries when present, "
        "add to a pool process's memory)",
    )
    p.add_argument(
        "--endpoint", help="an S3 endpoint to use instead of a private moto server (credentials from the environment)"
    )
    p.add_argument(
        "--server-pid", type=int, help="with --endpoint: the server's process, on this machine, to measure its CPU"
    )
    p.add_argument(
        "--server-cores",
        type=int,
        help="how many cores the server can use at once, for the CPU bound (default: 1 for moto, its GIL; else CPUs)",
    )
    args = p.parse_args(argv)
    if args.server_pid and not args.endpoint:
        p.error("--server-pid goes with --endpoint")
    if args.server_cores is None:
        args.server_cores = usable_cpus() if args.endpoint else 1
    args.contenders = args.contenders.split(",")
    if "bucketzip" not in args.contenders or not set(args.contenders) <= {"naive", "bucketzip", "bound"}:
        p.error("--contenders: bucketzip and any of naive, bound")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load = os.getloadavg()
    record: dict[str, Any] = {"args": vars(args), "load_before": load, "cpus": os.cpu_count(), "by_size": {}}
    record["cores"] = usable_cpus()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-warm-")))
        if args.endpoint:
            url, server_pid = args.endpoint, args.server_pid
        else:
            url, moto = stack.enter_context(moto_process())
            server_pid = moto.pid
        redis_url = stack.enter_context(redis_server(port=free_port()))  # our own: never the shared one
        if redis_url is None:
            print("redis-server is not installed", file=sys.stderr)
            return 1
        env = child_env(url, local=not args.endpoint)
        env |= {"BUCKETZIP_REDIS_URL": redis_url, "BUCKETZIP_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}"}
        log = stack.enter_context(open(tmp / "worker.log", "wb"))
        worker = stack.enter_context(
            worker_process(env, "bench", log, concurrency=args.concurrency, python=args.worker_python)
        )
        servers = {name: stack.enter_context(serving(f"bench.{name}", url, env)) for name in ("naive", "bound")}
        s3 = harness_s3(url, env, (BUCKET, OUT_BUCKET))
        from bucketzip.client import Client

        client = Client(Settings.from_env(env))
        stack.callback(client.close)
        names = args.corpus.split(",")
        wanted = set(names) | {"tiny"} | ({"medium"} if args.medium_jobs else set())
        built = {n: corpora.build(n, args.scale) for n in corpora.CORPORA if n in wanted}
        for c in built.values():
            corpora.upload(s3, BUCKET, c)
        b = Bench(args, s3, client, servers, server_pid, worker.pid)
        stack.callback(shutil.rmtree, b.tmp, True)
        tiny = built["tiny"]
        # A pool process's first job, once the worker has settled (started long before the job, as in service):
        # one tiny job on each at once. Only the engine's own time is kept; the producer's first submit, which
        # opens its own connections, is not the worker's.
        for pid in children(worker.pid):
            settle(pid)
        first = client.submit_many([b.spec(tiny, f"first/{i}.zip") for i in range(args.concurrency)])
        record["first_jobs"] = [float(h.wait(timeout=args.timeout)["duration"]) for h in first.accepted]
        # Warm up: every pool process and the naive process run a job before anything is measured.
        warmups = client.submit_many([b.spec(tiny, f"warmup/{i}.zip") for i in range(2 * args.concurrency)])
        for handle in warmups.accepted:
            handle.wait(timeout=args.timeout)
        servers["naive"].ask({"keys_file": str(b.keys_file(tiny)), "out": f"s3://{OUT_BUCKET}/warmup/naive.zip"})
        warm_bound = {"keys_file": str(b.keys_file(tiny)), "write_to": f"s3://{OUT_BUCKET}/warmup/b", "write_bytes": 1}
        servers["bound"].ask(warm_bound)
        corpora.delete(s3, OUT_BUCKET, "warmup/")
        corpora.delete(s3, OUT_BUCKET, "first/")
        rss: list[dict[str, Any]] = []

        def sample(phase: str) -> None:
            rss.append({"phase": phase, **{str(p): memory(p) for p in children(worker.pid)}})

        sample("warm")
        for name in names:
            c = built[name]
            runs = args.runs if name == "tiny" else args.big_runs
            record["by_size"][name] = b.by_size(c, runs)
            sample(name)
        record["throughput"] = []
        if args.small_jobs:
            record["throughput"].append(b.throughput(tiny, args.small_jobs))
            sample(f"{args.small_jobs} tiny at once")
        if args.medium_jobs:
            record["throughput"].append(b.throughput(built["medium"], args.medium_jobs))
            sample(f"{args.medium_jobs} medium at once")
        record["rss"] = rss
        record["load_after"] = os.getloadavg()
    report(record)
    out = Path(__file__).parent / "results" / f"warm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nraw numbers: {out}", file=sys.stderr)
    return 0


def latency_verdict(p50: float, server_least: float) -> str:
    """The tiny job's p50 against its target; ``server_least`` as in ``report.verdict``."""
    ms, target = 1000, TINY_P50_TARGET
    head = f"p50 {p50 * ms:.0f} ms, target {target * ms:.0f} ms"
    if p50 <= target:
        return f"{head}: met"
    if server_least >= target:
        return (
            f"{head}: out of reach of any client against this server, which needs {server_least * ms:.0f} ms of CPU "
            "time on the cores it can use to serve the bound's requests alone"
        )
    return f"{head}: not met (the server alone: {server_least * ms:.0f} ms for the bound's requests)"


def report(record: dict[str, Any]) -> None:
    c = record["args"]["concurrency"]
    print(f"\nwarm: a Celery worker (prefork, -c {c}) vs the naive pipeline and the bound, each in a warm process")
    if record["args"].get("worker_python"):
        print(f"(the worker on {record['args']['worker_python']})")
    print(
        f"{'corpus':8} {'objects':>7} {'MB in':>7} {'naive s':>8} {'bucketzip s':>11} {'bound s':>8} "
        f"{'vs naive':>8} {'of bound':>8} {'of floor':>8}  runs"
    )
    for name, r in record["by_size"].items():
        m = r["median"]
        print(
            f"{name:8} {r['objects']:7} {r['input_bytes'] / MB:7.1f} {m['naive']:8.3f} {m['bucketzip']:11.3f} "
            f"{m['bound']:8.3f} {r['speedup']:7.2f}x {r['of_bound']:8.0%} {r['of_floor']:8.0%}  "
            f"{len(r['runs']['bucketzip'])}"
        )
    for name, r in record["by_size"].items():
        ms = 1000
        jobs = len(r.get("latency", r["runs"]["bucketzip"]))
        print(
            f"latency {name}: bucketzip p50 {r['bucketzip_p50'] * ms:.0f} ms, p99 {r['bucketzip_p99'] * ms:.0f} ms "
            f"over {jobs} jobs (naive p50 {r['naive_p50'] * ms:.0f} ms; bound: read "
            f"{r['bound_read'] * ms:.0f} ms + write {r['bound_write'] * ms:.0f} ms); of it the engine "
            f"p50 {r['engine_p50'] * ms:.0f} ms, the queue around it p50 {r['queue_p50'] * ms:.0f} ms"
        )
    if record.get("first_jobs"):
        firsts = ", ".join(f"{t * 1000:.0f}" for t in record["first_jobs"])
        tiny = record["by_size"].get("tiny")
        warm = f"; warm, p50 {tiny['engine_p50'] * 1000:.0f} ms" if tiny else ""
        print(f"first job of each pool process, tiny, the engine's time: {firsts} ms{warm}")
    cores = record.get("cores") or record["cpus"]
    print(f"CPU per job, medians in s: the server's + the contender's own; the bound on {cores} cores (bench README)")
    for name, r in record["by_size"].items():
        cpu = r["cpu"]
        others = ", ".join(
            f"{who} {cpu[who]['server']:.2f} + {cpu[who]['own']:.2f}" for who in ("naive", "bound") if who in cpu
        )
        print(
            f"  {name:8} bucketzip {cpu['bucketzip']['server']:.2f} + {cpu['bucketzip']['own']:.2f}"
            f" (of which Complete ~{r['bound_complete']:.2f}): no schedule ends before {r['cpu_bound']:.2f} s;"
            f" bucketzip {r['median']['bucketzip']:.2f} s = {r['cpu_bound'] / r['median']['bucketzip']:.0%} of it."
            f" {others}"
        )
    server_cores = record["args"].get("server_cores") or 1
    print("targets (issue 11), from this run's medians:")
    for name, r in record["by_size"].items():
        target = SPEEDUP_TARGETS["warm"].get(name)
        cpu = r["cpu"]
        server_least = cpu["bound"]["server"] / server_cores if "bound" in cpu else math.nan
        if target and "naive" in cpu and "bound" in cpu:
            m = r["median"]
            print(f"  {name:8} {verdict(target, m['naive'], m['bucketzip'], server_least, r['cpu_bound'])}")
        if name == "tiny" and "bound" in cpu:
            print(f"  {name:8} {latency_verdict(r['bucketzip_p50'], server_least)}")
    for t in record.get("throughput", []):
        print(
            f"throughput {t['corpus']}: {t['jobs']} jobs at once in {t['seconds']:.2f} s: {t['jobs_per_s']:.1f} "
            f"jobs/s, {t['input_mb_per_s']:.1f} MB/s in; server CPU {t['server_cpu_seconds']:.2f} s"
        )
    peaks: dict[str, int] = {}
    for sample in record.get("rss", []):
        for pid, m in sample.items():
            if pid != "phase":
                peaks[pid] = max(peaks.get(pid, 0), m["VmHWM"])
    print("peak RSS per pool process (MiB): " + ", ".join(f"{v / MiB:.0f}" for v in peaks.values()))
    for sample in record.get("rss", []):
        now = [f"{m['VmRSS'] / MiB:.0f}" for pid, m in sample.items() if pid != "phase"]
        print(f"  RSS after {sample['phase']}: {', '.join(now)} MiB")
    print(f"load average before {record['load_before'][0]:.1f}, after {record['load_after'][0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
