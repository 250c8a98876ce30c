"""Scan stage: filters, skip reasons, ordering check, streaming."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import quote

import pytest

from manifester.errors import ConfigError, SourceError
from manifester.records import StorageObject
from manifester.scan import (
    DEFAULT_EXTENSIONS,
    ScanFilters,
    ScanStats,
    compile_glob,
    scan,
)
from manifester.storage.base import Storage


class MemStorage(Storage):
    """A tiny in-memory bucket for unit tests (lists in key order, like S3)."""

    scheme = "s3"

    def __init__(self, files: Mapping[str, bytes | int] | Iterable[StorageObject], bucket: str = "mem", prefix: str = "") -> None:
        super().__init__(bucket, prefix)
        if isinstance(files, Mapping):
            self.objects = [
                StorageObject(k, v if isinstance(v, int) else len(v), "e") for k, v in sorted(files.items())
            ]
        else:
            self.objects = list(files)  # kept as given: lets tests feed bad orders
        self.presigned: list[str] = []

    def list(self, prefix: str | None = None) -> Iterator[StorageObject]:
        want = self.prefix if prefix is None else prefix
        return (o for o in self.objects if o.key.startswith(want))

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def write(self, key: str, data: bytes, *, content_type: str = "application/json") -> None:
        raise NotImplementedError

    def head(self, key: str) -> StorageObject | None:
        return None

    def presign(self, key: str, expires: int) -> str:
        return f"https://{self.bucket}.s3.example.com/{quote(key, safe='/~')}?X-Amz-Expires={expires}&X-Amz-Signature=abc"

    def public_url(self, key: str) -> str:
        return f"https://{self.bucket}.s3.example.com/{quote(key, safe='/~')}"


def keys_of(storage: Storage, filters: ScanFilters | None = None, stats: ScanStats | None = None) -> list[str]:
    return [o.key for o in scan(storage, filters, stats)]


def test_default_extensions_and_skip_reasons() -> None:
    store = MemStorage({"a.JPG": 3, "b.png": 3, "c.txt": 3, "d.jpg": 0, "e": 4, "f.TiFf": 9, "g.jpeg.bak": 2})
    stats = ScanStats()
    assert keys_of(store, ScanFilters(), stats) == ["a.JPG", "b.png", "f.TiFf"]
    assert stats.listed == 7 and stats.kept == 3 and stats.kept_bytes == 15
    assert stats.skipped == {"empty": 1, "not-an-image-extension": 3}
    assert stats.examples["not-an-image-extension"] == ["c.txt", "e", "g.jpeg.bak"]
    assert set(DEFAULT_EXTENSIONS) == {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"}


def test_examples_are_capped_at_five() -> None:
    store = MemStorage({f"{i:02d}.txt": 1 for i in range(12)})
    stats = ScanStats()
    assert keys_of(store, ScanFilters(), stats) == []
    assert stats.skipped == {"not-an-image-extension": 12}
    assert stats.examples["not-an-image-extension"] == [f"{i:02d}.txt" for i in range(5)]


def test_extensions_any_and_custom() -> None:
    store = MemStorage({"a.jpg": 1, "b.txt": 1, "c": 1})
    assert keys_of(store, ScanFilters(extensions=None)) == ["a.jpg", "b.txt", "c"]
    assert keys_of(store, ScanFilters(extensions="TXT, .jpg")) == ["a.jpg", "b.txt"]  # type: ignore[arg-type]
    assert ScanFilters(extensions=("*",)).extensions is None
    with pytest.raises(ConfigError, match="--extensions"):
        ScanFilters(extensions=(",",))


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("*.png", ["a.png", "x/y/a.png"], ["a.jpg", "a.png/b.jpg"]),
        ("cats/*", ["cats/a.jpg"], ["cats/x/a.jpg", "dogs/a.jpg"]),
        ("cats/**", ["cats/a.jpg", "cats/x/a.jpg"], ["dogs/cats/a.jpg"]),
        ("**/*.png", ["a.png", "x/y/a.png"], ["a.jpg"]),
        ("**/raw/**", ["raw/a.jpg", "x/raw/y/a.jpg"], ["x/rawer/a.jpg"]),
        ("a?c.jpg", ["abc.jpg", "x/abc.jpg"], ["a/c.jpg", "abbc.jpg"]),
        ("img[0-9].jpg", ["img3.jpg"], ["imgx.jpg"]),
        ("img[!0-9].jpg", ["imgx.jpg"], ["img3.jpg"]),
        ("a+b (1).jpg", ["a+b (1).jpg"], ["aab (1).jpg"]),
    ],
)
def test_glob_rules(pattern: str, matches: list[str], misses: list[str]) -> None:
    rx = compile_glob([pattern])
    assert rx is not None
    for key in matches:
        assert rx.match(key), (pattern, key)
    for key in misses:
        assert not rx.match(key), (pattern, key)


def test_include_exclude_relative_to_prefix() -> None:
    store = MemStorage(
        {"2024/cats/a.jpg": 1, "2024/cats/b.tmp.jpg": 1, "2024/dogs/c.jpg": 1, "2024/top.jpg": 1},
        prefix="2024/",
    )
    stats = ScanStats()
    got = keys_of(store, ScanFilters(include=("cats/**", "top.jpg"), exclude=("*.tmp.jpg",)), stats)
    assert got == ["2024/cats/a.jpg", "2024/top.jpg"]
    assert stats.skipped == {"excluded": 1, "not-included": 1}
    assert stats.examples == {"excluded": ["2024/cats/b.tmp.jpg"], "not-included": ["2024/dogs/c.jpg"]}


def test_reason_order_empty_before_excluded_before_extension() -> None:
    store = MemStorage({"a.txt": 0, "b.txt": 1, "c.txt": 1})
    stats = ScanStats()
    keys_of(store, ScanFilters(exclude=("b.*",)), stats)
    assert stats.skipped == {"empty": 1, "excluded": 1, "not-an-image-extension": 1}
    assert list(stats.to_dict()["skipped"]) == ["empty", "excluded", "not-an-image-extension"]  # type: ignore[call-overload]


@pytest.mark.parametrize("keys", [["b.jpg", "a.jpg"], ["a.jpg", "a.jpg"]])
def test_out_of_order_or_duplicate_keys_raise(keys: list[str]) -> None:
    store = MemStorage([StorageObject(k, 1) for k in keys])
    with pytest.raises(SourceError) as info:
        keys_of(store)
    assert repr(keys[0]) in str(info.value) and repr(keys[1]) in str(info.value)


def test_scan_streams_without_reading_the_whole_listing() -> None:
    class Endless(MemStorage):
        def list(self, prefix: str | None = None) -> Iterator[StorageObject]:
            return (StorageObject(f"{i:012d}.jpg", 1) for i in itertools.count())

    first = list(itertools.islice(scan(Endless({})), 5))
    assert [o.key for o in first] == [f"{i:012d}.jpg" for i in range(5)]


def test_empty_glob_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--exclude"):
        ScanFilters(exclude=("",))
