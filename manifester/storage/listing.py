"""A listing file (key list or inventory report) in place of a bucket listing.

For very large buckets a LIST call per 1,000 keys is the slow part of a build;
S3 Inventory and GCS inventory reports list the same objects daily, as files, at
no request cost. :class:`ListingStorage` wraps a real backend (the bucket, or the
local folder the keys are relative to) and replaces only its :meth:`list` with a
stream read from such a file. Everything else (reading, writing, presigning,
public URLs, object URIs and thus external ids) is the wrapped backend's, so a
build from a listing gives exactly the entries that listing the bucket would.

Formats, chosen by file name (``.gz`` is decompressed on the fly):

* ``*.csv``: S3 Inventory CSV columns ``bucket,key,size[,...]`` without a header
  (extra columns such as etag/last-modified are read only for the etag: the 4th
  column if present). The key column is URL-encoded, as S3 Inventory writes it
  (``+`` for a space); pass ``decode_keys=False`` for a CSV of plain keys. A
  header row whose second cell is ``key`` (any case) is skipped.
* ``*.jsonl`` / ``*.ndjson``: one object per line with ``key`` and optionally
  ``size`` and ``etag``.
* anything else: one key per line, optionally ``key<TAB>size``.

A listing without sizes reports ``size=-1`` ("unknown") so that the scan does not
count the objects as empty. Keys must come in strictly increasing code-point
order (what ``LC_ALL=C sort`` gives for UTF-8), as bucket listings do; a listing
that is not sorted is a :class:`SourceError` naming the line.
"""

from __future__ import annotations

import builtins  # annotations inside the class: there `list` is the listing method
import csv
import gzip
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote_plus

import orjson

from ..errors import SourceError, SourceNotFoundError
from ..records import StorageObject
from .base import Storage

__all__ = ["UNKNOWN_SIZE", "ListingStorage", "listing_format"]

#: Size reported for objects whose listing gives none.
UNKNOWN_SIZE = -1

_SORT_HINT = "sort the listing by key first, e.g. LC_ALL=C sort (for a CSV: LC_ALL=C sort -t, -k2,2)"


def listing_format(path: str | os.PathLike[str]) -> str:
    """The format of a listing file from its name: ``csv``, ``jsonl`` or ``text``.

    >>> listing_format("inventory/data/part-0.csv.gz"), listing_format("keys.txt")
    ('csv', 'text')
    """
    name = Path(path).name.lower()
    name = name.removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "text"


class ListingStorage(Storage):
    """``base`` with its listing read from ``listing`` (a file) instead of from the server.

    ``fmt`` overrides the format guessed from the file name (``csv``, ``jsonl``,
    ``text``). Keys outside ``base``'s prefix are skipped; for a CSV with a bucket
    column, a row naming another bucket is an error (the wrong report).

    >>> from manifester.storage.local import LocalStorage
    >>> store = ListingStorage("keys.txt", LocalStorage("/data/photos"))     # doctest: +SKIP
    >>> next(store.list())                                                   # doctest: +SKIP
    StorageObject(key='cats/a.jpg', size=-1, etag=None)
    """

    def __init__(
        self,
        listing: str | os.PathLike[str],
        base: Storage,
        *,
        fmt: str | None = None,
        decode_keys: bool = True,
    ) -> None:
        super().__init__(base.bucket, base.prefix)
        self.base = base
        # An instance attribute shadows the ClassVar: a listing is "of" its base's scheme,
        # so the builder applies the same URL rules (a local root still needs a template).
        self.scheme = base.scheme  # type: ignore[misc]
        self.path = Path(listing).expanduser().absolute()
        self.fmt = fmt or listing_format(self.path)
        if self.fmt not in ("csv", "jsonl", "text"):
            raise SourceError(
                f"listing format {self.fmt!r} is unknown", hint="use csv, jsonl or text"
            )
        self.decode_keys = decode_keys
        # The build calls object_uri once per entry: bind the base's method directly
        # rather than going through the delegating method below.
        self.object_uri = base.object_uri  # type: ignore[method-assign]

    # ------------------------------------------------------------------ listing

    def _open(self) -> IO[str]:
        try:
            raw: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            raise SourceNotFoundError(
                f"listing file {self.path} does not exist", hint="check the path"
            ) from None
        except OSError as exc:
            raise SourceError(
                f"cannot open listing file {self.path}: {exc.strerror or exc}"
            ) from exc
        if self.path.name.lower().endswith(".gz"):
            raw = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        return io.TextIOWrapper(raw, encoding="utf-8", newline="")

    def _rows(self, fh: IO[str]) -> Iterator[tuple[int, str, int, str | None]]:
        """(line number, key, size, etag) per object line of the file."""
        if self.fmt == "csv":
            yield from self._csv_rows(fh)
        elif self.fmt == "jsonl":
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    doc: Any = orjson.loads(line)
                    key = doc["key"]
                    size = int(doc.get("size", UNKNOWN_SIZE))
                    etag = doc.get("etag")
                except (
                    orjson.JSONDecodeError,
                    KeyError,
                    TypeError,
                    ValueError,
                    AttributeError,
                ) as exc:
                    raise SourceError(
                        f"{self.path} line {n}: not a JSON object with a 'key' ({type(exc).__name__})",
                        hint='write one {"key": ..., "size": ...} object per line',
                    ) from None
                if not isinstance(key, str):
                    raise SourceError(
                        f"{self.path} line {n}: 'key' is not text",
                        hint="keys are strings",
                    )
                yield n, key, size, (str(etag) if etag is not None else None)
        else:
            for n, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                key, tab, size_text = line.partition("\t")
                size = UNKNOWN_SIZE
                if tab:
                    try:
                        size = int(size_text.split("\t", 1)[0])
                    except ValueError:
                        raise SourceError(
                            f"{self.path} line {n}: size {size_text!r} is not a whole number",
                            hint="write one key per line, optionally followed by a tab and its size in bytes",
                        ) from None
                yield n, key, size, None

    def _csv_rows(self, fh: IO[str]) -> Iterator[tuple[int, str, int, str | None]]:
        decode = unquote_plus if self.decode_keys else None
        bucket = self.base.bucket
        check_bucket = self.base.scheme != "file"
        for n, row in enumerate(csv.reader(fh), 1):
            if not row:
                continue
            if len(row) < 2:
                raise SourceError(
                    f"{self.path} line {n}: expected bucket,key[,size,...] (S3 Inventory CSV)",
                    hint="give a CSV whose columns are bucket,key,size, or a text file with one key per line",
                )
            if n == 1 and row[1].strip().lower() == "key":
                continue  # a header some tools add
            if check_bucket and row[0] != bucket:
                raise SourceError(
                    f"{self.path} line {n}: object of bucket {row[0]!r}, but the source is {self.base.root_uri}",
                    hint="use the inventory report of the source bucket",
                )
            key = decode(row[1]) if decode is not None else row[1]
            size = UNKNOWN_SIZE
            if len(row) > 2 and row[2]:
                try:
                    size = int(row[2])
                except ValueError:
                    raise SourceError(
                        f"{self.path} line {n}: size {row[2]!r} is not a whole number",
                        hint="the third column must be the size in bytes",
                    ) from None
            etag = row[3].strip('"') or None if len(row) > 3 else None
            yield n, key, size, etag

    def list(self, prefix: str | None = None) -> Iterator[StorageObject]:
        """Stream the listing file's objects under ``prefix`` (default: the base's), in file order.

        >>> [o.key for o in ListingStorage("keys.txt", base).list("cats/")]   # doctest: +SKIP
        ['cats/a.jpg', 'cats/b.jpg']
        """
        want = self.prefix if prefix is None else prefix
        with self._open() as fh:
            try:
                if self.fmt == "text":
                    # The common case for big listings gets its own tight loop (no
                    # per-line generator hop): this loop is the build's input rate.
                    yield from self._list_text(fh, want)
                    return
                previous: str | None = None
                for n, key, size, etag in self._rows(fh):
                    if previous is not None and key <= previous:
                        raise SourceError(
                            f"{self.path} line {n}: key {key!r} is not after {previous!r}",
                            hint=_SORT_HINT,
                        )
                    previous = key
                    if not key.startswith(want) or key.endswith("/"):
                        continue
                    yield StorageObject(key, size, etag)
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"{self.path} is not UTF-8 text",
                    hint="convert the listing to UTF-8",
                ) from exc
            except (OSError, EOFError) as exc:  # truncated or corrupt .gz
                raise SourceError(
                    f"cannot read listing file {self.path}: {exc}"
                ) from exc

    def _list_text(self, fh: IO[str], want: str) -> Iterator[StorageObject]:
        previous = ""
        n = 0
        obj = StorageObject
        for n, line in enumerate(fh, 1):
            key, tab, size_text = line.rstrip("\r\n").partition("\t")
            if not key:
                continue
            if key <= previous:
                raise SourceError(
                    f"{self.path} line {n}: key {key!r} is not after {previous!r}",
                    hint=_SORT_HINT,
                )
            previous = key
            if tab:
                try:
                    size = int(size_text.partition("\t")[0])
                except ValueError:
                    raise SourceError(
                        f"{self.path} line {n}: size {size_text!r} is not a whole number",
                        hint="write one key per line, optionally followed by a tab and its size in bytes",
                    ) from None
            else:
                size = UNKNOWN_SIZE
            if key.startswith(want) and not key.endswith("/"):
                yield obj(key, size, None)

    # ------------------------------------------------------------------ the rest is the base's

    @property
    def root_uri(self) -> str:
        return self.base.root_uri

    def object_uri(self, key: str) -> str:
        return self.base.object_uri(key)

    def read(self, key: str) -> bytes:
        return self.base.read(key)

    def write(
        self, key: str, data: bytes, *, content_type: str = "application/json"
    ) -> None:
        self.base.write(key, data, content_type=content_type)

    def head(self, key: str) -> StorageObject | None:
        return self.base.head(key)

    def presign(self, key: str, expires: int) -> str:
        return self.base.presign(key, expires)

    def presign_many(self, keys: Iterable[str], expires: int) -> builtins.list[str]:
        return self.base.presign_many(keys, expires)

    def public_url(self, key: str) -> str:
        return self.base.public_url(key)

    def max_presign_seconds(self) -> int:
        return self.base.max_presign_seconds()

    def close(self) -> None:
        self.base.close()
