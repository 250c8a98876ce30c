"""The small interface every storage backend implements.

A backend is bound to one root (a bucket plus optional prefix, or a local folder).
Keys are always relative to the bucket (not the prefix), ``/``-separated and not
URL-encoded. One backend module per cloud; :func:`manifester.storage.open_storage`
picks one by URI scheme and imports its SDK lazily, so a missing SDK only matters
when that scheme is used (and then names the extra to install).
"""

from __future__ import annotations

import builtins  # annotations in Storage classes: there `list` is the listing method
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import ClassVar

from ..records import StorageObject

__all__ = ["Storage"]


class Storage(ABC):
    """A bucket (or folder) that can be listed, read, written and presigned."""

    #: URI scheme this backend serves: "s3", "gs" or "file".
    scheme: ClassVar[str]

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix

    @property
    def root_uri(self) -> str:
        """The URI the user gave, normalised: ``s3://bucket/prefix``."""
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    def object_uri(self, key: str) -> str:
        """Canonical URI of one object; what external ids and the ledger key on."""
        return f"{self.scheme}://{self.bucket}/{key}"

    @abstractmethod
    def list(self, prefix: str | None = None) -> Iterator[StorageObject]:
        """Yield every object under ``prefix`` (default: the root's prefix), lazily, in key order.

        Must stream page by page: never hold the whole listing in memory.
        """

    @abstractmethod
    def read(self, key: str) -> bytes:
        """Return the bytes of one object."""

    @abstractmethod
    def write(self, key: str, data: bytes, *, content_type: str = "application/json") -> None:
        """Create or replace one object, privately (never public-read)."""

    @abstractmethod
    def head(self, key: str) -> StorageObject | None:
        """The object's size and etag, or None if it does not exist."""

    @abstractmethod
    def presign(self, key: str, expires: int) -> str:
        """A URL anyone can GET for ``expires`` seconds."""

    def presign_many(self, keys: Iterable[str], expires: int) -> builtins.list[str]:
        """Presign many keys at once; backends override this with faster batch paths."""
        return [self.presign(k, expires) for k in keys]

    @abstractmethod
    def public_url(self, key: str) -> str:
        """The object's plain public https URL (for public buckets)."""

    def max_presign_seconds(self) -> int:
        """The longest lifetime the current credentials allow (SigV4 and V4: 7 days)."""
        return 7 * 24 * 3600

    def close(self) -> None:
        """Release clients / pools; optional."""
