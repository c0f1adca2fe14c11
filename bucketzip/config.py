"""Settings: the only module that reads the environment.

``Settings.from_env()`` builds one frozen object from a mapping (``os.environ`` by default), so tests and
embedders hand in their own. S3 connection details use the variables the AWS SDK already defines
(``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, ``AWS_PROFILE``...); bucketzip's own use the ``BUCKETZIP_`` prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError

PREFIX = "BUCKETZIP_"

MiB = 2**20
GiB = 2**30
TiB = 2**40

MIN_PART_SIZE = 5 * MiB  # S3 rejects smaller non-final parts
MAX_PART_SIZE = 5 * GiB  # S3's largest part
MAX_PARTS = 10_000  # S3's most parts in one multipart upload
MAX_OBJECT_SIZE = 5 * TiB  # S3's largest object: no archive can be larger


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def soft_limit_for(hard: int) -> int:
    """The default soft time limit: a tenth of the hard limit under it, at least 1 s and at most 60 s (the
    time an abort of the upload needs), so that the job stops cleanly before it is killed."""
    return hard - max(1, min(60, hard // 10))


def _size(text: str) -> int:
    """Parse ``8388608``, ``8MiB``, ``8M``, ``1.5GiB`` (binary units either way)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _csv(text: str) -> frozenset[str]:
    return frozenset(p.strip() for p in text.split(",") if p.strip())


API_ROLES = ("submit", "read", "admin")
MIN_TOKEN_LENGTH = 16  # a bearer token is a password: short ones are guessable


def _tokens(text: str) -> tuple[tuple[str, str], ...]:
    """Parse ``ROLE:TOKEN,ROLE:TOKEN``. Messages never repeat a token (they may reach a log)."""
    pairs: list[tuple[str, str]] = []
    for n, item in enumerate((p.strip() for p in text.split(",") if p.strip()), 1):
        role, sep, token = item.partition(":")
        role, token = role.strip().lower(), token.strip()
        if not sep or role not in API_ROLES:
            raise ValueError(f"item {n} must be ROLE:TOKEN with ROLE one of {', '.join(API_ROLES)}")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"item {n}: the token must be at least {MIN_TOKEN_LENGTH} characters")
        if any(token == t for _, t in pairs):
            raise ValueError(f"item {n}: the same token is listed twice")
        pairs.append((role, token))
    return tuple(pairs)


def _bool(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True)
class Settings:
    """Everything bucketzip can be configured with. Field metadata names the variable and its parser."""

    # --- S3 connection (the AWS SDK's own variables) ---
    endpoint_url: str | None = field(default=None, metadata={"env": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")})
    region: str | None = field(default=None, metadata={"env": ("AWS_REGION", "AWS_DEFAULT_REGION")})
    profile: str | None = field(default=None, metadata={"env": ("AWS_PROFILE",)})
    access_key_id: str | None = field(default=None, metadata={"env": ("AWS_ACCESS_KEY_ID",)}, repr=False)
    secret_access_key: str | None = field(default=None, metadata={"env": ("AWS_SECRET_ACCESS_KEY",)}, repr=False)
    session_token: str | None = field(default=None, metadata={"env": ("AWS_SESSION_TOKEN",)}, repr=False)
    # Glacier vaults (glacier://VAULT): botocore's service-specific endpoint variable, then the global one.
    glacier_endpoint_url: str | None = field(
        default=None, metadata={"env": ("AWS_ENDPOINT_URL_GLACIER", "AWS_ENDPOINT_URL")}
    )

    # --- the archive ---
    part_size: int = field(default=8 * MiB, metadata={"parse": _size})
    compression_level: int = field(default=6, metadata={"parse": int})  # zlib's scale, 0-9
    # Use a source's full-object CRC-32 checksum (S3's ChecksumCRC32) for a STORED entry, which must declare
    # its CRC-32 before its data; without one, such an object is read twice (see entries.py).
    source_checksums: bool = field(default=True, metadata={"parse": _bool})

    # --- limits on a job (a job over one is invalid before any byte is written) ---
    max_entries: int = field(default=100_000, metadata={"parse": int})
    max_input_bytes: int = field(default=1 * TiB, metadata={"parse": _size})
    max_sources: int = field(default=1_000, metadata={"parse": int})
    # Keys a job's listings may go through, matched or not (a glob over a huge prefix matches few of them):
    # listing 1,000,000 keys is ~1,000 requests, a minute or two against S3.
    max_keys_listed: int = field(default=1_000_000, metadata={"parse": int})
    allowed_buckets: frozenset[str] = field(default=frozenset(), metadata={"parse": _csv})  # empty: any
    allowed_destination_buckets: frozenset[str] = field(default=frozenset(), metadata={"parse": _csv})
    # Specs may come from untrusted web requests: only s3:// (and glacier:// vaults as destinations) unless an
    # operator widens this (e.g. "s3,glacier,file").
    allowed_protocols: frozenset[str] = field(default=frozenset({"s3", "glacier"}), metadata={"parse": _csv})
    max_presign_expires: int = field(default=7 * 24 * 3600, metadata={"parse": int})  # SigV4's limit
    # A URL signed with temporary credentials (a session token) stops working when they expire, whatever its
    # X-Amz-Expires says; their expiry is unknown when the token comes from AWS_SESSION_TOKEN. Such URLs are
    # made to last at most this long (one hour: STS's default session), and at most what the credentials have
    # left when botocore knows it (an instance or task role).
    presign_expires_temporary: int = field(default=3600, metadata={"parse": int})

    # --- throughput and memory (the bounded pipeline; see engine.py) ---
    read_concurrency: int = field(default=8, metadata={"parse": int})
    upload_concurrency: int = field(default=3, metadata={"parse": int})
    read_buffer: int = field(default=8 * MiB, metadata={"parse": _size})
    chunk_size: int = field(default=512 * 2**10, metadata={"parse": _size})
    # Threads one job deflates on (each chunk a block, pigz-style: see deflate.py); 1 deflates on the ZIP
    # stage's own thread. Default: one per CPU, at most 4.
    deflate_threads: int = field(default_factory=lambda: min(4, usable_cpus()), metadata={"parse": int})
    progress_interval: float = field(default=0.5, metadata={"parse": float})  # seconds between reports
    # glibc's malloc arenas for this process (0: leave glibc's default of 8 per core). One arena keeps the
    # threads' churn of chunk and part buffers from fragmenting several heaps: see allocator.py.
    malloc_arena_max: int = field(default=1, metadata={"parse": int})

    # --- cold storage ---
    # Seconds between checks of archived sources being restored (on_archived: restore): a worker re-queues
    # the job this long ahead; ``bucketzip run`` sleeps this long in process.
    restore_poll: float = field(default=900.0, metadata={"parse": float})
    # Whether ``bucketzip run`` records its archive in the catalog: "auto" when the registry's Redis answers,
    # "off" never. (A worker always records.)
    run_catalog: str = field(default="auto", metadata={"parse": str})

    # --- the queue (issue: Celery workers) ---
    broker_url: str | None = field(default=None, metadata={"parse": str})
    result_backend: str | None = field(default=None, metadata={"parse": str})
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata={"parse": str})
    job_time_limit: int = field(default=6 * 3600, metadata={"parse": int})  # seconds, hard limit
    # Soft limit: the job stops and aborts its upload. Unset, it is a margin under the hard limit
    # (soft_limit_for): prefork arms the hard timer only once the soft one has fired.
    job_soft_time_limit: int | None = field(default=None, metadata={"parse": int})
    visibility_timeout: int = field(default=7 * 3600, metadata={"parse": int})  # > the longest job
    job_retention: int = field(default=7 * 24 * 3600, metadata={"parse": int})
    max_jobs_recorded: int = field(default=10_000, metadata={"parse": int})
    stale_upload_age: int = field(default=24 * 3600, metadata={"parse": int})
    sweep_interval: int = field(default=3600, metadata={"parse": int})
    sweep_buckets: frozenset[str] = field(default=frozenset(), metadata={"parse": _csv})
    task_events: bool = field(default=True, metadata={"parse": _bool})
    # Every Redis key bucketzip and Celery write (registry, locks, broker lists, results) starts with
    # "<key_prefix>:", so one Redis can serve several deployments (and test runs) side by side.
    key_prefix: str = field(default="bucketzip", metadata={"parse": str})
    queue: str = field(default="bucketzip", metadata={"parse": str})  # the Celery queue jobs go to
    # A running job holds its lock for this long and renews it every third of it: a worker that dies
    # lets its job run elsewhere after at most this many seconds.
    lock_ttl: int = field(default=60, metadata={"parse": int})
    max_retries: int = field(default=5, metadata={"parse": int})  # of a job that failed transiently
    # Deliveries of one job whose worker died under it (OOM, SIGKILL) before the job fails for good: a job
    # that kills its worker every time must not be redelivered forever.
    max_runs: int = field(default=3, metadata={"parse": int})
    retry_backoff_max: int = field(default=600, metadata={"parse": int})  # seconds between retries, at most

    # --- the HTTP API and dashboard (bucketzip serve) ---
    # ROLE:TOKEN pairs (roles: submit, read, admin). None configured: the server binds only to loopback.
    api_tokens: tuple[tuple[str, str], ...] = field(default=(), metadata={"parse": _tokens, "secret": True}, repr=False)
    api_cors_origins: frozenset[str] = field(default=frozenset(), metadata={"parse": _csv})  # empty: no CORS
    api_max_body: int = field(default=8 * MiB, metadata={"parse": _size})  # larger request bodies get 413
    api_session_ttl: int = field(default=12 * 3600, metadata={"parse": int})  # seconds a dashboard login lasts

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            names = f.metadata.get("env", (PREFIX + f.name.upper(),))
            raw = next((env[n] for n in names if env.get(n)), None)
            if raw is None:
                continue
            parse = f.metadata.get("parse", str)
            try:
                values[f.name] = parse(raw)
            except ValueError as exc:
                shown = "(hidden)" if f.metadata.get("secret") else raw
                raise ConfigError(names[0], shown, str(exc)) from None
        values.update(overrides)
        return cls(**values).validated()

    def validated(self) -> Settings:
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ConfigError(
                "BUCKETZIP_PART_SIZE",
                str(self.part_size),
                f"must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}",
            )
        if not 0 <= self.compression_level <= 9:
            raise ConfigError("BUCKETZIP_COMPRESSION_LEVEL", str(self.compression_level), "must be 0-9")
        for name in (
            "read_concurrency",
            "upload_concurrency",
            "deflate_threads",
            "max_entries",
            "max_sources",
            "max_keys_listed",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(PREFIX + name.upper(), str(getattr(self, name)), "must be at least 1")
        if not 1 <= self.presign_expires_temporary <= self.max_presign_expires:
            raise ConfigError(
                "BUCKETZIP_PRESIGN_EXPIRES_TEMPORARY",
                str(self.presign_expires_temporary),
                f"must be between 1 and BUCKETZIP_MAX_PRESIGN_EXPIRES ({self.max_presign_expires})",
            )
        if self.lock_ttl < 1:
            raise ConfigError("BUCKETZIP_LOCK_TTL", str(self.lock_ttl), "must be at least 1")
        if self.max_runs < 1:
            raise ConfigError("BUCKETZIP_MAX_RUNS", str(self.max_runs), "must be at least 1")
        if self.job_time_limit < 2:
            raise ConfigError("BUCKETZIP_JOB_TIME_LIMIT", str(self.job_time_limit), "must be at least 2 seconds")
        if self.job_soft_time_limit is not None and not 1 <= self.job_soft_time_limit < self.job_time_limit:
            # Prefork arms the hard timer only after the soft one fires: a soft limit at or past the hard one
            # would leave the job with no limit at all.
            raise ConfigError(
                "BUCKETZIP_JOB_SOFT_TIME_LIMIT",
                str(self.job_soft_time_limit),
                f"must be at least 1 and less than BUCKETZIP_JOB_TIME_LIMIT ({self.job_time_limit}s)",
            )
        if self.stale_upload_age <= self.job_time_limit:
            # The sweep aborts uploads older than this that it cannot tie to a running job: a younger age could
            # abort the upload of a job still within its time limit.
            raise ConfigError(
                "BUCKETZIP_STALE_UPLOAD_AGE",
                str(self.stale_upload_age),
                f"must be longer than BUCKETZIP_JOB_TIME_LIMIT ({self.job_time_limit}s)",
            )
        if self.visibility_timeout <= self.job_time_limit:
            # A message still unacknowledged after the visibility timeout is delivered again: were that
            # shorter than a job may run, every long job would be handed to a second worker.
            raise ConfigError(
                "BUCKETZIP_VISIBILITY_TIMEOUT",
                str(self.visibility_timeout),
                f"must be longer than BUCKETZIP_JOB_TIME_LIMIT ({self.job_time_limit}s)",
            )
        if not self.restore_poll > 0:
            raise ConfigError("BUCKETZIP_RESTORE_POLL", str(self.restore_poll), "must be a positive number of seconds")
        if self.run_catalog not in ("auto", "off"):
            raise ConfigError("BUCKETZIP_RUN_CATALOG", self.run_catalog, "must be auto or off")
        if self.chunk_size < 64 * 2**10:
            raise ConfigError("BUCKETZIP_CHUNK_SIZE", str(self.chunk_size), "must be at least 64KiB")
        if self.read_buffer < self.chunk_size:
            raise ConfigError(
                "BUCKETZIP_READ_BUFFER",
                str(self.read_buffer),
                f"must be at least BUCKETZIP_CHUNK_SIZE ({self.chunk_size})",
            )
        if self.api_max_body < 1024:
            raise ConfigError("BUCKETZIP_API_MAX_BODY", str(self.api_max_body), "must be at least 1KiB")
        if self.api_session_ttl < 60:
            raise ConfigError("BUCKETZIP_API_SESSION_TTL", str(self.api_session_ttl), "must be at least 60")
        for origin in self.api_cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError("BUCKETZIP_API_CORS_ORIGINS", origin, "must be * or start with http(s)://")
        return self

    @property
    def soft_time_limit(self) -> int:
        """The soft time limit in force: the configured one, or a margin under the hard limit."""
        if self.job_soft_time_limit is not None:
            return self.job_soft_time_limit
        return soft_limit_for(self.job_time_limit)

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes).validated()

    def boto3_session_options(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.session.Session``; unset values are left to botocore's own chain."""
        opts: dict[str, Any] = {"region_name": self.region, "profile_name": self.profile}
        if self.access_key_id and self.secret_access_key:
            opts.update(aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)
            opts["aws_session_token"] = self.session_token
        return {k: v for k, v in opts.items() if v is not None}

    def s3_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``; unset values are left to botocore's own chain."""
        client: dict[str, Any] = {}
        if self.region:
            client["region_name"] = self.region
        opts: dict[str, Any] = {"client_kwargs": client}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.profile:
            opts["profile"] = self.profile
        if self.access_key_id and self.secret_access_key:
            opts["key"] = self.access_key_id
            opts["secret"] = self.secret_access_key
            if self.session_token:
                opts["token"] = self.session_token
        return opts
