"""The ledger: a SQLite file recording runs, shards and objects, so that runs resume.

One ledger serves many datasets and many sources. It is what makes ``migrate`` and
``ingest`` resumable and incremental:

- ``runs``: one row per ``migrate``/``ingest`` invocation (options without secrets).
- ``shards``: one row per manifest sent, moving through
  ``planned -> published -> sending -> uploading(task_id) -> done | failed``.
  ``manifest_uri`` is the store URI (``s3://...``), never a presigned URL.
- ``objects``: one row per (dataset, object URI): ETag/generation, external_id,
  split, the shard it went in, and its outcome
  ``pending | sent | created | duplicate | failed | retry``.

Rules that make resume exact:

- Every step's writes are one transaction, committed only when the step succeeded
  (:meth:`Ledger.transaction`); a kill -9 leaves the last committed step.
- A shard whose ``task_id`` is recorded is followed, never re-sent.
- The state ``sending`` is committed *before* the upload request; a shard found in
  ``sending`` on resume is the one window where the server may have accepted a
  manifest whose task id we never recorded. The pipeline reconciles it (see
  :mod:`manifester.pipeline`).
- No secret is ever stored: no token, no presigned URL (only store URIs and keys).

The file is created owner-only (0600), its parent directory 0700 when we create it,
in WAL mode. Schema changes are numbered migrations in ``_MIGRATIONS``, each applied
in one transaction; a ledger written by a newer manifester is refused.

A per-ledger exclusive lock (``flock`` on ``<ledger>.lock``) is held for a whole run,
so two scheduled ``ingest`` jobs never work on the same ledger at once.

    >>> with Ledger.open(tmp / "ledger.sqlite") as ledger:   # doctest: +SKIP
    ...     with ledger.lock():
    ...         run_id = ledger.start_run("migrate", "s3://photos", "42", {"canary": 20})
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LedgerError, LockedError

__all__ = [
    "OUTCOMES",
    "SCHEMA_VERSION",
    "SHARD_STATES",
    "Ledger",
    "NewObject",
    "ObjectRow",
    "ShardRow",
]

SHARD_STATES = ("planned", "published", "sending", "uploading", "done", "failed")
OUTCOMES = ("pending", "sent", "created", "duplicate", "failed", "retry")
#: Outcomes meaning "this object is in the dataset".
PRESENT = ("created", "duplicate")
#: Outcomes meaning "still to be sent".
TO_SEND = ("pending", "retry")

# Each migration is a list of statements run in one transaction; index + 1 = version.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('migrate', 'ingest')),
            source TEXT NOT NULL,
            dataset_id TEXT,
            options TEXT NOT NULL DEFAULT '{}',
            pid INTEGER,
            started REAL NOT NULL,
            finished REAL,
            status TEXT NOT NULL DEFAULT 'running',
            summary TEXT
        )""",
        """CREATE TABLE shards (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            dataset_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            kind TEXT NOT NULL DEFAULT 'normal',
            state TEXT NOT NULL DEFAULT 'planned',
            entries INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0,
            sha256 TEXT,
            manifest_uri TEXT,
            url_lifetime INTEGER,
            task_id TEXT,
            result TEXT,
            error TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        "CREATE INDEX shards_dataset_state ON shards(dataset_id, state)",
        """CREATE TABLE objects (
            id INTEGER PRIMARY KEY,
            dataset_id TEXT NOT NULL,
            uri TEXT NOT NULL,
            source_root TEXT NOT NULL,
            key TEXT NOT NULL,
            etag TEXT,
            size INTEGER,
            external_id TEXT NOT NULL,
            split TEXT NOT NULL,
            shard_id INTEGER REFERENCES shards(id),
            outcome TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            run_id INTEGER,
            updated REAL NOT NULL,
            UNIQUE (dataset_id, uri)
        )""",
        # "what is still to send in dataset X", in insertion order
        "CREATE INDEX objects_todo ON objects(dataset_id, outcome, shard_id, id)",
        "CREATE INDEX objects_shard ON objects(shard_id)",
        "CREATE INDEX objects_external ON objects(dataset_id, external_id)",
    ],
]

SCHEMA_VERSION = len(_MIGRATIONS)

# How long opening waits out another process that is creating or migrating the same file.
_OPEN_BUSY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One shard as recorded."""

    id: int
    run_id: int
    dataset_id: str
    idx: int
    kind: str
    state: str
    entries: int
    bytes: int
    sha256: str | None
    manifest_uri: str | None
    url_lifetime: int | None
    task_id: str | None
    result: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """One object as recorded for one dataset."""

    id: int
    dataset_id: str
    uri: str
    source_root: str
    key: str
    etag: str | None
    size: int | None
    external_id: str
    split: str
    shard_id: int | None
    outcome: str
    attempts: int
    error: str | None


@dataclass(frozen=True, slots=True)
class NewObject:
    """What the scan found, to be recorded as pending."""

    uri: str
    key: str
    etag: str | None
    size: int | None
    external_id: str
    split: str


def _shard(row: sqlite3.Row) -> ShardRow:
    return ShardRow(
        id=row["id"],
        run_id=row["run_id"],
        dataset_id=row["dataset_id"],
        idx=row["idx"],
        kind=row["kind"],
        state=row["state"],
        entries=row["entries"],
        bytes=row["bytes"],
        sha256=row["sha256"],
        manifest_uri=row["manifest_uri"],
        url_lifetime=row["url_lifetime"],
        task_id=row["task_id"],
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
    )


def _object(row: sqlite3.Row) -> ObjectRow:
    return ObjectRow(**{k: row[k] for k in ObjectRow.__slots__})


class Ledger:
    """A SQLite ledger. Use :meth:`open`; one instance per thread (SQLite connections are not shared)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock_fh: Any = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Ledger:
        """Open (creating if needed) the ledger at ``path`` and bring its schema up to date.

        >>> ledger = Ledger.open("/tmp/x/ledger.sqlite")   # doctest: +SKIP
        """
        p = Path(path).expanduser()
        try:
            if not p.parent.exists():
                # the ledger lists bucket contents: keep it private to its owner
                p.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            if not p.exists():
                fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            if p.is_dir():
                raise LedgerError(f"ledger path {p} is a directory", hint="pass a file path to --state")
            conn = sqlite3.connect(p, timeout=30.0, isolation_level=None)
        except LedgerError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"cannot open the ledger {p}: {exc}", hint="check the --state path and its permissions"
            ) from exc
        conn.row_factory = sqlite3.Row
        ledger = cls(p, conn)
        try:
            ledger._prepare()
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise LedgerError(
                    f"the ledger {p} stayed locked by another process for {_OPEN_BUSY_SECONDS:.0f} s",
                    hint="check for another manifester run (or a tool holding the file open), then retry",
                ) from exc
            raise LedgerError(
                f"the ledger {p} is not a manifester ledger or is damaged: {exc}",
                hint="pass another --state path, or move this file away to start afresh",
            ) from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(
                f"the ledger {p} is not a manifester ledger or is damaged: {exc}",
                hint="pass another --state path, or move this file away to start afresh",
            ) from exc
        except LedgerError:
            conn.close()
            raise
        return ledger

    def _prepare(self) -> None:
        """Refuse a newer schema, switch to WAL and migrate, riding out a concurrent opener.

        Two runs started together (a cron job overlapping a manual run) open the same new
        file at once. SQLite answers some of those races ("database is locked" while the
        other connection switches the journal mode or recovers the WAL) at once, without
        waiting on the busy timeout, so the whole step is retried for a while; the run lock
        taken afterwards is what then tells the second run that the first one holds the file.
        """
        deadline = time.monotonic() + _OPEN_BUSY_SECONDS
        delay = 0.02
        while True:
            try:
                # Refuse a newer ledger before writing anything: switching to WAL rewrites the
                # file header, which a newer schema may rely on being as it left it.
                self._refuse_newer()
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _stored_version(self) -> int:
        """The recorded schema version (0 for a new file), read without writing anything."""
        conn = self._conn
        # fetchall() so that no statement stays open (a journal-mode switch needs none)
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchall()
        if not has_table:
            return 0
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        try:
            return int(rows[0][0]) if rows else 0
        except (TypeError, ValueError) as exc:
            raise LedgerError(
                f"the ledger {self.path} is damaged: schema version {rows[0][0]!r} is not a number",
                hint="pass another --state path, or move this file away to start afresh",
            ) from exc

    def _refuse_newer(self) -> None:
        version = self._stored_version()
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger {self.path} was written by a newer manifester (schema {version}, this one knows {SCHEMA_VERSION})",
                hint="upgrade manifester (pip install -U manifester), or pass another --state path",
            )

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        # checked again: another process may have migrated the file since _refuse_newer
        self._refuse_newer()
        for number in range(1, SCHEMA_VERSION + 1):
            with self.transaction():
                # read inside the write transaction: a run opening the file at the same
                # moment may have applied this step already
                if self._stored_version() >= number:
                    continue
                for statement in _MIGRATIONS[number - 1]:
                    conn.execute(statement)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    def schema_version(self) -> int:
        """The schema version of this file."""
        return int(self._conn.execute("SELECT version FROM schema_version").fetchone()[0])

    def close(self) -> None:
        """Release the lock (if held) and close the connection."""
        self.release()
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ locking
    @property
    def lock_path(self) -> Path:
        """The sibling file that carries the run lock."""
        return self.path.with_name(self.path.name + ".lock")

    def acquire(self) -> None:
        """Take the exclusive run lock, or raise :class:`LockedError` naming the holder's pid."""
        if self._lock_fh is not None:
            return
        fh = open(self.lock_path, "a+")  # noqa: SIM115 - held for the whole run
        with contextlib.suppress(OSError):
            os.chmod(self.lock_path, 0o600)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise LockedError(
                f"another manifester run holds the lock on {self.path} (pid {holder})",
                hint="wait for it to finish (a scheduled run will pick up the rest), or pass another --state",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def release(self) -> None:
        """Release the run lock if this instance holds it."""
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run lock for the ``with`` block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    # ------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One step's writes: committed if the block succeeds, rolled back otherwise."""
        conn = self._conn
        if conn.in_transaction:  # nested: the outer block commits
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ runs
    def start_run(self, kind: str, source: str, dataset_id: str | None, options: Mapping[str, Any]) -> int:
        """Record a new run; ``options`` must hold no secrets (they are stored as JSON)."""
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO runs (kind, source, dataset_id, options, pid, started) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, source, dataset_id, json.dumps(dict(options), default=str, sort_keys=True), os.getpid(), time.time()),
            )
            return int(cur.lastrowid or 0)

    def set_run_dataset(self, run_id: int, dataset_id: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET dataset_id = ? WHERE id = ?", (dataset_id, run_id))

    def finish_run(self, run_id: int, status: str, summary: Mapping[str, Any] | None = None) -> None:
        """Mark the run ``done``, ``failed`` or ``interrupted``."""
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET finished = ?, status = ?, summary = ? WHERE id = ?",
                (time.time(), status, json.dumps(dict(summary or {}), default=str), run_id),
            )

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first (small table: one row per invocation)."""
        return [dict(r) for r in self._conn.execute("SELECT * FROM runs ORDER BY id")]

    # ------------------------------------------------------------------ objects
    def known(self, dataset_id: str, uris: Sequence[str]) -> dict[str, tuple[str | None, str]]:
        """For the given URIs, those already recorded for the dataset: uri -> (etag, outcome)."""
        found: dict[str, tuple[str | None, str]] = {}
        # 500 placeholders stays far below SQLite's variable limit
        for i in range(0, len(uris), 500):
            chunk = list(uris[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT uri, etag, outcome FROM objects WHERE dataset_id = ? AND uri IN ({marks})",
                [dataset_id, *chunk],
            ):
                found[row["uri"]] = (row["etag"], row["outcome"])
        return found

    def add_objects(self, dataset_id: str, source_root: str, run_id: int, objects: Iterable[NewObject]) -> int:
        """Record new objects as pending (or re-queue changed ones); returns how many were queued.

        An object already recorded is re-queued only if the caller passes it again,
        which it does for a changed ETag with ``--changed resend``.
        """
        now = time.time()
        rows = [
            (dataset_id, o.uri, source_root, o.key, o.etag, o.size, o.external_id, o.split, run_id, now)
            for o in objects
        ]
        if not rows:
            return 0
        with self.transaction() as c:
            c.executemany(
                """INSERT INTO objects (dataset_id, uri, source_root, key, etag, size, external_id, split, run_id, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (dataset_id, uri) DO UPDATE SET
                     etag = excluded.etag, size = excluded.size, external_id = excluded.external_id,
                     split = excluded.split, run_id = excluded.run_id, updated = excluded.updated,
                     outcome = 'pending', shard_id = NULL, attempts = 0, error = NULL""",
                rows,
            )
        return len(rows)

    def count_outcomes(self, dataset_id: str, source_root: str | None = None) -> dict[str, int]:
        """outcome -> number of objects, for the dataset (optionally one source)."""
        sql = "SELECT outcome, COUNT(*) AS n FROM objects WHERE dataset_id = ?"
        args: list[Any] = [dataset_id]
        if source_root is not None:
            sql += " AND source_root = ?"
            args.append(source_root)
        sql += " GROUP BY outcome"
        return {r["outcome"]: r["n"] for r in self._conn.execute(sql, args)}

    def count_to_send(self, dataset_id: str) -> tuple[int, int]:
        """(objects, total bytes) still to send for the dataset."""
        row = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects WHERE dataset_id = ? AND shard_id IS NULL AND outcome IN ('pending', 'retry')",
            (dataset_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def split_counts_to_send(self, dataset_id: str) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT split, COUNT(*) AS n FROM objects WHERE dataset_id = ? AND shard_id IS NULL AND outcome IN ('pending', 'retry') GROUP BY split",
            (dataset_id,),
        )
        return {r["split"]: r["n"] for r in rows}

    def next_to_send(self, dataset_id: str, limit: int) -> list[ObjectRow]:
        """The oldest ``limit`` objects not yet in any shard, in insertion order."""
        rows = self._conn.execute(
            "SELECT * FROM objects WHERE dataset_id = ? AND outcome IN ('pending', 'retry') AND shard_id IS NULL ORDER BY id LIMIT ?",
            (dataset_id, limit),
        )
        return [_object(r) for r in rows]

    def iter_to_send(self, dataset_id: str, batch: int = 10_000) -> Iterator[ObjectRow]:
        """Every object still to send, streamed in id order (constant memory)."""
        last = 0
        while True:
            rows = self._conn.execute(
                "SELECT * FROM objects WHERE dataset_id = ? AND outcome IN ('pending', 'retry') AND shard_id IS NULL AND id > ? ORDER BY id LIMIT ?",
                (dataset_id, last, batch),
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield _object(r)
            last = rows[-1]["id"]

    def shard_objects(self, shard_id: int) -> list[ObjectRow]:
        """The objects assigned to a shard, in manifest order."""
        return [_object(r) for r in self._conn.execute("SELECT * FROM objects WHERE shard_id = ? ORDER BY id", (shard_id,))]

    def failed_objects(self, dataset_id: str) -> list[ObjectRow]:
        return [
            _object(r)
            for r in self._conn.execute(
                "SELECT * FROM objects WHERE dataset_id = ? AND outcome = 'failed' ORDER BY id", (dataset_id,)
            )
        ]

    def objects(self, dataset_id: str) -> list[ObjectRow]:
        """Every object of a dataset (for tests and small reports)."""
        return [_object(r) for r in self._conn.execute("SELECT * FROM objects WHERE dataset_id = ? ORDER BY id", (dataset_id,))]

    # ------------------------------------------------------------------ shards
    def next_shard_index(self, dataset_id: str) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(idx), 0) FROM shards WHERE dataset_id = ?", (dataset_id,)).fetchone()
        return int(row[0]) + 1

    def plan_shard(self, run_id: int, dataset_id: str, object_ids: Sequence[int], kind: str = "normal") -> ShardRow:
        """Create a ``planned`` shard holding ``object_ids`` (one transaction)."""
        now = time.time()
        with self.transaction() as c:
            idx = self.next_shard_index(dataset_id)
            cur = c.execute(
                "INSERT INTO shards (run_id, dataset_id, idx, kind, state, entries, created, updated) VALUES (?, ?, ?, ?, 'planned', ?, ?, ?)",
                (run_id, dataset_id, idx, kind, len(object_ids), now, now),
            )
            shard_id = int(cur.lastrowid or 0)
            c.executemany(
                "UPDATE objects SET shard_id = ?, updated = ? WHERE id = ?", [(shard_id, now, i) for i in object_ids]
            )
        return self.shard(shard_id)

    def shard(self, shard_id: int) -> ShardRow:
        row = self._conn.execute("SELECT * FROM shards WHERE id = ?", (shard_id,)).fetchone()
        if row is None:
            raise LedgerError(f"shard {shard_id} is not in the ledger {self.path}")
        return _shard(row)

    def shards(self, dataset_id: str | None = None, states: Sequence[str] | None = None) -> list[ShardRow]:
        sql = "SELECT * FROM shards WHERE 1=1"
        args: list[Any] = []
        if dataset_id is not None:
            sql += " AND dataset_id = ?"
            args.append(dataset_id)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(states)
        return [_shard(r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    def unfinished_shards(self, dataset_id: str) -> list[ShardRow]:
        """Shards an earlier run left between planned and done, oldest first."""
        return self.shards(dataset_id, ("planned", "published", "sending", "uploading"))

    def release_objects(self, shard_id: int, object_ids: Sequence[int]) -> None:
        """Take objects out of a not-yet-sent shard (it grew too big): they go back to the queue."""
        with self.transaction() as c:
            c.executemany(
                "UPDATE objects SET shard_id = NULL WHERE id = ? AND shard_id = ?", [(i, shard_id) for i in object_ids]
            )
            n = c.execute("SELECT COUNT(*) FROM objects WHERE shard_id = ?", (shard_id,)).fetchone()[0]
            c.execute("UPDATE shards SET entries = ?, updated = ? WHERE id = ?", (n, time.time(), shard_id))

    def mark_published(
        self, shard_id: int, *, manifest_uri: str, entries: int, nbytes: int, sha256: str, url_lifetime: int
    ) -> None:
        """The manifest is written to the store (URI recorded, never a signed URL)."""
        with self.transaction() as c:
            c.execute(
                "UPDATE shards SET state = 'published', manifest_uri = ?, entries = ?, bytes = ?, sha256 = ?, url_lifetime = ?, updated = ? WHERE id = ?",
                (manifest_uri, entries, nbytes, sha256, url_lifetime, time.time(), shard_id),
            )

    def mark_sending(self, shard_id: int) -> None:
        """Committed just before the upload request: on resume, 'sending' means 'maybe received'."""
        with self.transaction() as c:
            c.execute("UPDATE shards SET state = 'sending', updated = ? WHERE id = ?", (time.time(), shard_id))

    def mark_unsent(self, shard_id: int) -> None:
        """The upload request was refused for sure (4xx): back to published."""
        with self.transaction() as c:
            c.execute("UPDATE shards SET state = 'published', updated = ? WHERE id = ?", (time.time(), shard_id))

    def mark_uploading(self, shard_id: int, task_id: str) -> None:
        """The server accepted the manifest: record its task id (and the objects as sent)."""
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "UPDATE shards SET state = 'uploading', task_id = ?, updated = ? WHERE id = ?", (task_id, now, shard_id)
            )
            c.execute(
                "UPDATE objects SET outcome = 'sent', attempts = attempts + 1, updated = ? WHERE shard_id = ?",
                (now, shard_id),
            )

    def mark_done(
        self,
        shard_id: int,
        result: Mapping[str, Any],
        failures: Mapping[int, str],
        *,
        max_attempts: int = 2,
    ) -> tuple[int, int]:
        """The task succeeded: objects in ``failures`` (id -> error) go to retry (or failed after
        ``max_attempts``), every other object of the shard is created. Returns (retry, failed)."""
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "UPDATE shards SET state = 'done', result = ?, updated = ? WHERE id = ?",
                (json.dumps(dict(result), default=str), now, shard_id),
            )
            c.execute(
                "UPDATE objects SET outcome = 'created', error = NULL, updated = ? WHERE shard_id = ?", (now, shard_id)
            )
            retry = failed = 0
            for object_id, error in failures.items():
                attempts = c.execute("SELECT attempts FROM objects WHERE id = ?", (object_id,)).fetchone()
                if attempts is None:
                    continue
                if attempts[0] < max_attempts:
                    # back to the queue: a later shard re-sends it once
                    c.execute(
                        "UPDATE objects SET outcome = 'retry', shard_id = NULL, error = ?, updated = ? WHERE id = ?",
                        (error, now, object_id),
                    )
                    retry += 1
                else:
                    c.execute(
                        "UPDATE objects SET outcome = 'failed', error = ?, updated = ? WHERE id = ?",
                        (error, now, object_id),
                    )
                    failed += 1
        return retry, failed

    def mark_failed(self, shard_id: int, error: str, *, requeue: bool = True) -> None:
        """The task ended FAILURE/REVOKED: the shard is failed; its objects go back to the queue."""
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "UPDATE shards SET state = 'failed', error = ?, updated = ? WHERE id = ?", (error[:2000], now, shard_id)
            )
            if requeue:
                c.execute(
                    "UPDATE objects SET outcome = 'retry', shard_id = NULL, error = ?, updated = ? WHERE shard_id = ?",
                    (error[:500], now, shard_id),
                )

    def mark_reconciled(self, shard_id: int, present_ids: Sequence[int], note: str) -> None:
        """A 'sending' shard checked against the dataset: present objects are created, the rest re-queued."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "UPDATE objects SET outcome = 'created', updated = ? WHERE id = ?", [(now, i) for i in present_ids]
            )
            c.execute(
                "UPDATE objects SET outcome = 'retry', shard_id = NULL, updated = ? WHERE shard_id = ? AND outcome NOT IN ('created', 'duplicate')",
                (now, shard_id),
            )
            c.execute(
                "UPDATE shards SET state = 'done', error = ?, result = ?, updated = ? WHERE id = ?",
                (note, json.dumps({"reconciled": len(present_ids)}), now, shard_id),
            )

    def reset_attempts(self, object_ids: Sequence[int]) -> None:
        """Forget the attempts of objects (a failed canary is the setup's fault, not theirs)."""
        with self.transaction() as c:
            c.executemany("UPDATE objects SET attempts = 0 WHERE id = ?", [(i,) for i in object_ids])

    def reset_planned(self, shard_id: int) -> None:
        """Drop a shard that never reached the server (planned/published): objects back to the queue."""
        with self.transaction() as c:
            c.execute(
                "UPDATE objects SET shard_id = NULL WHERE shard_id = ? AND outcome IN ('pending', 'retry')", (shard_id,)
            )
            c.execute(
                "UPDATE shards SET state = 'failed', error = 'abandoned before sending', updated = ? WHERE id = ?",
                (time.time(), shard_id),
            )
