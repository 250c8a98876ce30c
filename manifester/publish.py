"""Publish one shard: presign its images just in time, write its manifest, presign that.

Presigning is the client's dominant cost (boto3 ~2k URLs/s, GCS V4 ~0.9k/s), and a
presigned URL that expires before the server fetches it is the field's most common
complaint. So a shard is presigned only just before it is sent (the pipeline does it
in a background thread while the server works on the previous shard), with a
lifetime computed from the expected wait (:class:`LifetimePolicy`), capped by what
the credentials allow (``Storage.max_presign_seconds``).

The manifest goes to the *manifest store*:

- ``s3://bucket/prefix`` or ``gs://bucket/prefix``: written private, then presigned
  for the server (the common case);
- a local directory, **only** with ``manifest_base_url`` (e.g. a folder served by a
  web server the Theos server can reach): the URL is ``<base>/<key>``.

Keys look like ``<prefix>/run-000003/manifest-00001.json``. Only the store URI is
recorded in the ledger; the signed URL lives in memory for the upload call alone.

    >>> publisher = Publisher(source, open_storage("s3://manifests/theos"))   # doctest: +SKIP
    >>> shard = publisher.publish(items, run_id=3, shard_index=1, lifetime=3600)  # doctest: +SKIP
    >>> shard.manifest_uri, shard.entries                                      # doctest: +SKIP
    ('s3://manifests/theos/run-000003/manifest-00001.json', 20)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from .errors import ConfigError, ManifesterError, PublishError, ShardError
from .shard import MAX_BYTES, MAX_ENTRIES
from .storage.base import Storage
from .urls import UrlMode

__all__ = [
    "MAX_BYTES",
    "MAX_ENTRIES",
    "LifetimePolicy",
    "PublishedShard",
    "Publisher",
    "ShardItem",
    "parse_duration",
]

def parse_duration(text: str | int | None) -> int | None:
    """Seconds from ``--url-lifetime`` (``"900"``, ``"15m"``, ``"2h"``); None stays None.

    >>> parse_duration("15m"), parse_duration(None)
    (900, None)
    """
    if text is None or text == "":
        return None
    from .urls import parse_duration as _parse

    return _parse(text, flag="--url-lifetime")


@dataclass(frozen=True, slots=True)
class LifetimePolicy:
    """How long presigned URLs must live: long enough for the wait, no longer.

    The server reaches the last image of a shard after everything queued before it
    (the shard still running, then this one) has been downloaded, so the lifetime is
    ``safety × queued_images × per_image_seconds``, at least ``floor`` seconds, at most
    what the credentials allow. ``fixed`` (``--url-lifetime``) overrides the estimate
    (still capped). ``per_image_seconds`` is refined from finished tasks.

    >>> LifetimePolicy().lifetime(100, cap=604800)
    900
    >>> LifetimePolicy().lifetime(200_000, cap=3600)
    3600
    """

    fixed: int | None = None
    floor: int = 900
    per_image_seconds: float = 0.1
    safety: float = 3.0

    def lifetime(self, queued_images: int, cap: int) -> int:
        if self.fixed is not None:
            return max(1, min(self.fixed, cap))
        estimate = math.ceil(self.safety * queued_images * self.per_image_seconds)
        return max(1, min(max(self.floor, estimate), cap))


@dataclass(frozen=True, slots=True)
class ShardItem:
    """One object to put in a manifest."""

    object_id: int
    key: str
    split: str
    external_id: str


@dataclass(frozen=True)
class PublishedShard:
    """A manifest written to the store. ``manifest_url`` may be signed: it is hidden from repr."""

    manifest_uri: str
    manifest_url: str = field(repr=False)
    entries: int
    nbytes: int
    sha256: str
    url_lifetime: int
    kept_ids: tuple[int, ...] = field(repr=False)
    dropped_ids: tuple[int, ...] = field(repr=False)


class Publisher:
    """Turns shard items into a published manifest. Thread-safe as long as the storages are.

    ``urls``: ``"presigned"`` (default), ``"public"`` or ``"template"`` (with ``url_template``).
    """

    def __init__(
        self,
        source: Storage,
        store: Storage,
        *,
        urls: UrlMode = "presigned",
        url_template: str | None = None,
        manifest_base_url: str | None = None,
        max_bytes: int = MAX_BYTES,
        store_uri: str | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.urls = urls
        self.url_template = url_template
        self.manifest_base_url = manifest_base_url.rstrip("/") if manifest_base_url else None
        self.max_bytes = max_bytes
        self.store_uri = store_uri or store.root_uri
        if store.scheme == "file" and not self.manifest_base_url:
            raise ConfigError(
                f"manifest store {self.store_uri} is a local folder, which the Theos server cannot download from",
                hint="use an s3:// or gs:// --manifest-store, or add --manifest-base-url https://host/path serving that folder",
            )

    def cap(self) -> int:
        """Longest lifetime both the image and the manifest URLs may have."""
        caps = [self.store.max_presign_seconds()] if self.store.scheme != "file" else []
        if self.urls == "presigned":
            caps.append(self.source.max_presign_seconds())
        return min(caps) if caps else 7 * 24 * 3600

    def manifest_key(self, run_id: int, shard_index: int) -> str:
        prefix = self.store.prefix.strip("/")
        name = f"run-{run_id:06d}/manifest-{shard_index:05d}.json"
        return f"{prefix}/{name}" if prefix else name

    def image_urls(self, keys: Sequence[str], lifetime: int) -> list[str]:
        """URLs for the images, made the way ``build`` makes them."""
        from .urls import make_url_maker

        maker = make_url_maker(self.source, self.urls, expires=lifetime, template=self.url_template)
        return list(maker(list(keys)))

    def publish(self, items: Sequence[ShardItem], *, run_id: int, shard_index: int, lifetime: int) -> PublishedShard:
        """Presign, serialise within ``max_bytes`` (dropping the tail that does not fit), write, presign the manifest."""
        from .shard import encode_entry, manifest_bytes

        if not items:
            raise ShardError(f"shard {shard_index} is empty", hint="this is a bug; please report it")
        try:
            urls = self.image_urls([i.key for i in items], lifetime)
        except ManifesterError:
            raise
        except Exception as exc:  # a backend that did not convert its SDK's error
            raise PublishError(
                f"presigning the images of shard {shard_index} failed: {type(exc).__name__}",
                hint="check the source credentials",
            ) from exc
        parts: list[bytes] = []
        size = 2  # "[" and "]"
        kept: list[int] = []
        for item, url in zip(items, urls, strict=True):
            blob = encode_entry(url, item.split, item.external_id)
            extra = len(blob) + (1 if parts else 0)
            if size + extra > self.max_bytes:
                if not parts:
                    raise ShardError(
                        f"the entry for {item.key!r} alone is {len(blob)} bytes, over the {self.max_bytes}-byte shard limit",
                        hint="raise --max-bytes, or shorten the URL template",
                    )
                break  # presigned URLs made it too big: the rest waits for the next shard
            parts.append(blob)
            kept.append(item.object_id)
            size += extra
        data = manifest_bytes(parts)
        key = self.manifest_key(run_id, shard_index)
        uri = self.store.object_uri(key)
        try:
            self.store.write(key, data, content_type="application/json")
        except ManifesterError as exc:
            raise PublishError(
                f"cannot write manifest {uri} to the manifest store: {exc.message}",
                hint="check that --manifest-store exists and that these credentials may write to it",
            ) from exc
        except Exception as exc:
            raise PublishError(
                f"cannot write manifest {uri} to the manifest store: {type(exc).__name__}",
                hint="check that --manifest-store exists and that these credentials may write to it",
            ) from exc
        if self.manifest_base_url:
            rel = key[len(self.store.prefix.strip("/")) :].lstrip("/") if self.store.prefix else key
            manifest_url = f"{self.manifest_base_url}/{quote(rel, safe='/')}"
        else:
            try:
                manifest_url = self.store.presign(key, lifetime)
            except ManifesterError:
                raise
            except Exception as exc:
                raise PublishError(
                    f"cannot presign manifest {uri}: {type(exc).__name__}",
                    hint="check the manifest store credentials",
                ) from exc
        dropped = tuple(i.object_id for i in items[len(kept) :])
        return PublishedShard(
            manifest_uri=uri,
            manifest_url=manifest_url,
            entries=len(parts),
            nbytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            url_lifetime=lifetime,
            kept_ids=tuple(kept),
            dropped_ids=dropped,
        )
