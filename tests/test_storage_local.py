"""LocalStorage: S3-identical key order, streaming walk, atomic writes, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from manifester.errors import ConfigError, SourceError, SourceNotFoundError
from manifester.storage import open_storage
from manifester.storage.local import LocalStorage

TRICKY = [
    "a/x.jpg",
    "a-b.jpg",
    "a b/z.jpg",
    "a0.jpg",
    "ab/c/d/e.png",
    "a.b/c.jpg",
    "Z.jpg",
    "_u.jpg",
    "x+y%20z.jpg",
    "café/ñandú.jpg",
    "日本/猫.png",
    "emoji/🐱.png",
    "sp ace/dir/file name.webp",
    "a/a/a/a.jpg",
    "a/!.jpg",
    "a/~.jpg",
]


def _make(root: Path, keys: list[str]) -> None:
    for k in keys:
        p = root / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(k.encode())


def test_order_equals_sorted_keys(tmp_path: Path) -> None:
    _make(tmp_path, TRICKY)
    objs = list(LocalStorage(str(tmp_path)).list())
    assert [o.key for o in objs] == sorted(TRICKY)
    for o in objs:
        assert o.size == len(o.key.encode())
        st = (tmp_path / o.key).stat()
        assert o.etag == f"{st.st_mtime_ns}-{st.st_size}"


def test_list_is_lazy_and_prefix_filters(tmp_path: Path) -> None:
    _make(tmp_path, TRICKY)
    store = LocalStorage(str(tmp_path))
    it = store.list()
    assert next(it).key == sorted(TRICKY)[0]
    assert [o.key for o in store.list("a/")] == sorted(k for k in TRICKY if k.startswith("a/"))
    assert [o.key for o in store.list("a")] == sorted(k for k in TRICKY if k.startswith("a"))
    assert [o.key for o in LocalStorage(str(tmp_path), "caf").list()] == ["café/ñandú.jpg"]


def test_symlink_loops_are_skipped(tmp_path: Path) -> None:
    _make(tmp_path, ["d/x.jpg", "e/y.jpg"])
    os.symlink("..", tmp_path / "d" / "loop")
    os.symlink(tmp_path / "e", tmp_path / "d" / "link-to-e")
    os.symlink(tmp_path / "missing", tmp_path / "dangling.jpg")
    keys = [o.key for o in LocalStorage(str(tmp_path)).list()]
    assert keys == ["d/link-to-e/y.jpg", "d/x.jpg", "e/y.jpg"]


def test_sample_photos_bucket() -> None:
    root = Path(__file__).resolve().parent.parent / "sample_buckets" / "photos"
    keys = [o.key for o in LocalStorage(str(root)).list()]
    expected = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert keys == expected
    assert "empty.jpg" in keys and "日本/猫.png" in keys


def test_read_write_head(tmp_path: Path) -> None:
    store = LocalStorage(str(tmp_path / "out"))
    assert store.head("m/1.json") is None
    store.write("m/1.json", b"[1]")
    store.write("m/1.json", b"[1, 2]")
    assert store.read("m/1.json") == b"[1, 2]"
    head = store.head("m/1.json")
    assert head is not None and head.size == 6
    assert sorted(os.listdir(tmp_path / "out" / "m")) == ["1.json"]  # no temp files left
    with pytest.raises(SourceNotFoundError):
        store.read("m/2.json")
    with pytest.raises(SourceError):
        store.read("../escape")


def test_missing_and_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="does-not-exist"):
        list(LocalStorage(str(tmp_path / "does-not-exist")).list())
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(SourceError, match="not a folder"):
        list(LocalStorage(str(f)).list())


def test_no_urls(tmp_path: Path) -> None:
    store = LocalStorage(str(tmp_path))
    for call in (lambda: store.presign("a.jpg", 60), lambda: store.public_url("a.jpg"), lambda: store.presign_many([], 60)):
        with pytest.raises(ConfigError) as info:
            call()
        assert "--url-template" in str(info.value)


def test_uris(tmp_path: Path) -> None:
    store = open_storage(str(tmp_path))
    assert isinstance(store, LocalStorage)
    uri = store.object_uri("a b/ñ#1.jpg")
    assert uri == "file://" + str(tmp_path).replace(" ", "%20") + "/a%20b/%C3%B1%231.jpg"
    assert store.root_uri.startswith("file:///")
