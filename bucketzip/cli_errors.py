"""How a failure of the command line becomes one line on stderr and an exit code, never a traceback.

``describe(exc)`` says what went wrong in words a user can act on: bucketzip's own errors carry their message;
a queue service that does not answer (Redis, the broker) is named with the setting that points at it (its
password masked); anything else is reported by type and message as a last resort.
"""

from __future__ import annotations

from .errors import BucketzipError, ConfigError, InvalidJob
from .redact import redact

USAGE = 2  # an invalid job or setting
FAILURE = 1  # anything else


def exit_code(exc: BaseException) -> int:
    return USAGE if isinstance(exc, InvalidJob | ConfigError) else FAILURE


def describe(exc: BaseException) -> str:
    if isinstance(exc, BucketzipError | TimeoutError):
        return redact(str(exc))
    family = type(exc).__module__.partition(".")[0]
    if family == "redis":
        return redact(f"Redis did not answer ({_where('redis')}): {_text(exc)}")
    if family in ("kombu", "amqp") or isinstance(exc, ConnectionError):
        return redact(f"the broker did not answer ({_where('broker')}): {_text(exc)}")
    if isinstance(exc, OSError):
        return redact(f"{_text(exc)}")
    return redact(f"unexpected {type(exc).__name__}: {_text(exc)}")


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _where(service: str) -> str:
    """The settings that point at ``service``, as they are in effect."""
    from .config import Settings

    try:
        s = Settings.from_env()
    except ConfigError:
        return "check BUCKETZIP_REDIS_URL and BUCKETZIP_BROKER_URL"
    if service == "broker" and s.broker_url:
        return f"BUCKETZIP_BROKER_URL={s.broker_url}"
    where = [f"BUCKETZIP_REDIS_URL={s.redis_url}"]
    if service == "redis":
        for name, url in (("BUCKETZIP_BROKER_URL", s.broker_url), ("BUCKETZIP_RESULT_BACKEND", s.result_backend)):
            if url and url.startswith(("redis", "unix")):
                where.append(f"{name}={url}")
    return ", ".join(where)
