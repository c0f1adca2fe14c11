"""The job spec: JSON in -> validated, frozen value objects (and back).

Specs may come from untrusted web requests, so parsing is strict: unknown fields, wrong types, URLs of a
protocol or bucket the settings do not allow, and entry names that would escape the archive root are all
rejected with an ``InvalidJob`` naming the field and the value. Nothing here touches the network.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .config import Settings
from .errors import InvalidJob, LimitExceeded

Compression = Literal["store", "deflate", "auto"]
OnMissing = Literal["fail", "skip"]
OnDuplicate = Literal["rename", "fail", "skip"]
OnArchived = Literal["fail", "skip", "restore"]
SourceKind = Literal["object", "prefix", "glob"]

COMPRESSIONS = ("store", "deflate", "auto")
ON_MISSING = ("fail", "skip")
ON_DUPLICATE = ("rename", "fail", "skip")
ON_ARCHIVED = ("fail", "skip", "restore")
RESTORE_TIERS = ("Bulk", "Standard", "Expedited")
MAX_RESTORE_DAYS = 36_500  # S3 sets no documented maximum; this only keeps the number sane
MAX_DESCRIPTION = 1024  # a vault archive's description: printable ASCII, at most this many characters
VAULT_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")  # Glacier's rule for vault names
BUCKETED = ("s3", "glacier")  # protocols whose URLs are protocol://container/key
STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
)
GLOB_CHARS = re.compile(r"[*?\[]")
MAX_NAME_BYTES = 0xFFFF  # a ZIP name length is a 16-bit field
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata, keys and values together
# A queued job's archive also carries its job id and run token (``bucketzip-job``, ``bucketzip-run``: at most
# 13 + 128 + 13 + 32 bytes), so that a redelivered run can tell its own archive: users get the rest.
TAG_PREFIX = "bucketzip-"
RESERVED_METADATA_BYTES = 256
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed URL: ``protocol://bucket/key`` (for non-bucket protocols the bucket is empty)."""

    protocol: str
    bucket: str
    key: str

    @property
    def url(self) -> str:
        if self.protocol == "s3":
            return f"s3://{self.bucket}/{self.key}"
        if self.protocol == "glacier":  # glacier://VAULT, or glacier://VAULT/ARCHIVE_ID for one archive
            return f"glacier://{self.bucket}" + (f"/{self.key}" if self.key else "")
        return f"{self.protocol}://{self.key}"

    @property
    def path(self) -> str:
        """The path fsspec expects: ``bucket/key`` for S3, the plain path otherwise."""
        return f"{self.bucket}/{self.key}" if self.protocol in BUCKETED else self.key


@dataclass(frozen=True)
class Source:
    """One item of ``sources``: an object, a prefix (URL ends in ``/``) or a glob; with ``literal``, always
    exactly one object, whatever characters its key holds."""

    url: str
    location: Location
    kind: SourceKind
    name: str | None = None  # explicit entry name (object) or folder name ending in "/" (prefix, glob)
    literal: bool = False

    @property
    def fixed_prefix(self) -> str:
        """For a glob: the key up to its last ``/`` before the first glob character; entry names are relative
        to it. For a prefix: the prefix itself."""
        if self.kind == "glob":
            first = GLOB_CHARS.search(self.location.key)
            head = self.location.key[: first.start() if first else None]
            return head[: head.rfind("/") + 1]
        return self.location.key

    def to_json(self) -> str | dict[str, Any]:
        if self.name is None and not self.literal:
            return self.url
        out: dict[str, Any] = {"url": self.url}
        if self.name is not None:
            out["name"] = self.name
        if self.literal:
            out["literal"] = True
        return out


@dataclass(frozen=True)
class JobSpec:
    """A validated zip job. Build one with ``JobSpec.from_dict``; ``to_dict`` gives the JSON form back."""

    sources: tuple[Source, ...]
    destination: Location
    compression: Compression = "auto"
    compression_level: int | None = None
    on_missing: OnMissing = "fail"
    on_duplicate: OnDuplicate = "rename"
    storage_class: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    content_disposition: str | None = None
    presign_expires: int | None = None
    job_id: str | None = None
    description: str | None = None  # the vault archive's description (and the catalog's); default names the job
    on_archived: OnArchived = "fail"
    restore_tier: str | None = None  # with on_archived=restore: Bulk, Standard (default) or Expedited
    restore_days: int | None = None  # with on_archived=restore: days the restored copies stay (default 1)

    @classmethod
    def from_dict(cls, data: object, settings: Settings | None = None) -> JobSpec:
        return parse_spec(data, settings or Settings())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sources": [s.to_json() for s in self.sources],
            "destination": self.destination.url,
            "compression": self.compression,
            "on_missing": self.on_missing,
            "on_duplicate": self.on_duplicate,
        }
        optional = {
            "compression_level": self.compression_level,
            "storage_class": self.storage_class,
            "metadata": dict(self.metadata) if self.metadata else None,
            "content_disposition": self.content_disposition,
            "presign_expires": self.presign_expires,
            "job_id": self.job_id,
            "description": self.description,
            "on_archived": None if self.on_archived == "fail" else self.on_archived,
            "restore_tier": self.restore_tier,
            "restore_days": self.restore_days,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


FIELDS = {
    "sources",
    "destination",
    "compression",
    "compression_level",
    "on_missing",
    "on_duplicate",
    "storage_class",
    "metadata",
    "content_disposition",
    "presign_expires",
    "job_id",
    "description",
    "on_archived",
    "restore_tier",
    "restore_days",
}


def parse_spec(data: object, settings: Settings) -> JobSpec:
    """Validate ``data`` (the JSON-decoded spec) against the rules and the settings' limits."""
    if not isinstance(data, Mapping):
        raise InvalidJob("spec", data, "must be a JSON object")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise InvalidJob(unknown[0], data[unknown[0]], f"unknown field (allowed: {', '.join(sorted(FIELDS))})")

    raw_sources = data.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise InvalidJob("sources", raw_sources, "must be a non-empty list")
    if len(raw_sources) > settings.max_sources:
        raise LimitExceeded("sources", len(raw_sources), f"more than {settings.max_sources} sources")
    sources = tuple(_source(f"sources[{i}]", item, settings) for i, item in enumerate(raw_sources))

    destination = _location("destination", data.get("destination"), settings, destination=True)
    if destination.protocol == "glacier":
        _vault_destination(data)
    elif not destination.key or destination.key.endswith("/"):
        raise InvalidJob("destination", destination.url, "must name an object, not a bucket or a prefix")

    compression = _choice(data, "compression", COMPRESSIONS, "auto")
    level = data.get("compression_level")
    if level is not None and (not _is_int(level) or not 0 <= level <= 9):
        raise InvalidJob("compression_level", level, "must be an integer from 0 to 9")
    storage_class = data.get("storage_class")
    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        raise InvalidJob("storage_class", storage_class, f"must be one of {', '.join(STORAGE_CLASSES)}")
    presign = data.get("presign_expires")
    if presign is not None and (not _is_int(presign) or not 1 <= presign <= settings.max_presign_expires):
        raise InvalidJob("presign_expires", presign, f"must be whole seconds from 1 to {settings.max_presign_expires}")
    disposition = data.get("content_disposition")
    if disposition is not None and (not isinstance(disposition, str) or _CONTROL.search(disposition)):
        raise InvalidJob("content_disposition", disposition, "must be a string without control characters")
    job_id = data.get("job_id")
    if job_id is not None and (not isinstance(job_id, str) or not JOB_ID_RE.match(job_id)):
        raise InvalidJob("job_id", job_id, "must be 1-128 characters of letters, digits and ._:-")
    description = data.get("description")
    if description is not None and (
        not isinstance(description, str) or not _PRINTABLE.fullmatch(description) or len(description) > MAX_DESCRIPTION
    ):
        raise InvalidJob("description", description, f"must be 1-{MAX_DESCRIPTION} printable ASCII characters")
    on_archived = _choice(data, "on_archived", ON_ARCHIVED, "fail")
    tier, days = data.get("restore_tier"), data.get("restore_days")
    for name, value in (("restore_tier", tier), ("restore_days", days)):
        if value is not None and on_archived != "restore":
            raise InvalidJob(name, value, "only applies with on_archived: restore")
    if tier is not None and tier not in RESTORE_TIERS:
        raise InvalidJob("restore_tier", tier, f"must be one of {', '.join(RESTORE_TIERS)}")
    if days is not None and (not _is_int(days) or not 1 <= days <= MAX_RESTORE_DAYS):
        raise InvalidJob("restore_days", days, f"must be a whole number of days from 1 to {MAX_RESTORE_DAYS}")

    return JobSpec(
        sources=sources,
        destination=destination,
        compression=compression,  # type: ignore[arg-type]
        compression_level=level,
        on_missing=_choice(data, "on_missing", ON_MISSING, "fail"),  # type: ignore[arg-type]
        on_duplicate=_choice(data, "on_duplicate", ON_DUPLICATE, "rename"),  # type: ignore[arg-type]
        storage_class=storage_class,
        metadata=_metadata(data.get("metadata")),
        content_disposition=disposition,
        presign_expires=presign,
        job_id=job_id,
        description=description,
        on_archived=on_archived,  # type: ignore[arg-type]
        restore_tier=tier,
        restore_days=days,
    )


def _vault_destination(data: Mapping[str, Any]) -> None:
    """A vault archive has no key, storage class, metadata, headers or URL: fields that would be ignored are
    refused instead."""
    for name in ("storage_class", "metadata", "content_disposition", "presign_expires"):
        if data.get(name) is not None:
            raise InvalidJob(name, data[name], "does not apply to a Glacier vault destination")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(data: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = data.get(name, default)
    if value not in allowed:
        raise InvalidJob(name, value, f"must be one of {', '.join(allowed)}")
    return str(value)


def _metadata(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise InvalidJob("metadata", value, "must be an object of string keys and values")
    size = 0
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidJob(f"metadata.{k}", v, "keys and values must be strings")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", k):
            raise InvalidJob(f"metadata.{k}", v, "keys must be letters, digits, '-' and '_'")
        if not v.isascii() or _CONTROL.search(v):
            raise InvalidJob(f"metadata.{k}", v, "values must be printable ASCII (S3 sends them as headers)")
        if k.lower().startswith(TAG_PREFIX):
            raise InvalidJob(f"metadata.{k}", v, f"keys starting with {TAG_PREFIX!r} are bucketzip's own")
        size += len(k) + len(v)
    room = MAX_METADATA_BYTES - RESERVED_METADATA_BYTES
    if size > room:
        raise LimitExceeded(
            "metadata",
            size,
            f"over {room} bytes of user metadata (S3 allows {MAX_METADATA_BYTES}; bucketzip tags the rest)",
        )
    return tuple(sorted(value.items()))


def _location(where: str, value: object, settings: Settings, destination: bool = False) -> Location:
    if not isinstance(value, str) or not value:
        raise InvalidJob(where, value, "must be a URL string such as s3://bucket/key")
    if _CONTROL.search(value):
        raise InvalidJob(where, value, "must not contain control characters")
    protocol, sep, rest = value.partition("://")
    if not sep:
        raise InvalidJob(where, value, "must be a URL with a scheme, such as s3://bucket/key")
    protocol = protocol.lower()
    if protocol == "s3a":
        protocol = "s3"
    if protocol not in settings.allowed_protocols:
        allowed = ", ".join(f"{p}://" for p in sorted(settings.allowed_protocols))
        raise InvalidJob(where, value, f"protocol {protocol}:// is not allowed (allowed: {allowed})")
    if protocol == "glacier":
        return _vault(where, value, rest, settings, destination)
    if protocol != "s3":
        return Location(protocol, "", rest)
    bucket, _, key = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise InvalidJob(where, value, "has an invalid bucket name")
    allowed_buckets = settings.allowed_buckets
    if destination and settings.allowed_destination_buckets:
        allowed_buckets = settings.allowed_destination_buckets
    if allowed_buckets and bucket not in allowed_buckets:
        raise InvalidJob(where, value, f"bucket {bucket!r} is not in the allowed buckets")
    return Location("s3", bucket, key)


def _vault(where: str, value: str, rest: str, settings: Settings, destination: bool) -> Location:
    if not destination:
        raise InvalidJob(where, value, "a Glacier vault can only be a destination (retrieve archives first)")
    vault, _, extra = rest.partition("/")
    if extra:
        raise InvalidJob(where, value, "must be glacier://VAULT (the vault names the archive's id itself)")
    if not VAULT_RE.fullmatch(vault):
        raise InvalidJob(where, value, "has an invalid vault name (1-255 of letters, digits, '_', '-', '.')")
    allowed = settings.allowed_destination_buckets or settings.allowed_buckets
    if allowed and vault not in allowed:
        raise InvalidJob(where, value, f"vault {vault!r} is not in the allowed destinations")
    return Location("glacier", vault, "")


def parse_archive_url(value: str) -> Location:
    """``glacier://VAULT/ARCHIVE_ID`` (one vault archive, as the catalog records it) as a Location."""
    protocol, sep, rest = value.partition("://")
    vault, _, archive_id = rest.partition("/")
    if protocol != "glacier" or not sep or not VAULT_RE.fullmatch(vault) or not archive_id or "/" in archive_id:
        raise InvalidJob("url", value, "must be glacier://VAULT/ARCHIVE_ID")
    return Location("glacier", vault, archive_id)


def _source(where: str, item: object, settings: Settings) -> Source:
    name: object = None
    url: object = item
    literal: object = False
    if isinstance(item, Mapping):
        extra = sorted(set(item) - {"url", "name", "literal"})
        if extra:
            raise InvalidJob(f"{where}.{extra[0]}", item[extra[0]], "unknown field (allowed: url, name, literal)")
        url, name, literal = item.get("url"), item.get("name"), item.get("literal", False)
        if not isinstance(literal, bool):
            raise InvalidJob(f"{where}.literal", literal, "must be true or false")
        where = f"{where}.url"
    elif not isinstance(item, str):
        raise InvalidJob(where, item, "must be a URL string or an object with url and optional name and literal")
    loc = _location(where, url, settings)
    assert isinstance(url, str)  # _location accepts only strings
    if literal:
        # Exactly this key: no glob, no prefix, whatever characters it holds ("photo[1].jpg", "a/").
        if not loc.key:
            raise InvalidJob(where, url, "a literal source must name an object's key")
        kind: SourceKind = "object"
    elif GLOB_CHARS.search(loc.key):
        kind = "glob"
    elif loc.key.endswith("/") or not loc.key:
        kind = "prefix"
    else:
        kind = "object"
    name_where = where.removesuffix(".url") + ".name"
    if name is not None:
        if not isinstance(name, str):
            raise InvalidJob(name_where, name, "must be a string")
        if kind == "object":
            check_entry_name(name_where, name)
        elif name:
            # A folder inside the archive: "raw" and "raw/" mean the same.
            name = name if name.endswith("/") else name + "/"
            check_entry_name(name_where, name.rstrip("/"))
    return Source(url=url, location=loc, kind=kind, name=name, literal=literal is True)


def check_entry_name(where: str, name: str) -> None:
    """Reject an explicit entry name that could escape the archive root or confuse an extractor."""
    if not name or name.endswith("/"):
        raise InvalidJob(where, name, "must be a file name, not empty or ending in '/'")
    if _CONTROL.search(name):
        raise InvalidJob(where, name, "must not contain control characters")
    if name.startswith(("/", "\\")):
        raise InvalidJob(where, name, "must be relative: no leading '/'")
    if _DRIVE.match(name):
        raise InvalidJob(where, name, "must not start with a drive letter")
    if "\\" in name:
        raise InvalidJob(where, name, "must use '/' as the separator, not '\\'")
    if any(part in ("..", ".", "") for part in name.split("/")):
        raise InvalidJob(where, name, "must not contain '..', '.' or empty path segments")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise LimitExceeded(where, name, f"longer than {MAX_NAME_BYTES} bytes")


def sanitise_name(name: str) -> str:
    """Make a key-derived name safe: drop empty, '.' and '..' segments; replace control characters,
    backslashes and a leading drive colon. The result never escapes the archive root."""
    name = unicodedata.normalize("NFC", name)
    name = _CONTROL.sub("_", name).replace("\\", "_")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    parts = ["_" if p == ".." else p for p in parts]
    if parts and _DRIVE.match(parts[0]):
        parts[0] = parts[0][0] + "_" + parts[0][2:]
    return "/".join(parts)
