"""The exception tree. Every error bucketzip raises is one of these::

    BucketzipError
    ├── ConfigError             a setting has a value we cannot use
    ├── InvalidJob (ValueError) the job spec is wrong; names the field and the value
    │   ├── LimitExceeded       the job is over a configured limit
    │   └── JobConflict         a job with this job_id is already recorded with another spec
    ├── SourceMissing           objects the job names do not exist (on_missing=fail)
    ├── SourceChanged           an object changed or vanished while it was being read
    ├── SourceUnreadable        an object exists but cannot be read (archived in GLACIER, say)
    ├── SourceArchived          archived sources are not restored (on_archived=fail)
    ├── RestorePending          restores of archived sources are still running (on_archived=restore)
    ├── AccessDenied            credentials may not read a source or write the destination
    │   └── CredentialsError    no credentials, or ones the endpoint does not accept (unknown key, bad secret)
    ├── EndpointError           the S3 endpoint cannot be used as configured (its TLS certificate is not trusted)
    ├── UploadFailed            the destination refused the archive
    ├── JobCancelled            somebody cancelled the job while it ran
    ├── LeaseLost               another run took the job over; this one stopped and recorded nothing
    ├── WorkerLost              the job's worker died under it too many times (out of memory, killed)
    ├── TransientError          throttling, 5xx, a dropped connection: worth retrying
    ├── JobTimedOut             the job ran past its time limit
    ├── UnknownJob (KeyError)   no job with this id is recorded
    └── JobStateError           the job is not in a state that allows this (retry a running job...)

Every class keeps its constructor arguments in ``.args`` (and only JSON-friendly ones), so an exception survives
Celery's JSON result backend and is rebuilt as the same type. Third-party S3 errors are translated into these
in ``stores/base.py`` and nowhere else. Retry policy is declared by type: only ``TransientError`` is retried.
"""

from __future__ import annotations


class BucketzipError(Exception):
    """Root of every error bucketzip raises."""


class ConfigError(BucketzipError):
    """A setting has a value bucketzip cannot use."""

    def __init__(self, variable: str, value: str, reason: str) -> None:
        super().__init__(variable, value, reason)
        self.variable, self.value, self.reason = variable, value, reason

    def __str__(self) -> str:
        return f"setting {self.variable}={self.value!r}: {self.reason}"


class InvalidJob(BucketzipError, ValueError):
    """The job spec is invalid; ``field`` is a dotted path into the spec, e.g. ``sources[2].name``."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(field, _jsonable(value), reason)
        self.field, self.value, self.reason = field, value, reason

    def __str__(self) -> str:
        return f"invalid job: {self.field}={_short(self.value)}: {self.reason}"


class LimitExceeded(InvalidJob):
    """The job is over a configured limit (entries, input bytes, archive size)."""


class JobConflict(InvalidJob):
    """A job with this ``job_id`` is already recorded with a different spec: submitting it again would
    silently return the first job and never make the second archive."""

    def __init__(self, job_id: str) -> None:
        super().__init__("job_id", job_id, "is already recorded with a different spec; use a new job_id")
        self.args = (job_id,)  # rebuilt from its arguments, like every error here
        self.job_id = job_id


class SourceMissing(BucketzipError):
    """Objects named by the job do not exist (and on_missing is "fail"). ``globs``: those of ``urls`` that
    were read as glob patterns, which the message points to ``"literal": true`` for."""

    def __init__(self, urls: list[str], globs: list[str] | None = None) -> None:
        # ``args`` gain the globs only when there are any: records and results of other jobs stay as they were.
        super().__init__(*((list(urls), list(globs)) if globs else (list(urls),)))
        self.urls = list(urls)
        self.globs = list(globs or ())

    def __str__(self) -> str:
        shown = ", ".join(self.urls[:10]) + (f" and {len(self.urls) - 10} more" if len(self.urls) > 10 else "")
        text = f"{len(self.urls)} source(s) not found: {shown}"
        if self.globs:
            text += (
                f" ({self.globs[0]} is a glob pattern, since it holds * ? or [; to name a key that holds these"
                ' characters, give the source as {"url": ..., "literal": true})'
            )
        return text


class SourceChanged(BucketzipError):
    """An object was deleted or overwritten while the job read it; the archive would not match the listing."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason

    def __str__(self) -> str:
        return f"{self.url} changed while being archived: {self.reason}"


class SourceUnreadable(BucketzipError):
    """An object exists but cannot be read as it is (an archived GLACIER object not restored, say)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason

    def __str__(self) -> str:
        return f"cannot read {self.url}: {self.reason}"


class SourceArchived(BucketzipError):
    """Sources are in an archive class (GLACIER, DEEP_ARCHIVE) and not restored (on_archived is "fail")."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(list(urls))
        self.urls = list(urls)

    def __str__(self) -> str:
        shown = ", ".join(self.urls[:10]) + (f" and {len(self.urls) - 10} more" if len(self.urls) > 10 else "")
        return (
            f"{len(self.urls)} source(s) are archived and not restored: {shown}; restore them first "
            "(bucketzip restore URL, or on_archived: restore)"
        )


class RestorePending(BucketzipError):
    """Restores of archived sources are requested but not finished: the job waits (on_archived is "restore")."""

    def __init__(self, job: str, restored: int, total: int) -> None:
        super().__init__(job, restored, total)
        self.job, self.restored, self.total = job, restored, total

    def __str__(self) -> str:
        return f"{self.job}: waiting for restores of archived sources ({self.restored}/{self.total} restored)"


class AccessDenied(BucketzipError):
    """The credentials may not read a source or write the destination."""

    def __init__(self, url: str, operation: str) -> None:
        super().__init__(url, operation)
        self.url, self.operation = url, operation

    def __str__(self) -> str:
        return f"access denied: {self.operation} {self.url}"


class CredentialsError(AccessDenied):
    """There are no credentials, or the endpoint does not accept them; ``reason`` says which and what to set."""

    def __init__(self, url: str, operation: str, reason: str) -> None:
        BucketzipError.__init__(self, url, operation, reason)
        self.url, self.operation, self.reason = url, operation, reason

    def __str__(self) -> str:
        return f"cannot {self.operation} {self.url}: {self.reason}"


class EndpointError(BucketzipError):
    """The S3 endpoint cannot be used as configured (its TLS certificate is not trusted, a wrong scheme)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason

    def __str__(self) -> str:
        return f"cannot reach the S3 endpoint for {self.url}: {self.reason}"


class UploadFailed(BucketzipError):
    """The destination refused the archive (a permanent error; nothing was published)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason

    def __str__(self) -> str:
        return f"upload to {self.url} failed: {self.reason}"


class JobCancelled(BucketzipError):
    """The job was cancelled while it ran; its upload was aborted."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id} was cancelled"


class LeaseLost(BucketzipError):
    """This run lost the job's lease to another run (a stalled heartbeat, say): it stopped, published
    nothing and recorded nothing; the run holding the lease goes on."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id}: this run lost its lease to another run and stopped"


class WorkerLost(BucketzipError):
    """The job's worker died under it ``times`` times (out of memory, killed): it is not delivered again."""

    def __init__(self, job_id: str, times: int) -> None:
        super().__init__(job_id, times)
        self.job_id, self.times = job_id, times

    def __str__(self) -> str:
        return (
            f"job {self.job_id} failed: its worker was lost {self.times} times while running it "
            "(killed, or out of memory); see BUCKETZIP_MAX_RUNS"
        )


class TransientError(BucketzipError):
    """A failure worth retrying: throttling, a 5xx answer, a dropped connection."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url, self.reason = url, reason

    def __str__(self) -> str:
        return f"temporary failure on {self.url}: {self.reason}"


class JobTimedOut(BucketzipError):
    """The job ran past its time limit (``BUCKETZIP_JOB_SOFT_TIME_LIMIT``); its upload was aborted."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(job_id, reason)
        self.job_id, self.reason = job_id, reason

    def __str__(self) -> str:
        return f"job {self.job_id} ran past its time limit: {self.reason}"


class UnknownJob(BucketzipError, KeyError):
    """No job with this id is recorded (never submitted, or past the retention)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id!r} is recorded"


class JobStateError(BucketzipError):
    """The job is not in a state that allows the operation (retrying a job that has not failed...)."""

    def __init__(self, job_id: str, state: str, reason: str) -> None:
        super().__init__(job_id, state, reason)
        self.job_id, self.state, self.reason = job_id, state, reason

    def __str__(self) -> str:
        return f"job {self.job_id} is {self.state}: {self.reason}"


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
