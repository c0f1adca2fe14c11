"""The command line: ``bucketzip run`` makes an archive in this process; the queue commands talk to workers."""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from typing import IO, Any, NoReturn

import click

from .allocator import lasting
from .cli_errors import describe, exit_code
from .config import Settings
from .errors import BucketzipError, InvalidJob
from .spec import JobSpec


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
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidJob("spec", path, f"cannot be read: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob("spec", path, f"is not valid JSON: {exc}") from None


def fail(exc: BaseException) -> NoReturn:
    click.echo(f"bucketzip: error: {describe(exc)}", err=True)
    sys.exit(exit_code(exc))


class _Main(click.Group):
    """Every command's failure is one line on stderr and a non-zero exit: the errors a command does not handle
    itself (a service that does not answer, say) are described here, never shown as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("\nbucketzip: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            fail(exc)


@click.group(cls=_Main)
def main() -> None:
    """bucketzip: zip many S3 objects into one archive in S3."""


def entry() -> NoReturn:
    """The ``bucketzip`` program (and ``python -m bucketzip``): ``main``, then leave at once.

    When a command is done, its output is flushed and the exit handlers run (logging's among them), then the
    process ends without the interpreter's teardown: freeing every module and object of the S3 SDKs took
    ~140 ms after ``bucketzip run`` had printed its result, about a sixth of a small job's run. Every thread
    still there is idle by then (the job's pools; the reads' event loop). Called as a library (click's
    ``CliRunner``), ``main`` returns or raises as usual."""
    try:
        main()
    except SystemExit as stop:
        code = stop.code
        run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
        if not (code is None or isinstance(code, int)) or run_exitfuncs is None:
            raise  # a message to print (sys.exit("...")), or no way to run the handlers: the usual exit
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed pipe: what the usual exit would meet too
            code = code or 1
        run_exitfuncs()
        os._exit(code or 0)
    raise SystemExit(0)  # main() returns only when click is told not to exit: not here


@main.command()
@click.argument("spec_file", metavar="SPEC.json")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def run(spec_file: str, quiet: bool) -> None:
    """Run one job in this process (no broker): progress on stderr, the result as JSON on stdout."""
    printer = None if quiet else ProgressPrinter()
    try:
        settings = Settings.from_env()
        spec = JobSpec.from_dict(load_spec(spec_file), settings)
        with lasting():  # the modules and clients a cold run makes first last to its end: see ``lasting``
            from .engine import prepare, run_job  # the engine (s3fs, the ZIP writer) loads only where it is needed

            prepare(spec, settings)
        progress = (lambda p: printer(p.to_dict())) if printer else None
        result = run_job(spec, settings, progress, on_waiting=_waiting_printer(settings))
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
    _record(settings, result.to_dict())


def _waiting_printer(settings: Settings) -> Any:
    def waiting(pending: BucketzipError) -> None:
        click.echo(f"bucketzip: {pending}; next check in {settings.restore_poll:.0f}s", err=True)

    return waiting


def _record(settings: Settings, result: dict[str, Any]) -> None:
    """Record the archive in the catalog when the registry's Redis answers (BUCKETZIP_RUN_CATALOG=off: never).
    The archive exists either way: a registry that cannot be reached is a note on stderr, not a failure."""
    if settings.run_catalog == "off":
        return
    try:
        import redis

        from .catalog import Catalog

        client = redis.Redis.from_url(
            settings.redis_url, decode_responses=True, socket_connect_timeout=1, socket_timeout=5
        )
        try:
            record = Catalog(settings, client).record(result.get("job_id"), result)
        finally:
            client.close()
    except Exception as exc:
        click.echo(f"bucketzip: not recorded in the catalog ({type(exc).__name__}: {exc})", err=True)
        return
    click.echo(f"bucketzip: recorded in the catalog as {record['id']}", err=True)


# --- the queue: producer commands (no engine, no s3fs loaded) ---


def _client() -> Any:
    from .client import Client

    return Client(Settings.from_env())


def _job_line(job: Any) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created)) if job.created else "-"
    extra = ""
    if job.error:
        extra = f"  {job.error.get('type')}: {job.error.get('message')}"
    elif job.result:
        extra = f"  {fmt_bytes(job.result.get('size', 0))}, {job.result.get('entries')} entries"
    return f"{job.id}  {job.state:<9}  {when}  {job.destination or '-'}{extra}"


def _follow(client: Any, job_id: str, printer: ProgressPrinter | None, timeout: float | None) -> dict[str, Any]:
    """Print progress while the job runs, then return its result (or raise its error)."""
    if printer is None:
        return dict(client.wait(job_id, timeout))
    from .registry import TERMINAL

    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    try:
        while True:
            job = client.status(job_id)
            if job.state in TERMINAL:
                return dict(client.wait(job_id, 30))
            if job.progress and job.progress != last:
                printer(job.progress)
                last = job.progress
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
            time.sleep(WATCH_INTERVAL)
    finally:
        printer.close()


WATCH_INTERVAL = 0.25  # seconds between reads of a running job's state: about what a person can follow


@main.command()
@click.argument("spec_file", metavar="SPEC.json")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job; print its result as JSON.")
@click.option("--progress", is_flag=True, help="Wait, showing progress on stderr.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
def submit(spec_file: str, wait_: bool, progress: bool, timeout: float | None) -> None:
    """Validate a job and enqueue it; print its id (and, with --wait, its result)."""
    try:
        client = _client()
        handle = client.submit(load_spec(spec_file))
        click.echo(handle.id)
        if wait_ or progress:
            result = _follow(client, handle.id, ProgressPrinter() if progress else None, timeout)
            click.echo(json.dumps(result, indent=2, default=str))
    except (BucketzipError, TimeoutError) as exc:
        fail(exc)


@main.command()
@click.argument("jobs_file", metavar="JOBS.jsonl")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="Jobs per round trip.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def batch(jobs_file: str, batch_size: int, quiet: bool) -> None:
    """Enqueue one job per line of a JSON Lines file (- for stdin). Prints "LINE ID" per accepted job on
    stdout and each invalid line on stderr; exits 1 if any line was invalid."""
    try:
        lines = _read_lines(jobs_file)
        client = _client()
    except BucketzipError as exc:
        fail(exc)
    invalid: list[tuple[int, str]] = []
    accepted = 0
    started = time.monotonic()
    with click.progressbar(length=len(lines), label="enqueueing", file=sys.stderr, hidden=quiet) as bar:
        for i in range(0, len(lines), batch_size):
            chunk = lines[i : i + batch_size]
            specs, numbers = [], []
            for n, line in chunk:
                try:
                    specs.append(json.loads(line))
                    numbers.append(n)
                except json.JSONDecodeError as exc:
                    invalid.append((n, str(InvalidJob("spec", line.strip()[:80], f"is not valid JSON: {exc}"))))
            result = client.submit_many(specs, batch_size=batch_size)
            bad = {pos: exc for pos, exc in result.invalid}
            good = iter(result.accepted)
            for pos, n in enumerate(numbers):
                if pos in bad:
                    invalid.append((n, str(bad[pos])))
                else:
                    click.echo(f"{n} {next(good).id}")
                    accepted += 1
            bar.update(len(chunk))
    elapsed = time.monotonic() - started
    for n, message in sorted(invalid):
        click.echo(f"line {n}: {message}", err=True)
    rate = accepted / elapsed if elapsed > 0 else 0.0
    click.echo(f"{accepted} accepted, {len(invalid)} invalid, in {elapsed:.2f}s ({rate:.0f} jobs/s)", err=True)
    sys.exit(1 if invalid else 0)


def _read_lines(path: str) -> list[tuple[int, str]]:
    """The non-blank lines of a JSON Lines file (``-``: standard input), numbered from 1."""
    try:
        if path == "-":
            return [(n, line) for n, line in enumerate(sys.stdin, 1) if line.strip()]
        with open(path, encoding="utf-8") as stream:
            return [(n, line) for n, line in enumerate(stream, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise InvalidJob("JOBS.jsonl", path, f"cannot be read: {reason}") from None


@main.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The whole record as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job: state, attempt, progress while it runs, result or error."""
    try:
        job = _client().status(job_id)
    except BucketzipError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(job.to_dict(), indent=2, default=str))
        return
    click.echo(_job_line(job))
    click.echo(f"attempt {job.attempt}, runs {job.runs}" + (f", retry of {job.retry_of}" if job.retry_of else ""))
    if job.retried_by:
        click.echo(f"retried as {job.retried_by}")
    if job.progress:
        click.echo(progress_line(job.progress))
    if job.state == "waiting" and job.restore:
        restore = job.restore
        click.echo(f"waiting for restores of archived sources: {restore['restored']}/{restore['total']} restored")


@main.command()
@click.argument("job_ids", metavar="[ID]...", nargs=-1)
@click.option("--interval", type=float, default=WATCH_INTERVAL, show_default=True, help="Seconds between reads.")
def watch(job_ids: tuple[str, ...], interval: float) -> None:
    """Live progress of the given jobs, or of every queued and running job, until they end."""
    from .registry import TERMINAL

    client = _client()
    tty = sys.stderr.isatty()
    drawn = 0
    last: dict[str, str] = {}
    try:
        while True:
            ids = list(job_ids) or [
                j.id for s in ("running", "queued", "retrying", "waiting") for j in client.jobs(s, 50)
            ]
            jobs = []
            for job_id in ids:
                try:
                    jobs.append(client.status(job_id))
                except BucketzipError as exc:
                    fail(exc)
            lines = [
                f"{j.id[:12]}  {j.state:<9}  " + (progress_line(j.progress) if j.progress else j.destination or "")
                for j in jobs
            ]
            if tty:
                sys.stderr.write("\x1b[F\x1b[K" * drawn + "".join(line[:200] + "\n" for line in lines))
                drawn = len(lines)
            else:
                for j, line in zip(jobs, lines, strict=True):
                    if last.get(j.id) != line:
                        sys.stderr.write(line + "\n")
                        last[j.id] = line
            sys.stderr.flush()
            if all(j.state in TERMINAL for j in jobs):
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
@click.option(
    "--state",
    type=click.Choice(["queued", "running", "retrying", "waiting", "succeeded", "failed", "cancelled", "retried"]),
)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Records as JSON.")
def jobs(state: str | None, limit: int, as_json: bool) -> None:
    """List recorded jobs, newest first."""
    try:
        found = _client().jobs(state, limit)
    except BucketzipError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps([j.to_dict() for j in found], indent=2, default=str))
    else:
        for job in found:
            click.echo(_job_line(job))


@main.command()
@click.argument("job_id", metavar="ID", required=False)
@click.option("--all-failed", is_flag=True, help="Retry every job recorded as failed.")
def retry(job_id: str | None, all_failed: bool) -> None:
    """Enqueue a failed job again (a new attempt, linked to it); print the new id."""
    if bool(job_id) == all_failed:
        raise click.UsageError("give a job ID or --all-failed (not both)")
    try:
        client = _client()
        handles = client.retry_failed() if all_failed else [client.retry(job_id)]
    except BucketzipError as exc:
        fail(exc)
    for handle in handles:
        click.echo(handle.id)
    if all_failed:
        click.echo(f"{len(handles)} job(s) retried", err=True)


@main.command()
@click.argument("job_id", metavar="ID")
def cancel(job_id: str) -> None:
    """Cancel a job: a queued one never runs; a running one stops and aborts its upload."""
    try:
        click.echo(_client().cancel(job_id))
    except BucketzipError as exc:
        fail(exc)


@main.command()
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for each service.")
def check(timeout: float) -> None:
    """Check that the broker, the result backend, the registry's Redis and S3 answer. Exit 0 when all do."""
    try:
        client = _client()
    except BucketzipError as exc:
        fail(exc)
    ok = True
    for name, error in client.check(timeout):
        ok &= error is None
        click.echo(f"{name:<15} {'ok' if error is None else 'FAIL: ' + error}")
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on.")
@click.option("--log-level", default="info", show_default=True, help="uvicorn's log level.")
def serve(host: str, port: int, log_level: str) -> None:
    """Serve the HTTP API (/v1, /docs) and the dashboard (/). Without BUCKETZIP_API_TOKENS, loopback only."""
    try:
        from .web.app import serve as run_server
    except ImportError as exc:
        click.echo(f"bucketzip: error: the web extra is not installed ({exc}): pip install 'bucketzip[web]'", err=True)
        sys.exit(2)
    try:
        run_server(host, port, Settings.from_env(), log_level)
    except BucketzipError as exc:
        fail(exc)


from .cli_archives import archives, restore, retrieve  # noqa: E402  (they use the helpers above)

main.add_command(archives)
main.add_command(restore)
main.add_command(retrieve)

if __name__ == "__main__":  # pragma: no cover
    main()
