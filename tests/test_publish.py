"""Publishing one shard: lifetimes, exact byte limit, store rules, manifest bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from manifester.errors import ConfigError, PublishError, ShardError
from manifester.publish import LifetimePolicy, Publisher, ShardItem, parse_duration
from manifester.storage import open_storage

TEMPLATE = "https://cdn.example.com/{key}"


def items(n: int) -> list[ShardItem]:
    return [ShardItem(object_id=i, key=f"cats/{i:03d}.jpg", split="train", external_id=f"x{i}") for i in range(n)]


def test_lifetime_covers_the_wait_and_respects_the_cap() -> None:
    policy = LifetimePolicy(floor=900, per_image_seconds=0.1, safety=3.0)
    assert policy.lifetime(10, cap=604800) == 900  # the floor
    assert policy.lifetime(100_000, cap=604800) == 30_000  # 3 x 100k x 0.1 s
    assert policy.lifetime(10_000_000, cap=3600) == 3600  # capped by the credentials
    assert LifetimePolicy(fixed=60).lifetime(100_000, cap=604800) == 60
    assert LifetimePolicy(fixed=10**9).lifetime(1, cap=604800) == 604800


def test_parse_duration() -> None:
    assert parse_duration("2h") == 7200 and parse_duration(None) is None
    with pytest.raises(ConfigError, match="--url-lifetime"):
        parse_duration("soon")


def test_local_store_needs_a_base_url(tmp_path: Path) -> None:
    src = open_storage(str(tmp_path))
    with pytest.raises(ConfigError, match="--manifest-base-url"):
        Publisher(src, open_storage(str(tmp_path / "m")), urls="template", url_template=TEMPLATE)


def test_publish_writes_exact_bytes_and_drops_the_tail_that_does_not_fit(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    src = open_storage(str(tmp_path))
    pub = Publisher(src, open_storage(str(tmp_path / "m")), urls="template", url_template=TEMPLATE,
                    manifest_base_url="http://127.0.0.1:9/m/", max_bytes=300)
    shard = pub.publish(items(10), run_id=3, shard_index=7, lifetime=900)
    path = tmp_path / "m" / "run-000003" / "manifest-00007.json"
    data = path.read_bytes()
    assert shard.nbytes == len(data) <= 300 and shard.sha256 == hashlib.sha256(data).hexdigest()
    entries = json.loads(data)
    assert len(entries) == shard.entries == len(shard.kept_ids) and 0 < shard.entries < 10
    assert shard.kept_ids + shard.dropped_ids == tuple(range(10))
    assert entries[0] == {"url": "https://cdn.example.com/cats/000.jpg", "split": "train", "external_id": "x0"}
    assert shard.manifest_url == "http://127.0.0.1:9/m/run-000003/manifest-00007.json"
    assert data == b"[" + b",".join(json.dumps(e, separators=(",", ":")).encode() for e in entries) + b"]"


def test_an_entry_alone_over_the_limit_is_a_shard_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    pub = Publisher(open_storage(str(tmp_path)), open_storage(str(tmp_path / "m")), urls="template",
                    url_template=TEMPLATE, manifest_base_url="http://h/m", max_bytes=64)
    with pytest.raises(ShardError, match="cats/000.jpg"):
        pub.publish(items(1), run_id=1, shard_index=1, lifetime=900)


def test_unwritable_store_is_a_publish_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    pub = Publisher(open_storage(str(tmp_path)), open_storage(str(blocker)), urls="template",
                    url_template=TEMPLATE, manifest_base_url="http://h/m")
    with pytest.raises(PublishError, match="manifest store"):
        pub.publish(items(2), run_id=1, shard_index=1, lifetime=900)


def test_signed_manifest_url_is_not_in_repr(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    pub = Publisher(open_storage(str(tmp_path)), open_storage(str(tmp_path / "m")), urls="template",
                    url_template=TEMPLATE, manifest_base_url="http://h/m?sig=SECRET")
    shard = pub.publish(items(1), run_id=1, shard_index=1, lifetime=900)
    assert "SECRET" not in repr(shard)
