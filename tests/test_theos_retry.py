"""Retries of the Theos client: 429/5xx/dropped connections/bad bodies, backoff, Retry-After, upload safety.

Everything runs against ``httpx.MockTransport`` with an injected sleep and clock, so
no test waits for real.
"""

from __future__ import annotations

import email.utils
from typing import Any

import httpx
import pytest

from manifester.errors import NotFoundError, TheosError, TransientError
from manifester.theos import MAX_RETRY_AFTER, TheosClient, UncertainOutcomeError

TOKEN = "tok-SECRET-4242"


class TopRng:
    """A jitter source that always picks the ceiling, so backoff delays are predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Script:
    """A mock server answering from a list of steps (a response, an exception, or a callable)."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(request)
        return step


def ok(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def raw(status: int, content: bytes, content_type: str = "application/json", **headers: str) -> httpx.Response:
    return httpx.Response(status, content=content, headers={"content-type": content_type, **headers})


DATASET = {"id": 7, "name": "Cats", "counts": {"train": 1}, "classes": []}


def client(script: Script, sleeps: list[float], **kw: Any) -> TheosClient:
    kw.setdefault("max_retries", 4)
    return TheosClient(
        api_url="http://theos.test",
        project_key="pk",
        api_token=TOKEN,
        transport=httpx.MockTransport(script),
        sleep=sleeps.append,
        rng=TopRng(),  # type: ignore[arg-type]
        **kw,
    )


def test_429_with_retry_after_seconds_is_honoured() -> None:
    script, sleeps = Script(ok({"detail": "slow down"}, 429, **{"Retry-After": "3"}), ok(DATASET)), []
    assert client(script, sleeps).get_dataset(7).name == "Cats"
    assert sleeps == [3.0]
    assert len(script.requests) == 2


def test_429_without_retry_after_uses_backoff() -> None:
    script, sleeps = Script(ok({}, 429), ok({}, 429), ok(DATASET)), []
    client(script, sleeps).get_dataset(7)
    assert sleeps == [0.5, 1.0]


def test_retry_after_http_date_is_measured_against_the_server_date() -> None:
    date = email.utils.formatdate(1_700_000_000, usegmt=True)
    later = email.utils.formatdate(1_700_000_007, usegmt=True)
    script, sleeps = Script(ok({}, 429, **{"Retry-After": later, "Date": date}), ok(DATASET)), []
    client(script, sleeps).get_dataset(7)
    assert sleeps == [7.0]


def test_retry_after_is_capped() -> None:
    script, sleeps = Script(ok({}, 429, **{"Retry-After": "86400"}), ok(DATASET)), []
    client(script, sleeps).get_dataset(7)
    assert sleeps == [MAX_RETRY_AFTER]


def test_unparseable_retry_after_falls_back_to_backoff() -> None:
    script, sleeps = Script(ok({}, 429, **{"Retry-After": "soon-ish"}), ok(DATASET)), []
    client(script, sleeps).get_dataset(7)
    assert sleeps == [0.5]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_on_reads(status: int) -> None:
    script, sleeps = Script(ok({"detail": "boom"}, status), ok(DATASET)), []
    assert client(script, sleeps).get_dataset(7).id == "7"
    assert len(script.requests) == 2


def test_backoff_grows_exponentially_and_is_capped() -> None:
    script, sleeps = Script(ok({}, 503)), []
    with pytest.raises(TransientError) as info:
        client(script, sleeps, max_retries=6, backoff_cap=3.0).get_dataset(7)
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert len(script.requests) == 7
    assert "gave up after 7 attempt(s)" in str(info.value)
    assert info.value.status == 503
    assert info.value.transient


def test_full_jitter_stays_within_the_ceiling() -> None:
    script, sleeps = Script(ok({}, 500)), []
    theos = TheosClient(api_url="http://theos.test", project_key="pk", api_token=TOKEN,
                        transport=httpx.MockTransport(script), sleep=sleeps.append, max_retries=5, backoff_cap=4.0)
    with pytest.raises(TransientError):
        theos.get_dataset(7)
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0]
    assert len(sleeps) == 5
    assert all(0.0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))


def test_connection_reset_is_retried() -> None:
    script, sleeps = Script(httpx.ReadError("Connection reset by peer"), ok(DATASET)), []
    assert client(script, sleeps).get_dataset(7).name == "Cats"
    assert len(sleeps) == 1


def test_read_timeout_is_retried_on_reads() -> None:
    script, sleeps = Script(httpx.ReadTimeout("timed out"), httpx.ReadTimeout("timed out"), ok(DATASET)), []
    client(script, sleeps).get_dataset(7)
    assert len(script.requests) == 3


def test_html_error_page_is_retried_and_described() -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    script, sleeps = Script(raw(502, page, "text/html")), []
    with pytest.raises(TransientError) as info:
        client(script, sleeps, max_retries=2).get_dataset(7)
    assert "HTML error page" in str(info.value)
    assert "get dataset 7" in str(info.value)


@pytest.mark.parametrize("body", [b'{"id": 7, "name": "Ca', b"", b"<html>oops</html>", b"not json at all"])
def test_truncated_or_non_json_2xx_is_retried_on_reads(body: bytes) -> None:
    script, sleeps = Script(raw(200, body), ok(DATASET)), []
    assert client(script, sleeps).get_dataset(7).name == "Cats"
    assert len(script.requests) == 2


def test_truncated_2xx_forever_gives_a_transient_error_not_a_crash() -> None:
    script, sleeps = Script(raw(200, b'[{"id": 1')), []
    with pytest.raises(TransientError) as info:
        client(script, sleeps, max_retries=1).list_datasets()
    assert "not complete JSON" in str(info.value)


def test_body_cut_short_by_the_connection_is_retried() -> None:
    def short(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    script, sleeps = Script(short, ok(DATASET)), []
    client(script, sleeps).get_dataset(7)
    assert len(script.requests) == 2


# --------------------------------------------------------------------------- upload is not idempotent

MANIFEST = "https://bucket.test/m-0001.json?X-Amz-Signature=deadbeef"


def test_upload_retries_when_the_connection_never_opened() -> None:
    script, sleeps = Script(httpx.ConnectError("refused"), ok({"task_id": "t-1"})), []
    assert client(script, sleeps).upload(7, MANIFEST) == "t-1"
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    "first",
    [ok({}, 429), ok({}, 429, **{"Retry-After": "2"}), ok({}, 503, **{"Retry-After": "1"}), ok({}, 408)],
    ids=["429", "429-retry-after", "503-retry-after", "408"],
)
def test_upload_retries_when_the_server_refused_without_processing(first: httpx.Response) -> None:
    script, sleeps = Script(first, ok({"task_id": "t-2"})), []
    assert client(script, sleeps).upload(7, MANIFEST) == "t-2"
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    "first",
    [
        httpx.ReadTimeout("timed out"),
        httpx.ReadError("Connection reset by peer"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        ok({"detail": "boom"}, 500),
        ok({}, 502),
        ok({}, 503),
        ok({}, 504),
        raw(200, b'{"task_'),
        raw(200, b""),
        ok({"message": "queued"}),
    ],
    ids=["read-timeout", "reset", "disconnect", "500", "502", "503-no-retry-after", "504", "truncated", "empty", "no-task-id"],
)
def test_upload_is_never_repeated_when_it_may_have_been_applied(first: Any) -> None:
    script, sleeps = Script(first, ok({"task_id": "second-task"})), []
    with pytest.raises(UncertainOutcomeError) as info:
        client(script, sleeps).upload(7, MANIFEST)
    assert len(script.requests) == 1, "a second upload could start a second task"
    assert sleeps == []
    assert isinstance(info.value, TransientError)
    assert "may" in str(info.value)
    assert "deadbeef" not in str(info.value)


def test_upload_gives_up_after_repeated_429() -> None:
    script, sleeps = Script(ok({}, 429)), []
    with pytest.raises(TransientError) as info:
        client(script, sleeps, max_retries=2).upload(7, MANIFEST)
    assert not isinstance(info.value, UncertainOutcomeError)  # provably never applied
    assert len(script.requests) == 3


def test_create_dataset_is_not_repeated_after_a_timeout() -> None:
    script, sleeps = Script(httpx.ReadTimeout("timed out"), ok(DATASET)), []
    with pytest.raises(UncertainOutcomeError) as info:
        client(script, sleeps).create_dataset("Cats")
    assert len(script.requests) == 1
    assert "datasets list" in str(info.value)


def test_create_dataset_with_unreadable_answer_looks_the_dataset_up() -> None:
    script = Script(raw(200, b"created"), ok([DATASET]))
    ds = client(script, []).create_dataset("Cats")
    assert ds.id == "7"
    assert [r.method for r in script.requests] == ["POST", "GET"]


def test_delete_dataset_whose_first_attempt_landed_counts_as_deleted() -> None:
    script, sleeps = Script(httpx.ReadTimeout("timed out"), ok({"detail": "Not found."}, 404)), []
    client(script, sleeps).delete_dataset(7)  # no error: it is gone, as asked
    assert len(script.requests) == 2


def test_delete_unknown_dataset_is_not_found() -> None:
    script = Script(ok({"detail": "Not found."}, 404))
    with pytest.raises(NotFoundError):
        client(script, []).delete_dataset(7)


def test_idempotent_posts_are_retried() -> None:
    example = {"id": 3, "external_id": "a.jpg", "split": "train", "labels": [], "skipped": True}
    script, sleeps = Script(ok({}, 500), ok(example)), []
    assert client(script, sleeps).skip_example(7, external_id="a.jpg").skipped
    assert len(script.requests) == 2


# --------------------------------------------------------------------------- wait_task


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def task(state: str, current: int = 0, total: int = 10, **extra: Any) -> httpx.Response:
    body = {"state": state, "complete": state in {"SUCCESS", "FAILURE", "REVOKED"},
            "success": None if state not in {"SUCCESS", "FAILURE"} else state == "SUCCESS",
            "progress": {"pending": state == "PENDING", "current": current, "total": total,
                         "percent": 100.0 * current / total},
            "result": None, **extra}
    return httpx.Response(200, json=body)


def task_client(script: Script, clock: FakeClock) -> TheosClient:
    return TheosClient(api_url="http://theos.test", project_key="pk", api_token=TOKEN,
                       transport=httpx.MockTransport(script), sleep=clock.sleep, clock=clock, rng=TopRng())  # type: ignore[arg-type]


def test_wait_task_polls_until_success_and_reports_progress() -> None:
    clock = FakeClock()
    script = Script(task("PENDING"), task("PROGRESS", 2), task("PROGRESS", 2), task("PROGRESS", 9),
                    task("SUCCESS", 10, result={"created": 10, "duplicates": 0, "failed": []}))
    seen: list[tuple[str, int | None]] = []
    final = task_client(script, clock).wait_task("t-1", poll_interval=1.0, max_interval=10.0,
                                                 on_progress=lambda t: seen.append((t.state, t.current)))
    assert final.succeeded and final.terminal
    assert final.result == {"created": 10, "duplicates": 0, "failed": []}
    assert seen == [("PENDING", 0), ("PROGRESS", 2), ("PROGRESS", 2), ("PROGRESS", 9), ("SUCCESS", 10)]
    # grows by half while nothing changes, resets when progress moves
    assert clock.sleeps == [1.0, 1.0, 1.5, 1.0]
    assert all(r.url.path == "/v1/tasks/t-1/" for r in script.requests)


def test_wait_task_interval_is_capped() -> None:
    clock = FakeClock()
    script = Script(*[task("PROGRESS", 1)] * 8, task("SUCCESS", 10))
    task_client(script, clock).wait_task("t", poll_interval=1.0, max_interval=3.0)
    assert max(clock.sleeps) == 3.0


def test_wait_task_returns_failure_without_raising() -> None:
    clock = FakeClock()
    script = Script(task("PROGRESS", 1), ok({"state": "FAILURE", "complete": True, "success": False,
                                             "result": "manifest is not valid JSON"}))
    final = task_client(script, clock).wait_task("t")
    assert final.terminal and not final.succeeded
    assert final.result == "manifest is not valid JSON"


def test_wait_task_times_out_with_a_transient_error() -> None:
    clock = FakeClock()
    script = Script(task("PROGRESS", 3))
    with pytest.raises(TransientError) as info:
        task_client(script, clock).wait_task("t-9", poll_interval=2.0, max_interval=2.0, timeout=5.0)
    assert "t-9" in str(info.value) and "3/10" in str(info.value)
    assert "tasks wait t-9" in str(info.value)
    assert sum(clock.sleeps) == pytest.approx(5.0)  # never sleeps past the deadline


def test_wait_task_survives_transient_poll_errors() -> None:
    clock = FakeClock()
    script = Script(task("PROGRESS", 1), ok({}, 502), httpx.ReadError("reset"), task("SUCCESS", 10))
    assert task_client(script, clock).wait_task("t").succeeded


def test_wait_task_times_its_polls_for_the_estimated_end() -> None:
    """With min_interval, the first poll comes quickly, then the polls follow the observed rate."""
    clock = FakeClock()
    script = Script(task("PROGRESS", 10, 100), task("PROGRESS", 20, 100), task("PROGRESS", 60, 100),
                    task("PROGRESS", 95, 100), task("SUCCESS", 100, 100))
    final = task_client(script, clock).wait_task("t", poll_interval=1.0, max_interval=15.0, min_interval=0.25)
    assert final.succeeded
    # 0.25, 0.375: the quick first steps (growing by half), shorter than the 2 s estimated end;
    # 0.5: the end is estimated 0.5 s away (40 left at 80/s); 0.25: 5 left (0.07 s), never closer
    assert clock.sleeps == pytest.approx([0.25, 0.375, 0.5, 0.25])


def test_wait_task_never_polls_closer_than_min_interval_and_backs_off_when_the_end_is_late() -> None:
    clock = FakeClock()
    # reaches 100 % quickly, then stays "PROGRESS" at 100/100 for a while (e.g. the server finalising)
    script = Script(task("PROGRESS", 0, 100), task("PROGRESS", 50, 100), *[task("PROGRESS", 100, 100)] * 12,
                    task("SUCCESS", 100, 100))
    task_client(script, clock).wait_task("t", poll_interval=1.0, max_interval=4.0, min_interval=0.25)
    assert min(clock.sleeps) >= 0.25 and max(clock.sleeps) <= 4.0
    late = clock.sleeps[2:]
    assert late == sorted(late) and late[-1] == 4.0  # growing again, up to max_interval: no hammering


def test_wait_task_without_progress_information_keeps_the_backoff() -> None:
    clock = FakeClock()
    script = Script(*[ok({"state": "STARTED"})] * 12, task("SUCCESS", 10))
    task_client(script, clock).wait_task("t", poll_interval=1.0, max_interval=5.0, min_interval=0.25)
    assert clock.sleeps[:4] == pytest.approx([0.25, 0.375, 0.5625, 0.84375])
    assert all(b == pytest.approx(min(a * 1.5, 5.0)) for a, b in zip(clock.sleeps, clock.sleeps[1:]))
    assert clock.sleeps[-1] == 5.0


def test_wait_task_estimate_never_waits_longer_than_the_plain_backoff() -> None:
    clock = FakeClock()
    # slow progress: the estimated end is far away, so the quick first steps, then the plain
    # interval (reset to poll_interval by every change of progress) apply
    script = Script(*[task("PROGRESS", i, 1000) for i in range(1, 9)], task("SUCCESS", 1000, 1000))
    task_client(script, clock).wait_task("t", poll_interval=1.0, max_interval=15.0, min_interval=0.25)
    assert clock.sleeps == pytest.approx([0.25, 0.375, 0.5625, 0.84375, 1.0, 1.0, 1.0, 1.0])


def test_wait_task_min_interval_respects_the_timeout() -> None:
    clock = FakeClock()
    script = Script(ok({"state": "STARTED"}))
    with pytest.raises(TransientError):
        task_client(script, clock).wait_task("t", poll_interval=1.0, max_interval=2.0, timeout=3.0, min_interval=0.25)
    assert sum(clock.sleeps) == pytest.approx(3.0)


def test_unknown_task_is_not_found() -> None:
    script = Script(ok({"detail": "Not found."}, 404))
    with pytest.raises(NotFoundError) as info:
        client(script, []).get_task("nope")
    assert "task nope" in str(info.value)


def test_task_of_unexpected_shape_is_a_theos_error() -> None:
    script = Script(ok(["not", "a", "task"]))
    with pytest.raises(TheosError) as info:
        client(script, []).get_task("t")
    assert "/v1/tasks/t/" in str(info.value)


def test_max_retries_zero_means_one_attempt() -> None:
    script, sleeps = Script(ok({}, 500)), []
    with pytest.raises(TransientError):
        client(script, sleeps, max_retries=0).get_dataset(7)
    assert len(script.requests) == 1 and sleeps == []

