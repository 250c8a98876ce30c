"""A faster S3 listing: presigned ListObjectsV2 pages, parsed lean, the next page prefetched.

Listing through boto3 spends most of its time in the client, not waiting for the
server: against a local SeaweedFS, ~70 % of the wall time of listing 20,000 keys is
botocore building the request and parsing each 1,000-key XML page into dicts
(timestamps included). :func:`list_objects_fast` instead asks the same boto3 client
to *presign* each ListObjectsV2 request (so endpoint, addressing style, region and
credentials are exactly the client's), fetches it with httpx, reads only
``Key``/``Size``/``ETag`` with ElementTree, and requests page N+1 (its continuation
token is found in page N's bytes first) while page N is being parsed.

``S3Storage.list`` uses it unless the client has boto3-only transport settings
(``AWS_CA_BUNDLE`` or a CA bundle, proxies or a client certificate in
``~/.aws/config``), which httpx would not see; ``S3Storage(..., fast_list=False)``
turns it off. Any failure (HTTP error, unreachable endpoint, unexpected XML) raises
:class:`FastListUnavailable` carrying the continuation token reached, so the caller
goes on with boto3 from exactly there and reports errors the usual way.

    >>> for obj in list_objects_fast(storage._client, "photos", "2024/"):   # doctest: +SKIP
    ...     print(obj.key, obj.size)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_plus

from ..records import StorageObject

__all__ = ["FastListUnavailable", "list_objects_fast"]

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_TRUNCATED = re.compile(rb"<IsTruncated>\s*true\s*</IsTruncated>")
_PRESIGN_SECONDS = 900


class FastListUnavailable(Exception):
    """The fast path stopped; ``token`` is where boto3 should continue (None: from the start)."""

    def __init__(self, reason: str, token: str | None) -> None:
        super().__init__(reason)
        self.token = token


def _fetch(http: Any, url: str) -> bytes:
    r = http.get(url)
    if r.status_code != 200:
        raise FastListUnavailable(f"HTTP {r.status_code}", None)
    return bytes(r.content)


def list_objects_fast(
    client: Any,
    bucket: str,
    prefix: str = "",
    page_size: int | None = None,
    *,
    timeout: float = 60.0,
    ca_bundle: str | None = None,
) -> Iterator[StorageObject]:
    """Yield every object under ``prefix`` in key order, like ``S3Storage.list``.

    Keys ending in ``/`` (folder markers) are skipped; ETags lose their quotes.
    ``ca_bundle`` is the certificate file boto3 verifies with (``AWS_CA_BUNDLE``),
    if any. Raises :class:`FastListUnavailable` (with the resume token) on any problem.
    """
    import ssl

    import httpx

    try:
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
    except (OSError, ssl.SSLError) as exc:  # boto3 will name the bad bundle
        raise FastListUnavailable(f"CA bundle: {type(exc).__name__}", None) from exc

    def url_for(token: str | None) -> str:
        params: dict[str, Any] = {"Bucket": bucket, "EncodingType": "url"}
        if prefix:
            params["Prefix"] = prefix
        if token is not None:
            params["ContinuationToken"] = token
        if page_size:
            params["MaxKeys"] = page_size
        return str(
            client.generate_presigned_url(
                "list_objects_v2", Params=params, ExpiresIn=_PRESIGN_SECONDS
            )
        )

    token: str | None = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifester-list")
    try:
        with httpx.Client(timeout=timeout, verify=verify) as http:
            try:
                pending: Future[bytes] | None = pool.submit(_fetch, http, url_for(None))
            except (
                Exception
            ) as exc:  # presigning failed (no credentials ...): boto3 will say why
                raise FastListUnavailable(
                    f"presign: {type(exc).__name__}", None
                ) from exc
            while pending is not None:
                try:
                    body = pending.result()
                except FastListUnavailable as exc:
                    raise FastListUnavailable(str(exc), token) from None
                except (
                    Exception
                ) as exc:  # network errors: boto3 retries and reports them
                    raise FastListUnavailable(type(exc).__name__, token) from exc
                pending = None
                next_token: str | None = None
                if _TRUNCATED.search(body):
                    m = _TOKEN.search(body)
                    if m is None:
                        raise FastListUnavailable(
                            "truncated page without a continuation token", token
                        )
                    next_token = _unescape(m.group(1).decode("utf-8"))
                    pending = pool.submit(
                        _fetch, http, url_for(next_token)
                    )  # overlaps the parsing below
                try:
                    root = ET.fromstring(body)
                except ET.ParseError as exc:
                    raise FastListUnavailable("unreadable XML", token) from exc
                objects: list[StorageObject] = []
                for item in root.iter(_NS + "Contents"):
                    key_el = item.find(_NS + "Key")
                    if key_el is None or key_el.text is None:
                        raise FastListUnavailable("an entry without a key", token)
                    key = unquote_plus(key_el.text)
                    if key.endswith("/"):
                        continue
                    size = item.findtext(_NS + "Size") or "0"
                    if not size.isdigit():
                        raise FastListUnavailable("an entry with an unreadable size", token)
                    etag = (item.findtext(_NS + "ETag") or "").strip('"') or None
                    objects.append(StorageObject(key=key, size=int(size), etag=etag))
                # Yield only whole pages, so a failure on the next page resumes cleanly at its token.
                yield from objects
                token = next_token
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _unescape(text: str) -> str:
    # XML character entities that may appear in a token (it is opaque, usually base64).
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&apos;", "'")
        .replace("&amp;", "&")
    )
