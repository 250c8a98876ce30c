"""A typed client for every call of the Theos Datasets API.

The API is documented only as a page of ``curl`` examples (see
``api-contract.md``); this module turns each example into one method that returns
a frozen dataclass, and every failure into the error tree of
:mod:`manifester.errors`::

    from manifester.theos import TheosClient

    with TheosClient() as theos:                 # THEOS_PROJECT_KEY / THEOS_API_TOKEN
        ds = theos.find_dataset("Vehicles") or theos.create_dataset("Vehicles")
        task_id = theos.upload(ds.id, "https://bucket.example/manifest-0001.json")
        task = theos.wait_task(task_id, on_progress=lambda t: print(t.percent))
        print(task.state, task.result)

Requests are sent the way ``curl -F`` sends them (``multipart/form-data``), with
``Authorization: Token <api_token>``, every path ending with ``/``, and a timeout on
every request.

Retries. Rate limits (429), server errors (5xx), timeouts, dropped connections and
truncated or non-JSON bodies are retried with capped exponential backoff and full
jitter, honouring ``Retry-After`` (seconds or an HTTP date), up to ``max_retries``
times; then :class:`~manifester.errors.TransientError` is raised.

Non-idempotent calls are different: repeating ``upload`` after the server may already
have received it could start a *second* upload task (and ``create_dataset``,
``create_class``, ``merge_classes`` and ``delete_classes`` could likewise act twice).
Those calls are retried only when the request provably was not processed: the
connection could not be opened, or the server answered 429, 408, or 503 with
``Retry-After``. When the outcome is unknown (a read timeout, a reset after the body
was sent, a 500/502/504, a 2xx whose body is unreadable), they raise
:class:`UncertainOutcomeError`, a :class:`~manifester.errors.TransientError`, so the
caller (``migrate``, with its ledger) can reconcile before trying again.

The API token never appears in messages, reprs or logs; URL query strings sent back
by the server (presigned signatures) are redacted from error messages.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from .config import TheosSettings, theos_settings
from .errors import (
    AuthError,
    BadRequestError,
    BusyError,
    ConfigError,
    NotFoundError,
    TheosError,
    TransientError,
    ValidationError,
)

__all__ = [
    "EXAMPLES_PER_PAGE",
    "TERMINAL_STATES",
    "Dataset",
    "DatasetClass",
    "Example",
    "ExamplesPage",
    "Task",
    "TheosClient",
    "UncertainOutcomeError",
    "redact_urls",
]

logger = logging.getLogger(__name__)

#: Task states after which nothing more will happen (celery's terminal states).
TERMINAL_STATES: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: Documented page size of "Get dataset examples".
EXAMPLES_PER_PAGE = 100
#: Longest wait we accept from a ``Retry-After`` header: a misconfigured proxy saying
#: "come back in a day" must not silently freeze a migration.
MAX_RETRY_AFTER = 300.0
_BACKOFF_BASE = 0.5


class UncertainOutcomeError(TransientError):
    """A non-idempotent request may or may not have been applied by the server.

    Raised instead of retrying ``upload`` (and the other non-idempotent calls) after a
    read timeout, a dropped connection once the request was sent, a 500/502/504, or an
    unreadable 2xx body. Check the dataset (or the ledger) before sending it again.
    """


# --------------------------------------------------------------------------- records


def _as_int(value: Any, default: int | None = None) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                return default
            return int(f) if f.is_integer() else default
    return default


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _as_bool(value: Any, default: bool | None = False) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in {"true", "1", "yes", "y", "t"}:
            return True
        if low in {"false", "0", "no", "n", "f", ""}:
            return False
    return default


def _as_str(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else _as_str(value)


def _require_object(data: Any, endpoint: str, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TheosError(
            f"unexpected answer from {endpoint}: expected {what} (a JSON object), got {type(data).__name__}",
            hint="check THEOS_API_URL points at the Theos API",
        )
    return data


@dataclass(frozen=True)
class DatasetClass:
    """A class of a dataset: ``id`` is its order index, ``db_id`` its database id.

    >>> DatasetClass.from_json({"id": 0, "db_id": 17, "name": "Car", "color": "#4AFFBA"}).db_id
    17
    """

    id: int
    db_id: int
    name: str = ""
    color: str = ""
    with_text: bool = False
    is_superclass: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any, endpoint: str = "the API") -> DatasetClass:
        """Parse one class object tolerantly; the whole object is kept in ``raw``."""
        obj = _require_object(data, endpoint, "a class")
        db_id = _as_int(obj.get("db_id"), None)
        if db_id is None:
            db_id = _as_int(obj.get("pk"), None)
        if db_id is None:
            raise TheosError(f"unexpected answer from {endpoint}: a class has no usable 'db_id'")
        index = _as_int(obj.get("id"), None)
        return cls(
            id=index if index is not None else -1,
            db_id=db_id,
            name=_as_str(obj.get("name")),
            color=_as_str(obj.get("color")),
            with_text=bool(_as_bool(obj.get("with_text"))),
            is_superclass=bool(_as_bool(obj.get("is_superclass"))),
            raw=dict(obj),
        )


@dataclass(frozen=True)
class Dataset:
    """A dataset: ``counts`` maps split to number of examples.

    >>> Dataset.from_json({"id": 42, "name": "Cats", "counts": {"train": 3}}).counts["train"]
    3
    """

    id: str
    name: str = ""
    created: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    classes: list[DatasetClass] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def total(self) -> int:
        """Number of examples over all splits."""
        return sum(self.counts.values())

    @classmethod
    def from_json(cls, data: Any, endpoint: str = "the API") -> Dataset:
        """Parse one dataset object tolerantly; the whole object is kept in ``raw``."""
        obj = _require_object(data, endpoint, "a dataset")
        if obj.get("id") is None:
            raise TheosError(f"unexpected answer from {endpoint}: a dataset has no 'id'")
        counts: dict[str, int] = {}
        raw_counts = obj.get("counts")
        if isinstance(raw_counts, dict):
            for split, n in raw_counts.items():
                value = _as_int(n, None)
                if value is not None:
                    counts[str(split)] = value
        raw_classes = obj.get("classes")
        classes = (
            [DatasetClass.from_json(c, endpoint) for c in raw_classes if isinstance(c, dict)]
            if isinstance(raw_classes, list)
            else []
        )
        return cls(
            id=_as_str(obj["id"]),
            name=_as_str(obj.get("name")),
            created=_opt_str(obj.get("created")),
            counts=counts,
            classes=classes,
            raw=dict(obj),
        )


@dataclass(frozen=True)
class Example:
    """An image of a dataset plus its labels (possibly none yet).

    >>> Example.from_json({"id": 7, "external_id": "a/b.jpg", "split": "valid"}).external_id
    'a/b.jpg'
    """

    id: str
    external_id: str | None = None
    split: str | None = None
    image: str | None = None
    thumbnail: str | None = None
    width: int | None = None
    height: int | None = None
    labels: list[Any] = field(default_factory=list)
    labeled: bool = False
    skipped: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any, endpoint: str = "the API") -> Example:
        """Parse one example object tolerantly; the whole object is kept in ``raw``."""
        obj = _require_object(data, endpoint, "an example")
        if obj.get("id") is None:
            raise TheosError(f"unexpected answer from {endpoint}: an example has no 'id'")
        labels = obj.get("labels")
        if isinstance(labels, str):
            # Some APIs return labels as the JSON text they were set with.
            try:
                labels = json.loads(labels)
            except ValueError:
                labels = []
        return cls(
            id=_as_str(obj["id"]),
            external_id=_opt_str(obj.get("external_id")),
            split=_opt_str(obj.get("split")),
            image=_opt_str(obj.get("image")),
            thumbnail=_opt_str(obj.get("thumbnail")),
            width=_as_int(obj.get("width"), None),
            height=_as_int(obj.get("height"), None),
            labels=list(labels) if isinstance(labels, list) else [],
            labeled=bool(_as_bool(obj.get("labeled"))),
            skipped=bool(_as_bool(obj.get("skipped"))),
            raw=dict(obj),
        )


@dataclass(frozen=True)
class ExamplesPage:
    """One page (up to 100) of a split's examples; ``page_count`` pages in all."""

    page: int
    page_count: int
    count: int | None
    examples: list[Example]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any, endpoint: str = "the API", *, page: int = 1) -> ExamplesPage:
        """Parse an examples page; a bare JSON list of examples is accepted too."""
        if isinstance(data, list):
            data = {"examples": data}
        obj = _require_object(data, endpoint, "an examples page")
        items = obj.get("examples", obj.get("results"))
        if items is None:
            items = []
        if not isinstance(items, list):
            raise TheosError(f"unexpected answer from {endpoint}: 'examples' is not a list")
        examples = [Example.from_json(e, endpoint) for e in items]
        page_no = _as_int(obj.get("page"), page) or page
        count = _as_int(obj.get("count"), None)
        page_count = _as_int(obj.get("page_count"), None)
        if page_count is None:
            page_count = -(-count // EXAMPLES_PER_PAGE) if count is not None else page_no
        return cls(page=page_no, page_count=page_count, count=count, examples=examples, raw=dict(obj))


@dataclass(frozen=True)
class Task:
    """A server-side task (upload, class deletion or merge), celery-progress style.

    >>> t = Task.from_json("t1", {"state": "SUCCESS", "complete": True, "result": {"created": 3}})
    >>> t.terminal, t.succeeded
    (True, True)
    """

    task_id: str
    state: str = "PENDING"
    complete: bool = False
    success: bool | None = None
    current: int | None = None
    total: int | None = None
    percent: float | None = None
    result: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """True once the task has ended, in any way."""
        return self.complete or self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """True when the task ended successfully."""
        if self.state in {"FAILURE", "REVOKED"}:
            return False
        if self.state == "SUCCESS":
            return self.success is not False
        return self.complete and self.success is True

    @classmethod
    def from_json(cls, task_id: str, data: Any, endpoint: str = "the API") -> Task:
        """Parse a task object; missing fields default, ``progress`` is flattened."""
        obj = _require_object(data, endpoint, "a task")
        if not {"state", "status", "complete", "progress"} & obj.keys():
            # read as PENDING, such an answer would be polled forever (a wrong URL or proxy, not a task)
            raise TheosError(
                f"unexpected answer from {endpoint}: task {task_id} has no state (got keys {sorted(obj)[:8]})",
                hint="check THEOS_API_URL points at the Theos API",
            )
        state = _as_str(obj.get("state") or obj.get("status"), "PENDING").upper()
        progress = obj.get("progress")
        progress = progress if isinstance(progress, dict) else {}
        current = _as_int(progress.get("current"), None)
        total = _as_int(progress.get("total"), None)
        percent = _as_float(progress.get("percent"))
        if percent is None and current is not None and total:
            percent = 100.0 * current / total
        success = obj.get("success")
        return cls(
            task_id=_as_str(obj.get("task_id") or obj.get("id") or task_id),
            state=state,
            complete=bool(_as_bool(obj.get("complete"))),
            success=None if success is None else _as_bool(success, None),
            current=current,
            total=total,
            percent=percent,
            result=obj.get("result"),
            raw=dict(obj),
        )


# --------------------------------------------------------------------------- helpers

_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)\?[^\s\"'<>]*")


def redact_urls(text: str) -> str:
    """Drop the query string of every URL in ``text`` (presigned URLs carry their signature there).

    >>> redact_urls("cannot fetch https://b.example/m.json?X-Amz-Signature=abc (HTTP 403)")
    'cannot fetch https://b.example/m.json?<redacted> (HTTP 403)'
    """
    return _URL_QUERY.sub(r"\1?<redacted>", text)


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or HTTP-date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Measure against the server's own Date header when present, so a skewed local
    # clock does not turn "in 10 s" into "now" or "in an hour".
    now: datetime | None = None
    date_header = response.headers.get("date")
    if date_header:
        try:
            now = email.utils.parsedate_to_datetime(date_header)
            if now.tzinfo is None:
                now = now.replace(tzinfo=UTC)
        except (TypeError, ValueError, IndexError):
            now = None
    if now is None:
        now = datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


_NO_BODY: Any = object()  # sentinel: a 2xx whose body could not be read as JSON


class _Retry(Exception):
    """Internal: this attempt failed in a way a later attempt may fix."""

    def __init__(self, reason: str, *, status: int | None = None, delay: float | None = None, provably_unprocessed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.delay = delay
        self.provably_unprocessed = provably_unprocessed


# --------------------------------------------------------------------------- client


class TheosClient:
    """Client for the Theos Datasets API; one method per documented call.

    Settings come from ``settings`` or :func:`manifester.config.theos_settings`
    (explicit argument > ``THEOS_*`` environment > config file > default); the
    explicit ``api_url``/``project_key``/``api_token`` arguments override them::

        with TheosClient(api_url="http://127.0.0.1:8000", project_key="demo") as theos:
            for ds in theos.list_datasets():
                print(ds.id, ds.name, ds.counts)

    ``transport``, ``sleep``, ``clock`` and ``rng`` exist for tests (and for callers
    that want their own HTTP transport).
    """

    def __init__(
        self,
        settings: TheosSettings | None = None,
        *,
        api_url: str | None = None,
        project_key: str | None = None,
        api_token: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 6,
        backoff_cap: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if settings is None:
            settings = theos_settings(api_url=api_url, project_key=project_key, api_token=api_token)
        else:
            settings = dataclasses.replace(
                settings,
                api_url=(api_url.rstrip("/") if api_url else settings.api_url),
                project_key=project_key or settings.project_key,
                api_token=api_token or settings.api_token,
            )
        if not settings.project_key:
            raise ConfigError(
                "no Theos project key configured",
                hint="set THEOS_PROJECT_KEY, pass --project-key, or put project_key in the [theos] table of the config file",
            )
        token = (settings.api_token or "").strip()
        if token.lower().startswith("token "):
            token = token[6:].strip()  # a pasted "Token abc" header value
        if not token:
            raise ConfigError(
                "no Theos API token configured",
                hint="set THEOS_API_TOKEN or put api_token in the [theos] table of the config file "
                "(never on the command line)",
            )
        if not all(33 <= ord(ch) < 127 for ch in token):
            # Checked here so httpx never formats the token into an encoding error.
            raise ConfigError(
                "the Theos API token contains spaces or characters that cannot be sent in an HTTP header",
                hint="copy the token again from the project settings into THEOS_API_TOKEN",
            )
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {max_retries}")
        self.settings = dataclasses.replace(settings, api_token=token)
        self.api_url = settings.api_url.rstrip("/")
        self.project_key = settings.project_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_cap = backoff_cap
        self._token = token
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._http = httpx.Client(
            base_url=self.api_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={
                "Authorization": f"Token {token}",
                "Accept": "application/json",
                "User-Agent": "manifester (+https://github.com/theos-ai)",
            },
        )
        self._prefix = f"/v1/project/{quote(self.project_key, safe='')}/datasets/"

    # -- lifecycle -------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"TheosClient(api_url={self.api_url!r}, project_key={self.project_key!r}, api_token=<hidden>)"

    def close(self) -> None:
        """Close the underlying HTTP connections."""
        self._http.close()

    def __enter__(self) -> TheosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- datasets --------------------------------------------------------------------

    def create_dataset(self, name: str) -> Dataset:
        """Create a dataset and return it.

        >>> ds = theos.create_dataset("Vehicles")  # doctest: +SKIP
        """
        if not name or not name.strip():
            raise ConfigError("a dataset needs a non-empty name")
        path = self._prefix + "create/"
        data = self._call(
            "POST", path, what=f"create dataset {name!r}", fields=[("name", name)], idempotent=False,
            uncertain_hint=f"check with `manifester datasets list` whether {name!r} exists before creating it again",
        )
        if isinstance(data, dict) and data.get("id") is not None:
            return Dataset.from_json(data, self._endpoint("POST", path))
        # The creation happened but the answer does not describe it: look it up.
        found = self.find_dataset(name)
        if found is None:
            raise TheosError(
                f"unexpected answer from {self._endpoint('POST', path)}: no dataset id, and no dataset named {name!r} found",
                hint="check THEOS_API_URL points at the Theos API",
            )
        return found

    def list_datasets(self) -> list[Dataset]:
        """All datasets of the project.

        >>> [d.name for d in theos.list_datasets()]  # doctest: +SKIP
        ['Vehicles', 'Cats']
        """
        path = self._prefix
        data = self._call("GET", path, what="list datasets", not_found=f"project key {self.project_key!r} not found")
        endpoint = self._endpoint("GET", path)
        if isinstance(data, dict):
            for key in ("datasets", "results"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
        if not isinstance(data, list):
            raise TheosError(
                f"unexpected answer from {endpoint}: expected a JSON list of datasets",
                hint="check THEOS_API_URL points at the Theos API",
            )
        return [Dataset.from_json(item, endpoint) for item in data]

    def get_dataset(self, dataset_id: str | int) -> Dataset:
        """One dataset with its counts per split and its classes.

        >>> theos.get_dataset(42).counts  # doctest: +SKIP
        {'train': 800, 'valid': 100, 'test': 100}
        """
        path = self._dataset_path(dataset_id)
        data = self._call("GET", path, what=f"get dataset {dataset_id}", not_found=self._no_dataset(dataset_id))
        return Dataset.from_json(data, self._endpoint("GET", path))

    def find_dataset(self, name: str) -> Dataset | None:
        """The dataset with exactly this name, or None; several with that name is an error.

        >>> ds = theos.find_dataset("Vehicles") or theos.create_dataset("Vehicles")  # doctest: +SKIP
        """
        matches = [d for d in self.list_datasets() if d.name == name]
        if len(matches) > 1:
            ids = ", ".join(d.id for d in matches)
            raise ConfigError(
                f"{len(matches)} datasets are named {name!r} (ids {ids})",
                hint="choose one by id (--dataset-id)",
            )
        return matches[0] if matches else None

    def delete_dataset(self, dataset_id: str | int) -> None:
        """Delete a dataset and all its examples.

        >>> theos.delete_dataset(42)  # doctest: +SKIP
        """
        path = self._dataset_path(dataset_id) + "delete/"
        # Idempotent in effect: if a first attempt was applied before its answer was
        # lost, the retry's 404 means "already deleted", which is what was asked.
        self._call(
            "POST", path, what=f"delete dataset {dataset_id}", idempotent=True, want_json=False,
            not_found=self._no_dataset(dataset_id), missing_ok_on_retry=True,
        )

    # -- upload and tasks ------------------------------------------------------------

    def upload(self, dataset_id: str | int, manifest_url: str) -> str:
        """Start uploading the images listed in a manifest; returns the task id.

        Not idempotent: see :class:`UncertainOutcomeError`. A dataset that already has
        an upload running answers 409, raised as :class:`~manifester.errors.BusyError`.

        >>> task_id = theos.upload(42, "https://bucket.example/m-0001.json?X-Amz-Signature=...")  # doctest: +SKIP
        """
        if not manifest_url.startswith(("http://", "https://")):
            raise ConfigError("the manifest URL must be an http(s) URL the Theos server can download")
        path = self._dataset_path(dataset_id) + "upload/"
        endpoint = self._endpoint("POST", path)
        data = self._call(
            "POST", path, what=f"upload to dataset {dataset_id}", fields=[("manifest_url", manifest_url)],
            idempotent=False, not_found=self._no_dataset(dataset_id),
            uncertain_hint="the upload task may have started; check the dataset (or let `manifester migrate` "
            "reconcile it from its ledger) before sending this manifest again",
        )
        task_id = None
        if isinstance(data, dict):
            task_id = data.get("task_id") or data.get("id") or data.get("task")
        elif isinstance(data, str) and data.strip():
            task_id = data.strip()
        if not task_id or not isinstance(task_id, (str, int)):
            raise UncertainOutcomeError(
                f"upload to dataset {dataset_id}: {endpoint} answered without a task_id",
                hint="the upload may have started; check the dataset before sending this manifest again",
            )
        return str(task_id)

    def get_task(self, task_id: str) -> Task:
        """The current state and progress of a task.

        >>> theos.get_task("5f1c...").percent  # doctest: +SKIP
        37.5
        """
        if not str(task_id).strip():
            raise ConfigError("a task id must not be empty")
        path = f"/v1/tasks/{quote(str(task_id), safe='')}/"
        data = self._call(
            "GET", path, what=f"get task {task_id}", not_found=f"task {task_id} not found",
            not_found_hint="check the task id (it is printed when an upload, class deletion or merge starts)",
        )
        return Task.from_json(str(task_id), data, self._endpoint("GET", path))

    def wait_task(
        self,
        task_id: str,
        *,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        timeout: float | None = None,
        on_progress: Callable[[Task], None] | None = None,
        min_interval: float | None = None,
    ) -> Task:
        """Poll a task until it ends and return its last state (FAILURE is returned, not raised).

        The interval starts at ``poll_interval`` and grows by half each poll without
        progress, up to ``max_interval``; progress resets it. ``on_progress`` is called
        with every polled task. Raises TransientError if ``timeout`` seconds pass first.

        With ``min_interval`` (``manifester.upload.follow`` passes 0.25 s) the polls
        also follow the task, so that its end is seen soon after it happens: the
        no-progress backoff starts at ``min_interval`` instead (a short task is seen
        done within a fraction of a second), and once ``progress.current/total`` moves,
        the end is estimated from the observed rate and the next poll is timed for it.
        Polls are never closer than ``min_interval``; if the estimated end passes with
        the task still running, the spacing grows by half again; and it is never longer
        than the plain backoff would make it (at most ``max_interval``).

        >>> task = theos.wait_task(task_id, on_progress=lambda t: print(t.current, t.total))  # doctest: +SKIP
        >>> task.succeeded  # doctest: +SKIP
        True
        """
        start = self._clock()
        base = max(poll_interval, 0.0)
        # the closest two polls may be (None: the plain backoff, as in earlier versions)
        floor = None if min_interval is None else min(max(min_interval, 0.0), base)
        interval = base if floor is None else floor
        last_seen: tuple[Any, ...] | None = None
        samples: list[tuple[float, int]] = []  # (time, progress.current) of the last few polls
        overdue = 0  # consecutive polls made when the estimate said the task should have ended
        while True:
            task = self.get_task(task_id)
            now = self._clock()
            if on_progress is not None:
                on_progress(task)
            if task.terminal:
                return task
            seen = (task.state, task.current, task.total)
            if last_seen is not None and seen != last_seen:
                # progress resets the backoff; with min_interval, not upwards: a task that
                # moves within its first second keeps the quick first steps until its
                # rate is known (else a 1-2 s task would be seen done a whole second late)
                interval = base if floor is None else min(base, interval)
            last_seen = seen
            delay = interval
            if floor is not None:
                eta: float | None = None
                moved = False
                if isinstance(task.current, int) and isinstance(task.total, int) and task.total > 0:
                    moved = bool(samples) and task.current != samples[-1][1]
                    samples = [*samples[-5:], (now, task.current)]
                    (t0, c0), (t1, c1) = samples[0], samples[-1]
                    if c1 > c0 and t1 > t0:  # moving: remaining work at the rate seen over the window
                        eta = max(task.total - c1, 0) / ((c1 - c0) / (t1 - t0))
                if eta is None or moved:
                    overdue = 0  # still moving: the next estimate is fresh, poll for it
                if eta is not None:
                    delay = min(delay, max(eta, floor * 1.5**overdue))
                    # the end is due by the next poll: if the task is then still running *without
                    # progress* (e.g. finalising at 100 %), space the polls out again
                    overdue = overdue + 1 if eta <= delay else 0
            if timeout is not None:
                remaining = timeout - (self._clock() - start)
                if remaining <= 0:
                    done = f" ({task.current}/{task.total})" if task.total else ""
                    raise TransientError(
                        f"task {task_id} is still {task.state}{done} after {timeout:g} s",
                        hint=f"it keeps running on the server; follow it with `manifester tasks wait {task_id}`",
                    )
                delay = min(delay, remaining)
            self._sleep(delay)
            interval = min(max(interval * 1.5, floor if floor is not None else base), max_interval)

    def stop_upload(self, dataset_id: str | int) -> None:
        """Stop the upload running on a dataset.

        >>> theos.stop_upload(42)  # doctest: +SKIP
        """
        path = self._dataset_path(dataset_id) + "upload/stop/"
        self._call(
            "POST", path, what=f"stop the upload of dataset {dataset_id}", idempotent=True, want_json=False,
            not_found=self._no_dataset(dataset_id),
        )

    # -- classes ---------------------------------------------------------------------

    def create_class(self, dataset_id: str | int, name: str, color: str, with_text: bool = False) -> DatasetClass:
        """Add a class to a dataset.

        >>> theos.create_class(42, "Car", "#4AFFBA").db_id  # doctest: +SKIP
        17
        """
        path = self._dataset_path(dataset_id) + "classes/create/"
        data = self._call(
            "POST", path, what=f"create class {name!r} in dataset {dataset_id}",
            fields=[("name", name), ("color", color), ("with_text", "true" if with_text else "false")],
            idempotent=False, not_found=self._no_dataset(dataset_id),
            uncertain_hint=f"check with `manifester datasets get {dataset_id}` whether the class exists before creating it again",
        )
        if isinstance(data, dict) and isinstance(data.get("class"), dict):
            data = data["class"]
        if isinstance(data, dict) and data.get("db_id") is not None:
            return DatasetClass.from_json(data, self._endpoint("POST", path))
        # Created, but the answer does not describe the class: read it back.
        for cls in reversed(self.get_dataset(dataset_id).classes):
            if cls.name == name:
                return cls
        raise TheosError(f"unexpected answer from {self._endpoint('POST', path)}: class {name!r} not found afterwards")

    def edit_class(
        self, dataset_id: str | int, db_id: int, *, name: str | None = None, color: str | None = None
    ) -> DatasetClass:
        """Rename and/or recolour a class.

        >>> theos.edit_class(42, 17, name="Ferrari").name  # doctest: +SKIP
        'Ferrari'
        """
        fields = [(k, v) for k, v in (("name", name), ("color", color)) if v is not None]
        if not fields:
            raise ConfigError("nothing to edit: give a new name and/or color")
        path = self._dataset_path(dataset_id) + f"classes/{quote(str(db_id), safe='')}/edit/"
        data = self._call(
            "POST", path, what=f"edit class {db_id} of dataset {dataset_id}", fields=fields, idempotent=True,
            not_found=f"class {db_id} of dataset {dataset_id} not found in project {self.project_key!r}",
            not_found_hint=f"list the classes and their db_id with `manifester datasets get {dataset_id}`",
        )
        if isinstance(data, dict) and isinstance(data.get("class"), dict):
            data = data["class"]
        if isinstance(data, dict) and data.get("db_id") is not None:
            return DatasetClass.from_json(data, self._endpoint("POST", path))
        for cls in self.get_dataset(dataset_id).classes:
            if cls.db_id == int(db_id):
                return cls
        raise TheosError(f"unexpected answer from {self._endpoint('POST', path)}: class {db_id} not found afterwards")

    def delete_classes(self, dataset_id: str | int, db_ids: Sequence[int]) -> str:
        """Start deleting classes (and their labels); returns the task id.

        >>> theos.wait_task(theos.delete_classes(42, [1, 4, 6])).succeeded  # doctest: +SKIP
        True
        """
        ids = self._db_ids(db_ids, minimum=1, what="delete")
        path = self._dataset_path(dataset_id) + "classes/delete/"
        data = self._call(
            "POST", path, what=f"delete classes {ids} of dataset {dataset_id}", fields=[("db_ids", json.dumps(ids))],
            idempotent=False, not_found=self._no_dataset(dataset_id),
            uncertain_hint=f"check with `manifester datasets get {dataset_id}` which classes remain before trying again",
        )
        return self._task_id(data, "POST", path)

    def merge_classes(self, dataset_id: str | int, db_ids: Sequence[int], name: str, color: str) -> str:
        """Start merging classes into a new one; returns the task id.

        >>> task_id = theos.merge_classes(42, [1, 4], "Truck", "#A8327F")  # doctest: +SKIP
        """
        ids = self._db_ids(db_ids, minimum=2, what="merge")
        path = self._dataset_path(dataset_id) + "classes/merge/"
        data = self._call(
            "POST", path, what=f"merge classes {ids} of dataset {dataset_id}",
            fields=[("db_ids", json.dumps(ids)), ("name", name), ("color", color)],
            idempotent=False, not_found=self._no_dataset(dataset_id),
            uncertain_hint=f"check with `manifester datasets get {dataset_id}` whether the merge happened before trying again",
        )
        return self._task_id(data, "POST", path)

    # -- examples --------------------------------------------------------------------

    def list_examples(self, dataset_id: str | int, split: str = "train", page: int = 1) -> ExamplesPage:
        """One page (up to 100) of a split's examples.

        >>> p = theos.list_examples(42, "valid"); p.page_count, len(p.examples)  # doctest: +SKIP
        (3, 100)
        """
        if page < 1:
            raise ConfigError(f"page must be 1 or more, got {page}")
        path = self._dataset_path(dataset_id) + "examples/"
        # The documented call is `curl -F split=.. -F page=..` without -X, i.e. a POST
        # with form fields; reading is safe to retry.
        data = self._call(
            "POST", path, what=f"list {split} examples of dataset {dataset_id} (page {page})",
            fields=[("split", split), ("page", str(page))], idempotent=True,
            not_found=f"dataset {dataset_id} (or page {page} of its {split} split) not found in project {self.project_key!r}",
        )
        return ExamplesPage.from_json(data, self._endpoint("POST", path), page=page)

    def iter_examples(self, dataset_id: str | int, split: str = "train") -> Iterator[Example]:
        """Every example of a split, page after page.

        >>> external_ids = {e.external_id for e in theos.iter_examples(42, "train")}  # doctest: +SKIP
        """
        page = 1
        while True:
            result = self.list_examples(dataset_id, split, page)
            yield from result.examples
            if not result.examples or page >= result.page_count:
                return
            page += 1

    def get_example(
        self, dataset_id: str | int, example_id: str | int | None = None, *, external_id: str | None = None
    ) -> Example:
        """One example, by internal id or by the external_id given in the manifest.

        >>> theos.get_example(42, external_id="cats/001.jpg").split  # doctest: +SKIP
        'train'
        """
        path, label = self._example_path(dataset_id, example_id, external_id)
        data = self._call("GET", path, what=f"get {label}", not_found=self._no_example(dataset_id, label))
        return Example.from_json(data, self._endpoint("GET", path))

    def set_labels(
        self,
        dataset_id: str | int,
        labels: list[dict[str, Any]],
        *,
        example_id: str | int | None = None,
        external_id: str | None = None,
    ) -> Example:
        """Replace the labels of an example (Theos JSON: a list of boxes).

        >>> theos.set_labels(42, [{"class_id": 0, "x": 10, "y": 20, "width": 50, "height": 40}],
        ...                  external_id="cats/001.jpg")  # doctest: +SKIP
        """
        if not isinstance(labels, list) or not all(isinstance(box, dict) for box in labels):
            raise ValidationError(
                "labels must be a JSON list of boxes (objects)",
                hint='e.g. [{"class_id": 0, "x": 10, "y": 20, "width": 50, "height": 40}]',
            )
        try:
            text = json.dumps(labels)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"labels cannot be written as JSON: {exc}") from exc
        path, label = self._example_path(dataset_id, example_id, external_id)
        path += "labels/set/"
        data = self._call(
            "POST", path, what=f"set the labels of {label}", fields=[("labels", text)], idempotent=True,
            not_found=self._no_example(dataset_id, label),
        )
        return self._example_or_reread(data, "POST", path, dataset_id, example_id, external_id)

    def skip_example(
        self, dataset_id: str | int, *, example_id: str | int | None = None, external_id: str | None = None
    ) -> Example:
        """Mark an example as labeled with nothing to label.

        >>> theos.skip_example(42, external_id="cats/001.jpg").skipped  # doctest: +SKIP
        True
        """
        path, label = self._example_path(dataset_id, example_id, external_id)
        path += "skip/"
        data = self._call(
            "POST", path, what=f"skip {label}", idempotent=True, not_found=self._no_example(dataset_id, label)
        )
        return self._example_or_reread(data, "POST", path, dataset_id, example_id, external_id)

    # -- internals -------------------------------------------------------------------

    def _dataset_path(self, dataset_id: str | int) -> str:
        if dataset_id is None or not str(dataset_id).strip():
            raise ConfigError("a dataset id must not be empty", hint="list datasets with `manifester datasets list`")
        return f"{self._prefix}{quote(str(dataset_id), safe='')}/"

    def _example_path(
        self, dataset_id: str | int, example_id: str | int | None, external_id: str | None
    ) -> tuple[str, str]:
        if (example_id is None) == (external_id is None):
            raise ConfigError(
                "give exactly one of an example id and an external id",
                hint="e.g. `manifester examples get 42 1234` or `manifester examples get 42 --external-id cats/001.jpg`",
            )
        base = self._dataset_path(dataset_id) + "examples/"
        if external_id is not None:
            if not external_id:
                raise ConfigError("an external id must not be empty")
            return f"{base}external/{quote(external_id, safe='')}/", f"example with external_id {external_id!r}"
        if not str(example_id).strip():
            raise ConfigError("an example id must not be empty")
        return f"{base}{quote(str(example_id), safe='')}/", f"example {example_id}"

    def _no_dataset(self, dataset_id: str | int) -> str:
        return f"dataset {dataset_id} not found in project {self.project_key!r}"

    def _no_example(self, dataset_id: str | int, label: str) -> str:
        return f"{label} not found in dataset {dataset_id} of project {self.project_key!r}"

    @staticmethod
    def _db_ids(db_ids: Sequence[int], *, minimum: int, what: str) -> list[int]:
        ids: list[int] = []
        for value in db_ids:
            number = _as_int(value, None)
            if number is None:
                raise ConfigError(f"class db_id {value!r} is not an integer", hint="see `manifester datasets get ID`")
            ids.append(number)
        if len(ids) < minimum:
            raise ConfigError(f"{what} needs at least {minimum} class db_id(s), got {len(ids)}")
        return ids

    def _task_id(self, data: Any, method: str, path: str) -> str:
        task_id = data.get("task_id") or data.get("id") if isinstance(data, dict) else None
        if not task_id or not isinstance(task_id, (str, int)):
            raise UncertainOutcomeError(
                f"{self._endpoint(method, path)} answered without a task_id",
                hint="the task may have started; check the dataset before trying again",
            )
        return str(task_id)

    def _example_or_reread(
        self, data: Any, method: str, path: str, dataset_id: str | int,
        example_id: str | int | None, external_id: str | None,
    ) -> Example:
        if isinstance(data, dict) and isinstance(data.get("example"), dict):
            data = data["example"]
        if isinstance(data, dict) and data.get("id") is not None:
            return Example.from_json(data, self._endpoint(method, path))
        # The change was applied but the answer is not the example: read it back.
        return self.get_example(dataset_id, example_id, external_id=external_id)

    def _endpoint(self, method: str, path: str) -> str:
        return f"{method} {path}"

    def _scrub(self, text: str) -> str:
        """Server text made safe for messages: no token, no URL query strings (signatures)."""
        text = text.replace(self._token, "<token>") if self._token else text
        return redact_urls(text)

    def _backoff(self, attempt: int) -> float:
        # Full jitter (uniform in [0, capped exponential]) spreads many clients'
        # retries apart instead of having them hit the server in lockstep.
        ceiling = min(self.backoff_cap, _BACKOFF_BASE * (2**attempt))
        return self._rng.uniform(0.0, ceiling)

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        fields: list[tuple[str, str]] | None = None,
        idempotent: bool = True,
        want_json: bool = True,
        not_found: str | None = None,
        not_found_hint: str | None = None,
        missing_ok_on_retry: bool = False,
        uncertain_hint: str | None = None,
    ) -> Any:
        """Send one API request with retries; return the parsed JSON body.

        Returns None when ``want_json`` is false, and ``_NO_BODY`` when a
        non-idempotent call succeeded with an unreadable body.
        """
        endpoint = self._endpoint(method, path)
        attempt = 0
        maybe_applied = False  # an earlier attempt may have reached the server
        while True:
            try:
                return self._attempt(
                    method, path, endpoint=endpoint, what=what, fields=fields, idempotent=idempotent,
                    want_json=want_json, not_found=not_found, not_found_hint=not_found_hint,
                    missing_ok=missing_ok_on_retry and maybe_applied, uncertain_hint=uncertain_hint,
                )
            except _Retry as retry:
                if not retry.provably_unprocessed:
                    maybe_applied = True
                if attempt >= self.max_retries:
                    raise TransientError(
                        f"{what}: {retry.reason} ({endpoint}); gave up after {attempt + 1} attempt(s)",
                        status=retry.status,
                        hint="the Theos API is unreachable or overloaded; try again later "
                        "(check THEOS_API_URL if this persists)",
                    ) from None
                delay = retry.delay if retry.delay is not None else self._backoff(attempt)
                logger.warning(
                    "%s: %s; retrying in %.1f s (attempt %d of %d)",
                    endpoint, retry.reason, delay, attempt + 2, self.max_retries + 1,
                )
                self._sleep(delay)
                attempt += 1

    def _attempt(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        what: str,
        fields: list[tuple[str, str]] | None,
        idempotent: bool,
        want_json: bool,
        not_found: str | None,
        not_found_hint: str | None,
        missing_ok: bool,
        uncertain_hint: str | None,
    ) -> Any:
        def uncertain(reason: str, status: int | None = None) -> UncertainOutcomeError:
            return UncertainOutcomeError(
                f"{what}: {reason}; the server may or may not have applied it",
                status=status,
                hint=uncertain_hint or "check the dataset before trying again",
            )

        # files= with (None, value) parts makes httpx send multipart/form-data with
        # plain fields, exactly what `curl -F name=value` sends.
        files = [(name, (None, value)) for name, value in fields] if fields else None
        try:
            response = self._http.request(method, path, files=files)
            body = response.read()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: safe to repeat, whatever the call.
            raise _Retry(f"cannot connect to {self.api_url} ({type(exc).__name__})", provably_unprocessed=True) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError) as exc:
            raise ConfigError(
                f"cannot send a request to {self.api_url}: {type(exc).__name__}",
                hint="check THEOS_API_URL (e.g. https://api.theos.ai)",
            ) from None
        except httpx.TimeoutException as exc:
            reason = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            if not idempotent:
                raise uncertain(reason) from None
            raise _Retry(reason, provably_unprocessed=False) from None
        except httpx.HTTPError as exc:
            reason = f"connection dropped ({type(exc).__name__})"
            if not idempotent:
                raise uncertain(reason) from None
            raise _Retry(reason, provably_unprocessed=False) from None

        status = response.status_code
        if 200 <= status < 300:
            if not want_json:
                return None
            try:
                return json.loads(body)
            except ValueError:
                kind = "an empty body" if not body.strip() else "a body that is not complete JSON"
                reason = f"HTTP {status} with {kind}"
                if not idempotent:
                    return _NO_BODY
                raise _Retry(reason, status=status, provably_unprocessed=False) from None

        detail = self._error_detail(response, body)
        retry_after = _retry_after_seconds(response)
        if status in (408, 429) or (status == 503 and retry_after is not None):
            # The server said "not now" without doing anything: safe for every call.
            delay = min(retry_after, MAX_RETRY_AFTER) if retry_after is not None else None
            label = "rate limited" if status == 429 else "server busy"
            raise _Retry(f"HTTP {status} ({label})", status=status, delay=delay, provably_unprocessed=True)
        if status >= 500:
            reason = f"HTTP {status} server error" + (f": {detail}" if detail else "")
            if not idempotent:
                raise uncertain(reason, status)
            raise _Retry(reason, status=status, delay=min(retry_after, MAX_RETRY_AFTER) if retry_after else None,
                         provably_unprocessed=False)
        suffix = f" (HTTP {status}: {detail})" if detail else f" (HTTP {status})"
        if status in (401, 403):
            raise AuthError(
                f"{what}: the Theos API refused the credentials{suffix}",
                status=status,
                hint="check THEOS_API_TOKEN and THEOS_PROJECT_KEY (or [theos] in the config file)",
            )
        if status == 404:
            if missing_ok:
                return None
            raise NotFoundError(
                (not_found or f"{what}: not found") + suffix,
                status=status,
                hint=not_found_hint or "check the id, and THEOS_PROJECT_KEY; list datasets with `manifester datasets list`",
            )
        if status == 409:
            raise BusyError(
                f"{what}: the dataset is busy{suffix}",
                status=status,
                hint="an upload is already running on it; wait for its task to end (or `manifester upload stop`)",
            )
        if status in (400, 422):
            raise BadRequestError(f"{what}: the request was refused{suffix}", status=status,
                                  hint="fix the named field(s) and try again")
        if 300 <= status < 400:
            location = self._scrub(response.headers.get("location", "?"))
            raise TheosError(
                f"{what}: unexpected redirect to {location} (HTTP {status})",
                status=status,
                hint="check THEOS_API_URL (scheme and host, e.g. https://api.theos.ai)",
            )
        raise TheosError(f"{what}: unexpected answer{suffix}", status=status, hint="check THEOS_API_URL")

    def _error_detail(self, response: httpx.Response, body: bytes) -> str:
        """A short, scrubbed description of an error body, naming refused fields."""
        try:
            data = json.loads(body)
        except ValueError:
            content_type = response.headers.get("content-type", "")
            if "html" in content_type or body.lstrip()[:1] == b"<":
                return "an HTML error page"
            text = body.decode("utf-8", "replace").strip().splitlines()
            return self._scrub(text[0][:200]) if text else ""
        return self._scrub(_describe_error(data))[:500]


def _describe_error(data: Any) -> str:
    """Flatten DRF-style error bodies: {"detail": ..}, {"error": ..}, {"field": ["msg"]}."""
    def text(value: Any) -> str:
        if isinstance(value, list):
            return "; ".join(text(v) for v in value)
        if isinstance(value, dict):
            return ", ".join(f"{k}: {text(v)}" for k, v in value.items())
        return str(value)

    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            if key in data and len(data) == 1:
                return text(data[key])
        parts = []
        for key, value in data.items():
            if key in ("detail", "error", "message", "non_field_errors"):
                parts.append(text(value))
            else:
                parts.append(f"{key}: {text(value)}")
        return "; ".join(parts)
    if isinstance(data, list):
        return text(data)
    return str(data)
