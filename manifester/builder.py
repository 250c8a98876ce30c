"""The builder behind ``manifester build``: scan a source, split, make URLs and ids, validate and shard into manifest files.

The pipeline streams: scan -> split -> external id -> URL (in batches, so presigning
and encoding are amortised) -> validate -> shard. Memory stays constant whatever the
size of the bucket. Nothing is put in place until every entry has been validated:
shards are written under temp names and renamed at the end, then ``plan.json``.

    >>> plan = build("s3://photos/cats", "manifests/", split="train=90,test=10")  # doctest: +SKIP
    >>> plan.counts                                                               # doctest: +SKIP
    {'train': 9012, 'valid': 0, 'test': 988}

``plan.json`` holds no timestamp or absolute output path: the same listing with the
same options (and non-presigned URLs) gives byte-identical manifest files *and* plan.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError, PublishError, ValidationError
from .ids import EXTERNAL_ID_MODES, external_ids_for
from .records import SPLITS, Entry
from .scan import DEFAULT_EXTENSIONS, ScanFilters, ScanStats, normalize_extensions, scan
from .shard import MAX_BYTES, MAX_ENTRIES, ShardInfo, ShardWriter, check_limits
from .split import DEFAULT_SPLIT, SplitSpec, Splitter, compile_group_by
from .storage import open_storage
from .storage.base import Storage
from .urls import (
    DEFAULT_EXPIRES,
    URL_MODES,
    UrlMaker,
    check_template,
    make_url_maker,
    parse_duration,
)
from .validate import MAX_PROBLEMS, EntryValidator

__all__ = ["PLAN_NAME", "PLAN_VERSION", "BuildOptions", "Plan", "build", "iter_entries"]

PLAN_NAME = "plan.json"
PLAN_VERSION = 1
_MANIFEST_NAME = re.compile(r"manifest-\d{5}\.json")


def _as_tuple(value: Iterable[str] | str | None, flag: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    out = tuple(value)
    for v in out:
        if not isinstance(v, str):
            raise ConfigError(f"{flag}: {v!r} is not a string", hint=f"give {flag} glob patterns")
    return out


@dataclass(frozen=True)
class BuildOptions:
    """Every option of a build, validated. Build one with :meth:`make`.

    ``urls`` is None until resolved against a source: ``template`` when a
    ``url_template`` is given, else ``presigned`` for buckets (local folders need a template).
    """

    split: SplitSpec = field(default_factory=SplitSpec)
    seed: str = ""
    group_by: str | None = None
    split_from_path: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS
    external_id: str = "uri"
    urls: str | None = None
    expires: int = DEFAULT_EXPIRES
    url_template: str | None = None
    max_entries: int = MAX_ENTRIES
    max_bytes: int = MAX_BYTES

    @classmethod
    def make(cls, **kwargs: Any) -> BuildOptions:
        """Validate options given as Python values or CLI-style strings.

        >>> BuildOptions.make(split="train=90,test=10", expires="7d", extensions="jpg,png").expires
        604800
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                f"unknown build option {unknown[0]!r}", hint="options are: " + ", ".join(sorted(known))
            )
        kw = {k: v for k, v in kwargs.items() if v is not None}
        split = SplitSpec.parse(kw.get("split", DEFAULT_SPLIT))
        seed = kw.get("seed", "")
        if not isinstance(seed, str):
            raise ConfigError(f"--seed {seed!r} must be text", hint="write e.g. --seed v1")
        group_by = kw.get("group_by") or None
        compile_group_by(group_by)
        include = _as_tuple(kw.get("include"), "--include")
        exclude = _as_tuple(kw.get("exclude"), "--exclude")
        extensions = normalize_extensions(kw["extensions"]) if "extensions" in kw else DEFAULT_EXTENSIONS
        ScanFilters(include, exclude, extensions)  # validates the globs
        external_id = kw.get("external_id", "uri")
        if external_id not in EXTERNAL_ID_MODES:
            raise ConfigError(f"--external-id: unknown mode {external_id!r}", hint="use --external-id uri or key")
        template = kw.get("url_template") or None
        if template is not None:
            check_template(template)
        urls = kw.get("urls")
        if urls is not None and urls not in URL_MODES:
            raise ConfigError(f"--urls: unknown mode {urls!r}", hint="use --urls presigned or --urls public")
        if template is not None and urls in ("presigned", "public"):
            raise ConfigError(
                f"--url-template cannot be combined with --urls {urls}",
                hint="drop --urls (a template implies template URLs) or drop --url-template",
            )
        if urls == "template" and template is None:
            raise ConfigError("--urls template needs --url-template", hint="pass --url-template 'https://host/{key}'")
        if template is not None:
            urls = "template"
        expires = parse_duration(kw.get("expires", DEFAULT_EXPIRES))
        if expires > 7 * 86400:
            raise ConfigError(f"--expires {kw.get('expires')!r} is longer than 7 days", hint="presigned URLs last at most 7d")
        max_entries = _as_int(kw.get("max_entries", MAX_ENTRIES), "--max-entries")
        max_bytes = _as_int(kw.get("max_bytes", MAX_BYTES), "--max-bytes")
        check_limits(max_entries, max_bytes)
        return cls(
            split=split,
            seed=seed,
            group_by=group_by,
            split_from_path=bool(kw.get("split_from_path", False)),
            include=include,
            exclude=exclude,
            extensions=extensions,
            external_id=external_id,
            urls=urls,
            expires=expires,
            url_template=template,
            max_entries=max_entries,
            max_bytes=max_bytes,
        )

    def resolve(self, storage: Storage) -> BuildOptions:
        """Fill in the URL mode for this source (presigned for buckets; local needs a template)."""
        if self.urls is not None:
            if storage.scheme == "file" and self.urls != "template":
                raise ConfigError(
                    f"--urls {self.urls} does not work for a local folder ({storage.root_uri})",
                    hint="pass --url-template 'https://your-host/{key}' pointing at where the files are served",
                )
            return self
        if storage.scheme == "file":
            raise ConfigError(
                f"a local folder ({storage.root_uri}) needs --url-template",
                hint="pass --url-template 'https://your-host/{key}' pointing at where the files are served",
            )
        return _replace(self, urls="presigned")

    @property
    def filters(self) -> ScanFilters:
        return ScanFilters(self.include, self.exclude, self.extensions)

    def splitter(self) -> Splitter:
        return Splitter(self.split, seed=self.seed, group_by=self.group_by, from_path=self.split_from_path)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for plan.json, in a fixed key order."""
        return {
            "split": str(self.split),
            "seed": self.seed,
            "group_by": self.group_by,
            "split_from_path": self.split_from_path,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "extensions": list(self.extensions) if self.extensions is not None else None,
            "external_id": self.external_id,
            "urls": self.urls,
            "expires": self.expires if self.urls == "presigned" else None,
            "url_template": self.url_template,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
        }


def _replace(options: BuildOptions, **changes: Any) -> BuildOptions:
    values = {f.name: getattr(options, f.name) for f in fields(options)}
    values.update(changes)
    return BuildOptions(**values)


def _as_int(value: Any, flag: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{flag} {value!r} is not a whole number", hint=f"write e.g. {flag} 1000")
    if isinstance(value, int):
        return value
    text = str(value).replace("_", "").replace(",", "").strip()
    if not text.isdigit():
        raise ConfigError(f"{flag} {value!r} is not a whole number", hint=f"write e.g. {flag} 1000")
    return int(text)


class _Problems:
    """Collects invalid entries: the first ``limit`` as lines, the rest as a count."""

    def __init__(self, sink: list[str] | None, limit: int) -> None:
        self.sink = sink
        self.limit = limit
        self.count = 0

    def add(self, key: str, message: str) -> None:
        self.count += 1
        if self.sink is None:
            raise ValidationError(
                f"manifest entry for {key!r} is invalid: {message}",
                hint="fix the key, --url-template or --external-id",
            )
        if len(self.sink) < self.limit:
            self.sink.append(f"{key!r}: {message}")

    def finish(self) -> None:
        if self.sink is not None and self.count > len(self.sink):
            self.sink.append(f"... and {self.count - len(self.sink)} more invalid entries")


def _iter_batches(
    storage: Storage,
    options: BuildOptions,
    stats: ScanStats,
    url_maker: UrlMaker,
    batch: int,
    problems: _Problems,
    validator: EntryValidator,
) -> Iterator[tuple[list[str], list[str], list[dict[str, str]]]]:
    """Yield (keys, uris, docs) of valid entries, ``batch`` scanned objects at a time.

    ``docs`` are the manifest entries as dicts in the order url, split, external_id,
    so ``orjson.dumps(doc)`` is exactly :func:`encode_entry`. Working per batch keeps
    the per-entry cost to a few list comprehensions (see notes/performance.md).
    """
    splitter = options.splitter()
    mode = options.external_id
    object_uri = storage.object_uri
    is_valid, all_valid = validator.is_valid, validator.all_valid
    pending: list[str] = []

    def flush(keys: list[str]) -> tuple[list[str], list[str], list[dict[str, str]]]:
        uris = [object_uri(k) for k in keys]
        splits = splitter.assign_many(keys)
        ids = external_ids_for(uris, keys, mode)  # type: ignore[arg-type]
        urls = url_maker(keys)
        if len(urls) != len(keys):
            raise PublishError(f"URL maker returned {len(urls)} URLs for {len(keys)} keys in {storage.root_uri}")
        docs = [{"url": u, "split": s, "external_id": i} for u, s, i in zip(urls, splits, ids)]
        bad = [] if all_valid(docs) else [n for n, doc in enumerate(docs) if not is_valid(doc)]
        if bad:
            for n in bad:
                problems.add(keys[n], validator.check(docs[n]) or "invalid")
            drop = set(bad)
            keep = [n for n in range(len(keys)) if n not in drop]
            keys = [keys[n] for n in keep]
            uris = [uris[n] for n in keep]
            docs = [docs[n] for n in keep]
        return keys, uris, docs

    for obj in scan(storage, options.filters, stats):
        pending.append(obj.key)
        if len(pending) >= batch:
            yield flush(pending)
            pending = []
    if pending:
        yield flush(pending)
    problems.finish()


def iter_entries(
    storage: Storage,
    options: BuildOptions,
    stats: ScanStats,
    url_maker: UrlMaker,
    batch: int = 1000,
    *,
    problems: list[str] | None = None,
    max_problems: int = MAX_PROBLEMS,
    validator: EntryValidator | None = None,
) -> Iterator[Entry]:
    """Yield validated entries for every object the scan keeps, in key order.

    Work is done ``batch`` objects at a time so URL signing and hashing run in tight
    loops. Invalid entries are not yielded: if ``problems`` is a list, one line per
    invalid entry is appended to it (up to ``max_problems``, then a count line),
    otherwise the first one raises :class:`ValidationError`.

    >>> stats = ScanStats()
    >>> opts = BuildOptions.make(url_template="https://cdn.example.com/{key}")     # doctest: +SKIP
    >>> maker = make_url_maker(storage, "template", template=opts.url_template)    # doctest: +SKIP
    >>> next(iter_entries(storage, opts, stats, maker)).split                      # doctest: +SKIP
    'train'
    """
    collector = _Problems(problems, max_problems)
    for keys, uris, docs in _iter_batches(
        storage, options, stats, url_maker, batch, collector, validator or EntryValidator()
    ):
        for key, uri, doc in zip(keys, uris, docs):
            yield Entry(uri, key, doc["url"], doc["split"], doc["external_id"])


@dataclass(frozen=True)
class Plan:
    """What a build wrote (or would write): the content of ``plan.json``.

    ``out_dir`` is where it was written; it is not part of :meth:`to_dict` so that plans
    of identical builds in different folders are identical.
    """

    source: str
    options: dict[str, Any]
    counts: dict[str, int]
    shards: tuple[dict[str, Any], ...]
    skipped: dict[str, int]
    skipped_examples: dict[str, list[str]]
    totals: dict[str, int]
    out_dir: str | None = None

    @property
    def entries(self) -> int:
        return self.totals["entries"]

    @property
    def shard_paths(self) -> list[Path]:
        """Absolute paths of the manifest files, in upload order."""
        base = Path(self.out_dir) if self.out_dir else Path(".")
        return [base / s["name"] for s in self.shards]

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (exactly what plan.json holds)."""
        return {
            "plan_version": PLAN_VERSION,
            "source": self.source,
            "options": dict(self.options),
            "counts": dict(self.counts),
            "totals": dict(self.totals),
            "shards": [dict(s) for s in self.shards],
            "skipped": dict(self.skipped),
            "skipped_examples": {k: list(v) for k, v in self.skipped_examples.items()},
        }

    def to_json(self) -> bytes:
        """plan.json's exact bytes: indented, key order fixed, trailing newline."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"


def _prepare_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise ConfigError(f"--out {out} exists and is not a folder", hint="choose a folder path for --out") from exc
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be created: {exc.strerror or exc}", hint="choose a folder you can write to") from exc
    if not out.is_dir():
        raise ConfigError(f"--out {out} is not a folder", hint="choose a folder path for --out")
    # Probe before the (possibly long) scan, so a read-only folder fails in a second.
    probe = out / f".manifester-probe-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {out} is not writable: {exc.strerror or exc}", hint="choose a folder you can write to") from exc


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except OSError as exc:
        try:
            temp.unlink()
        except OSError:
            pass
        raise PublishError(f"cannot write {path}: {exc.strerror or exc}", hint="check the --out folder") from exc


def build(
    source: str | Storage,
    out: str | os.PathLike[str],
    *,
    options: BuildOptions | None = None,
    batch: int = 1000,
    listing: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Plan:
    """Build manifest files for ``source`` into the folder ``out``; returns the :class:`Plan`.

    ``source`` is ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]``, a local folder, or
    an open :class:`Storage`. Keyword options are those of :meth:`BuildOptions.make`
    (``split``, ``seed``, ``group_by``, ``split_from_path``, ``include``, ``exclude``,
    ``extensions``, ``external_id``, ``urls``, ``expires``, ``url_template``,
    ``max_entries``, ``max_bytes``).

    ``listing`` names a file of keys (one per line, JSONL, or an S3 Inventory CSV, ``.gz``
    allowed) read instead of listing ``source``: for huge buckets, an inventory report
    replaces millions of LIST calls (see :mod:`manifester.storage.listing`).

    Writes ``out/manifest-00001.json``, ... and ``out/plan.json``. If any entry fails
    validation, raises :class:`ValidationError` listing up to 20 problems (with keys)
    and writes nothing. Manifest files of an earlier build in ``out`` that this build
    does not produce are removed, so the folder always matches its plan.

    >>> plan = build("photos/", "out/", url_template="https://cdn.example.com/{key}",
    ...              split="train=80,valid=10,test=10", seed="v1")        # doctest: +SKIP
    >>> [s["entries"] for s in plan.shards]                              # doctest: +SKIP
    [1234]
    """
    if options is None:
        options = BuildOptions.make(**kwargs)
    elif kwargs:
        raise ConfigError("pass either options= or keyword options, not both")
    out_dir = Path(out).expanduser().absolute()
    owns_storage = not isinstance(source, Storage)
    storage = open_storage(source, listing=listing) if isinstance(source, str) else source
    if listing is not None and not isinstance(source, str):
        from .storage.listing import ListingStorage

        storage = ListingStorage(listing, source)
    try:
        options = options.resolve(storage)
        url_maker = make_url_maker(
            storage,
            options.urls,  # type: ignore[arg-type]
            expires=options.expires,
            template=options.url_template,
        )
        _prepare_out_dir(out_dir)
        stats = ScanStats()
        problems: list[str] = []
        collector = _Problems(problems, MAX_PROBLEMS)
        counts = dict.fromkeys(SPLITS, 0)
        writer = ShardWriter(out_dir, max_entries=options.max_entries, max_bytes=options.max_bytes)
        try:
            dumps = orjson.dumps
            batches = _iter_batches(storage, options, stats, url_maker, batch, collector, EntryValidator())
            for keys, _uris, docs in batches:
                for doc in docs:
                    counts[doc["split"]] += 1
                if collector.count:  # once something is invalid nothing will be written: just collect
                    continue
                writer.add_many([dumps(doc) for doc in docs], keys)
            if collector.count:
                raise ValidationError(
                    f"{storage.root_uri}: {collector.count} manifest entries are invalid; nothing was written",
                    problems=problems,
                    hint="fix the keys, --url-template or --external-id and run again",
                )
            writer.close()
            infos = writer.shards
            plan = _make_plan(storage, options, stats, counts, infos, out_dir)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        _write_atomic(out_dir / PLAN_NAME, plan.to_json())
        _prune_stale(out_dir, {i.name for i in infos})
        return plan
    finally:
        if owns_storage:
            storage.close()


def _make_plan(
    storage: Storage,
    options: BuildOptions,
    stats: ScanStats,
    counts: Mapping[str, int],
    infos: list[ShardInfo],
    out_dir: Path,
) -> Plan:
    scan_info = stats.to_dict()
    return Plan(
        source=storage.root_uri,
        options=options.to_dict(),
        counts=dict(counts),
        shards=tuple(i.to_dict() for i in infos),
        skipped=scan_info["skipped"],  # type: ignore[arg-type]
        skipped_examples=scan_info["examples"],  # type: ignore[arg-type]
        totals={
            "listed": stats.listed,
            "skipped": stats.skipped_total,
            "entries": sum(i.entries for i in infos),
            "shards": len(infos),
            "bytes": sum(i.bytes for i in infos),
        },
        out_dir=str(out_dir),
    )


def _prune_stale(out_dir: Path, keep: set[str]) -> None:
    # An earlier build with more shards would otherwise leave manifest-0000N.json
    # files that the new plan does not list, and a later upload could pick them up.
    for path in out_dir.glob("manifest-*.json"):
        if _MANIFEST_NAME.fullmatch(path.name) and path.name not in keep:
            try:
                path.unlink()
            except OSError:
                pass
