"""The command line of archives made: the catalog (list, search, export, import) and getting archives back
(``restore`` from an S3 archive class, ``retrieve`` from a vault). Registered on ``cli.main``."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

import click

from .cli import fail, fmt_bytes
from .config import Settings
from .errors import BucketzipError, InvalidJob

TIERS = ["Bulk", "Standard", "Expedited"]
NOT_READY = 75  # EX_TEMPFAIL: ``retrieve --to`` before the vault has the archive ready; run it again later


def _catalog() -> Any:
    from .catalog import Catalog

    return Catalog(Settings.from_env())


def _guard(action: Any) -> Any:
    """Run ``action``; any failure (ours, Redis's, the file system's) is one line on stderr."""
    import redis

    try:
        return action()
    except (BucketzipError, redis.RedisError, OSError) as exc:
        fail(exc)


def _when(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        reason = f"{value!r} is not a date (YYYY-MM-DD or an ISO 8601 time)"
        raise click.BadParameter(reason, param_hint=option) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _line(a: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["created"]))
    size = fmt_bytes(a["size"]) if a.get("size") is not None else "?"
    entries = f"{a['entries']} entries" if a.get("entries") is not None else ""
    return f"{when}  {a['url']}  {size}  {entries}  {a.get('etag') or a.get('tree_hash') or ''}".rstrip()


@click.group(invoke_without_command=True)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Records as JSON.")
@click.option("--prefix", help="Only archives whose URL starts with this (s3://bucket/exports/).")
@click.option("--vault", help="Only archives in this Glacier vault.")
@click.option("--job", "job_id", help="Only the archive(s) of this job.")
@click.option("--since", help="Made at or after this date/time (ISO 8601, UTC unless it says).")
@click.option("--until", help="Made before this date/time.")
@click.option("--cursor", help="Continue after this record id (the last one of the previous page).")
@click.pass_context
def archives(ctx: click.Context, limit: int, as_json: bool, **search: Any) -> None:
    """List (and search) the archives made, newest first; export and import the catalog."""
    if ctx.invoked_subcommand is not None:
        return
    search["since"] = _when(search["since"], "--since")
    search["until"] = _when(search["until"], "--until")
    found = _guard(lambda: _catalog().search(limit, **search))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for a in found:
        click.echo(_line(a))


@archives.command("export")
@click.argument("file", metavar="FILE.jsonl")
def export(file: str) -> None:
    """Write every catalog record, oldest first, one JSON object per line (- for stdout)."""

    def run() -> int:
        out: IO[str] = sys.stdout if file == "-" else open(file, "w", encoding="utf-8")  # noqa: SIM115
        n = 0
        try:
            for record in _catalog().export():
                out.write(json.dumps(record, sort_keys=True) + "\n")
                n += 1
        finally:
            if out is not sys.stdout:
                out.close()
        return n

    click.echo(f"{_guard(run)} record(s) exported", err=True)


def _read_jsonl(file: str) -> Any:
    stream: IO[str] = sys.stdin if file == "-" else open(file, encoding="utf-8")  # noqa: SIM115
    try:
        for n, line in enumerate(stream, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidJob(f"line {n}", line.strip()[:80], f"is not valid JSON: {exc}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


@archives.command("import")
@click.argument("file", metavar="FILE.jsonl")
def import_(file: str) -> None:
    """Add the records of an export (- for stdin); records already in the catalog are left as they are."""
    added, present = _guard(lambda: _catalog().import_records(_read_jsonl(file)))
    click.echo(f"{added} record(s) added, {present} already present", err=True)


@archives.command("import-shelve")
@click.argument("file", metavar="SHELVE")
@click.option("--vault", required=True, help="The vault the shelve's archive ids belong to.")
def import_shelve(file: str, vault: str) -> None:
    """Import a catalog kept the classic way: a Python shelve of description -> vault archive id."""
    added, present = _guard(lambda: _catalog().import_shelve(file, vault))
    click.echo(f"{added} record(s) added, {present} already present", err=True)


@click.command()
@click.argument("url", metavar="s3://BUCKET/KEY")
@click.option("--days", type=click.IntRange(1, 36_500), default=1, show_default=True, help="Days the copy stays.")
@click.option("--tier", type=click.Choice(TIERS), default="Standard", show_default=True)
def restore(url: str, days: int, tier: str) -> None:
    """Restore an object (an archive, say) from an S3 archive class (GLACIER, DEEP_ARCHIVE) for reading."""
    from .engine import run_sync
    from .retrieval import restore_object

    try:
        report = run_sync(restore_object(url, days, tier, Settings.from_env()))
    except BucketzipError as exc:
        fail(exc)
    click.echo(f"{url}: {report['message']}")


@click.command()
@click.argument("url", metavar="glacier://VAULT/ARCHIVE_ID")
@click.option("--to", "to", metavar="FILE|s3://BUCKET/KEY", help="Where to write the archive once it is ready.")
@click.option("--tier", type=click.Choice(TIERS), default="Standard", show_default=True)
@click.option("--wait", is_flag=True, help="Wait for the vault's job (polling every BUCKETZIP_RESTORE_POLL s).")
def retrieve(url: str, to: str | None, tier: str, wait: bool) -> None:
    """Start (or find) the vault's retrieval job for an archive, report its status, and write the archive to
    a file or an S3 object once it is ready. Exit 75 when --to is given and the job is not done yet."""
    from .engine import run_sync
    from .retrieval import retrieve as retrieve_archive

    def progress(status: dict[str, Any]) -> None:
        click.echo(f"bucketzip: retrieval job {status['job_id']}: {status['status']}", err=True)

    try:
        status = run_sync(retrieve_archive(url, Settings.from_env(), to, tier, wait, progress))
    except BucketzipError as exc:
        fail(exc)
    click.echo(json.dumps(status, indent=2))
    if to and "written" not in status:
        click.echo(f"bucketzip: retrieval job {status['job_id']} is {status['status']}; run this again later", err=True)
        sys.exit(NOT_READY)
