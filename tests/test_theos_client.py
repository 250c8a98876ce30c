"""The Theos client: request shape, tolerant parsing, error mapping, secrets; then the real local server.

Unit tests use ``httpx.MockTransport``; the integration tests at the bottom run against
the local Theos-compatible server (``theos_server`` fixture) and are skipped while that
fixture is not available.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from manifester.config import TheosSettings
from manifester.errors import (
    AuthError,
    BadRequestError,
    BusyError,
    ConfigError,
    NotFoundError,
    TheosError,
    TransientError,
    ValidationError,
)
from manifester.theos import (
    Dataset,
    DatasetClass,
    Example,
    ExamplesPage,
    Task,
    TheosClient,
    UncertainOutcomeError,
)

TOKEN = "tok-SECRET-9f8e7d6c"


class Recorder:
    """Mock transport handler: records requests, answers with a function of the request."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        answer = self.answer(request) if callable(self.answer) else self.answer
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def make(answer: Any, **kw: Any) -> tuple[TheosClient, Recorder]:
    rec = Recorder(answer)
    kw.setdefault("max_retries", 1)
    theos = TheosClient(api_url="http://theos.test/", project_key="pk 1", api_token=TOKEN,
                        transport=httpx.MockTransport(rec), sleep=lambda s: None, **kw)
    return theos, rec


def form(request: httpx.Request) -> dict[str, str]:
    """Decode a multipart/form-data body the way a server would."""
    ctype = request.headers["content-type"]
    assert ctype.startswith("multipart/form-data; boundary="), ctype
    boundary = ctype.split("boundary=", 1)[1].encode()
    fields: dict[str, str] = {}
    for part in request.content.split(b"--" + boundary):
        if b"\r\n\r\n" not in part:
            continue
        head, _, value = part.partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        assert b"filename=" not in head  # plain fields, like curl -F name=value
        fields[name] = value.rstrip(b"\r\n").decode()
    return fields


DATASET = {"id": 42, "name": "Vehicles", "created": "2026-01-01T00:00:00Z",
           "counts": {"train": 8, "valid": 1, "test": 1},
           "classes": [{"id": 0, "db_id": 17, "name": "Car", "color": "#4AFFBA", "with_text": False,
                        "is_superclass": False}]}
EXAMPLE = {"id": 1234, "external_id": "cats/001.jpg", "split": "train", "image": "http://x/i.jpg",
           "thumbnail": "http://x/t.jpg", "width": 640, "height": 480, "labels": [], "labeled": False,
           "skipped": False}


# --------------------------------------------------------------------------- configuration


def test_missing_project_key_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        TheosClient(TheosSettings(api_url="http://x", project_key=None, api_token=TOKEN))
    assert "THEOS_PROJECT_KEY" in str(info.value)


def test_missing_token_names_the_variable_and_the_config_file() -> None:
    with pytest.raises(ConfigError) as info:
        TheosClient(TheosSettings(api_url="http://x", project_key="pk", api_token=None))
    assert "THEOS_API_TOKEN" in str(info.value) and "config file" in str(info.value)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THEOS_API_URL", "http://env.test/")
    monkeypatch.setenv("THEOS_PROJECT_KEY", "envkey")
    monkeypatch.setenv("THEOS_API_TOKEN", TOKEN)
    with TheosClient() as theos:
        assert theos.api_url == "http://env.test"
        assert theos.project_key == "envkey"
    with TheosClient(project_key="flag") as theos:  # explicit beats environment
        assert theos.project_key == "flag"


def test_token_with_a_space_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        TheosClient(api_url="http://x", project_key="pk", api_token="abc def")
    assert "abc" not in str(info.value)


def test_pasted_token_prefix_is_dropped() -> None:
    theos, rec = make([DATASET])
    theos2 = TheosClient(api_url="http://theos.test", project_key="pk", api_token=f"Token {TOKEN}",
                         transport=httpx.MockTransport(rec))
    theos2.list_datasets()
    assert rec.last.headers["authorization"] == f"Token {TOKEN}"


# --------------------------------------------------------------------------- request shape


def test_create_dataset_sends_multipart_like_curl_f() -> None:
    theos, rec = make(DATASET)
    ds = theos.create_dataset("Vehicles")
    req = rec.last
    assert req.method == "POST"
    assert req.url == "http://theos.test/v1/project/pk%201/datasets/create/"
    assert req.headers["authorization"] == f"Token {TOKEN}"
    assert form(req) == {"name": "Vehicles"}
    assert ds == Dataset.from_json(DATASET)
    assert ds.id == "42" and ds.counts == {"train": 8, "valid": 1, "test": 1} and ds.total == 10
    assert ds.classes[0] == DatasetClass(id=0, db_id=17, name="Car", color="#4AFFBA")


def test_every_path_ends_with_a_slash_and_uses_the_documented_method() -> None:
    def answer(request: httpx.Request) -> Any:
        path = request.url.path
        if path.endswith("/datasets/"):
            return [DATASET]
        if "/tasks/" in path:
            return {"state": "SUCCESS", "complete": True}
        if path.endswith(("/upload/", "/classes/delete/", "/classes/merge/")):
            return {"task_id": "t-1"}
        if "/classes/" in path:
            return DATASET["classes"][0]  # type: ignore[index]
        if path.endswith("/examples/"):
            return {"page": 1, "page_count": 1, "count": 1, "examples": [EXAMPLE]}
        if "/examples/" in path:
            return EXAMPLE
        return DATASET

    theos, rec = make(answer)
    theos.list_datasets()
    theos.get_dataset(42)
    theos.delete_dataset(42)
    theos.upload(42, "https://b.test/m.json")
    theos.get_task("t-1")
    theos.stop_upload(42)
    theos.create_class(42, "Car", "#4AFFBA")
    theos.edit_class(42, 17, name="Ferrari")
    theos.delete_classes(42, [1, 4, 6])
    theos.merge_classes(42, [1, 4], "Truck", "#A8327F")
    theos.list_examples(42, "valid", 2)
    theos.get_example(42, 1234)
    theos.get_example(42, external_id="cats/001.jpg")
    theos.set_labels(42, [], example_id=1234)
    theos.skip_example(42, external_id="cats/001.jpg")
    got = [(r.method, r.url.raw_path.decode()) for r in rec.requests]
    p = "/v1/project/pk%201/datasets"
    assert got == [
        ("GET", f"{p}/"),
        ("GET", f"{p}/42/"),
        ("POST", f"{p}/42/delete/"),
        ("POST", f"{p}/42/upload/"),
        ("GET", "/v1/tasks/t-1/"),
        ("POST", f"{p}/42/upload/stop/"),
        ("POST", f"{p}/42/classes/create/"),
        ("POST", f"{p}/42/classes/17/edit/"),
        ("POST", f"{p}/42/classes/delete/"),
        ("POST", f"{p}/42/classes/merge/"),
        ("POST", f"{p}/42/examples/"),
        ("GET", f"{p}/42/examples/1234/"),
        ("GET", f"{p}/42/examples/external/cats%2F001.jpg/"),
        ("POST", f"{p}/42/examples/1234/labels/set/"),
        ("POST", f"{p}/42/examples/external/cats%2F001.jpg/skip/"),
    ]
    assert all(r.headers["authorization"] == f"Token {TOKEN}" for r in rec.requests)


def test_form_fields_match_the_documentation() -> None:
    def answer(request: httpx.Request) -> Any:
        if request.url.path.endswith(("/delete/", "/merge/", "/upload/")):
            return {"task_id": "t"}
        if "/examples/" in request.url.path:
            return {"page": 1, "page_count": 1, "examples": []} if request.url.path.endswith("/examples/") else EXAMPLE
        return DATASET["classes"][0]  # type: ignore[index]

    theos, rec = make(answer)
    theos.create_class(42, "Plate", "#000000", with_text=True)
    assert form(rec.last) == {"name": "Plate", "color": "#000000", "with_text": "true"}
    theos.create_class(42, "Car", "#4AFFBA")
    assert form(rec.last)["with_text"] == "false"
    theos.edit_class(42, 17, color="#FFFFFF")
    assert form(rec.last) == {"color": "#FFFFFF"}
    theos.delete_classes(42, [1, 4, 6])
    assert form(rec.last) == {"db_ids": "[1, 4, 6]"}
    assert json.loads(form(rec.last)["db_ids"]) == [1, 4, 6]
    theos.merge_classes(42, ["1", 4], "Truck", "#A8327F")
    assert form(rec.last) == {"db_ids": "[1, 4]", "name": "Truck", "color": "#A8327F"}
    theos.upload(42, "https://b.test/m.json?X-Amz-Signature=abc&X-Amz-Expires=3600")
    assert form(rec.last) == {"manifest_url": "https://b.test/m.json?X-Amz-Signature=abc&X-Amz-Expires=3600"}
    theos.list_examples(42)
    assert form(rec.last) == {"split": "train", "page": "1"}
    boxes = [{"class_id": 0, "x": 1, "y": 2, "width": 3, "height": 4, "text": "ñ"}]
    theos.set_labels(42, boxes, external_id="a b?c#d/é.jpg")
    assert json.loads(form(rec.last)["labels"]) == boxes
    assert rec.last.url.raw_path.decode().endswith("/examples/external/a%20b%3Fc%23d%2F%C3%A9.jpg/labels/set/")


def test_exactly_one_example_reference() -> None:
    theos, _ = make(EXAMPLE)
    with pytest.raises(ConfigError):
        theos.get_example(42)
    with pytest.raises(ConfigError):
        theos.get_example(42, 1, external_id="a")
    with pytest.raises(ConfigError):
        theos.skip_example(42)


def test_argument_checks_happen_before_any_request() -> None:
    theos, rec = make({})
    with pytest.raises(ConfigError):
        theos.merge_classes(42, [1], "x", "#000000")  # merge needs 2 or more
    with pytest.raises(ConfigError):
        theos.delete_classes(42, [])
    with pytest.raises(ConfigError):
        theos.delete_classes(42, ["one"])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        theos.edit_class(42, 17)
    with pytest.raises(ValidationError):
        theos.set_labels(42, {"class_id": 0}, example_id=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        theos.upload(42, "s3://not/http.json")
    with pytest.raises(ConfigError):
        theos.get_dataset("")
    assert rec.requests == []


def test_any_2xx_is_success() -> None:
    theos, _ = make(httpx.Response(201, json=DATASET))
    assert theos.create_dataset("Vehicles").id == "42"
    theos, _ = make(httpx.Response(204))
    theos.delete_dataset(42)
    theos.stop_upload(42)


# --------------------------------------------------------------------------- tolerant parsing


def test_unknown_fields_are_kept_and_missing_ones_default() -> None:
    ds = Dataset.from_json({"id": "abc", "name": "X", "owner": "me", "counts": {"train": "3", "weird": "x"}})
    assert ds.id == "abc" and ds.counts == {"train": 3} and ds.classes == [] and ds.created is None
    assert ds.raw["owner"] == "me"
    ex = Example.from_json({"id": 5, "labels": '[{"class_id": 1}]', "labeled": "true"})
    assert ex.labels == [{"class_id": 1}] and ex.labeled and not ex.skipped and ex.width is None
    page = ExamplesPage.from_json({"count": 250, "examples": [{"id": 1}]})
    assert page.page_count == 3 and page.page == 1
    assert ExamplesPage.from_json([{"id": 1}, {"id": 2}]).page_count == 1


def test_task_states() -> None:
    pending = Task.from_json("t", {"state": "PENDING", "progress": None})
    assert pending.state == "PENDING" and not pending.terminal and not pending.succeeded
    # an object with nothing of a task would be polled forever as PENDING: it is an error instead
    with pytest.raises(TheosError, match="task t has no state"):
        Task.from_json("t", {"unexpected": ["shape"], "id": None})
    running = Task.from_json("t", {"state": "progress", "progress": {"current": "5", "total": 20}})
    assert running.state == "PROGRESS" and running.percent == 25.0 and not running.terminal
    assert Task.from_json("t", {"state": "SUCCESS"}).succeeded
    assert Task.from_json("t", {"state": "PROGRESS", "complete": True, "success": True}).succeeded
    failed = Task.from_json("t", {"state": "FAILURE", "complete": True, "success": False, "result": "boom"})
    assert failed.terminal and not failed.succeeded and failed.result == "boom"
    assert Task.from_json("t", {"state": "REVOKED"}).terminal
    assert not Task.from_json("t", {"complete": True, "success": False}).succeeded


def test_list_datasets_accepts_a_wrapped_list() -> None:
    theos, _ = make({"results": [DATASET]})
    assert [d.name for d in theos.list_datasets()] == ["Vehicles"]


@pytest.mark.parametrize("body", [{"datasets": "nope"}, "a string", 42, {"detail": "x"}])
def test_unexpected_shape_is_a_theos_error_naming_the_endpoint(body: Any) -> None:
    theos, _ = make(body)
    with pytest.raises(TheosError) as info:
        theos.list_datasets()
    assert "GET /v1/project/pk%201/datasets/" in str(info.value)


@pytest.mark.parametrize("body", [[DATASET], {"name": "no id"}, None, {"id": 1, "classes": [{"name": "no db_id"}]}])
def test_get_dataset_with_wrong_shape_never_crashes(body: Any) -> None:
    theos, _ = make(body)
    with pytest.raises(TheosError) as info:
        theos.get_dataset(42)
    assert "/datasets/42/" in str(info.value)


def test_labels_answer_that_is_not_an_example_is_read_back() -> None:
    def answer(request: httpx.Request) -> Any:
        return {"success": True} if request.method == "POST" else {**EXAMPLE, "labels": [{"class_id": 0}]}

    theos, rec = make(answer)
    assert theos.set_labels(42, [{"class_id": 0}], example_id=1234).labels == [{"class_id": 0}]
    assert [r.method for r in rec.requests] == ["POST", "GET"]


def test_iter_examples_walks_every_page() -> None:
    def answer(request: httpx.Request) -> Any:
        page = int(form(request)["page"])
        return {"page": page, "page_count": 3, "count": 5,
                "examples": [{"id": page * 10 + i} for i in range(2 if page < 3 else 1)]}

    theos, rec = make(answer)
    assert [e.id for e in theos.iter_examples(42, "valid")] == ["10", "11", "20", "21", "30"]
    assert [form(r)["split"] for r in rec.requests] == ["valid"] * 3


def test_find_dataset() -> None:
    theos, _ = make([DATASET, {**DATASET, "id": 43, "name": "Other"}])
    assert theos.find_dataset("Other").id == "43"  # type: ignore[union-attr]
    assert theos.find_dataset("Missing") is None
    theos, _ = make([DATASET, {**DATASET, "id": 44}])
    with pytest.raises(ConfigError) as info:
        theos.find_dataset("Vehicles")
    assert "42, 44" in str(info.value)


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors(status: int) -> None:
    theos, _ = make(httpx.Response(status, json={"detail": "Invalid token."}))
    with pytest.raises(AuthError) as info:
        theos.list_datasets()
    assert info.value.status == status
    assert "Invalid token." in str(info.value)
    assert "THEOS_API_TOKEN" in str(info.value)
    assert not info.value.transient


def test_not_found_names_the_dataset_and_project() -> None:
    theos, _ = make(httpx.Response(404, json={"detail": "Not found."}))
    with pytest.raises(NotFoundError) as info:
        theos.get_dataset(99)
    assert "dataset 99" in str(info.value) and "'pk 1'" in str(info.value)
    with pytest.raises(NotFoundError) as info:
        theos.list_datasets()
    assert "project key 'pk 1'" in str(info.value)
    with pytest.raises(NotFoundError) as info:
        theos.get_example(42, external_id="cats/x.jpg")
    assert "external_id 'cats/x.jpg'" in str(info.value) and "dataset 42" in str(info.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"name": ["This field is required."]}, "name: This field is required."),
        ({"color": ["Not a hex color."], "name": ["Too long."]}, "color: Not a hex color.; name: Too long."),
        ({"error": "db_ids must be a JSON list"}, "db_ids must be a JSON list"),
        ({"detail": "Malformed request."}, "Malformed request."),
        ({"non_field_errors": ["bad"]}, "bad"),
    ],
)
def test_bad_request_names_the_field(body: Any, expected: str) -> None:
    theos, _ = make(httpx.Response(400, json=body))
    with pytest.raises(BadRequestError) as info:
        theos.create_class(42, "", "red")
    assert expected in str(info.value)
    assert info.value.status == 400


def test_busy_dataset() -> None:
    theos, rec = make(httpx.Response(409, json={"detail": "An upload is already running."}))
    with pytest.raises(BusyError) as info:
        theos.upload(42, "https://b.test/m.json")
    assert info.value.transient and len(rec.requests) == 1
    assert "upload stop" in str(info.value)


def test_redirect_and_odd_statuses_are_theos_errors() -> None:
    theos, _ = make(httpx.Response(301, headers={"location": "https://theos.test/v1/"}))
    with pytest.raises(TheosError) as info:
        theos.list_datasets()
    assert "redirect" in str(info.value) and "THEOS_API_URL" in str(info.value)
    theos, _ = make(httpx.Response(418, text="teapot"))
    with pytest.raises(TheosError) as info:
        theos.list_datasets()
    assert "418" in str(info.value) and "teapot" in str(info.value)


def test_unsupported_url_scheme_is_a_config_error() -> None:
    theos = TheosClient(TheosSettings(api_url="http://x", project_key="pk", api_token=TOKEN))
    theos._http.base_url = httpx.URL("ftp://x")  # as if a proxy rewrote it
    with pytest.raises(ConfigError):
        theos.list_datasets()


# --------------------------------------------------------------------------- secrets


def test_token_never_in_messages_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"detail": f"token {TOKEN} rejected for https://b.test/m.json?X-Amz-Signature=s3cr3t"}
    errors: list[Exception] = []
    for status in (400, 401, 403, 404, 409, 418, 500, 503):
        theos, _ = make(httpx.Response(status, json=echo))
        for call in (lambda: theos.list_datasets(), lambda: theos.upload(1, "https://b.test/m.json?sig=zz")):
            try:
                call()
            except TheosError as exc:
                errors.append(exc)
    theos, _ = make(httpx.ReadTimeout(f"timeout {TOKEN}"))
    with pytest.raises(UncertainOutcomeError) as info:
        theos.upload(1, "https://b.test/m.json?sig=zz")
    errors.append(info.value)
    assert len(errors) >= 16
    texts = [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [repr(theos), repr(theos.settings), str(theos.__dict__.get("settings")), caplog.text]
    for text in texts:
        assert TOKEN not in text
        assert "s3cr3t" not in text and "sig=zz" not in text
    assert any("<token>" in t for t in texts)  # the echo was scrubbed, not dropped
    assert any("<redacted>" in t for t in texts)


def test_retry_logs_name_the_endpoint_not_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    theos, _ = make(httpx.Response(503), max_retries=2)
    with pytest.raises(TransientError):
        theos.get_dataset(42)
    assert "GET /v1/project/pk%201/datasets/42/" in caplog.text
    assert TOKEN not in caplog.text


# --------------------------------------------------------------------------- against the local server


@pytest.fixture
def live(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("theos_server")
    except pytest.FixtureLookupError:
        pytest.skip("the local Theos server fixture (tests/support/theos_server.py) is not available yet")


@pytest.fixture
def theos(live: Any) -> Any:
    with TheosClient(api_url=live.url, project_key=live.project_key, api_token=live.token) as client:
        yield client


def test_live_dataset_lifecycle(theos: TheosClient) -> None:
    ds = theos.create_dataset("Client lifecycle")
    assert ds.name == "Client lifecycle" and ds.total == 0
    assert theos.get_dataset(ds.id) == ds
    assert theos.find_dataset("Client lifecycle") == ds
    assert ds.id in {d.id for d in theos.list_datasets()}
    theos.delete_dataset(ds.id)
    with pytest.raises(NotFoundError):
        theos.get_dataset(ds.id)
    assert theos.find_dataset("Client lifecycle") is None


def test_live_classes(theos: TheosClient) -> None:
    ds = theos.create_dataset("Client classes")
    car = theos.create_class(ds.id, "Car", "#4AFFBA")
    truck = theos.create_class(ds.id, "Truck", "#A8327F")
    plate = theos.create_class(ds.id, "Plate", "#000000", with_text=True)
    assert (car.id, truck.id, plate.id) == (0, 1, 2) and plate.with_text and not car.with_text
    edited = theos.edit_class(ds.id, car.db_id, name="Ferrari")
    assert edited.name == "Ferrari" and edited.color == "#4AFFBA"
    task = theos.wait_task(theos.merge_classes(ds.id, [car.db_id, truck.db_id], "Vehicle", "#123456"),
                           poll_interval=0.05)
    assert task.succeeded, task
    names = [c.name for c in theos.get_dataset(ds.id).classes]
    assert "Vehicle" in names and "Ferrari" not in names
    plate_db = next(c.db_id for c in theos.get_dataset(ds.id).classes if c.name == "Plate")
    assert theos.wait_task(theos.delete_classes(ds.id, [plate_db]), poll_interval=0.05).succeeded
    assert [c.name for c in theos.get_dataset(ds.id).classes] == ["Vehicle"]
    with pytest.raises(BadRequestError):
        theos.create_class(ds.id, "Bad", "not-a-color")


def test_live_errors(live: Any, theos: TheosClient) -> None:
    with pytest.raises(NotFoundError):
        theos.get_dataset(987654)
    with pytest.raises(NotFoundError):
        theos.get_task("no-such-task")
    with TheosClient(api_url=live.url, project_key=live.project_key, api_token="wrong-token") as bad:
        with pytest.raises(AuthError):
            bad.list_datasets()
    with TheosClient(api_url=live.url, project_key="wrong-key", api_token=live.token) as bad:
        with pytest.raises(NotFoundError) as info:
            bad.list_datasets()
        assert "wrong-key" in str(info.value)


def _image(width: int, height: int) -> bytes:
    from tests.support.theos_server import make_image

    return make_image(width, height)


@pytest.fixture
def images(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("image_http_server")
    except pytest.FixtureLookupError:
        pytest.skip("image_http_server fixture not available yet")


def test_live_upload_examples_labels_skip(theos: TheosClient, images: Any) -> None:
    names = ["client/a one.jpg", "client/b.jpg", "client/c.jpg"]
    for i, name in enumerate(names):
        images.write(name, _image(32 + i, 24))
    entries = [{"url": images.url_for(n), "split": s, "external_id": n}
               for n, s in zip(names, ["train", "train", "valid"], strict=True)]
    manifest_url = images.write_json("client/manifest.json", entries)
    ds = theos.create_dataset("Client upload")
    car = theos.create_class(ds.id, "Car", "#4AFFBA")
    task_id = theos.upload(ds.id, manifest_url)
    seen: list[Task] = []
    task = theos.wait_task(task_id, poll_interval=0.05, on_progress=seen.append)
    assert task.succeeded, task
    assert seen and seen[-1] == task
    assert theos.get_dataset(ds.id).counts.get("train") == 2
    train = list(theos.iter_examples(ds.id, "train"))
    assert sorted(e.external_id or "" for e in train) == ["client/a one.jpg", "client/b.jpg"]
    page = theos.list_examples(ds.id, "valid")
    assert page.page == 1 and page.page_count == 1 and [e.external_id for e in page.examples] == ["client/c.jpg"]
    ex = theos.get_example(ds.id, external_id="client/a one.jpg")
    assert ex.split == "train" and ex.width == 32 and ex.height == 24
    assert theos.get_example(ds.id, ex.id) == ex
    boxes = [{"class_id": car.id, "x": 1, "y": 2, "width": 10, "height": 8}]
    labeled = theos.set_labels(ds.id, boxes, external_id="client/a one.jpg")
    assert labeled.labeled and [b["class_id"] for b in labeled.labels] == [car.id]
    skipped = theos.skip_example(ds.id, example_id=theos.get_example(ds.id, external_id="client/b.jpg").id)
    assert skipped.skipped
    theos.stop_upload(ds.id)  # nothing running: still fine


def test_live_busy_dataset_and_stop(theos: TheosClient, images: Any) -> None:
    images.write("busy/a.png", _image(16, 16))
    manifest_url = images.write_json("busy/m.json", [{"url": images.url_for("busy/a.png", slow=True), "split": "train"}])
    ds = theos.create_dataset("Client busy")
    task_id = theos.upload(ds.id, manifest_url)
    with pytest.raises(BusyError):
        theos.upload(ds.id, manifest_url)  # one upload at a time
    theos.stop_upload(ds.id)
    images.release()
    task = theos.wait_task(task_id, poll_interval=0.05)
    assert task.terminal


class Flaky(httpx.BaseTransport):
    """Forwards to a real server, failing chosen requests before or after they reach it."""

    def __init__(self, plan: dict[str, list[str]]) -> None:
        self.real = httpx.HTTPTransport()
        self.plan = plan  # path suffix -> faults to apply in order: 429, 503, connect, lost
        self.forwarded: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for suffix, faults in self.plan.items():
            if request.url.path.endswith(suffix) and faults:
                fault = faults.pop(0)
                if fault == "connect":
                    raise httpx.ConnectError("connection refused", request=request)
                if fault in ("429", "503"):
                    return httpx.Response(int(fault), headers={"Retry-After": "0"}, json={"detail": "later"})
                if fault == "lost":  # processed by the server, answer lost on the way back
                    self.real.handle_request(request).close()
                    self.forwarded.append(request.url.path)
                    raise httpx.ReadTimeout("timed out", request=request)
        self.forwarded.append(request.url.path)
        return self.real.handle_request(request)

    def close(self) -> None:
        self.real.close()


def test_live_retries_never_duplicate_work(live: Any, images: Any) -> None:
    images.write("flaky/a.png", _image(20, 10))
    manifest_url = images.write_json("flaky/m.json", [{"url": images.url_for("flaky/a.png"), "split": "test"}])
    plan = {"/create/": ["connect", "429"], "/upload/": ["503", "connect", "429"], "/datasets/": ["connect", "503"]}
    flaky = Flaky(plan)
    sleeps: list[float] = []
    with TheosClient(api_url=live.url, project_key=live.project_key, api_token=live.token,
                     transport=flaky, sleep=sleeps.append) as theos:
        ds = theos.create_dataset("Client flaky")
        task = theos.wait_task(theos.upload(ds.id, manifest_url), poll_interval=0.05)
        assert task.succeeded, task
        assert [d.name for d in theos.list_datasets()].count("Client flaky") == 1
        assert theos.get_dataset(ds.id).counts.get("test") == 1
        assert sum(1 for p in flaky.forwarded if p.endswith("/upload/")) == 1

        # The answer to an upload is lost after the server started it: no blind retry.
        flaky.plan["/upload/"] = ["lost"]
        with pytest.raises(UncertainOutcomeError):
            theos.upload(ds.id, manifest_url)
        assert sum(1 for p in flaky.forwarded if p.endswith("/upload/")) == 2
