"""``migrate`` and ``ingest``: from a bucket to a Theos dataset, resumable and incremental.

One orchestrator runs the stages, each in its own module (scan/split/ids/validate via
:mod:`manifester.builder`, :mod:`manifester.publish`, :mod:`manifester.upload`) and
records every step in the :mod:`ledger <manifester.ledger>`. A run:

1. takes the ledger's lock (a second concurrent run gets :class:`LockedError`);
2. resolves the dataset (``dataset`` name: find or create; ``dataset_id``: must exist);
3. **finishes what an earlier run left pending**: a shard with a recorded task id is
   followed, never re-sent; a shard left ``sending`` (the server may or may not have
   received it) is reconciled by external id against the dataset; planned/published
   shards go back to the queue (their URLs may have expired);
4. scans the source exactly as ``build`` does and records, in batches, every object
   not yet in the dataset according to the ledger (an unchanged ETag is skipped; a
   changed one only with ``changed="resend"``): the ledger holds the plan, not memory.
   The scan runs in a background thread (:class:`_Scanner`) **while** shards are sent:
   the canary goes out as soon as its first ``canary`` objects are committed, each
   later shard as soon as a full shard's worth is, the last partial one when the
   scan ends;
5. sends a small **canary** shard first, then shards of at most ``max_entries`` /
   ``max_bytes``, one at a time, presigning and writing shard N+1 in a background
   thread while the server works on shard N;
6. per-image failures from a task result go back to the queue and are sent once more
   in a later shard; what fails twice is listed by key in the :class:`Summary`.

Ctrl-C or SIGTERM stop cleanly after the current step is recorded (raising
:class:`Interrupted`); with ``stop_remote`` the running upload is stopped too. Run the
same call again to resume.

    >>> summary = migrate("s3://photos/cats", dataset="Cats",
    ...                   manifest_store="s3://photos-manifests/theos")   # doctest: +SKIP
    >>> summary.created, summary.ok                                       # doctest: +SKIP
    (1200, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import unquote, urlsplit

from .config import default_state_path
from .errors import (
    ConfigError,
    Interrupted,
    ManifesterError,
    NotFoundError,
    PublishError,
    TaskFailedError,
)
from .ledger import PRESENT, Ledger, NewObject, ObjectRow, ShardRow
from .publish import (
    LifetimePolicy,
    PublishedShard,
    Publisher,
    ShardItem,
    parse_duration,
)
from .records import SPLITS, StorageObject
from .storage import open_storage
from .storage.base import Storage
from .upload import TaskOutcome, follow, redact, submit

if TYPE_CHECKING:
    from .urls import UrlMode

__all__ = ["FailedObject", "PlanReport", "Summary", "ingest", "migrate"]

_BATCH = 2000
#: Reconcile a 'sending' shard object by object up to this size; above it, re-send
#: and let Theos count the already-created external ids as duplicates.
_RECONCILE_LIMIT = 5000
#: Before reconciling, wait until the dataset's example count has stayed the same for
#: this long (an upload the server accepted unheard may still be importing), up to
#: _SETTLE_MAX seconds; the next upload would wait for that task anyway (409).
_SETTLE_QUIET = 3.0
_SETTLE_MAX = 1800.0


@dataclass(frozen=True, slots=True)
class FailedObject:
    """An object that is still not in the dataset, with the last error seen."""

    key: str
    error: str


@dataclass(frozen=True)
class PlanReport:
    """What a run would do (``dry_run=True``); bytes and lifetimes are estimates."""

    to_send: dict[str, int]
    already_present: int
    changed: int
    in_flight: int
    shards: int
    canary: int
    estimated_bytes: int
    url_lifetime_first: int
    url_lifetime_max: int
    unfinished: tuple[str, ...]
    dataset_exists: bool | None

    @property
    def total(self) -> int:
        return sum(self.to_send.values())

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total": self.total}

    def lines(self) -> list[str]:
        """Human-readable plan."""
        split_text = ", ".join(f"{s} {self.to_send.get(s, 0)}" for s in SPLITS)
        out = [
            f"to send: {self.total} images ({split_text})",
            f"already in the dataset (ledger): {self.already_present}"
            + (f"; changed since sent: {self.changed}" if self.changed else ""),
            f"shards: {self.shards}" + (f" (first a canary of {self.canary})" if self.canary else "")
            + f", about {self.estimated_bytes:,} bytes of manifests",
            f"URL lifetime: {self.url_lifetime_first} s for the first shard, up to {self.url_lifetime_max} s",
        ]
        if self.in_flight:
            out.append(f"waiting from an earlier run: {self.in_flight} images")
        out.extend(f"unfinished: {u}" for u in self.unfinished)
        if self.dataset_exists is False:
            out.append("the dataset does not exist yet and would be created")
        return out


@dataclass(frozen=True)
class Summary:
    """The result of ``migrate``/``ingest``. ``ok`` is True only if every object is in the dataset."""

    kind: str
    source: str
    dataset_id: str | None
    created: int
    already_present: int
    duplicates: int
    failed: tuple[FailedObject, ...]
    remaining: int
    shards: int
    seconds: float
    ledger: str
    dry_run: bool = False
    plan: PlanReport | None = None
    resumed_shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and self.remaining == 0

    @property
    def nothing_new(self) -> bool:
        return self.shards == 0 and self.created == 0 and not self.failed and self.remaining == 0

    @property
    def exit_code(self) -> int:
        return 0 if (self.ok or self.dry_run) else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``--json`` prints)."""
        return {
            "kind": self.kind,
            "source": self.source,
            "dataset_id": self.dataset_id,
            "created": self.created,
            "already_present": self.already_present,
            "duplicates": self.duplicates,
            "failed": [{"key": f.key, "error": f.error} for f in self.failed],
            "remaining": self.remaining,
            "shards": self.shards,
            "resumed_shards": self.resumed_shards,
            "seconds": round(self.seconds, 3),
            "ledger": self.ledger,
            "ok": self.ok,
            "nothing_new": self.nothing_new,
            "dry_run": self.dry_run,
            "plan": self.plan.to_dict() if self.plan else None,
        }

    def lines(self) -> list[str]:
        """Human-readable summary."""
        if self.dry_run and self.plan is not None:
            return [f"dry run: {self.kind} {self.source} -> dataset {self.dataset_id or '(new)'}", *self.plan.lines()]
        if self.nothing_new:
            return [f"nothing new: every object of {self.source} is already in dataset {self.dataset_id}"]
        out = [
            f"dataset {self.dataset_id}: {self.created} created, {self.already_present} already present, "
            f"{self.duplicates} duplicates, {len(self.failed)} failed, {self.shards} shards, {self.seconds:.1f} s"
        ]
        if self.remaining:
            out.append(f"{self.remaining} objects still to send: run the same command again")
        for f in self.failed[:50]:
            out.append(f"failed: {f.key}: {f.error}")
        if len(self.failed) > 50:
            out.append(f"... and {len(self.failed) - 50} more (see --json)")
        return out


# ---------------------------------------------------------------------------- source


class _RememberingStorage:
    """Wraps a storage so that the objects its listing yields can be looked up by key.

    ``build.iter_entries`` turns keys into entries (split, external id, validation)
    but drops each object's ETag and size, which the ledger needs. Listing order is
    key order and entries come out in the same order, so remembered objects older
    than the entry being looked up can be forgotten: memory stays bounded by one
    batch plus whatever the filters skip between two entries.
    """

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self._seen: dict[str, StorageObject] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def list(self, prefix: str | None = None) -> Iterator[StorageObject]:
        for obj in self._inner.list(prefix):
            self._seen[obj.key] = obj
            yield obj

    def take(self, key: str) -> StorageObject | None:
        seen = self._seen
        while seen:
            first = next(iter(seen))
            obj = seen.pop(first)
            if first == key:
                return obj
        return None


def _candidates(storage: Storage, options: Any, stats: Any = None) -> Iterator[NewObject]:
    """Every object ``build`` would put in a manifest: key, etag, split, external_id.

    The scan, filter, split, external-id and validation rules are :mod:`manifester.builder`'s
    (``iter_entries``); URLs are not made here but per shard, just in time, so the
    build runs with placeholder URLs.
    """
    from .builder import iter_entries
    from .scan import ScanStats
    from .urls import encode_key

    remembering = _RememberingStorage(storage)

    def placeholder_urls(keys: Any) -> list[str]:
        return ["https://placeholder.invalid/" + encode_key(k) for k in keys]

    for entry in iter_entries(remembering, options, stats or ScanStats(), placeholder_urls):  # type: ignore[arg-type]
        obj = remembering.take(entry.key)
        yield NewObject(
            uri=entry.uri,
            key=entry.key,
            etag=obj.etag if obj else None,
            size=obj.size if obj else None,
            external_id=entry.external_id,
            split=entry.split,
        )


# ---------------------------------------------------------------------------- signals


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM behave like Ctrl-C (KeyboardInterrupt) for the duration of a run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- the scanner


@dataclass(frozen=True, slots=True)
class _ScanProgress:
    """What the background scan has committed so far."""

    recorded: int  # objects recorded as pending by this scan
    position: str | None  # the last key classified (recorded or skipped); keys come in listing order
    done: bool
    error: BaseException | None


class _Scanner:
    """Runs :meth:`_Run.record_candidates` in a background thread, with its own ledger connection.

    Why a thread for the scan, and not for the uploads: the scan is a pure producer
    whose only ledger writes are ``add_objects`` (one transaction per batch), so it
    needs nothing but its own SQLite connection (connections are never shared
    between threads). Everything else -- the shard state machine, every API call,
    Ctrl-C/SIGTERM handling, the lock -- stays in the main thread exactly as before.
    The main thread waits on this object's condition for "enough objects committed"
    and stops it (and joins it, before the lock is released) however the run ends.
    A kill -9 at any moment leaves committed batches in the ledger; the next run
    lists again, and the ledger's (dataset, uri) uniqueness plus ``known()`` turn
    those objects into "already queued", never into a second row.

    With ``hold_for_canary``, the scan pauses once the canary's objects are committed
    until :meth:`release` (the canary was sent): listing further pages (client CPU:
    parsing XML pages) would only compete with publishing the canary, and if the
    canary fails there was no point; the scan goes on while the canary task runs.
    """

    def __init__(self, run: _Run, *, hold_for_canary: bool = False) -> None:
        self._run = run
        self._hold = hold_for_canary and run.canary > 0
        self._go = threading.Event()
        self._cond = threading.Condition()
        self._recorded = 0
        self._position: str | None = None
        self._done = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        # daemon: a second Ctrl-C while joining must still let the process exit
        self._thread = threading.Thread(target=self._main, name="manifester-scan", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        error: BaseException | None = None
        try:
            with Ledger.open(self._run.ledger.path) as ledger:
                self._run.record_candidates(ledger=ledger, on_commit=self._committed, should_stop=self._stop.is_set)
        except BaseException as exc:  # handed to the main thread, which raises it
            error = exc
        with self._cond:
            self._error = error
            self._done = True
            self._cond.notify_all()

    def _committed(self, recorded: int, last_key: str) -> None:
        with self._cond:
            self._recorded += recorded
            self._position = last_key
            self._cond.notify_all()
            hold = self._hold and self._recorded >= self._run.canary
        if hold:
            while not (self._go.wait(0.5) or self._stop.is_set()):
                pass

    def release(self) -> None:
        """Let a scan held for the canary go on."""
        self._go.set()

    def _snapshot(self) -> _ScanProgress:
        return _ScanProgress(self._recorded, self._position, self._done, self._error)

    def progress(self) -> _ScanProgress:
        with self._cond:
            return self._snapshot()

    def wait(self, until: Callable[[_ScanProgress], bool]) -> _ScanProgress:
        """Block until ``until(progress)`` holds (it always does once the scan is done)."""
        with self._cond:
            while True:
                snap = self._snapshot()
                if snap.done or until(snap):
                    return snap
                # a timeout keeps the main thread responsive to Ctrl-C on every platform
                self._cond.wait(timeout=0.5)

    def stop(self) -> None:
        """Ask the scan to stop between two objects and wait for it (its last batch commits or not at all)."""
        self._stop.set()
        self._go.set()
        self._thread.join()


# ---------------------------------------------------------------------------- the run


class _Run:
    def __init__(
        self,
        *,
        kind: str,
        source: str,
        storage: Storage,
        options: Any,
        ledger: Ledger,
        client: Any,
        dataset_id: str,
        publisher: Publisher | None,
        policy: LifetimePolicy,
        canary: int,
        max_entries: int,
        max_bytes: int,
        changed: str,
        progress: bool,
        stop_remote: bool,
    ) -> None:
        self.kind = kind
        self.source = source
        self.storage = storage
        self.options = options
        self.ledger = ledger
        self.client = client
        self.dataset_id = dataset_id
        self.publisher = publisher
        self.policy = policy
        self.canary = canary
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.changed = changed
        self.progress = progress
        self.stop_remote = stop_remote
        self.run_id = 0
        self.created = 0
        self.duplicates = 0
        self.already_present = 0
        self.changed_count = 0
        self.in_flight = 0
        self.shards = 0
        self.resumed = 0
        self.active_task: str | None = None
        self.poll_interval = 1.0
        self.scanner: _Scanner | None = None

    # ------------------------------------------------------------ scan
    def record_candidates(
        self,
        *,
        dry_run: bool = False,
        ledger: Ledger | None = None,
        on_commit: Callable[[int, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[dict[str, int], list[int]]:
        """Record the objects not yet in the dataset as pending (a dry run only counts them).

        Returns the new objects per split and, in a dry run, the length of each one's
        key + external id + split (for the manifest-bytes estimate). ``ledger`` is the
        connection to write with (the scanner thread passes its own; default: the
        run's). After each committed batch, ``on_commit(objects recorded, last key
        classified)`` runs; ``should_stop()`` ends the scan early (between objects).
        """
        ledger = ledger or self.ledger
        per_split: dict[str, int] = {}
        sizes: list[int] = []
        batch: list[NewObject] = []
        # Small first batches, so that the canary's objects are committed after the
        # first few listed keys rather than after _BATCH; then doubling up to _BATCH.
        threshold = max(1, min(self.canary, _BATCH)) if (self.canary and on_commit is not None) else _BATCH

        def flush() -> None:
            known = ledger.known(self.dataset_id, [o.uri for o in batch])
            todo: list[NewObject] = []
            for o in batch:
                seen = known.get(o.uri)
                if seen is None:
                    todo.append(o)
                    continue
                etag, outcome = seen
                if outcome in PRESENT:
                    if etag is not None and o.etag is not None and etag != o.etag:
                        self.changed_count += 1
                        if self.changed == "resend":
                            todo.append(o)
                        else:
                            self.already_present += 1
                    else:
                        self.already_present += 1
                elif outcome == "failed":
                    todo.append(o)  # a new run gives failed objects another chance
                else:
                    self.in_flight += 1  # queued or sent by an earlier run: resumed, not re-added
            for o in todo:
                per_split[o.split] = per_split.get(o.split, 0) + 1
                if dry_run:
                    sizes.append(len(o.key) + len(o.external_id) + len(o.split))
            if todo and not dry_run:
                ledger.add_objects(self.dataset_id, self.storage.root_uri, self.run_id, todo)
            if on_commit is not None:
                on_commit(len(todo), batch[-1].key)
            batch.clear()

        for obj in _candidates(self.storage, self.options):
            if should_stop is not None and should_stop():
                return per_split, sizes  # the uncommitted batch is simply listed again next run
            batch.append(obj)
            if len(batch) >= threshold:
                flush()
                threshold = min(threshold * 2, _BATCH)
        if batch:
            flush()
        return per_split, sizes

    # ------------------------------------------------------------ resume
    def resume_unfinished(self) -> None:
        for shard in self.ledger.unfinished_shards(self.dataset_id):
            if shard.state == "uploading" and shard.task_id:
                self.resumed += 1
                self._follow(shard, resumed=True)
            elif shard.state == "sending":
                self.resumed += 1
                self._reconcile(shard)
            else:  # planned / published: never reached the server; URLs may be stale
                self.ledger.reset_planned(shard.id)

    def _reconcile(self, shard: ShardRow) -> None:
        """The server may have received this shard without us recording its task id."""
        self._settle()
        objects = self.ledger.shard_objects(shard.id)
        present: list[int] = []
        if len(objects) <= _RECONCILE_LIMIT:
            for o in objects:
                try:
                    self.client.get_example(self.dataset_id, external_id=o.external_id)
                except NotFoundError:
                    continue
                present.append(o.id)
        # the rest is re-queued; if the lost task is still running, the next upload
        # waits on 409, and Theos counts any overlap as duplicates, not new examples
        self.ledger.mark_reconciled(
            shard.id, present, f"reconciled after an unrecorded upload: {len(present)}/{len(objects)} present"
        )
        self.created += len(present)

    def _settle(self) -> None:
        """Wait while the dataset's example count still grows.

        An upload whose answer was lost (or whose run was killed before it recorded the
        task id) may still be importing: reconciling now would find only part of its
        examples and re-send the rest, which Theos then counts as duplicates. The API
        has no call that lists a dataset's running task, so watch the count instead.
        """
        quiet_for = max(_SETTLE_QUIET, 3 * self.poll_interval)
        deadline = time.monotonic() + _SETTLE_MAX
        last = self.client.get_dataset(self.dataset_id).total
        stable_since = time.monotonic()
        while time.monotonic() - stable_since < quiet_for and time.monotonic() < deadline:
            time.sleep(min(self.poll_interval, quiet_for))
            total = self.client.get_dataset(self.dataset_id).total
            if total != last:
                last, stable_since = total, time.monotonic()

    # ------------------------------------------------------------ sending
    def stream(self) -> None:
        """Scan and send at the same time: the scan records objects in a background
        thread (:class:`_Scanner`) while this thread sends shards as soon as they fill."""
        # Hold the scan for the canary only when the queue is empty: objects an earlier
        # run left queued go first, and those must be passed by the scan before they are
        # sent (see _next_shard), so a held scan could never release them.
        queued, _ = self.ledger.count_to_send(self.dataset_id)
        scanner = _Scanner(self, hold_for_canary=queued == 0)
        self.scanner = scanner
        scanner.start()
        try:
            self.send_all()
        finally:
            scanner.stop()  # before the summary reads the scan's counters, and before the lock goes
            self.scanner = None

    def _next_shard(self, first: bool, *, wait: bool = True) -> ShardRow | None:
        """Plan the next shard from the queue; None when there is nothing (more) to send.

        While the scan runs, a shard is planned only once it is full (``canary`` or
        ``max_entries`` objects queued; the scan's end releases a partial one), and only
        with objects the scan has already passed: an object an earlier run left queued
        must be classified by this scan *before* it is sent, or the scan would later
        count it as "already present" (or re-queue it after a failure). With ``wait``
        False, return None instead of waiting; a scan error is raised only when waiting.
        """
        limit = self.max_entries
        kind = "normal"
        if first and self.canary > 0:
            limit = min(self.canary, self.max_entries)
            kind = "canary"
        root = self.storage.root_uri
        scanner = self.scanner
        while True:
            # read the scan's progress before the queue: a batch committed in between wakes the wait below
            progress = scanner.progress() if scanner is not None else None
            objects = self.ledger.next_to_send(self.dataset_id, limit)
            if progress is None or progress.done:
                if progress is not None and progress.error is not None:
                    if not wait:
                        return None  # the caller follows its running task first, then waits and raises
                    raise progress.error
                break
            need_key = max((o.key for o in objects if o.source_root == root), default=None)
            target = progress.recorded + max(0, limit - len(objects))

            def ready(p: _ScanProgress, target: int = target, need_key: str | None = need_key) -> bool:
                passed = need_key is None or (p.position is not None and need_key <= p.position)
                return p.recorded >= target and passed

            if ready(progress):
                break
            if not wait:
                return None
            assert scanner is not None
            scanner.wait(ready)
        if not objects:
            return None
        return self.ledger.plan_shard(self.run_id, self.dataset_id, [o.id for o in objects], kind=kind)

    def _prepare(
        self, pool: ThreadPoolExecutor, first: bool, queued_before: int, *, wait: bool = True
    ) -> tuple[ShardRow, Future[PublishedShard]] | None:
        """Plan the next shard (main thread: the ledger) and publish it in the worker thread."""
        shard = self._next_shard(first, wait=wait)
        if shard is None:
            return None
        # the worker thread never touches the SQLite connection: it gets a snapshot
        items = [
            ShardItem(object_id=o.id, key=o.key, split=o.split, external_id=o.external_id)
            for o in self.ledger.shard_objects(shard.id)
        ]
        publisher = self.publisher
        assert publisher is not None
        lifetime = self.policy.lifetime(queued_before + len(items), publisher.cap())
        return shard, pool.submit(
            publisher.publish, items, run_id=shard.run_id, shard_index=shard.idx, lifetime=lifetime
        )

    def send_all(self) -> None:
        """Canary first, then every queued object, one shard at a time, N+1 prepared during N."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifester-publish")
        pending: tuple[ShardRow, Future[PublishedShard]] | None = None
        try:
            pending = self._prepare(pool, True, 0)
            while pending is not None:
                shard, fut = pending
                pending = None
                published = self._await_published(shard, fut)
                self._send(shard, published)
                if self.scanner is not None:
                    self.scanner.release()  # the canary is out: list on while the server works
                # prepare N+1 while the server works on N, if the scan has already filled it
                pending = self._prepare(pool, False, published.entries, wait=False)
                self._follow(self.ledger.shard(shard.id), resumed=False)
                if pending is None:  # wait for the scan; failures of N may have been re-queued
                    pending = self._prepare(pool, False, 0)
        finally:
            if pending is not None:
                shard, fut = pending
                with contextlib.suppress(BaseException):
                    fut.result()
                self.ledger.reset_planned(shard.id)
            pool.shutdown(wait=True)

    def _await_published(self, shard: ShardRow, fut: Future[PublishedShard]) -> PublishedShard:
        try:
            published = fut.result()
        except BaseException:
            self.ledger.reset_planned(shard.id)
            raise
        if published.dropped_ids:
            self.ledger.release_objects(shard.id, published.dropped_ids)
        self.ledger.mark_published(
            shard.id,
            manifest_uri=published.manifest_uri,
            entries=published.entries,
            nbytes=published.nbytes,
            sha256=published.sha256,
            url_lifetime=published.url_lifetime,
        )
        return published

    def _send(self, shard: ShardRow, published: PublishedShard) -> None:
        from .theos import UncertainOutcomeError

        self.ledger.mark_sending(shard.id)
        self.shards += 1
        try:
            submit(
                self.client,
                self.dataset_id,
                published.manifest_url,
                on_task_id=lambda task_id: self.ledger.mark_uploading(shard.id, task_id),
            )
        except UncertainOutcomeError:
            # the server may have accepted it: reconcile now, exactly as a resume would
            self._reconcile(self.ledger.shard(shard.id))
            return
        except ManifesterError as exc:
            if getattr(exc, "status", None) is not None and 400 <= (getattr(exc, "status", 0) or 0) < 500:
                self.ledger.reset_planned(shard.id)  # refused for sure: nothing reached the dataset
            raise

    def _follow(self, shard: ShardRow, *, resumed: bool) -> None:
        if shard.state != "uploading" or not shard.task_id:
            return  # reconciled already
        self.active_task = shard.task_id
        started = time.monotonic()
        label = f"shard {shard.idx}" + (" (canary)" if shard.kind == "canary" else "") + (" (resumed)" if resumed else "")
        try:
            outcome = follow(
                self.client, shard.task_id, progress=self.progress, description=label, poll_interval=self.poll_interval
            )
        except TaskFailedError as exc:
            self.ledger.mark_failed(shard.id, exc.message)
            self.active_task = None
            if resumed:
                return  # an earlier run's task: its objects are back in the queue
            if shard.kind == "canary":
                raise TaskFailedError(
                    f"the canary shard ({shard.entries} images) failed: {exc.message}",
                    task_id=exc.task_id,
                    state=exc.state,
                    hint="check that the Theos server can download the manifest (--manifest-store, --url-lifetime), "
                    "then run again; nothing else was sent",
                ) from exc
            raise
        self.active_task = None
        elapsed = time.monotonic() - started
        if shard.entries and not resumed:
            # learn how long the server takes per image, for the next URL lifetimes
            observed = elapsed / shard.entries
            if observed > self.policy.per_image_seconds:
                self.policy = dataclasses.replace(self.policy, per_image_seconds=observed)
        self._record_outcome(shard, outcome)

    def _record_outcome(self, shard: ShardRow, outcome: TaskOutcome) -> None:
        objects = self.ledger.shard_objects(shard.id)
        by_ext = {o.external_id: o for o in objects}
        failures: dict[int, str] = {}
        for f in outcome.failures:
            match: ObjectRow | None = by_ext.get(f.external_id) if f.external_id else None
            if match is None and f.url_path:
                path = unquote(urlsplit(f.url_path).path)
                match = next((o for o in objects if path.endswith("/" + o.key) or path == o.key), None)
            if match is not None:
                failures[match.id] = f.error
        canary = shard.kind == "canary"
        # a canary's failures stay queued whatever their attempts: the run stops below, the next run retries
        self.ledger.mark_done(shard.id, outcome.summary(), failures, max_attempts=10**9 if canary else 2)
        duplicates = outcome.duplicates or 0
        created = outcome.created if outcome.created is not None else len(objects) - len(failures) - duplicates
        self.created += created
        self.duplicates += duplicates
        if canary and failures:
            self.ledger.reset_attempts(list(failures))
            first = next(iter(failures.values()))
            raise PublishError(
                f"the canary shard: {len(failures)} of {len(objects)} images could not be imported (first error: {redact(first)})",
                hint="check that the Theos server can reach the storage endpoint, the credentials and the URL "
                "lifetime (--url-lifetime); nothing else was sent, run again once fixed",
            )


# ---------------------------------------------------------------------------- entry points


def _resolve_dataset(client: Any, dataset: str | None, dataset_id: str | None, *, create: bool) -> tuple[str | None, bool]:
    """(dataset id, exists). With a name: find it, or create it (``create``)."""
    if dataset_id is not None:
        try:
            found = client.get_dataset(dataset_id)
        except NotFoundError as exc:
            raise NotFoundError(
                f"dataset {dataset_id} does not exist in this project",
                status=404,
                hint="check --dataset-id (list them with `manifester datasets list`), or pass --dataset NAME to create one",
            ) from exc
        return str(found.id), True
    assert dataset is not None
    found = client.find_dataset(dataset)
    if found is not None:
        return str(found.id), True
    if not create:
        return None, False
    return str(client.create_dataset(dataset).id), True


def _run(
    kind: Literal["migrate", "ingest"],
    source: str,
    *,
    dataset: str | None = None,
    dataset_id: str | int | None = None,
    manifest_store: str | None = None,
    state: str | Path | None = None,
    canary: int = 20,
    dry_run: bool = False,
    stop_remote: bool = False,
    client: Any = None,
    progress: bool = True,
    url_lifetime: str | int | None = None,
    urls: str | None = None,
    url_template: str | None = None,
    manifest_base_url: str | None = None,
    changed: Literal["skip", "resend"] = "skip",
    poll_interval: float = 1.0,
    listing: str | Path | None = None,
    **build_options: Any,
) -> Summary:
    """The one implementation behind :func:`migrate` and :func:`ingest` (their options, their defaults)."""
    started = time.monotonic()
    if (dataset is None) == (dataset_id is None):
        raise ConfigError(f"{kind}: give exactly one of --dataset NAME or --dataset-id ID", hint="e.g. --dataset Cats")
    if changed not in ("skip", "resend"):
        raise ConfigError(f"--changed must be 'skip' or 'resend', not {changed!r}")
    if canary < 0:
        raise ConfigError(f"--canary must be 0 or more, not {canary}")
    if not manifest_store and not dry_run:
        raise ConfigError(
            f"{kind} needs --manifest-store (an s3:// or gs:// prefix the Theos server can download manifests from)",
            hint="e.g. --manifest-store s3://my-bucket/theos-manifests",
        )
    from .builder import BuildOptions

    storage = open_storage(source, listing=listing)
    expires = build_options.pop("expires", None)
    options = BuildOptions.make(**build_options, urls=urls, url_template=url_template).resolve(storage)
    urls = str(options.urls)
    # --url-lifetime fixes the lifetime; otherwise it is computed per shard (build's --expires also fixes it)
    lifetime = parse_duration(url_lifetime if url_lifetime is not None else expires)
    max_entries = options.max_entries
    max_bytes = options.max_bytes
    store = open_storage(manifest_store) if manifest_store else None
    publisher = (
        Publisher(
            storage, store, urls=cast("UrlMode", options.urls), url_template=options.url_template, manifest_base_url=manifest_base_url,
            max_bytes=max_bytes, store_uri=manifest_store,
        )
        if store is not None
        else None
    )
    policy = LifetimePolicy(fixed=lifetime)

    if client is None:
        from .theos import TheosClient

        try:
            client = TheosClient()
        except ConfigError:
            if not dry_run:
                raise
            client = None

    state_path = Path(state).expanduser() if state else default_state_path()
    with contextlib.ExitStack() as stack:
        if dry_run and not state_path.exists():
            # a dry run writes nothing: plan against an empty throwaway ledger
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="manifester-dry-"))
            ledger = stack.enter_context(Ledger.open(Path(tmp) / "ledger.sqlite"))
        else:
            ledger = stack.enter_context(Ledger.open(state_path))
        if not dry_run:
            # the lock comes before any API call: two scheduled runs must not both
            # create a dataset by name, nor both send
            stack.enter_context(ledger.lock())
        ds_id: str | None = str(dataset_id) if dataset_id is not None else None
        exists: bool | None = None
        if client is not None:
            ds_id, exists = _resolve_dataset(
                client, dataset, str(dataset_id) if dataset_id is not None else None, create=not dry_run
            )
        run = _Run(
            kind=kind, source=source, storage=storage, options=options, ledger=ledger, client=client,
            dataset_id=ds_id or f"(new:{dataset})", publisher=publisher, policy=policy, canary=canary,
            max_entries=max_entries, max_bytes=max_bytes, changed=changed, progress=progress, stop_remote=stop_remote,
        )
        run.poll_interval = poll_interval
        if dry_run:
            return _dry_run(run, started, exists, str(state_path))
        assert ds_id is not None
        safe_options = {
            "canary": canary, "urls": urls, "changed": changed, "manifest_store": manifest_store,
            "url_lifetime": lifetime, **{k: v for k, v in build_options.items() if "token" not in k and "secret" not in k},
        }
        run.run_id = ledger.start_run(kind, storage.root_uri, ds_id, safe_options)
        status = "failed"
        try:
            with _sigterm_as_interrupt():
                try:
                    run.resume_unfinished()
                    run.stream()
                    status = "done"
                except KeyboardInterrupt:
                    status = "interrupted"
                    if stop_remote and run.active_task:
                        with contextlib.suppress(ManifesterError):
                            client.stop_upload(ds_id)
                    raise Interrupted(
                        f"{kind} interrupted; its state is saved in {ledger.path}",
                        hint="run the same command again to resume where it stopped",
                    ) from None
        finally:
            summary = _summary(run, started, str(ledger.path))
            with contextlib.suppress(Exception):
                ledger.finish_run(run.run_id, status, summary.to_dict())
        return summary


def _summary(run: _Run, started: float, ledger_path: str) -> Summary:
    failed = tuple(
        FailedObject(key=o.key, error=redact(o.error or "failed"))
        for o in run.ledger.failed_objects(run.dataset_id)
        if o.source_root == run.storage.root_uri
    )
    remaining, _ = run.ledger.count_to_send(run.dataset_id)
    in_shards = sum(
        s.entries for s in run.ledger.unfinished_shards(run.dataset_id)
    )
    return Summary(
        kind=run.kind,
        source=run.source,
        dataset_id=run.dataset_id,
        created=run.created,
        already_present=run.already_present,
        duplicates=run.duplicates,
        failed=failed,
        remaining=remaining + in_shards,
        shards=run.shards,
        seconds=time.monotonic() - started,
        ledger=ledger_path,
        resumed_shards=run.resumed,
    )


def _dry_run(run: _Run, started: float, exists: bool | None, ledger_path: str) -> Summary:
    per_split, sizes = run.record_candidates(dry_run=True)
    queued, _ = run.ledger.count_to_send(run.dataset_id)
    for split, n in run.ledger.split_counts_to_send(run.dataset_id).items():
        per_split[split] = per_split.get(split, 0) + n
    total = sum(per_split.values())
    # URL length: measure one real URL (presigning is local computation, nothing is sent)
    overhead = 120
    publisher = run.publisher
    if publisher is not None and total:
        with contextlib.suppress(Exception):
            sample = "sample/key.jpg"
            url = publisher.image_urls([sample], 900)[0]
            overhead = len(url) - len(sample)
    entry_overhead = overhead + 45  # {"url":"","split":"","external_id":""} and a comma
    est_bytes = 2 + sum(s + entry_overhead for s in sizes) + queued * (entry_overhead + 60)
    shards = 0
    remaining = total
    if remaining and run.canary:
        shards += 1
        remaining -= min(run.canary, remaining)
    avg = (est_bytes / total) if total else 0
    per_shard = run.max_entries
    if avg:
        per_shard = max(1, min(run.max_entries, int(run.max_bytes // avg)))
    shards += -(-remaining // per_shard) if remaining else 0
    cap = publisher.cap() if publisher is not None else 7 * 24 * 3600
    first = run.policy.lifetime(min(run.canary, total) if run.canary else min(per_shard, total), cap) if total else 0
    biggest = run.policy.lifetime(2 * min(per_shard, total), cap) if total else 0
    unfinished = tuple(
        f"shard {s.idx} ({s.entries} images) is {s.state}" + (f", task {s.task_id}" if s.task_id else "")
        for s in run.ledger.unfinished_shards(run.dataset_id)
    )
    plan = PlanReport(
        to_send={s: per_split.get(s, 0) for s in SPLITS},
        already_present=run.already_present,
        changed=run.changed_count,
        in_flight=run.in_flight,
        shards=shards,
        canary=min(run.canary, total) if total else 0,
        estimated_bytes=int(est_bytes) if total else 0,
        url_lifetime_first=first,
        url_lifetime_max=max(first, biggest),
        unfinished=unfinished,
        dataset_exists=exists,
    )
    return Summary(
        kind=run.kind, source=run.source, dataset_id=None if exists is False else run.dataset_id, created=0,
        already_present=run.already_present, duplicates=0, failed=(), remaining=total, shards=0,
        seconds=time.monotonic() - started, ledger=ledger_path, dry_run=True, plan=plan,
    )


def migrate(source: str, *, dataset: str | None = None, dataset_id: str | int | None = None, **options: Any) -> Summary:
    """Move every image of ``source`` into a Theos dataset; resumable, never sending twice.

    ``dataset`` (a name: found or created) or ``dataset_id`` (must exist). Options:
    ``manifest_store`` (an ``s3://``/``gs://`` prefix for the manifests; required unless
    ``dry_run``), ``state`` (the ledger path; default under the user's state directory),
    ``canary=20``, ``dry_run=False``, ``stop_remote=False``, ``client`` (a
    :class:`~manifester.theos.TheosClient`; default: from ``THEOS_*``), ``progress=True``,
    ``url_lifetime`` (fixes it; default: computed), ``urls``/``url_template``,
    ``manifest_base_url``, ``changed="skip"|"resend"``, ``poll_interval=1.0``, and every
    ``build`` option (``split``, ``include``, ``max_entries``, ...).

    >>> s = migrate("s3://photos/cats", dataset="Cats", manifest_store="s3://manifests/theos")  # doctest: +SKIP
    >>> s.ok, s.created, [f.key for f in s.failed]                                               # doctest: +SKIP
    (True, 1200, [])
    """
    return _run("migrate", source, dataset=dataset, dataset_id=dataset_id, **options)


def ingest(source: str, *, dataset_id: str | int, **options: Any) -> Summary:
    """Send only the objects of ``source`` not yet in dataset ``dataset_id`` (the scheduled job).

    Takes every option of :func:`migrate`. Safe to run every few minutes: a lock refuses
    a concurrent run on the same ledger; ``summary.nothing_new`` tells that there was
    nothing to do. A changed ETag is re-sent only with ``changed="resend"``.

    >>> s = ingest("s3://photos/incoming", dataset_id="42", manifest_store="s3://manifests/theos")  # doctest: +SKIP
    >>> s.nothing_new                                                                                # doctest: +SKIP
    True
    """
    if "dataset" in options:
        raise ConfigError("ingest takes dataset_id, not dataset", hint="create the dataset first, or use migrate")
    return _run("ingest", source, dataset_id=dataset_id, **options)
