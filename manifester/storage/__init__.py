"""Storage backends, chosen by URI scheme.

``s3://bucket[/prefix]`` (boto3, extra ``s3``), ``gs://bucket[/prefix]``
(google-cloud-storage, extra ``gcs``), or a local directory path / ``file://`` URI.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from .base import Storage

__all__ = ["Storage", "open_storage", "parse_uri"]


def parse_uri(uri: str) -> tuple[str, str, str]:
    """Split a source URI into (scheme, bucket, prefix); local paths give ("file", abs_dir, "").

    >>> parse_uri("s3://photos/2024/")
    ('s3', 'photos', '2024/')
    """
    if "://" in uri:
        scheme, _, rest = uri.partition("://")
        scheme = scheme.lower()
        if scheme == "file":
            return "file", str(Path(rest).resolve()), ""
        if scheme not in ("s3", "gs"):
            raise ConfigError(
                f"unknown source scheme {scheme!r} in {uri!r}",
                hint="use s3://bucket[/prefix], gs://bucket[/prefix] or a local folder path",
            )
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"no bucket name in {uri!r}", hint=f"write {scheme}://BUCKET[/prefix]")
        return scheme, bucket, prefix
    return "file", str(Path(uri).resolve()), ""


def open_storage(uri: str, *, listing: str | os.PathLike[str] | None = None) -> Storage:
    """Open the backend for ``uri``. The cloud SDK is imported only here, on demand.

    With ``listing`` (a key list, JSONL or S3 Inventory CSV file), objects are read from
    that file instead of listing the bucket; URLs, ids and reads still use the bucket.
    """
    if listing is not None:
        from .listing import ListingStorage

        return ListingStorage(listing, open_storage(uri))
    scheme, bucket, prefix = parse_uri(uri)
    if scheme == "s3":
        from .s3 import S3Storage

        return S3Storage(bucket, prefix)
    if scheme == "gs":
        from .gcs import GCSStorage

        return GCSStorage(bucket, prefix)
    from .local import LocalStorage

    return LocalStorage(bucket, prefix)
