"""Background tasks of the local Theos-compatible server: uploads and class rewrites.

Each task runs in its own daemon thread and reports through the ``tasks`` table in
the celery-progress shape the contract describes. Image downloads for all uploads
share one bounded pool of daemon threads (``download_workers``); daemon threads, so
that a hung image server can never keep the process from exiting.

Stopping an upload marks the task REVOKED *inside the store lock* and every import
checks the stop flag inside that same lock, so no example appears after the client
has seen REVOKED; images imported before stay.

    runner = TaskRunner(store, media, download_workers=8)
    task_id = runner.start_upload(dataset_id, "http://127.0.0.1:9000/manifest.json")
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx

from ..validate import validate_manifest
from .images import (
    MAX_IMAGE_BYTES,
    FetchError,
    ImageError,
    MediaStore,
    fetch,
    process_image,
)
from .store import ACTIVE_STATES, Store, StoreClosed

__all__ = ["MANIFEST_MAX_BYTES", "ManifestProblem", "TaskRunner", "UploadBusy", "parse_manifest", "task_object"]

MANIFEST_MAX_BYTES = 100_000_000
MANIFEST_MAX_ENTRIES = 100_000
_PROGRESS_FLUSH_SECONDS = 1.0
_ENTRY_PREFIX = re.compile(r"^\[(\d+)\] ")
_log = logging.getLogger("manifester.server")


class UploadBusy(Exception):
    """An upload is already running on the dataset; ``task_id`` names it."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id


class ManifestProblem(Exception):
    """The manifest cannot be imported; the message names the entry and the problem."""


def parse_manifest(data: bytes) -> list[dict[str, Any]]:
    """Parse and validate a manifest; any problem rejects the whole manifest.

    Validation is :func:`manifester.validate.validate_manifest`, the builder's own, so
    the server refuses exactly what ``manifester build`` refuses (same schema file,
    same ECMA-262 reading of its patterns).

    >>> parse_manifest(b'[{"url": "https://a.example/b.jpg", "split": "train"}]')
    [{'url': 'https://a.example/b.jpg', 'split': 'train'}]
    """
    if len(data) > MANIFEST_MAX_BYTES:
        raise ManifestProblem(f"manifest is {len(data):,} bytes, over the {MANIFEST_MAX_BYTES:,}-byte limit")
    try:
        entries = json.loads(data)
    except UnicodeDecodeError:
        raise ManifestProblem("manifest is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ManifestProblem(f"manifest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ManifestProblem("manifest is nested too deeply to be a manifest") from None
    except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
        raise ManifestProblem(f"manifest is not usable JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ManifestProblem(f"manifest must be a JSON array of entries, not a JSON {type(entries).__name__}")
    if len(entries) > MANIFEST_MAX_ENTRIES:
        raise ManifestProblem(
            f"manifest has {len(entries):,} entries, over the {MANIFEST_MAX_ENTRIES:,}-entry limit; nothing was imported"
        )
    # validate_manifest says "[3] split: ..."; the task result reads better as "entry 3: split: ...".
    problems = [_ENTRY_PREFIX.sub(r"entry \1: ", line) for line in validate_manifest(entries, limit=5)]
    if problems:
        raise ManifestProblem("invalid manifest, nothing was imported (entries are 0-based): " + "; ".join(problems))
    return entries


def task_object(state: str, current: int, total: int, result: Any) -> dict[str, Any]:
    """The task as the contract shows it (celery-progress convention).

    >>> task_object("PROGRESS", 1200, 100000, None)["progress"]["percent"]
    1.2
    """
    complete = state in ("SUCCESS", "FAILURE", "REVOKED")
    if total > 0:
        percent = round(100.0 * min(current, total) / total, 2)
    else:
        percent = 100.0 if state == "SUCCESS" else 0.0
    return {
        "state": state,
        "complete": complete,
        "success": True if state == "SUCCESS" else (False if complete else None),
        "progress": {"pending": state == "PENDING", "current": current, "total": total, "percent": percent},
        "result": result,
    }


@dataclass
class _Control:
    """Live state of one running task, shared by its threads."""

    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: int = 0
    total: int = 0
    created: int = 0
    duplicates: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    flushed_at: float = 0.0

    def stopped(self) -> bool:
        return self.stop.is_set()


class _DaemonPool:
    """A fixed set of daemon threads running submitted callables (see module docstring for why)."""

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn))
        return future

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class TaskRunner:
    """Starts, runs, stops and reports tasks.

    >>> runner = TaskRunner(store, media, download_workers=4)   # doctest: +SKIP
    >>> runner.start_upload(1, "http://127.0.0.1:9000/m.json")  # doctest: +SKIP
    '6f1c...'
    """

    def __init__(
        self, store: Store, media: MediaStore, *, download_workers: int = 8, download_timeout: float = 30.0
    ) -> None:
        self.store = store
        self.media = media
        self.download_workers = max(1, download_workers)
        self.download_timeout = download_timeout
        self._controls: dict[str, _Control] = {}
        self._controls_lock = threading.Lock()
        self._shutdown = threading.Event()
        # trust_env=False: only manifester.config reads the environment, and proxies from
        # the environment must not silently reroute a local rehearsal.
        self._client = httpx.Client(
            timeout=httpx.Timeout(download_timeout, connect=min(10.0, download_timeout)),
            follow_redirects=True,
            trust_env=False,
            limits=httpx.Limits(max_connections=self.download_workers * 2, max_keepalive_connections=self.download_workers),
        )
        self._pool = _DaemonPool(self.download_workers, "theos-download")

    # -- public -----------------------------------------------------------------

    def start_upload(self, dataset_id: int, manifest_url: str) -> str:
        """Create an upload task and start it; raise :class:`UploadBusy` if one is running."""
        task_id = str(uuid.uuid4())
        ctl = _Control()
        with self.store.tx():
            running = self.store.active_upload(dataset_id)
            if running is not None:
                raise UploadBusy(running)
            self.store.create_task(task_id, "upload", dataset_id)
            with self._controls_lock:
                self._controls[task_id] = ctl
        self._spawn(task_id, lambda: self._run_upload(task_id, dataset_id, manifest_url, ctl))
        return task_id

    def stop_upload(self, dataset_id: int) -> str | None:
        """Revoke the dataset's running upload, if any; return its task id."""
        with self.store.tx():
            task_id = self.store.active_upload(dataset_id)
            if task_id is None:
                return None
            with self._controls_lock:
                ctl = self._controls.get(task_id)
            if ctl is not None:
                ctl.stop.set()
                result = (
                    f"Upload stopped by upload/stop/: {ctl.created} images imported before the stop stay in the dataset."
                )
                self.store.update_task(task_id, state="REVOKED", current=ctl.current, result=result)
            else:
                self.store.update_task(task_id, state="REVOKED", result="Upload stopped by upload/stop/.")
        return task_id

    def start_class_task(self, kind: str, dataset_id: int, work: Callable[[Callable[[int, int], None]], Any]) -> str:
        """Run ``work(progress)`` as a task (class delete / merge); its return value is the result."""
        task_id = str(uuid.uuid4())
        ctl = _Control()
        with self.store.tx():
            self.store.create_task(task_id, kind, dataset_id)
            with self._controls_lock:
                self._controls[task_id] = ctl
        self._spawn(task_id, lambda: self._run_class_task(task_id, ctl, work))
        return task_id

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The task object, with live progress for a task running in this process."""
        row = self.store.get_task(task_id)
        if row is None:
            return None
        current, total = row["current"], row["total"]
        if row["state"] in ACTIVE_STATES:
            with self._controls_lock:
                ctl = self._controls.get(task_id)
            if ctl is not None:
                current, total = ctl.current, ctl.total
        return task_object(row["state"], current, total, row["result"])

    def shutdown(self) -> None:
        """Stop every task without recording anything; the next boot marks them FAILURE."""
        self._shutdown.set()
        with self._controls_lock:
            for ctl in self._controls.values():
                ctl.stop.set()
        self._pool.shutdown()
        self._client.close()

    # -- running ----------------------------------------------------------------

    def _spawn(self, task_id: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except StoreClosed:
                pass  # the server is stopping; the next boot records the task as interrupted
            except Exception:
                _log.exception("task %s crashed", task_id)
                try:
                    self._finish(task_id, None, "FAILURE", "internal error in the local Theos server; see its log")
                except StoreClosed:
                    pass
            finally:
                with self._controls_lock:
                    self._controls.pop(task_id, None)

        threading.Thread(target=run, name=f"theos-task-{task_id[:8]}", daemon=True).start()

    def _transition(self, task_id: str, ctl: _Control | None, **changes: Any) -> bool:
        """Record a change unless the task was stopped (then the stop's record stands)."""
        with self.store.tx():
            if self._shutdown.is_set() or (ctl is not None and ctl.stopped()):
                return False
            self.store.update_task(task_id, **changes)
            return True

    def _finish(self, task_id: str, ctl: _Control | None, state: str, result: Any) -> bool:
        changes: dict[str, Any] = {"state": state, "result": result}
        if ctl is not None:
            changes.update(current=ctl.current, total=ctl.total)
        return self._transition(task_id, ctl, **changes)

    def _run_class_task(self, task_id: str, ctl: _Control, work: Callable[[Callable[[int, int], None]], Any]) -> None:
        if not self._transition(task_id, ctl, state="STARTED"):
            return

        def progress(current: int, total: int) -> None:
            ctl.current, ctl.total = current, total

        try:
            result = work(progress)
        except LookupError as exc:
            self._finish(task_id, ctl, "FAILURE", str(exc).strip("'\""))
            return
        ctl.current = ctl.total
        self._finish(task_id, ctl, "SUCCESS", result)

    def _run_upload(self, task_id: str, dataset_id: int, manifest_url: str, ctl: _Control) -> None:
        if not self._transition(task_id, ctl, state="STARTED"):
            return
        try:
            data = fetch(
                self._client,
                manifest_url,
                max_bytes=MANIFEST_MAX_BYTES,
                deadline_seconds=max(60.0, self.download_timeout * 10),
                should_stop=ctl.stopped,
                what="manifest",
            )
            entries = parse_manifest(data)
        except FetchError as exc:
            self._finish(task_id, ctl, "FAILURE", f"could not download the manifest: {exc}; nothing was imported")
            return
        except ManifestProblem as exc:
            self._finish(task_id, ctl, "FAILURE", str(exc))
            return
        del data

        existing = self.store.external_ids(dataset_id)
        seen: set[str] = set()
        jobs: list[dict[str, Any]] = []
        for entry in entries:
            external_id = entry.get("external_id")
            if external_id is not None:
                # The first occurrence in the manifest wins; later ones are duplicates.
                if external_id in existing or external_id in seen:
                    ctl.duplicates += 1
                    continue
                seen.add(external_id)
            jobs.append(entry)
        ctl.total, ctl.current = len(entries), ctl.duplicates
        if not self._transition(task_id, ctl, state="PROGRESS", current=ctl.current, total=ctl.total):
            return

        # At most `slots` imports are queued or running; no future is kept once done, so
        # memory does not grow with the manifest (a list of 100k futures costs ~200 MB).
        slots = self.download_workers * 2
        window = threading.BoundedSemaphore(slots)
        crashed: list[BaseException] = []

        def done(future: Future[Any]) -> None:
            error = future.exception()
            if error is not None:
                crashed.append(error)
            window.release()

        def take_slot() -> bool:
            while not window.acquire(timeout=0.2):
                if ctl.stopped():
                    return False
            return not ctl.stopped()

        for entry in jobs:
            if crashed:
                break
            if not take_slot():
                return  # REVOKED (or shutting down) was recorded by whoever stopped us
            self._pool.submit(partial(self._import_one, dataset_id, task_id, entry, ctl)).add_done_callback(done)
        for _ in range(slots):  # holding every slot means every import has finished
            if not take_slot():
                return
        if crashed:
            raise crashed[0]  # _spawn records FAILURE and logs it
        result = {"created": ctl.created, "duplicates": ctl.duplicates, "failed": ctl.failed}
        self._finish(task_id, ctl, "SUCCESS", result)

    def _import_one(self, dataset_id: int, task_id: str, entry: dict[str, Any], ctl: _Control) -> None:
        url, external_id, split = entry["url"], entry.get("external_id"), entry["split"]
        try:
            data = fetch(
                self._client,
                url,
                max_bytes=MAX_IMAGE_BYTES,
                deadline_seconds=max(60.0, self.download_timeout * 4),
                should_stop=ctl.stopped,
                what="image",
            )
            image = process_image(data)
        except (FetchError, ImageError) as exc:
            if ctl.stopped():
                return
            with ctl.lock:
                ctl.failed.append({"url": url, "external_id": external_id, "error": str(exc)})
                ctl.current += 1
            return
        if ctl.stopped():
            return
        names = self.media.save(data, image)
        with self.store.tx():
            if ctl.stopped():
                example_id = -1
            else:
                example_id = self.store.insert_example(
                    dataset_id, split, external_id, names[0], names[1], image.width, image.height
                ) or 0
            if example_id > 0:
                with ctl.lock:
                    ctl.created += 1
                    ctl.current += 1
                now = time.monotonic()
                if now - ctl.flushed_at > _PROGRESS_FLUSH_SECONDS:
                    ctl.flushed_at = now
                    self.store.update_task(task_id, current=ctl.current)
        if example_id <= 0:
            self.media.delete(list(names))
            if example_id == 0:  # a duplicate that raced past the first check
                with ctl.lock:
                    ctl.duplicates += 1
                    ctl.current += 1
