"""ListingStorage (listing files in place of a bucket listing), and the two fast paths the
benchmarks added: LocalStorage.object_uri and the column-wise batch validation."""

from __future__ import annotations

import gzip
import random
from pathlib import Path
from urllib.parse import quote

import pytest

import manifester
from manifester.errors import SourceError, SourceNotFoundError
from manifester.storage.listing import UNKNOWN_SIZE, ListingStorage, listing_format
from manifester.storage.local import LocalStorage
from manifester.validate import EntryValidator


def test_formats_by_name() -> None:
    assert listing_format("a/part-0.csv.gz") == "csv"
    assert listing_format("keys.jsonl") == "jsonl"
    assert listing_format("keys.NDJSON") == "jsonl"
    assert listing_format("keys.txt") == "text"


def test_text_listing_with_and_without_sizes(tmp_path: Path) -> None:
    f = tmp_path / "keys.txt"
    f.write_text("a/1.jpg\t10\na/2.jpg\n\nb/dir/\nb/x y.png\t0\n", encoding="utf-8")
    store = ListingStorage(f, LocalStorage(tmp_path / "root"))
    assert [(o.key, o.size) for o in store.list()] == [
        ("a/1.jpg", 10),
        ("a/2.jpg", UNKNOWN_SIZE),
        ("b/x y.png", 0),
    ]
    assert [o.key for o in store.list("b/")] == ["b/x y.png"]
    assert (
        store.scheme == "file"
        and store.root_uri == LocalStorage(tmp_path / "root").root_uri
    )


def test_inventory_csv_gz_decodes_keys_and_checks_the_bucket(tmp_path: Path) -> None:
    f = tmp_path / "inv.csv.gz"
    rows = (
        'Bucket,Key,Size,ETag\nphotos,cats/a+b.jpg,12,"e1"\nphotos,cats/%C3%A9.jpg,5,\n'
    )
    f.write_bytes(gzip.compress(rows.encode()))

    class FakeBucket(LocalStorage):
        scheme = "s3"  # type: ignore[assignment]

    base = FakeBucket(str(tmp_path))
    base.bucket = "photos"
    objs = list(ListingStorage(f, base).list())
    assert [(o.key, o.size, o.etag) for o in objs] == [
        ("cats/a b.jpg", 12, "e1"),
        ("cats/é.jpg", 5, None),
    ]
    base.bucket = "other"
    with pytest.raises(SourceError, match="bucket 'photos'"):
        list(ListingStorage(f, base).list())


def test_jsonl_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "k.jsonl"
    f.write_text(
        '{"key": "a.jpg", "size": 3, "etag": "x"}\n{"key": "b.jpg"}\n', encoding="utf-8"
    )
    assert [
        (o.key, o.size, o.etag)
        for o in ListingStorage(f, LocalStorage(str(tmp_path))).list()
    ] == [
        ("a.jpg", 3, "x"),
        ("b.jpg", UNKNOWN_SIZE, None),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nokey": 1}\n', encoding="utf-8")
    with pytest.raises(SourceError, match="line 1"):
        list(ListingStorage(bad, LocalStorage(str(tmp_path))).list())
    unsorted = tmp_path / "u.txt"
    unsorted.write_text("b.jpg\na.jpg\n", encoding="utf-8")
    with pytest.raises(SourceError, match="line 2.*not after") as info:
        list(ListingStorage(unsorted, LocalStorage(str(tmp_path))).list())
    assert "sort" in (info.value.hint or "")
    with pytest.raises(SourceNotFoundError):
        list(
            ListingStorage(tmp_path / "missing.txt", LocalStorage(str(tmp_path))).list()
        )


def test_build_from_a_listing_equals_build_from_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    keys = ["a/1.jpg", "a/2 x.png", "b/é.jpg", "b/notes.txt"]
    for k in keys:
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        (root / k).write_bytes(b"data")
    listing = tmp_path / "keys.txt"
    listing.write_text("".join(f"{k}\t4\n" for k in sorted(keys)), encoding="utf-8")
    tpl = "https://cdn.example.com/{key}"
    a = manifester.build(str(root), tmp_path / "a", url_template=tpl, seed="s")
    b = manifester.build(
        ListingStorage(listing, LocalStorage(str(root))),
        tmp_path / "b",
        url_template=tpl,
        seed="s",
    )
    assert a.to_dict() == b.to_dict()
    assert (tmp_path / "a" / "manifest-00001.json").read_bytes() == (
        tmp_path / "b" / "manifest-00001.json"
    ).read_bytes()


def test_local_object_uri_fast_path_matches_pathlib(tmp_path: Path) -> None:
    rnd = random.Random(1)
    alphabet = "ab/ %#?+~.-_é\x7f:;=&"
    for root in ("/", str(tmp_path / "a b"), "/srv/ü"):
        store = LocalStorage(root)
        for _ in range(300):
            key = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12)))
            try:
                expected = "file://" + quote(str(store._path(key)), safe="/")
            except SourceError:
                with pytest.raises(SourceError):
                    store.object_uri(key)
                continue
            assert store.object_uri(key) == expected


def test_column_check_never_accepts_what_fastjsonschema_rejects() -> None:
    v = EntryValidator()
    assert v._columns is not None
    rnd = random.Random(2)
    values: list[object] = [
        "https://x.example/a.jpg",
        "http://h/a b",
        "ftp://x/a",
        "https://x/a\n",
        "",
        "train",
        "valid",
        "test",
        "Train",
        "a" * 1025,
        "id-1",
        "\x00",
        5,
        None,
        True,
        ["x"],
    ]
    for _ in range(3000):
        doc: dict[str, object] = {}
        for name in ("url", "split", "external_id", "extra"):
            if rnd.random() < 0.85 or name != "extra" and rnd.random() < 0.9:
                if name == "extra" and rnd.random() < 0.9:
                    continue
                doc[name] = rnd.choice(values)
        batch = [
            {"url": "https://x.example/ok.jpg", "split": "train", "external_id": "ok"},
            doc,
        ]
        if v._columns(batch):
            assert all(v.is_valid(d) for d in batch), batch
        assert v.all_valid(batch) == all(v.is_valid(d) for d in batch)


def test_fast_s3_lister_matches_boto3_listing(s3_env: object, bucket_name: str) -> None:
    from manifester.storage.s3 import S3Storage
    from manifester.storage.s3_list import FastListUnavailable, list_objects_fast

    keys = ["a b/c+d.jpg", "dir/", "x/%41#?.jpg", "z&<>\"'.jpg", "é/ü.png"]
    s3_env.make_bucket(bucket_name, {k: b"12" for k in keys})  # type: ignore[attr-defined]
    store = S3Storage(bucket_name, page_size=2, fast_list=False)
    try:
        assert list(list_objects_fast(store._client, bucket_name, page_size=2)) == list(
            store.list()
        )
        assert [o.key for o in list_objects_fast(store._client, bucket_name, "x/")] == [
            "x/%41#?.jpg"
        ]
        with pytest.raises(FastListUnavailable) as info:
            list(list_objects_fast(store._client, bucket_name + "-missing"))
        assert info.value.token is None
    finally:
        store.close()


def test_s3_listing_goes_on_through_boto3_where_the_fast_path_stops(
    s3_env: object, bucket_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manifester.storage import s3_list
    from manifester.storage.s3 import S3Storage

    keys = [f"k{i:03d}.jpg" for i in range(25)]
    s3_env.make_bucket(bucket_name, {k: b"12" for k in keys})  # type: ignore[attr-defined]
    expected = [o.key for o in S3Storage(bucket_name, page_size=4, fast_list=False).list()]
    assert expected == keys
    fetch = s3_list._fetch
    calls: list[str] = []

    def fetch_failing_on_the_third_page(http: object, url: str) -> bytes:
        calls.append(url)
        if len(calls) == 3:
            raise s3_list.FastListUnavailable("HTTP 503", None)
        return fetch(http, url)

    monkeypatch.setattr(s3_list, "_fetch", fetch_failing_on_the_third_page)
    store = S3Storage(bucket_name, page_size=4)
    assert store._fast_list
    # every key once, in order: two pages came the fast way, the rest through boto3
    assert [o.key for o in store.list()] == keys
    assert len(calls) == 3


def test_s3_listing_of_a_missing_bucket_is_the_usual_error(s3_env: object, bucket_name: str) -> None:
    from manifester.errors import SourceNotFoundError
    from manifester.storage.s3 import S3Storage

    with pytest.raises(SourceNotFoundError) as info:
        list(S3Storage(bucket_name + "-missing").list())
    assert f"s3://{bucket_name}-missing" in str(info.value)


def test_s3_listing_with_a_bad_ca_bundle_is_boto3s_error(
    s3_env: object, bucket_name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from manifester.storage.s3 import S3Storage

    s3_env.make_bucket(bucket_name, {"a.jpg": b"1"})  # type: ignore[attr-defined]
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    store = S3Storage(bucket_name)
    assert store._fast_list and store._ca_bundle() == str(tmp_path / "missing.pem")
    # the fast path cannot load it and steps aside; boto3 (plain http here) lists as before
    assert [o.key for o in store.list()] == ["a.jpg"]
