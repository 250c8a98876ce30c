"""Frozen records passed between pipeline stages.

They are plain data: no I/O, no behaviour beyond trivial derived values, so every
stage can be tested alone and the ledger can store them column for column.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SPLITS", "Entry", "StorageObject"]

#: The three splits Theos knows, in the order they are always reported.
SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True, slots=True)
class StorageObject:
    """One object found by a scan.

    ``key`` is relative to the storage root (bucket, or local folder), ``/``-separated,
    never URL-encoded. ``etag`` is the S3 ETag, the GCS generation, or for local files
    ``"<mtime_ns>-<size>"``: whatever tells a changed object from an unchanged one.
    """

    key: str
    size: int
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One manifest entry, before serialisation.

    ``uri`` is the object's canonical URI (``s3://bucket/key``, ``gs://bucket/key``,
    ``file:///abs/path``); it is what the ledger keys on. ``url`` is what Theos downloads.
    """

    uri: str
    key: str
    url: str
    split: str
    external_id: str
