"""Shard stage: serialise entries and cut them into manifest files within Theos's limits.

A manifest file is exactly ``b"[" + b",".join(entries) + b"]"``: compact JSON, one
entry per object with keys in the order ``url``, ``split``, ``external_id``, no
whitespace, no trailing newline. Its size is therefore known exactly before it is
written: ``2 + sum(len(entry)) + (n - 1)`` bytes for ``n >= 1`` entries, and a shard
is closed before an entry would push it past ``max_entries`` (<= 100,000) or
``max_bytes`` (<= 100,000,000).

:class:`ShardPlanner` does that accounting alone (pure, sizes in, boundaries out);
:class:`ShardWriter` uses it to stream entries into temp files in the output folder,
and only :meth:`ShardWriter.commit` renames them to ``manifest-00001.json``, ... so a
build that fails (for example on validation) leaves no manifest file behind.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from .errors import ConfigError, PublishError, ShardError

__all__ = [
    "DEFAULT_NAME_FORMAT",
    "MAX_BYTES",
    "MAX_ENTRIES",
    "ShardInfo",
    "ShardPlanner",
    "ShardWriter",
    "check_limits",
    "encode_entry",
    "manifest_bytes",
]

#: Theos's hard limits per manifest.
MAX_ENTRIES = 100_000
MAX_BYTES = 100_000_000
DEFAULT_NAME_FORMAT = "manifest-{:05d}.json"

# The smallest entry the schema allows is {"url":"http://x","split":"test"} (38 bytes);
# a byte limit below one of those plus brackets could never hold anything.
_MIN_BYTES = 64
_FLUSH_BYTES = 1 << 20


def encode_entry(url: str, split: str, external_id: str | None = None) -> bytes:
    """One entry as compact JSON bytes, keys in the order url, split, external_id.

    >>> encode_entry("https://x.example/a.jpg", "train", "a")
    b'{"url":"https://x.example/a.jpg","split":"train","external_id":"a"}'
    """
    if external_id is None:
        return orjson.dumps({"url": url, "split": split})
    return orjson.dumps({"url": url, "split": split, "external_id": external_id})


def manifest_bytes(entries: list[bytes]) -> bytes:
    """The exact bytes of a manifest file holding ``entries``.

    >>> manifest_bytes([b'{"a":1}', b'{"b":2}'])
    b'[{"a":1},{"b":2}]'
    """
    return b"[" + b",".join(entries) + b"]"


def check_limits(max_entries: int, max_bytes: int) -> None:
    """Raise ConfigError unless 1 <= max_entries <= 100,000 and 64 <= max_bytes <= 100,000,000."""
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or not 1 <= max_entries <= MAX_ENTRIES:
        raise ConfigError(
            f"--max-entries {max_entries!r} is out of range",
            hint=f"Theos accepts at most {MAX_ENTRIES:,} entries per manifest; use 1..{MAX_ENTRIES}",
        )
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not _MIN_BYTES <= max_bytes <= MAX_BYTES:
        raise ConfigError(
            f"--max-bytes {max_bytes!r} is out of range",
            hint=f"Theos accepts at most {MAX_BYTES:,} bytes per manifest; use {_MIN_BYTES}..{MAX_BYTES}",
        )


@dataclass(frozen=True)
class ShardInfo:
    """One written (or planned) manifest file. ``path`` is None until it exists on disk."""

    index: int
    name: str
    entries: int
    bytes: int
    sha256: str
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for plan.json; ``path`` is left out so plans do not depend on the folder."""
        d = asdict(self)
        d.pop("path")
        return d


class ShardPlanner:
    """Pure shard accounting: feed entry sizes, learn where shards break.

    ``add(size)`` returns True when that entry starts a new shard (the first entry
    included), so callers can close the previous one before writing it.

    >>> p = ShardPlanner(max_entries=2, max_bytes=1000)
    >>> [p.add(10) for _ in range(5)]
    [True, False, True, False, True]
    >>> p.shard_index, p.entries, p.bytes
    (3, 1, 12)
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        check_limits(max_entries, max_bytes)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.shard_index = 0  # 1-based index of the current shard; 0 before the first entry
        self.entries = 0  # entries in the current shard
        self.bytes = 2  # bytes of the current shard, brackets included

    def fits_alone(self, size: int) -> bool:
        return size + 2 <= self.max_bytes

    def add(self, size: int, key: str | None = None) -> bool:
        """Account for one entry of ``size`` bytes; True if it opens a new shard."""
        if size + 2 > self.max_bytes:
            what = f"the entry for {key!r}" if key is not None else "an entry"
            raise ShardError(
                f"{what} is {size:,} bytes; with the brackets it cannot fit in a {self.max_bytes:,}-byte manifest",
                hint="raise --max-bytes, or shorten the URL (e.g. --urls public or a shorter --url-template)",
            )
        if self.entries and self.entries < self.max_entries and self.bytes + 1 + size <= self.max_bytes:
            self.entries += 1
            self.bytes += 1 + size
            return False
        self.shard_index += 1
        self.entries = 1
        self.bytes = 2 + size
        return True


class ShardWriter:
    """Streams encoded entries into manifest files, atomically.

    >>> w = ShardWriter(tmp_dir, max_entries=2)          # doctest: +SKIP
    >>> for e in encoded: w.add(e)                        # doctest: +SKIP
    >>> last = w.close(); infos = w.commit()              # doctest: +SKIP
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        name_format: str = DEFAULT_NAME_FORMAT,
        fsync: bool = True,
    ) -> None:
        self.planner = ShardPlanner(max_entries, max_bytes)
        self.out_dir = Path(out_dir)
        self.name_format = name_format
        self.fsync = fsync
        self._token = secrets.token_hex(4)
        self._fh: IO[bytes] | None = None
        self._hash: Any = None
        self._buf: list[bytes] = []
        self._buflen = 0
        self._pending: list[tuple[ShardInfo, Path]] = []  # closed shards, still under temp names
        self._committed = False

    @property
    def shards(self) -> list[ShardInfo]:
        """Shards closed so far (with their final ``path``, even before commit)."""
        return [info for info, _ in self._pending]

    def _temp_path(self, index: int) -> Path:
        return self.out_dir / f".{self.name_format.format(index)}.{self._token}.tmp"

    def _open(self, index: int) -> None:
        path = self._temp_path(index)
        try:
            self._fh = open(path, "xb")  # noqa: SIM115 - closed in _finish
        except OSError as exc:
            raise PublishError(
                f"cannot write manifests to {self.out_dir}: {exc.strerror or exc}",
                hint="choose an --out folder you can write to",
            ) from exc
        self._hash = hashlib.sha256()
        self._write(b"[")

    def _write(self, data: bytes) -> None:
        # Entries are small: collect them and hand the file and the hash ~1 MB at a
        # time, which is several times cheaper than two calls per entry.
        self._buf.append(data)
        self._buflen += len(data)
        if self._buflen >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        assert self._fh is not None
        chunk = b"".join(self._buf)
        self._buf.clear()
        self._buflen = 0
        try:
            self._fh.write(chunk)
        except OSError as exc:
            raise PublishError(
                f"writing {self._fh.name} failed: {exc.strerror or exc}", hint="check free disk space in --out"
            ) from exc
        self._hash.update(chunk)

    def _finish(self, index: int, entries: int, expected: int) -> ShardInfo | None:
        fh = self._fh
        if fh is None:
            return None
        self._write(b"]")
        self._flush()
        try:
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
            fh.close()
        except OSError as exc:
            raise PublishError(f"writing {fh.name} failed: {exc.strerror or exc}", hint="check free disk space") from exc
        self._fh = None
        name = self.name_format.format(index)
        temp = Path(fh.name)
        size = temp.stat().st_size
        if size != expected:  # the accounting is the contract: never ship a shard that breaks it
            raise ShardError(f"shard {name}: wrote {size} bytes but counted {expected}")
        info = ShardInfo(
            index=index,
            name=name,
            entries=entries,
            bytes=size,
            sha256=self._hash.hexdigest(),
            path=str(self.out_dir / name),
        )
        self._pending.append((info, temp))
        return info

    def add(self, encoded: bytes, key: str | None = None) -> ShardInfo | None:
        """Append one encoded entry; returns the info of the shard this closed, if any."""
        closed = None
        planner = self.planner
        before = (planner.shard_index, planner.entries, planner.bytes)
        if planner.add(len(encoded), key):
            closed = self._finish(*before)
            self._open(self.planner.shard_index)
            self._write(encoded)
        else:
            self._write(b",")
            self._write(encoded)
        return closed

    def add_many(self, encoded: list[bytes], keys: list[str] | None = None) -> list[ShardInfo]:
        """Append many encoded entries; returns the infos of the shards this closed."""
        closed: list[ShardInfo] = []
        planner = self.planner
        buf = self._buf
        max_entries, max_bytes = planner.max_entries, planner.max_bytes
        for n, data in enumerate(encoded):
            size = len(data)
            # Inline fast path of ShardPlanner.add for the common case (entry fits the open shard).
            if planner.entries and planner.entries < max_entries and planner.bytes + 1 + size <= max_bytes:
                planner.entries += 1
                planner.bytes += 1 + size
                buf.append(b",")
                buf.append(data)
                self._buflen += 1 + size
                if self._buflen >= _FLUSH_BYTES:
                    self._flush()
            else:
                info = self.add(data, keys[n] if keys is not None else None)
                if info is not None:
                    closed.append(info)
        return closed

    def close(self) -> ShardInfo | None:
        """Finish the last shard; returns its info (None if it was already closed or empty)."""
        p = self.planner
        return self._finish(p.shard_index, p.entries, p.bytes)

    def commit(self) -> list[ShardInfo]:
        """Rename every finished shard into place; returns all of them in order."""
        self.close()
        for info, temp in self._pending:
            try:
                os.replace(temp, info.path)  # type: ignore[arg-type]
            except OSError as exc:
                raise PublishError(f"cannot rename {temp} to {info.path}: {exc.strerror or exc}") from exc
        self._committed = True
        return self.shards

    def abort(self) -> None:
        """Remove every temp file this writer made; committed files are left alone."""
        self._buf.clear()
        self._buflen = 0
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self._committed:
            return
        for path in self.out_dir.glob(f".*.{self._token}.tmp"):
            try:
                path.unlink()
            except OSError:
                pass
        self._pending.clear()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()
