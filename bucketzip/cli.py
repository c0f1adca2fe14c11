"""The command line: ``bucketzip run`` makes an archive in this process; the queue commands talk to workers."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import click

from .config import Settings
from .errors import BucketzipError, ConfigError, InvalidJob


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def progress_line(p: dict[str, Any]) -> str:
    """One human line of a PROGRESS state (the task's meta or the engine's Progress.to_dict())."""
    eta = p.get("eta")
    return (
        f"{p.get('files_done', 0)}/{p.get('files_total', '?')} files  "
        f"{fmt_bytes(p.get('bytes_done', 0))}/{fmt_bytes(p.get('bytes_total', 0))}  "
        f"{fmt_bytes(p.get('rate') or 0)}/s  eta {'?' if eta is None else f'{eta:.0f}s'}  "
        f"{p.get('current') or ''}"
    )


class ProgressPrinter:
    """Progress on stderr: rewritten in place on a terminal, one line per report otherwise."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, p: dict[str, Any]) -> None:
        line = progress_line(p)
        if self.tty:
            self.stream.write("\r\x1b[K" + line[:200])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def load_spec(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob("spec", path, f"is not valid JSON: {exc}") from None


def fail(exc: BaseException) -> None:
    click.echo(f"bucketzip: error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, InvalidJob | ConfigError) else 1)


@click.group()
def main() -> None:
    """bucketzip: zip many S3 objects into one archive in S3."""


@main.command()
@click.argument("spec_file", metavar="SPEC.json")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def run(spec_file: str, quiet: bool) -> None:
    """Run one job in this process (no broker): progress on stderr, the result as JSON on stdout."""
    from .engine import run_job  # the engine (s3fs, the ZIP writer) loads only for commands that need it

    printer = None if quiet else ProgressPrinter()
    try:
        settings = Settings.from_env()
        result = run_job(load_spec(spec_file), settings, (lambda p: printer(p.to_dict())) if printer else None)
    except BucketzipError as exc:
        if printer:
            printer.close()
        fail(exc)
    except KeyboardInterrupt:
        click.echo("\nbucketzip: interrupted; the upload was aborted", err=True)
        sys.exit(130)
    if printer:
        printer.close()
    click.echo(json.dumps(result.to_dict(), indent=2, default=str))


if __name__ == "__main__":  # pragma: no cover
    main()
