"""Shard stage: exact byte accounting, limits, order, atomic commit."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifester.errors import ConfigError, ShardError
from manifester.shard import ShardPlanner, ShardWriter, encode_entry, manifest_bytes


def test_encode_entry_is_compact_and_ordered() -> None:
    raw = encode_entry("https://x/ü a.jpg", "valid", "id-1")
    assert raw == '{"url":"https://x/ü a.jpg","split":"valid","external_id":"id-1"}'.encode()
    assert list(json.loads(raw)) == ["url", "split", "external_id"]
    assert encode_entry("https://x/a", "test") == b'{"url":"https://x/a","split":"test"}'
    assert manifest_bytes([raw]) == b"[" + raw + b"]"


@pytest.mark.parametrize(("entries", "size"), [(0, 1), (100_001, 100), (1, 100_000_001), (10, 10)])
def test_ceilings(entries: int, size: int) -> None:
    with pytest.raises(ConfigError):
        ShardPlanner(entries, size)


def test_planner_greedy_boundaries() -> None:
    p = ShardPlanner(max_entries=3, max_bytes=100)
    # 2 + 30 + 1 + 30 + 1 + 30 = 94 fits; the 4th breaks on entries and bytes alike.
    assert [p.add(30) for _ in range(4)] == [True, False, False, True]
    p = ShardPlanner(max_entries=100, max_bytes=100)
    assert [p.add(48) for _ in range(3)] == [True, False, True]  # 2+48+1+48 = 99
    assert ShardPlanner(1, 100).add(98) is True
    with pytest.raises(ShardError, match="'big.jpg'"):
        ShardPlanner(1, 100).add(99, "big.jpg")


def entry_for(i: int, key_len: int, split: str | None = None) -> bytes:
    key = f"{i:06d}-" + "k" * key_len
    return encode_entry(f"https://cdn.example.com/{key}", ("train", "valid", "test")[i % 3] if split is None else split, key)


@settings(max_examples=40, deadline=None)
@given(
    key_lens=st.lists(st.integers(0, 1000), min_size=0, max_size=60),
    max_entries=st.integers(1, 12),
    max_bytes=st.integers(2200, 12_000),
)
def test_limits_never_exceeded_and_every_entry_once_in_order(key_lens: list[int], max_entries: int, max_bytes: int) -> None:
    encoded = [entry_for(i, n) for i, n in enumerate(key_lens)]
    with tempfile.TemporaryDirectory() as tmp:
        writer = ShardWriter(tmp, max_entries=max_entries, max_bytes=max_bytes, fsync=False)
        closed = [info for e in encoded if (info := writer.add(e)) is not None]
        last = writer.close()
        infos = writer.commit()
        assert closed + ([last] if last else []) == infos
        seen: list[bytes] = []
        for n, info in enumerate(infos, start=1):
            data = Path(info.path).read_bytes()  # type: ignore[arg-type]
            assert info.index == n and info.name == f"manifest-{n:05d}.json"
            assert len(data) == info.bytes <= max_bytes
            assert hashlib.sha256(data).hexdigest() == info.sha256
            items = json.loads(data)
            assert 1 <= len(items) == info.entries <= max_entries
            seen.extend(orjson.dumps(x) for x in items)
        assert seen == encoded
        # Greedy: each shard but the last was closed only because the next entry did not fit.
        for info, nxt in zip(infos, infos[1:]):
            first_next = encoded[sum(i.entries for i in infos[: nxt.index - 1])]
            assert info.entries == max_entries or info.bytes + 1 + len(first_next) > max_bytes
        assert sorted(p.name for p in Path(tmp).iterdir()) == [i.name for i in infos]


def test_byte_limit_binds_first_with_1000_byte_keys(tmp_path: Path) -> None:
    encoded = [entry_for(i, 1000, "train") for i in range(50)]
    size = len(encoded[0])
    assert all(len(e) == size for e in encoded) and size > 2000  # url + external_id each hold the key
    writer = ShardWriter(tmp_path, max_entries=100_000, max_bytes=10 * size + 11)
    writer.add_many(encoded)
    infos = writer.commit()
    assert [i.entries for i in infos] == [10] * 5
    assert all(i.bytes == 10 * size + 11 for i in infos)  # exactly at the limit: brackets + 9 commas


def test_add_many_matches_add(tmp_path: Path) -> None:
    encoded = [entry_for(i, i * 37 % 500) for i in range(200)]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    w1 = ShardWriter(a, max_entries=17, max_bytes=9000, fsync=False)
    for e in encoded:
        w1.add(e)
    w2 = ShardWriter(b, max_entries=17, max_bytes=9000, fsync=False)
    w2.add_many(encoded[:100])
    w2.add_many(encoded[100:])
    assert [i.sha256 for i in w1.commit()] == [i.sha256 for i in w2.commit()]


def test_nothing_is_visible_before_commit_and_abort_cleans_up(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, max_entries=2)
    for i in range(5):
        writer.add(entry_for(i, 5))
    writer.close()
    assert not list(tmp_path.glob("manifest-*.json"))
    assert len(list(tmp_path.iterdir())) == 3  # temp files only
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_oversized_entry_names_the_key(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, max_bytes=1000)
    writer.add(entry_for(0, 10), "small.jpg")
    with pytest.raises(ShardError) as info:
        writer.add(entry_for(1, 2000), "huge/key.jpg")
    assert "'huge/key.jpg'" in str(info.value) and "--max-bytes" in str(info.value)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_empty_writer_writes_nothing(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path)
    assert writer.close() is None
    assert writer.commit() == []
    assert list(tmp_path.iterdir()) == []
