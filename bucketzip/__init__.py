"""bucketzip: zip many S3 objects into one archive in S3, streamed, transactional, queued with Celery."""

from .errors import (
    AccessDenied,
    BucketzipError,
    ConfigError,
    InvalidJob,
    JobCancelled,
    LimitExceeded,
    SourceChanged,
    SourceMissing,
    TransientError,
    UploadFailed,
)
from .spec import JobSpec

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "BucketzipError",
    "ConfigError",
    "InvalidJob",
    "JobCancelled",
    "JobSpec",
    "LimitExceeded",
    "SourceChanged",
    "SourceMissing",
    "TransientError",
    "UploadFailed",
    "__version__",
]
