"""SQLite state of the local Theos-compatible server.

One file, ``<data>/theos.sqlite``, in WAL mode, holds datasets, classes, examples
and tasks. A single connection guarded by one re-entrant lock serves every thread:
the server is a local rehearsal tool, and one writer at a time is what SQLite does
anyway, so the lock costs nothing and rules out ``database is locked`` errors.

Every request that writes runs inside :meth:`Store.tx`, so a refused request never
leaves a partial write, and check-then-write sequences (one upload per dataset,
labels validated against the current classes) are atomic.

    store = Store(Path("data"))
    with store.tx():
        ds = store.create_dataset("Vehicles")
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import LedgerError

__all__ = ["ACTIVE_STATES", "SPLITS", "TERMINAL_STATES", "Store", "StoreClosed", "now_iso"]

SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
ACTIVE_STATES = ("PENDING", "STARTED", "PROGRESS")
TERMINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
# SQLite integers are signed 64-bit; larger ids in a URL can only be unknown ids.
MAX_ID = 2**63 - 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE classes (
        db_id INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        color TEXT NOT NULL,
        with_text INTEGER NOT NULL
    );
    CREATE INDEX classes_by_dataset ON classes(dataset_id, position);
    CREATE TABLE examples (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        split TEXT NOT NULL,
        external_id TEXT,
        image TEXT NOT NULL,
        thumbnail TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '[]',
        skipped INTEGER NOT NULL DEFAULT 0,
        created TEXT NOT NULL
    );
    -- NULL external ids are distinct in SQLite, so only real ids must be unique.
    CREATE UNIQUE INDEX examples_by_external_id ON examples(dataset_id, external_id);
    CREATE INDEX examples_by_split ON examples(dataset_id, split, id);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        dataset_id INTEGER,
        state TEXT NOT NULL,
        current INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        created TEXT NOT NULL,
        updated TEXT NOT NULL
    );
    CREATE INDEX tasks_by_dataset ON tasks(dataset_id, kind, state);
    """,
}


class _Result:
    """The rows of one statement, fetched eagerly, plus lastrowid and rowcount."""

    def __init__(self, rows: list[sqlite3.Row], lastrowid: int | None, rowcount: int) -> None:
        self.rows, self.lastrowid, self.rowcount = rows, lastrowid, rowcount

    def fetchone(self) -> sqlite3.Row | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[sqlite3.Row]:
        return self.rows

    def __iter__(self) -> Iterator[sqlite3.Row]:
        return iter(self.rows)


class StoreClosed(Exception):
    """The store was closed (server stopping); background work must end quietly."""


def now_iso() -> str:
    """UTC time as ISO 8601 with a ``Z``, the way DRF renders datetimes."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """Datasets, classes, examples and tasks in one SQLite file.

    >>> store = Store(tmp_path)            # doctest: +SKIP
    >>> with store.tx():                   # doctest: +SKIP
    ...     store.create_dataset("Cats")["id"]
    1
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "theos.sqlite"
        self._lock = threading.RLock()
        self._depth = 0
        self._closed = False
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"server state {self.path} is not a usable SQLite database: {exc}",
                hint="point --data at an empty directory or at one this server created",
            ) from exc

    # -- plumbing ---------------------------------------------------------------

    def _migrate(self) -> None:
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row["value"]) if row else 0
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"server state {self.path} was written by a newer manifester (schema {version})",
                hint="upgrade manifester or use another --data directory",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # executescript commits on its own, so run each migration as one explicit script transaction.
            self._conn.executescript(
                "BEGIN;\n"
                + _MIGRATIONS[target]
                + f"\nINSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '{target}');\nCOMMIT;"
            )

    @contextmanager
    def tx(self) -> Iterator[None]:
        """Hold the lock and run the block in one transaction (nested blocks join the outer one)."""
        with self._lock:
            if self._closed:
                raise StoreClosed()
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._conn.execute("COMMIT")

    def _q(self, sql: str, params: Iterable[Any] = ()) -> _Result:
        # Rows are fetched while the lock is held: the one connection is shared by all threads.
        with self._lock:
            if self._closed:
                raise StoreClosed()
            cur = self._conn.execute(sql, tuple(params))
            return _Result(cur.fetchall(), cur.lastrowid, cur.rowcount)

    def close(self) -> None:
        """Close the connection; later calls raise :class:`StoreClosed`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- datasets ---------------------------------------------------------------

    def create_dataset(self, name: str) -> dict[str, Any]:
        with self.tx():
            cur = self._q("INSERT INTO datasets(name, created) VALUES (?, ?)", (name, now_iso()))
            row = self.get_dataset(int(cur.lastrowid or 0))
        assert row is not None
        return row

    def get_dataset(self, dataset_id: int) -> dict[str, Any] | None:
        if not 0 < dataset_id <= MAX_ID:
            return None
        row = self._q("SELECT id, name, created FROM datasets WHERE id=?", (dataset_id,)).fetchone()
        return dict(row) if row else None

    def list_datasets(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._q("SELECT id, name, created FROM datasets ORDER BY id")]

    def split_counts(self, dataset_id: int) -> dict[str, int]:
        counts = dict.fromkeys(SPLITS, 0)
        for r in self._q("SELECT split, COUNT(*) AS n FROM examples WHERE dataset_id=? GROUP BY split", (dataset_id,)):
            counts[r["split"]] = r["n"]
        return counts

    def delete_dataset(self, dataset_id: int) -> list[str]:
        """Delete the dataset and its rows; return the media file names to remove."""
        with self.tx():
            names: list[str] = []
            for r in self._q("SELECT image, thumbnail FROM examples WHERE dataset_id=?", (dataset_id,)):
                names += [r["image"], r["thumbnail"]]
            self._q("DELETE FROM examples WHERE dataset_id=?", (dataset_id,))
            self._q("DELETE FROM classes WHERE dataset_id=?", (dataset_id,))
            self._q("DELETE FROM datasets WHERE id=?", (dataset_id,))
        return names

    # -- classes ----------------------------------------------------------------

    def classes(self, dataset_id: int) -> list[dict[str, Any]]:
        """The dataset's classes in order; ``position`` is the class ``id`` (dense 0..n-1)."""
        rows = self._q(
            "SELECT db_id, position, name, color, with_text FROM classes WHERE dataset_id=? ORDER BY position",
            (dataset_id,),
        )
        return [dict(r) for r in rows]

    def get_class(self, dataset_id: int, db_id: int) -> dict[str, Any] | None:
        if not 0 < db_id <= MAX_ID:
            return None
        row = self._q(
            "SELECT db_id, position, name, color, with_text FROM classes WHERE dataset_id=? AND db_id=?",
            (dataset_id, db_id),
        ).fetchone()
        return dict(row) if row else None

    def create_class(self, dataset_id: int, name: str, color: str, with_text: bool) -> dict[str, Any]:
        with self.tx():
            position = len(self.classes(dataset_id))
            cur = self._q(
                "INSERT INTO classes(dataset_id, position, name, color, with_text) VALUES (?, ?, ?, ?, ?)",
                (dataset_id, position, name, color, int(with_text)),
            )
            row = self.get_class(dataset_id, int(cur.lastrowid or 0))
        assert row is not None
        return row

    def edit_class(self, dataset_id: int, db_id: int, name: str | None, color: str | None) -> dict[str, Any] | None:
        with self.tx():
            if name is not None:
                self._q("UPDATE classes SET name=? WHERE dataset_id=? AND db_id=?", (name, dataset_id, db_id))
            if color is not None:
                self._q("UPDATE classes SET color=? WHERE dataset_id=? AND db_id=?", (color, dataset_id, db_id))
            return self.get_class(dataset_id, db_id)

    def replace_classes(
        self,
        dataset_id: int,
        remove_db_ids: set[int],
        new_class: tuple[str, str, bool] | None = None,
        progress: Any = None,
    ) -> tuple[int, int | None]:
        """Remove classes (and, with ``new_class``, append one that takes over their labels).

        Class ids stay dense: every label is rewritten to its class's new position;
        labels of removed classes are dropped, or moved to the new class when merging.
        Returns the number of examples whose labels changed and the new class's db_id.
        Raises ``LookupError`` when the dataset no longer exists.
        """
        with self.tx():
            if self.get_dataset(dataset_id) is None:
                raise LookupError(f"dataset {dataset_id} was deleted")
            old = self.classes(dataset_id)
            kept = [c for c in old if c["db_id"] not in remove_db_ids]
            mapping: dict[int, int | None] = {}
            for new_pos, c in enumerate(kept):
                mapping[c["position"]] = new_pos
                self._q("UPDATE classes SET position=? WHERE db_id=?", (new_pos, c["db_id"]))
            merged_pos = len(kept) if new_class is not None else None
            for c in old:
                if c["db_id"] in remove_db_ids:
                    mapping[c["position"]] = merged_pos
            self._q(
                f"DELETE FROM classes WHERE dataset_id=? AND db_id IN ({','.join('?' * len(remove_db_ids))})",
                (dataset_id, *sorted(remove_db_ids)),
            )
            new_db_id = None
            if new_class is not None:
                name, color, with_text = new_class
                new_db_id = self._q(
                    "INSERT INTO classes(dataset_id, position, name, color, with_text) VALUES (?, ?, ?, ?, ?)",
                    (dataset_id, merged_pos, name, color, int(with_text)),
                ).lastrowid
            rows = self._q(
                "SELECT id, labels FROM examples WHERE dataset_id=? AND labels != '[]'", (dataset_id,)
            ).fetchall()
            changed = 0
            for i, r in enumerate(rows):
                labels = json.loads(r["labels"])
                rewritten = []
                for box in labels:
                    target = mapping.get(int(box["class_id"]))
                    if target is None:
                        continue
                    rewritten.append({**box, "class_id": target})
                if rewritten != labels:
                    changed += 1
                    self._q("UPDATE examples SET labels=? WHERE id=?", (json.dumps(rewritten), r["id"]))
                if progress is not None:
                    progress(i + 1, len(rows))
        return changed, new_db_id

    # -- examples ---------------------------------------------------------------

    _EXAMPLE_COLS = "id, dataset_id, split, external_id, image, thumbnail, width, height, labels, skipped"

    def examples_page(self, dataset_id: int, split: str, page: int, per_page: int) -> tuple[int, list[dict[str, Any]]]:
        counted = self._q(
            "SELECT COUNT(*) AS n FROM examples WHERE dataset_id=? AND split=?", (dataset_id, split)
        ).fetchone()
        count = int(counted["n"]) if counted else 0
        rows = self._q(
            f"SELECT {self._EXAMPLE_COLS} FROM examples WHERE dataset_id=? AND split=? ORDER BY id LIMIT ? OFFSET ?",
            (dataset_id, split, per_page, (page - 1) * per_page),
        )
        return count, [dict(r) for r in rows]

    def get_example(self, dataset_id: int, example_id: int) -> dict[str, Any] | None:
        if not 0 < example_id <= MAX_ID:
            return None
        row = self._q(
            f"SELECT {self._EXAMPLE_COLS} FROM examples WHERE dataset_id=? AND id=?", (dataset_id, example_id)
        ).fetchone()
        return dict(row) if row else None

    def get_example_by_external_id(self, dataset_id: int, external_id: str) -> dict[str, Any] | None:
        row = self._q(
            f"SELECT {self._EXAMPLE_COLS} FROM examples WHERE dataset_id=? AND external_id=?",
            (dataset_id, external_id),
        ).fetchone()
        return dict(row) if row else None

    def external_ids(self, dataset_id: int) -> set[str]:
        rows = self._q("SELECT external_id FROM examples WHERE dataset_id=? AND external_id IS NOT NULL", (dataset_id,))
        return {r["external_id"] for r in rows}

    def insert_example(
        self, dataset_id: int, split: str, external_id: str | None, image: str, thumbnail: str, width: int, height: int
    ) -> int | None:
        """Insert one example; ``None`` when the external id already exists (a duplicate)."""
        with self.tx():
            try:
                cur = self._q(
                    "INSERT INTO examples(dataset_id, split, external_id, image, thumbnail, width, height, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (dataset_id, split, external_id, image, thumbnail, width, height, now_iso()),
                )
            except sqlite3.IntegrityError:
                return None
            return int(cur.lastrowid or 0)

    def set_labels(self, example_id: int, labels: list[dict[str, Any]], skipped: bool) -> None:
        self._q("UPDATE examples SET labels=?, skipped=? WHERE id=?", (json.dumps(labels), int(skipped), example_id))

    # -- tasks ------------------------------------------------------------------

    def create_task(self, task_id: str, kind: str, dataset_id: int | None, total: int = 0) -> None:
        stamp = now_iso()
        self._q(
            "INSERT INTO tasks(id, kind, dataset_id, state, current, total, created, updated)"
            " VALUES (?, ?, ?, 'PENDING', 0, ?, ?, ?)",
            (task_id, kind, dataset_id, total, stamp, stamp),
        )

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        row = self._q("SELECT id, kind, dataset_id, state, current, total, result FROM tasks WHERE id=?", (task_id,))
        found = row.fetchone()
        if not found:
            return None
        task = dict(found)
        task["result"] = json.loads(task["result"]) if task["result"] is not None else None
        return task

    def update_task(
        self,
        task_id: str,
        *,
        state: str | None = None,
        current: int | None = None,
        total: int | None = None,
        result: Any = None,
    ) -> None:
        sets: list[str] = ["updated=?"]
        params: list[Any] = [now_iso()]
        for col, value in (("state", state), ("current", current), ("total", total)):
            if value is not None:
                sets.append(f"{col}=?")
                params.append(value)
        if result is not None:
            sets.append("result=?")
            params.append(json.dumps(result))
        self._q(f"UPDATE tasks SET {', '.join(sets)} WHERE id=?", (*params, task_id))

    def active_upload(self, dataset_id: int) -> str | None:
        row = self._q(
            f"SELECT id FROM tasks WHERE dataset_id=? AND kind='upload' AND state IN {ACTIVE_STATES} LIMIT 1",
            (dataset_id,),
        ).fetchone()
        return str(row["id"]) if row else None

    def fail_interrupted_tasks(self, reason: str) -> int:
        """At boot: tasks a previous process left running can never finish; mark them FAILURE."""
        with self.tx():
            cur = self._q(
                f"UPDATE tasks SET state='FAILURE', result=?, updated=? WHERE state IN {ACTIVE_STATES}",
                (json.dumps(reason), now_iso()),
            )
        return cur.rowcount
