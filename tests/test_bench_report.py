"""The bench's verdict on issue 11's targets: which of its four answers a run gets, from that run's figures."""

from __future__ import annotations

import math

import pytest

from bench.report import verdict
from bench.warm import latency_verdict


@pytest.mark.parametrize(
    ("ours", "server_least", "our_least", "answer"),
    [
        (2.0, 2.5, 2.6, "met"),  # 5x naive (10 s) needs 2.0 s: reached, whatever the bounds say
        (2.7, 2.2, 2.4, "out of reach of any client against this server"),  # the server alone is past 2.0 s
        (2.7, 1.5, 2.4, "out of reach on this machine of bucketzip's work"),  # only with our own work added
        (2.7, 1.5, 1.9, "not met"),  # both bounds allow 2.0 s: ours to close
    ],
)
def test_a_speedup_target_gets_the_answer_its_figures_allow(
    ours: float, server_least: float, our_least: float, answer: str
) -> None:
    said = verdict(5.0, 10.0, ours, server_least, our_least)
    assert said.startswith(f"{10.0 / ours:.2f}x, target 5x (needs 2.00 s): {answer}")


def test_a_speedup_target_not_met_says_how_close_to_its_bound_it_must_come() -> None:
    assert verdict(5.0, 10.0, 2.5, 1.5, 1.9).endswith("it needs 95% of the 1.90 s CPU bound, and got 76%")


@pytest.mark.parametrize(
    ("p50", "server_least", "answer"),
    [(0.090, 0.150, "met"), (0.220, 0.150, "out of reach of any client"), (0.220, 0.080, "not met")],
)
def test_the_tiny_latency_target_gets_the_answer_its_figures_allow(
    p50: float, server_least: float, answer: str
) -> None:
    assert latency_verdict(p50, server_least).startswith(f"p50 {p50 * 1000:.0f} ms, target 100 ms: {answer}")


def test_the_cpu_bound_counts_the_cores_the_server_can_use() -> None:
    from bench.report import cpu_bound

    cpu = {"server": 3.0, "own": 1.0}  # 1 s of it the Complete, after the last part
    assert cpu_bound(cpu, 1.0, cores=2) == 1.0 + 2.0  # moto: its 2 s before the Complete on its one core
    assert cpu_bound(cpu, 1.0, cores=2, server_cores=2) == 1.0 + 1.5  # a server on both: (2 + 1) / 2


def test_a_speedup_target_against_an_unmeasured_server_says_so() -> None:
    said = verdict(5.0, 10.0, 2.5, math.nan, math.nan)
    assert said.endswith("not met (the server's CPU was not measured)")
