"""The ledger: permissions, schema versions, lock, step transactions, object/shard life cycle."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from manifester.errors import LedgerError, LockedError
from manifester.ledger import SCHEMA_VERSION, Ledger, NewObject


def _obj(i: int, etag: str = "e") -> NewObject:
    return NewObject(uri=f"s3://b/k{i}.jpg", key=f"k{i}.jpg", etag=etag, size=100 + i, external_id=f"x{i}", split="train")


def test_created_private_with_private_parent(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "ledger.sqlite"
    with Ledger.open(path) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_wal_mode(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        assert ledger._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 5,))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="newer manifester") as info:
        Ledger.open(path)
    assert info.value.hint and "upgrade" in info.value.hint


def test_newer_schema_is_refused_before_anything_changes(tmp_path: Path) -> None:
    # a newer manifester may rely on another journal mode or header: an older one must
    # refuse the file without touching a byte of it (no WAL switch, no new table)
    path = tmp_path / "l.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="newer manifester"):
        Ledger.open(path)
    assert path.read_bytes() == before
    assert not path.with_name("l.sqlite-wal").exists()


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LedgerError, match="not a manifester ledger"):
        Ledger.open(path)


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger.open(path) as ledger:
        run = ledger.start_run("migrate", "s3://b", "7", {"canary": 20})
        ledger.add_objects("7", "s3://b", run, [_obj(1), _obj(2)])
    with Ledger.open(path) as ledger:
        assert ledger.count_to_send("7") == (2, 203)
        assert ledger.known("7", ["s3://b/k1.jpg", "s3://b/zz"]) == {"s3://b/k1.jpg": ("e", "pending")}
        assert ledger.known("8", ["s3://b/k1.jpg"]) == {}


def _hold_lock(path: str, ready: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event) -> None:
    ledger = Ledger.open(path)
    ledger.acquire()
    ready.set()
    done.wait(20)
    ledger.close()


def test_lock_refuses_a_second_run_and_names_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger.open(path).close()
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(path), ready, done))
    proc.start()
    try:
        assert ready.wait(20)
        with Ledger.open(path) as ledger, pytest.raises(LockedError) as info:
            ledger.acquire()
        assert f"pid {proc.pid}" in str(info.value)
        assert "another manifester run holds the lock" in str(info.value)
        assert info.value.transient
    finally:
        done.set()
        proc.join(20)
    with Ledger.open(path) as ledger, ledger.lock():
        pass  # free again once the holder exited


def test_failed_step_commits_nothing(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        run = ledger.start_run("ingest", "s3://b", "7", {})
        with pytest.raises(RuntimeError), ledger.transaction():
            ledger.add_objects("7", "s3://b", run, [_obj(1)])
            raise RuntimeError("boom")
        assert ledger.count_to_send("7") == (0, 0)


def test_shard_life_cycle_with_retry_then_failed(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        run = ledger.start_run("migrate", "s3://b", "7", {})
        ledger.add_objects("7", "s3://b", run, [_obj(i) for i in range(5)])
        todo = ledger.next_to_send("7", 3)
        assert [o.key for o in todo] == ["k0.jpg", "k1.jpg", "k2.jpg"]
        shard = ledger.plan_shard(run, "7", [o.id for o in todo], kind="canary")
        assert shard.idx == 1 and shard.state == "planned" and shard.entries == 3
        ledger.release_objects(shard.id, [todo[2].id])
        assert ledger.shard(shard.id).entries == 2
        ledger.mark_published(shard.id, manifest_uri="s3://m/r/1.json", entries=2, nbytes=99, sha256="ab", url_lifetime=900)
        ledger.mark_sending(shard.id)
        ledger.mark_uploading(shard.id, "task-1")
        assert [s.task_id for s in ledger.unfinished_shards("7")] == ["task-1"]
        retry, failed = ledger.mark_done(shard.id, {"created": 1}, {todo[1].id: "403"})
        assert (retry, failed) == (1, 0)
        assert ledger.count_outcomes("7") == {"created": 1, "retry": 1, "pending": 3}
        # the retried object goes out again in a later shard, fails again: failed for good
        again = ledger.next_to_send("7", 10)
        assert again[0].key == "k1.jpg"
        s2 = ledger.plan_shard(run, "7", [again[0].id])
        assert s2.idx == 2
        ledger.mark_uploading(s2.id, "task-2")
        assert ledger.mark_done(s2.id, {}, {again[0].id: "403 again"}) == (0, 1)
        [bad] = ledger.failed_objects("7")
        assert bad.key == "k1.jpg" and bad.error == "403 again"
        assert ledger.unfinished_shards("7") == []


def test_changed_object_is_requeued(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        run = ledger.start_run("migrate", "s3://b", "7", {})
        ledger.add_objects("7", "s3://b", run, [_obj(1)])
        shard = ledger.plan_shard(run, "7", [ledger.next_to_send("7", 1)[0].id])
        ledger.mark_uploading(shard.id, "t")
        ledger.mark_done(shard.id, {}, {})
        ledger.add_objects("7", "s3://b", run, [_obj(1, etag="new")])
        assert ledger.known("7", ["s3://b/k1.jpg"]) == {"s3://b/k1.jpg": ("new", "pending")}


def test_failed_task_requeues_the_shard(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        run = ledger.start_run("migrate", "s3://b", "7", {})
        ledger.add_objects("7", "s3://b", run, [_obj(1), _obj(2)])
        shard = ledger.plan_shard(run, "7", [o.id for o in ledger.next_to_send("7", 5)])
        ledger.mark_uploading(shard.id, "t")
        ledger.mark_failed(shard.id, "FAILURE: manifest unreadable")
        assert ledger.count_to_send("7")[0] == 2
        assert ledger.shard(shard.id).state == "failed"


def test_no_secret_columns(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        ledger.start_run("migrate", "s3://b", "7", {"canary": 5})
        cols = {
            row[1]
            for table in ("runs", "shards", "objects")
            for row in ledger._conn.execute(f"PRAGMA table_info({table})")
        }
    assert not {c for c in cols if "token" in c or "url" in c and c != "url_lifetime"}
    assert os.path.exists(tmp_path / "l.sqlite")


def _open_at(path: str, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    start.wait(20)
    try:
        with Ledger.open(path) as ledger:
            out.put(("ok", ledger.schema_version()))
    except Exception as exc:  # reported to the parent, which asserts on it
        out.put(("error", str(exc)))


def test_runs_opening_one_new_file_at_once_all_get_it(tmp_path: Path) -> None:
    # Two scheduled runs that start together both create and migrate the same new file;
    # neither may see "database is locked" reported as a damaged ledger.
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        path = str(tmp_path / f"l{attempt}.sqlite")
        start = ctx.Barrier(6)
        out = ctx.Queue()
        procs = [ctx.Process(target=_open_at, args=(path, start, out)) for _ in range(6)]
        for proc in procs:
            proc.start()
        results = [out.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(20)
        assert results == [("ok", SCHEMA_VERSION)] * 6, results
