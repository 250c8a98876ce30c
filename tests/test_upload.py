"""The task driver: busy waits, task id recorded first, tolerant result parsing, failures raised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from manifester.errors import BusyError, TaskFailedError, TransientError
from manifester.upload import ImageFailure, follow, parse_result, redact, submit


@dataclass
class FakeTask:
    state: str
    result: Any = None
    current: int = 0
    total: int = 0

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCESS"


class FakeClient:
    def __init__(self, busy: int = 0, final: FakeTask | None = None) -> None:
        self.busy = busy
        self.calls: list[str] = []
        self.final = final or FakeTask("SUCCESS", {"created": 2, "duplicates": 0, "failed": []}, 2, 2)

    def upload(self, dataset_id: str, manifest_url: str) -> str:
        self.calls.append("upload")
        if self.busy:
            self.busy -= 1
            raise BusyError("busy", status=409)
        return "task-1"

    def wait_task(self, task_id: str, **kw: Any) -> FakeTask:
        self.wait_kwargs = kw
        for i in range(3):
            kw["on_progress"](FakeTask("PROGRESS", None, i, 2))
        return self.final


def test_busy_dataset_means_wait_then_the_task_id_is_recorded_first() -> None:
    client, slept, recorded = FakeClient(busy=3), [], []
    task_id = submit(client, "7", "https://m", on_task_id=recorded.append, sleep=slept.append)
    assert task_id == "task-1" and recorded == ["task-1"]
    assert client.calls == ["upload"] * 4 and len(slept) == 3
    assert slept[1] > slept[0]  # backoff grows


def test_busy_for_too_long_is_a_transient_error() -> None:
    clock = iter(range(0, 10_000, 100))
    with pytest.raises(TransientError, match="stayed busy"):
        submit(FakeClient(busy=1000), "7", "https://m", on_task_id=print, sleep=lambda s: None,
               clock=lambda: float(next(clock)), busy_timeout=500)


def test_follow_reads_the_result_and_shows_progress() -> None:
    outcome = follow(FakeClient(), "task-1", progress=True)
    assert (outcome.created, outcome.duplicates, outcome.failures) == (2, 0, ())
    assert outcome.summary()["created"] == 2


def test_follow_times_polls_for_the_end_unless_told_not_to() -> None:
    client = FakeClient()
    follow(client, "task-1", progress=False, poll_interval=1.0)
    assert client.wait_kwargs["min_interval"] == 0.25 and client.wait_kwargs["poll_interval"] == 1.0
    follow(client, "task-1", progress=False, min_interval=None)  # a client with the older wait_task
    assert "min_interval" not in client.wait_kwargs


@pytest.mark.parametrize("state", ["FAILURE", "REVOKED"])
def test_failed_task_raises_a_resumable_error_without_signatures(state: str) -> None:
    client = FakeClient(final=FakeTask(state, "cannot GET https://s3/b/m.json?X-Amz-Signature=secret"))
    with pytest.raises(TaskFailedError) as info:
        follow(client, "task-1", progress=False)
    assert info.value.state == state and info.value.task_id == "task-1"
    assert "secret" not in str(info.value) and "run the same command again" in str(info.value)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"created": 3, "duplicates": 1, "failed": []}, (3, 1, ())),
        ({"created": "4", "skipped": [1, 2]}, (4, 2, ())),
        (None, (None, None, ())),
        ("ok", (None, None, ())),
        ([], (None, None, ())),
        ({"failed": "nope"}, (None, None, ())),
        (
            {"failed": [{"url": "https://h/b/a.jpg?sig=1", "error": "403 https://h/b/a.jpg?sig=1"}, "https://h/c.jpg?x"]},
            (None, None, (ImageFailure(None, "https://h/b/a.jpg", "403 https://h/b/a.jpg?<redacted>"),
                          ImageFailure(None, "https://h/c.jpg", "failed"))),
        ),
    ],
)
def test_results_of_any_shape_are_read_tolerantly(result: Any, expected: Any) -> None:
    assert parse_result(result) == expected


def test_redact() -> None:
    assert redact("a http://x/y?X-Goog-Signature=zz b") == "a http://x/y?<redacted> b"
