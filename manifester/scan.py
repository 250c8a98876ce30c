"""Scan stage: stream a storage listing through the user's filters.

The scan never holds the listing: it pulls objects from :meth:`Storage.list` page by
page and yields the ones that pass, counting the rest in a :class:`ScanStats` by
reason (``empty``, ``excluded``, ``not-included``, ``not-an-image-extension``; checked
in that order, the first that applies is the one counted).

Glob rules (``--include`` / ``--exclude``) match the key *relative to the source
prefix* (for ``s3://photos/2024/`` the key ``2024/cats/a.jpg`` is matched as
``cats/a.jpg``), case-sensitively, with these wildcards:

* ``*`` any run of characters except ``/``; ``?`` one character except ``/``;
  ``[abc]`` / ``[!abc]`` a character class;
* ``**`` any run of characters including ``/``; ``**/`` also matches no folder at all,
  so ``**/*.png`` matches ``a.png`` and ``x/y/a.png``;
* a pattern without ``/`` is matched against the file name only (as in .gitignore):
  ``*.tmp`` excludes ``a.tmp`` in every folder.

An object is kept when it matches at least one include (or there are none) and no
exclude. Extensions are compared case-insensitively on the text after the last ``.``
of the file name.

The scan also checks that keys arrive in strictly increasing order, which S3, GCS and
the local backend guarantee. That makes every key (hence every external id) unique
within a build with O(1) memory; a violation is a :class:`SourceError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .errors import ConfigError, SourceError
from .records import StorageObject
from .storage.base import Storage

__all__ = [
    "DEFAULT_EXTENSIONS",
    "SKIP_REASONS",
    "ScanFilters",
    "ScanStats",
    "compile_glob",
    "normalize_extensions",
    "scan",
]

#: Image types Theos accepts and browsers decode; the default ``--extensions``.
DEFAULT_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

#: Every reason an object can be skipped for, in reporting order.
SKIP_REASONS: tuple[str, ...] = ("empty", "excluded", "not-included", "not-an-image-extension")

#: How many example keys are remembered per skip reason.
MAX_EXAMPLES = 5


def normalize_extensions(extensions: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """Lower-case, strip dots, de-duplicate; ``None``, ``"*"`` or ``"any"`` means no filter.

    >>> normalize_extensions("JPG, .png")
    ('jpg', 'png')
    """
    if extensions is None:
        return None
    items = extensions.split(",") if isinstance(extensions, str) else list(extensions)
    out: list[str] = []
    for raw in items:
        ext = str(raw).strip().lower().lstrip(".")
        if ext in ("*", "any"):
            return None
        if not ext:
            continue
        if not re.fullmatch(r"[\w+-]+", ext):
            raise ConfigError(f"--extensions: {raw!r} is not a file extension", hint="write e.g. --extensions jpg,png")
        if ext not in out:
            out.append(ext)
    if not out:
        raise ConfigError("--extensions is empty", hint="give e.g. --extensions jpg,png, or '*' for every file")
    return tuple(out)


def _glob_to_regex(pattern: str) -> str:
    """Translate one glob to a regex body (no anchors); see the module docstring."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern.startswith(("[!", "[]"), i) else i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"[{'^/' if negate else ''}{body}]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_glob(patterns: Iterable[str], flag: str = "--include") -> re.Pattern[str] | None:
    """Compile globs into one regex matching a relative key; ``None`` when there are none.

    >>> bool(compile_glob(["**/*.png"]).match("a/b.png"))
    True
    """
    bodies: list[str] = []
    for pattern in patterns:
        if not pattern:
            raise ConfigError(f"{flag}: empty glob", hint=f"give {flag} a pattern such as 'cats/**'")
        body = _glob_to_regex(pattern.lstrip("/"))
        # A slash-free pattern names a file anywhere, like a .gitignore line.
        bodies.append(body if "/" in pattern.lstrip("/") else f"(?:.*/)?{body}")
    if not bodies:
        return None
    try:
        return re.compile("(?:" + "|".join(bodies) + r")\Z", re.DOTALL)
    except re.error as exc:
        raise ConfigError(f"{flag}: bad glob ({exc})", hint="check the brackets in the pattern") from exc


@dataclass(frozen=True)
class ScanFilters:
    """Which objects a scan keeps. Globs are matched against the key relative to the source prefix."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS

    def __post_init__(self) -> None:
        # Accept lists from Python callers but store tuples so the record stays hashable.
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "extensions", normalize_extensions(self.extensions))
        compile_glob(self.include, "--include")
        compile_glob(self.exclude, "--exclude")


@dataclass
class ScanStats:
    """Counters filled in while a scan runs (mutable on purpose: the scan is a generator)."""

    listed: int = 0
    kept: int = 0
    kept_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, key: str) -> None:
        """Count one skipped object and remember it if it is among the first few."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(key)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, object]:
        """Plain data for plan.json, reasons in a fixed order so output is deterministic."""
        order = [r for r in SKIP_REASONS if r in self.skipped] + sorted(set(self.skipped) - set(SKIP_REASONS))
        return {
            "listed": self.listed,
            "kept": self.kept,
            "skipped": {r: self.skipped[r] for r in order},
            "examples": {r: list(self.examples.get(r, [])) for r in order},
        }


def scan(storage: Storage, filters: ScanFilters | None = None, stats: ScanStats | None = None) -> Iterator[StorageObject]:
    """Yield the objects of ``storage`` that pass ``filters``, in key order, in constant memory.

    >>> stats = ScanStats()
    >>> for obj in scan(open_storage("s3://photos/cats"), ScanFilters(exclude=("*.tmp",)), stats):
    ...     print(obj.key)                                    # doctest: +SKIP
    """
    filters = filters or ScanFilters()
    stats = stats if stats is not None else ScanStats()
    include = compile_glob(filters.include, "--include")
    exclude = compile_glob(filters.exclude, "--exclude")
    exts = frozenset(filters.extensions) if filters.extensions is not None else None
    prefix = storage.prefix or ""
    cut = len(prefix)
    previous: str | None = None
    skip = stats.skip
    for obj in storage.list():
        key = obj.key
        stats.listed += 1
        if previous is not None and key <= previous:
            raise SourceError(
                f"{storage.root_uri}: listing is not in strictly increasing key order: {previous!r} came before {key!r}",
                hint="keys must be unique and sorted; this storage backend or server is not S3/GCS compatible",
            )
        previous = key
        if obj.size == 0:
            skip("empty", key)
            continue
        if include is not None or exclude is not None:
            rel = key[cut:].lstrip("/") if cut and key.startswith(prefix) else key
            if exclude is not None and exclude.match(rel):
                skip("excluded", key)
                continue
            if include is not None and not include.match(rel):
                skip("not-included", key)
                continue
        if exts is not None:
            name = key.rpartition("/")[2]
            dot = name.rfind(".")
            if dot < 0 or name[dot + 1 :].lower() not in exts:
                skip("not-an-image-extension", key)
                continue
        stats.kept += 1
        stats.kept_bytes += obj.size
        yield obj
