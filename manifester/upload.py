"""The one-at-a-time task driver: send one manifest, record its task id, follow the task.

Theos runs one upload per dataset at a time. :func:`submit` sends a manifest URL and
treats 409 (another upload is running) as "wait and try again" with capped backoff,
never as a failure. The task id is handed to ``on_task_id`` (the ledger records it)
as the very first thing after the response, so a later crash resumes by following
that task instead of sending the manifest again.

The one window no client can close is a crash after the server accepted the
manifest but before ``on_task_id`` committed. The pipeline marks the shard
``sending`` before the request; on resume such a shard is reconciled against the
dataset by external id (see :func:`manifester.pipeline.migrate`), and Theos itself
counts a re-sent external id as a duplicate, never as a second example.

:func:`follow` polls the task (``client.wait_task``) with a tqdm bar fed by
``progress.current/total`` and turns the result into a :class:`TaskOutcome`. Its polls
are timed for the task's estimated end (from the observed rate, never closer than
``min_interval``), so the next shard goes out within a fraction of a second of the
previous one's end rather than up to a whole poll interval later. It reads the
per-image failures tolerantly; FAILURE or REVOKED raise
:class:`~manifester.errors.TaskFailedError`, which is resumable (the shard's objects
go back to the queue).

    >>> task_id = submit(client, "42", manifest_url, on_task_id=print)   # doctest: +SKIP
    >>> outcome = follow(client, task_id, progress=True)                  # doctest: +SKIP
    >>> outcome.created, [f.external_id for f in outcome.failures]        # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import BusyError, TaskFailedError, TransientError
from .theos import redact_urls

__all__ = [
    "ImageFailure",
    "TaskOutcome",
    "follow",
    "parse_result",
    "redact",
    "submit",
]

# one redaction rule for the whole package: the API client's (re-exported here for the pipeline)
redact = redact_urls


class _Client(Protocol):  # the part of TheosClient this module uses
    def upload(self, dataset_id: str, manifest_url: str) -> str: ...

    def wait_task(self, task_id: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class ImageFailure:
    """One image the server could not import. ``url_path`` has no query string (no signature)."""

    external_id: str | None
    url_path: str | None
    error: str


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What a finished upload task reported (counts are None when the server did not say)."""

    task_id: str
    state: str
    created: int | None
    duplicates: int | None
    failures: tuple[ImageFailure, ...]

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest for the ledger (no URLs with signatures)."""
        return {
            "task_id": self.task_id,
            "state": self.state,
            "created": self.created,
            "duplicates": self.duplicates,
            "failed": len(self.failures),
        }


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, list):  # some servers list the ids instead of counting them
        return len(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def parse_result(result: Any) -> tuple[int | None, int | None, tuple[ImageFailure, ...]]:
    """Read (created, duplicates, failures) from a task result of any plausible shape.

    >>> parse_result({"created": 2, "duplicates": 0, "failed": [{"external_id": "a", "error": "404"}]})
    (2, 0, (ImageFailure(external_id='a', url_path=None, error='404'),))
    >>> parse_result("done")
    (None, None, ())
    """
    if not isinstance(result, dict):
        return None, None, ()
    created = _as_int(result.get("created", result.get("created_count")))
    duplicates = _as_int(result.get("duplicates", result.get("duplicated", result.get("skipped"))))
    raw_failed = result.get("failed", result.get("failures", result.get("errors")))
    failures: list[ImageFailure] = []
    if isinstance(raw_failed, list):
        for item in raw_failed:
            if isinstance(item, dict):
                ext = item.get("external_id")
                url = item.get("url")
                error = item.get("error", item.get("detail", item.get("reason", "failed")))
                failures.append(
                    ImageFailure(
                        external_id=str(ext) if ext is not None else None,
                        url_path=str(url).split("?", 1)[0] if url else None,
                        error=redact(str(error))[:500],
                    )
                )
            elif isinstance(item, str):  # a bare URL or external id
                failures.append(ImageFailure(external_id=None, url_path=item.split("?", 1)[0], error="failed"))
    return created, duplicates, tuple(failures)


def submit(
    client: _Client,
    dataset_id: str,
    manifest_url: str,
    *,
    on_task_id: Callable[[str], None],
    busy_timeout: float | None = 6 * 3600,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_wait: Callable[[float], None] | None = None,
) -> str:
    """Send one manifest; wait (capped backoff with jitter) while the dataset is busy.

    ``on_task_id`` runs before anything else once the server answered: it is where
    the ledger records the task id. Returns the task id.

    >>> submit(client, "42", url, on_task_id=lambda t: ledger.mark_uploading(7, t))  # doctest: +SKIP
    """
    start = clock()
    delay = 2.0
    while True:
        try:
            task_id = client.upload(dataset_id, manifest_url)
        except BusyError:
            waited = clock() - start
            if busy_timeout is not None and waited >= busy_timeout:
                raise TransientError(
                    f"dataset {dataset_id} stayed busy with another upload for {int(waited)} s",
                    status=409,
                    hint="let the running upload finish (manifester tasks wait TASK_ID), then run again",
                ) from None
            if on_wait is not None:
                on_wait(delay)
            sleep(delay * random.uniform(0.8, 1.2))  # jitter, not crypto
            delay = min(delay * 2, 60.0)
            continue
        on_task_id(str(task_id))
        return str(task_id)


def follow(
    client: _Client,
    task_id: str,
    *,
    progress: bool = True,
    description: str = "upload",
    poll_interval: float = 1.0,
    max_interval: float = 15.0,
    timeout: float | None = None,
    min_interval: float | None = 0.25,
) -> TaskOutcome:
    """Follow a task to its end with a progress bar; raise TaskFailedError on FAILURE/REVOKED.

    Polling starts at ``min_interval`` and backs off (by half per poll without
    progress) up to ``max_interval``; while ``progress.current/total`` moves, it is
    timed for the estimated end, never closer than ``min_interval`` (``None``: the
    plain backoff from ``poll_interval``; see ``TheosClient.wait_task``).

    >>> outcome = follow(client, "c0ffee", progress=False)   # doctest: +SKIP
    """
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=0, desc=description, unit="img", leave=True, dynamic_ncols=True)

    def on_progress(task: Any) -> None:
        if bar is None:
            return
        total = getattr(task, "total", None)
        current = getattr(task, "current", None)
        if isinstance(total, int) and total > 0 and bar.total != total:
            bar.total = total
        if isinstance(current, int) and current >= bar.n:
            bar.update(current - bar.n)

    # only passed when set, so that clients written against the older wait_task keep working
    extra: dict[str, Any] = {} if min_interval is None else {"min_interval": min_interval}
    try:
        task = client.wait_task(
            task_id, poll_interval=poll_interval, max_interval=max_interval, timeout=timeout, on_progress=on_progress,
            **extra,
        )
    finally:
        if bar is not None:
            bar.close()
    state = str(getattr(task, "state", "") or "").upper()
    succeeded = getattr(task, "succeeded", None)
    if succeeded is None:
        succeeded = state == "SUCCESS"
    if not succeeded:
        detail = redact(str(getattr(task, "result", "") or "no detail"))[:300]
        raise TaskFailedError(
            f"upload task {task_id} ended {state or 'unsuccessfully'}: {detail}",
            task_id=task_id,
            state=state or "FAILURE",
            hint="its images were put back in the queue; run the same command again to resend them",
        )
    created, duplicates, failures = parse_result(getattr(task, "result", None))
    return TaskOutcome(task_id=task_id, state=state, created=created, duplicates=duplicates, failures=failures)
