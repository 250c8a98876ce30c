"""build(): end to end over memory, a local folder, moto S3 and fake-gcs-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from manifester.builder import BuildOptions, Plan, build, iter_entries
from manifester.errors import ConfigError, ValidationError
from manifester.scan import DEFAULT_EXTENSIONS, ScanStats
from manifester.urls import make_url_maker
from manifester.validate import validate_manifest
from tests.test_scan import MemStorage

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "sample_buckets" / "photos"
SPLITS_BUCKET = REPO / "sample_buckets" / "splits"
TEMPLATE = "https://cdn.example.com/{key}"


def image_files(root: Path) -> dict[str, Path]:
    """key -> path of every non-empty image file under root (what a default build keeps)."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and path.suffix.lower().lstrip(".") in DEFAULT_EXTENSIONS and path.stat().st_size > 0:
            out[path.relative_to(root).as_posix()] = path
    return out


def read_manifests(plan: Plan) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for path in plan.shard_paths:
        doc = json.loads(path.read_bytes())
        assert validate_manifest(doc) == []
        entries.extend(doc)
    return entries


def test_build_over_memory(tmp_path: Path) -> None:
    files = {f"cats/{i:03d} cat.jpg": 10 for i in range(25)} | {"notes.txt": 5, "z/empty.png": 0}
    plan = build(MemStorage(files, bucket="photos"), tmp_path / "out", urls="public", max_entries=10, seed="s")
    assert plan.totals == {"listed": 27, "skipped": 2, "entries": 25, "shards": 3, "bytes": plan.totals["bytes"]}
    assert [s["entries"] for s in plan.shards] == [10, 10, 5]
    assert sum(plan.counts.values()) == 25
    assert plan.skipped == {"empty": 1, "not-an-image-extension": 1}
    assert plan.skipped_examples == {"empty": ["z/empty.png"], "not-an-image-extension": ["notes.txt"]}
    entries = read_manifests(plan)
    assert entries[0] == {
        "url": "https://photos.s3.example.com/cats/000%20cat.jpg",
        "split": entries[0]["split"],
        "external_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "s3://photos/cats/000 cat.jpg")),
    }
    on_disk = json.loads((tmp_path / "out" / "plan.json").read_bytes())
    assert on_disk == plan.to_dict()
    assert on_disk["options"]["urls"] == "public" and on_disk["options"]["seed"] == "s"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest-00001.json", "manifest-00002.json", "manifest-00003.json", "plan.json",
    ]


def test_rebuild_is_byte_identical_and_prunes_stale_shards(tmp_path: Path) -> None:
    files = {f"k/{i:04d}.png": 1 for i in range(30)}
    a = build(MemStorage(files), tmp_path / "a", url_template=TEMPLATE, max_entries=7)
    b = build(MemStorage(files), tmp_path / "b", url_template=TEMPLATE, max_entries=7)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a.to_dict() == b.to_dict()
    # Rebuilding into the same folder with bigger shards leaves only the new files.
    c = build(MemStorage(files), tmp_path / "a", url_template=TEMPLATE, max_entries=100)
    assert c.totals["shards"] == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["manifest-00001.json", "plan.json"]


def test_invalid_entries_are_all_reported_and_nothing_is_written(tmp_path: Path) -> None:
    files = {f"bad\x01{i:02d}.jpg": 1 for i in range(25)} | {"good.jpg": 1}
    out = tmp_path / "out"
    with pytest.raises(ValidationError) as info:
        build(MemStorage(files), out, urls="public", external_id="key", max_entries=2)
    err = info.value
    assert "25 manifest entries are invalid" in err.message
    assert len(err.problems) == 21 and err.problems[-1] == "... and 5 more invalid entries"
    assert err.problems[0].startswith("'bad\\x0100.jpg': external_id")
    assert list(out.iterdir()) == []


def test_options_are_checked_up_front() -> None:
    with pytest.raises(ConfigError, match="--split"):
        BuildOptions.make(split="train=80,dev=20")
    with pytest.raises(ConfigError, match="--group-by"):
        BuildOptions.make(group_by="(")
    with pytest.raises(ConfigError, match="--max-entries"):
        BuildOptions.make(max_entries=100_001)
    with pytest.raises(ConfigError, match="--max-bytes"):
        BuildOptions.make(max_bytes="100000001")
    with pytest.raises(ConfigError, match="--expires"):
        BuildOptions.make(expires="8d")
    with pytest.raises(ConfigError, match="--url-template"):
        BuildOptions.make(url_template="cdn.example.com/{key}")
    with pytest.raises(ConfigError, match="--url-template"):
        BuildOptions.make(url_template="https://cdn.example.com/")
    with pytest.raises(ConfigError, match="--url-template"):
        BuildOptions.make(url_template="https://cdn.example.com/{path}")
    with pytest.raises(ConfigError, match="--url-template cannot be combined"):
        BuildOptions.make(url_template=TEMPLATE, urls="presigned")
    with pytest.raises(ConfigError, match="unknown build option 'splits'"):
        BuildOptions.make(splits="train=1")
    opts = BuildOptions.make(expires="15m", extensions="JPG,png", include="cats/**")
    assert (opts.expires, opts.extensions, opts.include) == (900, ("jpg", "png"), ("cats/**",))


def test_local_folder_needs_a_template(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --url-template"):
        build(str(PHOTOS), tmp_path / "out")
    with pytest.raises(ConfigError, match="--urls public does not work for a local folder"):
        build(str(PHOTOS), tmp_path / "out", urls="public")
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--out"):
        build(MemStorage({"a.jpg": 1}), tmp_path / "file", urls="public")
    with pytest.raises(ConfigError, match="--out"):
        build(MemStorage({"a.jpg": 1}), tmp_path / "file" / "sub", urls="public")


def test_iter_entries_streams_entries(tmp_path: Path) -> None:
    store = MemStorage({"a b.jpg": 1, "c.jpg": 1, "d.txt": 1})
    opts = BuildOptions.make(url_template=TEMPLATE, external_id="key").resolve(store)
    stats = ScanStats()
    got = list(iter_entries(store, opts, stats, make_url_maker(store, "template", template=TEMPLATE), batch=1))
    assert [(e.key, e.url, e.external_id, e.uri) for e in got] == [
        ("a b.jpg", "https://cdn.example.com/a%20b.jpg", "a b.jpg", "s3://mem/a b.jpg"),
        ("c.jpg", "https://cdn.example.com/c.jpg", "c.jpg", "s3://mem/c.jpg"),
    ]
    assert stats.skipped == {"not-an-image-extension": 1}


def test_build_local_sample_bucket(tmp_path: Path) -> None:
    expected = image_files(PHOTOS)
    plan = build(str(PHOTOS), tmp_path / "out", url_template=TEMPLATE, seed="demo")
    entries = read_manifests(plan)
    assert len(entries) == len(expected) == plan.totals["entries"]
    assert [e["url"] for e in entries] == [TEMPLATE.format(key=quote(k, safe="/~")) for k in sorted(expected)]
    assert plan.skipped.get("empty", 0) >= 1
    # Encoding: no raw space, '+', '#', '?' or non-ASCII survives in a URL path.
    for e in entries:
        path = e["url"][len("https://cdn.example.com/"):]
        assert not set(path) & set(" +#?") and path.isascii()
    again = build(str(PHOTOS), tmp_path / "again", url_template=TEMPLATE, seed="demo")
    for p1, p2 in zip(plan.shard_paths, again.shard_paths):
        assert p1.read_bytes() == p2.read_bytes()
    assert (tmp_path / "out" / "plan.json").read_bytes() == (tmp_path / "again" / "plan.json").read_bytes()


def test_build_split_from_path_sample_bucket(tmp_path: Path) -> None:
    plan = build(str(SPLITS_BUCKET), tmp_path / "out", url_template=TEMPLATE, split_from_path=True)
    entries = read_manifests(plan)
    assert entries
    for e in entries:
        folder = e["url"][len("https://cdn.example.com/"):].split("/")[0]
        assert folder in ("train", "valid", "test") and e["split"] == folder
    assert plan.counts == {name: len(image_files(SPLITS_BUCKET / name)) for name in ("train", "valid", "test")}


def test_build_over_moto_s3_with_paging(s3_env: Any, bucket_name: str, tmp_path: Path) -> None:
    from manifester.storage.s3 import S3Storage

    expected = image_files(PHOTOS)
    s3_env.seed_dir(bucket_name, PHOTOS)
    store = S3Storage(bucket_name, page_size=3)
    plan = build(store, tmp_path / "out", max_entries=7)
    assert plan.source == f"s3://{bucket_name}"
    entries = read_manifests(plan)
    assert len(entries) == len(expected)
    assert [s["entries"] for s in plan.shards][:-1] == [7] * (len(plan.shards) - 1)
    assert all(e["url"].startswith(os.environ["AWS_ENDPOINT_URL"]) and "X-Amz-Signature=" in e["url"] for e in entries)
    assert {e["external_id"] for e in entries} == {
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"s3://{bucket_name}/{k}")) for k in expected
    }
    # Public URLs are deterministic: the same listing gives byte-identical files.
    p1 = build(S3Storage(bucket_name, page_size=3), tmp_path / "p1", urls="public")
    p2 = build(f"s3://{bucket_name}", tmp_path / "p2", urls="public")
    assert [p.read_bytes() for p in p1.shard_paths] == [p.read_bytes() for p in p2.shard_paths]


def test_build_over_fake_gcs_with_paging(gcs_env: Any, bucket_name: str, tmp_path: Path) -> None:
    from manifester.storage.gcs import GCSStorage

    expected = image_files(PHOTOS)
    gcs_env.seed_dir(bucket_name, PHOTOS, prefix="in/")
    store = GCSStorage(bucket_name, "in/", page_size=2, workers=1)
    plan = build(store, tmp_path / "out", include=["animals/**", "*.png"], exclude=["**/dogs/*"])
    entries = read_manifests(plan)
    want = sorted(
        k for k in expected
        if (k.startswith("animals/") or k.endswith(".png")) and not k.startswith("animals/dogs/")
    )
    assert len(entries) == len(want) and want
    assert plan.source == f"gs://{bucket_name}/in"
    assert all("X-Goog-Signature=" in e["url"] for e in entries)
    assert plan.skipped.get("not-included", 0) > 0 and plan.skipped.get("excluded", 0) > 0


def test_manifester_build_is_callable_even_after_the_cli_is_imported(tmp_path: Path) -> None:
    import manifester
    import manifester.cli

    plan = manifester.build(MemStorage({"a.jpg": 1}), tmp_path, urls="public")
    assert isinstance(plan, Plan) and plan.totals["entries"] == 1


# Keys a URL must survive: every one is fetched back through the URL the build wrote.
AWKWARD = {
    "a b/c d.jpg": b"1" * 3,
    "ü/ñandú.jpg": b"2" * 4,
    "plus+sign.jpg": b"3" * 5,
    "pct%20.jpg": b"4" * 6,
    "hash#1.jpg": b"5" * 7,
    "q?x=1.jpg": b"6" * 8,
    "amp&semi;.jpg": b"7" * 9,
    "🐱 cat.png": b"8" * 10,
    "tilde~.jpg": b"9" * 11,
    "quote's.jpg": b"a" * 12,
}


def fetch_all(entries: list[dict[str, Any]]) -> dict[str, bytes]:
    """url -> body of every entry's URL (asserting 200)."""
    import httpx

    out: dict[str, bytes] = {}
    with httpx.Client() as http:
        for e in entries:
            r = http.get(e["url"])
            assert r.status_code == 200, (e["url"], r.status_code)
            out[e["url"]] = r.content
    return out


def test_template_urls_of_awkward_keys_download(tmp_path: Path) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    src = tmp_path / "my photos"  # a space in the folder too: {bucket} must be encoded
    for key, data in AWKWARD.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        template = f"http://127.0.0.1:{httpd.server_port}/my%20photos/{{key}}"
        plan = build(str(src), tmp_path / "out", url_template=template)
        bodies = fetch_all(read_manifests(plan))
        assert sorted(bodies.values()) == sorted(AWKWARD.values())
        # {bucket} is the folder path, percent-encoded like {key}.
        plan = build(str(src), tmp_path / "out2", url_template="https://cdn.example.com{bucket}/{key}")
        urls = [e["url"] for e in read_manifests(plan)]
        assert urls[0].startswith("https://cdn.example.com" + quote(str(src), safe="/~") + "/")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_public_urls_of_awkward_keys_download(s3_env: Any, bucket_name: str, tmp_path: Path) -> None:
    client = s3_env.client()
    client.create_bucket(Bucket=bucket_name)
    for key, data in AWKWARD.items():
        client.put_object(Bucket=bucket_name, Key=key, Body=data, ACL="public-read")
    plan = build(f"s3://{bucket_name}", tmp_path / "out", urls="public")
    entries = read_manifests(plan)
    assert all(e["url"].startswith(f"{os.environ['AWS_ENDPOINT_URL']}/{bucket_name}/") for e in entries)
    assert sorted(fetch_all(entries).values()) == sorted(AWKWARD.values())


def test_byte_limit_binds_first_with_1000_byte_keys_end_to_end(tmp_path: Path) -> None:
    keys = {f"{i:04d}/" + "k" * 990 + ".jpg": 1 for i in range(30)}
    assert all(len(k.encode()) == 999 for k in keys)
    plan = build(MemStorage(keys, bucket="photos"), tmp_path / "out", urls="public", external_id="key", max_bytes=20_000)
    assert plan.totals["entries"] == 30 and plan.totals["shards"] > 1
    assert all(s["entries"] < 100_000 and s["bytes"] <= 20_000 for s in plan.shards)
    # Greedy: every shard but the last is full, i.e. one more entry would not have fit.
    size = (plan.shards[0]["bytes"] - 2 - (plan.shards[0]["entries"] - 1)) // plan.shards[0]["entries"]
    assert all(s["bytes"] + 1 + size > 20_000 for s in plan.shards[:-1])
    assert len(read_manifests(plan)) == 30


_MEMORY_SCRIPT = """
import resource, sys, tempfile
import manifester
from manifester.records import StorageObject
from manifester.storage.base import Storage

class Generated(Storage):
    scheme = "s3"
    def list(self, prefix=None):
        for i in range(int(sys.argv[1])):
            yield StorageObject(f"photos/{i:09d}/a longer name with spaces and ü.jpg", 1000, None)
    def read(self, key): raise NotImplementedError
    def write(self, key, data, *, content_type=""): raise NotImplementedError
    def head(self, key): return None
    def presign(self, key, expires): raise NotImplementedError
    def public_url(self, key): return "https://gen.s3.example.com/" + key.replace(" ", "%20")

with tempfile.TemporaryDirectory() as out:
    plan = manifester.build(Generated("gen"), out, urls="public")
    assert plan.entries == int(sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_build_memory_does_not_grow_with_the_listing() -> None:
    # Peak RSS (KiB) of whole builds over 20k and 200k generated keys: a build that kept
    # the listing or the entries would need ~40 MB more for the larger one.
    def peak(n: int) -> int:
        proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(n)], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.strip())

    small, large = peak(20_000), peak(200_000)
    assert large - small < 12 * 1024, (small, large)
