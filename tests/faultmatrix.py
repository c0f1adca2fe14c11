"""The fault matrix's report: tests/test_faults.py adds one row per case to ``FAULT_MATRIX``; at the end of the
run this plugin (loaded by conftest) prints the table with its totals and writes it to
``.bucketzip/fault-matrix.md``."""

from __future__ import annotations

import os
from typing import Any

import pytest

FAULT_MATRIX: list[dict[str, Any]] = []
OUTCOMES: dict[str, str] = {}
COLUMNS = ("case", "jobs", "state", "runs", "archive", "publications", "orphans", "record", "test")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and report.passed:
        return
    outcome: str = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfail: known defect" if report.skipped else "XPASS"
    if report.when == "call" or report.nodeid not in OUTCOMES:
        OUTCOMES[report.nodeid] = outcome


def render(rows: list[dict[str, Any]], outcomes: dict[str, str]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| --- | ---: | --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        cells = {**row, "test": outcomes.get(row["nodeid"], "not run"), "case": row.get("fault", row["nodeid"])}
        lines.append("| " + " | ".join(_cell(cells.get(c)) for c in COLUMNS) + " |")
    done = [r for r in rows if "state" in r]
    totals = {
        "jobs run": sum(r.get("jobs", 0) for r in rows),
        "succeeded": sum(1 for r in done if r["state"] == "succeeded"),
        "failed cleanly": sum(
            1 for r in done if r["state"] in ("failed", "cancelled") and r["archive"] == "absent" and r["orphans"] == 0
        ),
        "partial archives": sum(1 for r in done if r["archive"] == "PARTIAL"),
        "double publications": sum(1 for r in done if r["publications"] > 1),
        "orphan uploads after the sweep": sum(r["orphans"] for r in done),
        "records lost": sum(1 for r in done if r["record"] == "LOST"),
        "records that do not tell the truth": sum(1 for r in done if r["record"] == "WRONG"),
        "cases passed": sum(1 for r in rows if outcomes.get(r["nodeid"]) == "passed"),
        "cases failing on a known defect (xfail)": sum(
            1 for r in rows if outcomes.get(r["nodeid"], "").startswith("xfail")
        ),
    }
    lines += ["", "| total | |", "| --- | ---: |"] + [f"| {k} | {v} |" for k, v in totals.items()]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "/")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FAULT_MATRIX:
        return
    text = render(FAULT_MATRIX, OUTCOMES)
    directory = os.path.join(str(terminalreporter.config.rootpath), ".bucketzip")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "fault-matrix.md"), "w") as f:
        f.write(text)
    terminalreporter.write_sep("=", "fault matrix (also in .bucketzip/fault-matrix.md)")
    terminalreporter.write(text)
