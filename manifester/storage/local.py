"""A local folder as a storage backend.

Keys are paths relative to the folder, ``/``-separated. :meth:`LocalStorage.list`
yields them in full-key lexicographic order (code-point order, which equals the
UTF-8 byte order S3 and GCS list in), so a local folder and the same tree
uploaded to a bucket list identically. A local folder has no URLs of its own:
:meth:`~LocalStorage.presign` and :meth:`~LocalStorage.public_url` refuse and
point at ``--url-template``.
"""

from __future__ import annotations

import builtins  # annotations in Storage classes: there `list` is the listing method
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

from ..errors import ConfigError, PublishError, SourceError, SourceNotFoundError
from ..records import StorageObject
from .base import Storage

__all__ = ["LocalStorage"]


# quote(ch, safe="/") for every ASCII character: str.translate then encodes an ASCII
# key at C speed. Non-ASCII keys still go through quote() (same bytes, same errors).
_ASCII_QUOTE = {c: quote(chr(c), safe="/") for c in range(128)}
#: Keys made only of characters that quote() leaves alone need no encoding at all.
_UNCHANGED = re.compile(r"[A-Za-z0-9\-._~/]*")


def _sort_name(entry: os.DirEntry[str], is_dir: bool) -> str:
    # A directory's keys all start with "name/", so comparing it as "name/"
    # against its siblings puts it exactly where its keys fall in full-key order.
    return entry.name + "/" if is_dir else entry.name


class LocalStorage(Storage):
    """A folder on disk. ``bucket`` is the folder's absolute path; ``prefix`` is a key prefix.

    >>> store = LocalStorage("/data/photos")
    >>> [o.key for o in store.list()]  # doctest: +SKIP
    ['animals/cats/tabby.jpg', 'notes.txt']
    """

    scheme = "file"

    def __init__(self, bucket: str, prefix: str = "") -> None:
        super().__init__(str(Path(bucket).resolve()), prefix)
        self.root = Path(self.bucket)
        root = str(self.root)
        self._uri_head = "file://" + quote(root if root.endswith("/") else root + "/", safe="/")

    @property
    def root_uri(self) -> str:
        """``file://`` URI of the folder (plus prefix), percent-encoded like :meth:`object_uri`."""
        return ("file://" + quote(self.bucket, safe="/") + "/" + quote(self.prefix, safe="/")).rstrip("/")

    def object_uri(self, key: str) -> str:
        """``file://`` URI of the file, percent-encoded (spaces, unicode, '%', '#' are safe in it).

        >>> LocalStorage("/data").object_uri("a b/c.jpg")
        'file:///data/a%20b/c.jpg'
        """
        # Called once per entry by the build: plain string checks and a cached root
        # prefix give exactly str(self._path(key)) without building a Path (~10x faster).
        # quote() works character by character, so quoting the parts separately is the same.
        wrapped = "/" + key + "/"
        if not key or "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
            self._path(key)  # raises the usual SourceError
        if _UNCHANGED.fullmatch(key):
            return self._uri_head + key
        if key.isascii():
            return self._uri_head + key.translate(_ASCII_QUOTE)
        return self._uri_head + quote(key, safe="/")

    # ------------------------------------------------------------------ helpers

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise SourceError(
                f"key {key!r} is not a plain relative path inside {self.root}",
                hint="keys are '/'-separated names without '.', '..' or empty parts",
            )
        return self.root.joinpath(*parts)

    def _check_root(self) -> None:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise SourceNotFoundError(
                f"local folder {self.root} does not exist",
                hint="check the path (relative paths are resolved from the current directory)",
            ) from None
        except OSError as exc:
            raise SourceError(f"cannot open local folder {self.root}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError(
                f"{self.root} is not a folder",
                hint="pass the folder that holds the images, not a file",
            )

    # ------------------------------------------------------------------ listing

    def list(self, prefix: str | None = None) -> Iterator[StorageObject]:
        """Yield every file under the folder whose key starts with ``prefix``, in key order.

        Streams directory by directory (only one directory's entries per level are
        held); follows symlinks but skips any that would loop back to an ancestor.
        """
        self._check_root()
        want = self.prefix if prefix is None else prefix
        root_st = os.stat(self.root)
        yield from self._walk("", want, [(root_st.st_dev, root_st.st_ino)])

    def _walk(self, rel: str, want: str, ancestors: builtins.list[tuple[int, int]]) -> Iterator[StorageObject]:
        # Iterative depth-first walk so deep trees cannot hit the recursion limit.
        stack: list[tuple[str, Iterator[tuple[str, os.DirEntry[str], bool]]]] = []
        stack.append((rel, iter(self._entries(rel))))
        while stack:
            _, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                ancestors.pop()
                continue
            key, entry, is_dir = nxt
            if is_dir:
                dkey = key + "/"
                # Descend only where keys matching the prefix can live.
                if not (dkey.startswith(want) or want.startswith(dkey)):
                    continue
                try:
                    st = entry.stat()  # follows symlinks
                except OSError:
                    continue
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:  # symlink loop
                    continue
                ancestors.append(ident)
                stack.append((dkey, iter(self._entries(dkey))))
                continue
            if not key.startswith(want):
                continue
            try:
                st = entry.stat()
            except OSError:  # broken symlink or vanished file
                continue
            yield StorageObject(key=key, size=st.st_size, etag=f"{st.st_mtime_ns}-{st.st_size}")

    def _entries(self, dir_rel: str) -> builtins.list[tuple[str, os.DirEntry[str], bool]]:
        path = self.root / dir_rel if dir_rel else self.root
        out: list[tuple[str, os.DirEntry[str], bool]] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        is_dir = entry.is_dir()  # follows symlinks
                        is_file = not is_dir and entry.is_file()
                    except OSError:
                        continue
                    if is_dir or is_file:
                        out.append((dir_rel + entry.name, entry, is_dir))
        except PermissionError as exc:
            raise SourceError(
                f"cannot read folder {path}: permission denied",
                hint="fix its permissions or point at another folder",
            ) from exc
        except FileNotFoundError:
            return []  # removed while we walked
        except OSError as exc:
            raise SourceError(f"cannot read folder {path}: {exc.strerror}") from exc
        out.sort(key=lambda t: _sort_name(t[1], t[2]))
        return out

    # ------------------------------------------------------------------ objects

    def read(self, key: str) -> bytes:
        """Return the file's bytes."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise SourceNotFoundError(f"file {path} does not exist", hint="list the folder again") from None
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from exc

    def write(self, key: str, data: bytes, *, content_type: str = "application/json") -> None:
        """Write the file atomically (temp file in the same folder, then ``os.replace``).

        ``content_type`` is ignored: files have none.
        """
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as exc:
            raise PublishError(
                f"cannot write {path}: {exc.strerror}",
                hint="check that the folder is writable and the disk is not full",
            ) from exc

    def head(self, key: str) -> StorageObject | None:
        """Size and etag of the file, or None if it does not exist."""
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise SourceError(f"cannot stat {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            return None
        return StorageObject(key=key, size=st.st_size, etag=f"{st.st_mtime_ns}-{st.st_size}")

    def _no_urls(self) -> ConfigError:
        return ConfigError(
            f"local folder {self.root} has no URLs of its own",
            hint="pass --url-template 'https://host/{key}' (a web server that serves this folder)",
        )

    def presign(self, key: str, expires: int) -> str:
        """Always raises :class:`ConfigError`: files cannot be presigned."""
        raise self._no_urls()

    def presign_many(self, keys: Iterable[str], expires: int) -> builtins.list[str]:
        """Always raises :class:`ConfigError`, even for an empty batch."""
        raise self._no_urls()

    def public_url(self, key: str) -> str:
        """Always raises :class:`ConfigError`: files have no public URL."""
        raise self._no_urls()
