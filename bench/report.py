"""Turn outcomes into a table per corpus and a JSON record of every raw number."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .corpus import Corpus
from .runner import Outcome

MB = 1e6
MiB = 2**20


def cpu_bound(cpu: dict[str, float], complete: float, cores: int, server_cores: int = 1) -> float:
    """The least wall time in which this machine can do the CPU work a job made: the server's, on at most
    ``server_cores`` (moto serves on one: its GIL), and the contender's own, on ``cores`` in all.
    CompleteMultipartUpload (``complete``, as the bound measured it for an archive of the same size) comes after
    the last part, with nothing left to overlap it."""
    if math.isnan(complete):
        complete = 0.0
    server = max(0.0, cpu["server"] - complete)
    return complete + max(server / server_cores, (server + cpu["own"]) / cores)


# Issue 11's targets: the least speed-up over naive for a corpus (warm and cold alike, twenty warm only), and
# the tiny job's warm p50 latency.
SPEEDUP_TARGETS = {"cold": {"medium": 5.0, "mixed": 5.0, "large": 5.0}}
SPEEDUP_TARGETS["warm"] = {**SPEEDUP_TARGETS["cold"], "twenty": 3.0}
TINY_P50_TARGET = 0.100


def verdict(target: float, naive: float, ours: float, server_least: float, our_least: float) -> str:
    """Whether bucketzip's median ``ours`` is ``target`` times faster than naive's; if not, what stands in the way.

    ``server_least``: the least time in which the server can serve the bound's requests, which any archiver must
    make (read every object, write the archive): its CPU for them over the cores it can use (moto: one, its GIL).
    ``our_least``: ``cpu_bound`` of bucketzip's own work and the server's for it. Both from the same run as the
    medians; NaN where the server's CPU was not measured (an endpoint elsewhere).
    """
    need = naive / target
    head = f"{naive / ours:.2f}x, target {target:g}x (needs {need:.2f} s)"
    if ours <= need:
        return f"{head}: met"
    if math.isnan(server_least) or math.isnan(our_least):
        return f"{head}: not met (the server's CPU was not measured)"
    if server_least >= need:
        return (
            f"{head}: out of reach of any client against this server, which needs {server_least:.2f} s of CPU "
            "time on the cores it can use to serve the bound's requests alone"
        )
    if our_least >= need:
        return (
            f"{head}: out of reach on this machine of bucketzip's work and the server's for it, which no schedule "
            f"ends before {our_least:.2f} s (the server alone: {server_least:.2f} s for the bound's requests)"
        )
    return (
        f"{head}: not met; it needs {our_least / need:.0%} of the {our_least:.2f} s CPU bound, and got "
        f"{our_least / ours:.0%}"
    )


def summarize(c: Corpus, outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    """Per contender: median seconds, throughput, archive size, ratio, peak RSS, and the runs' times."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(o.contender for o in outcomes):
        mine = [o for o in outcomes if o.contender == name]
        good = [o for o in mine if o.ok and o.seconds is not None]
        row: dict[str, Any] = {"runs": [o.seconds for o in good], "failed": len(mine) - len(good)}
        if good:
            median = statistics.median(o.seconds for o in good if o.seconds is not None)
            sizes = [o.output_bytes for o in good if o.output_bytes]
            row |= {
                "median_seconds": median,
                "input_mb_per_s": c.input_bytes / MB / median,
                "peak_rss_bytes": max(o.peak_rss or 0 for o in good),
            }
            if sizes:
                row |= {"output_bytes": sizes[-1], "ratio": c.input_bytes / sizes[-1]}
            cpu = [o.server_cpu for o in good if o.server_cpu is not None]
            if cpu:
                row["server_cpu_seconds"] = statistics.median(cpu)
            own = [o.own_cpu for o in good if o.own_cpu is not None]
            if own:
                row["own_cpu_seconds"] = statistics.median(own)
            if name == "bound":
                row["read_seconds"] = statistics.median(o.result["read_seconds"] for o in good)
                row["write_seconds"] = statistics.median(o.result["write_seconds"] for o in good)
                row["complete_seconds"] = statistics.median(o.result["complete_seconds"] for o in good)
        else:
            row["error"] = mine[-1].error if mine else None
        out[name] = row
    return out


def table(c: Corpus, summary: dict[str, dict[str, Any]], cores: int = 2) -> str:
    lines = [
        f"\n{c.name}: {len(c.objects)} objects, {c.input_bytes / MB:,.1f} MB in",
        f"{'contender':10} {'median s':>9} {'in MB/s':>8} {'out MB':>9} {'ratio':>6} {'RSS MiB':>8} "
        f"{'srv CPU s':>9}  runs, s",
    ]
    for name, row in summary.items():
        if "median_seconds" not in row:
            lines.append(f"{name:10} {'FAILED':>9}  {(row.get('error') or '').splitlines()[0][:80]}")
            continue
        out_mb = f"{row['output_bytes'] / MB:,.1f}" if "output_bytes" in row else "-"
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
        runs = " ".join(f"{s:.2f}" for s in row["runs"])
        cpu = f"{row['server_cpu_seconds']:.2f}" if "server_cpu_seconds" in row else "-"
        lines.append(
            f"{name:10} {row['median_seconds']:9.2f} {row['input_mb_per_s']:8.1f} {out_mb:>9} {ratio:>6} "
            f"{row['peak_rss_bytes'] / MiB:8.0f} {cpu:>9}  {runs}"
        )
    if "read_seconds" in summary.get("bound", {}):
        b = summary["bound"]
        read, write = b["read_seconds"], b["write_seconds"]
        lines.append(
            f"bound = slower of: read every object {read:.2f} s, write the archive {write:.2f} s "
            f"(of which CompleteMultipartUpload {b['complete_seconds']:.2f} s, after the last byte)"
        )
        # An archiver cannot overlap what the server itself does serially: moto is one GIL-bound process,
        # so the GETs and the PUTs of one job queue for the same core. Read + write is that floor.
        lines.append(f"serial server floor = read + write = {read + write:.2f} s")
    bz = summary.get("bucketzip", {}).get("median_seconds")
    naive = summary.get("naive", {}).get("median_seconds")
    bound = summary.get("bound", {}).get("median_seconds")
    if bz and naive:
        lines.append(f"bucketzip vs naive: {naive / bz:.2f}x faster")
    if bz and bound:
        lines.append(f"bucketzip reaches {bound / bz:.0%} of the bound")
    b = summary.get("bound", {})
    if bz and "read_seconds" in b:
        lines.append(f"bucketzip reaches {(b['read_seconds'] + b['write_seconds']) / bz:.0%} of the serial floor")
    mine = summary.get("bucketzip", {})
    if bz and "server_cpu_seconds" in mine and "own_cpu_seconds" in mine:
        # As in warm mode (bench README), but for a whole process: its own CPU includes its start-up, which no
        # server work overlaps, so the true least time is longer than this.
        work = {"server": mine["server_cpu_seconds"], "own": mine["own_cpu_seconds"]}
        least = cpu_bound(work, b.get("complete_seconds", math.nan), cores)
        lines.append(
            f"CPU per run, medians: bucketzip {work['own']:.2f} s own + {work['server']:.2f} s the server's: no "
            f"schedule on {cores} cores ends before {least:.2f} s; bucketzip reaches {least / bz:.0%} of it"
            + (f"; 5x naive needs {naive / 5:.2f} s" if naive else "")
        )
        target = SPEEDUP_TARGETS["cold"].get(c.name)
        if target and naive and "server_cpu_seconds" in b:
            lines.append(f"target: {verdict(target, naive, bz, b['server_cpu_seconds'], least)}")
    return "\n".join(lines)


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=_default) + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, Outcome):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
