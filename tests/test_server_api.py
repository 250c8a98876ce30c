"""The local Theos-compatible server over real HTTP: datasets, classes, examples, labels, errors."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from manifester.server import RunningServer
from tests.support.theos_server import StaticServer, api, make_image, wait_task


def _dataset(client: httpx.Client, name: str = "Vehicles") -> int:
    response = client.post("/create/", data={"name": name})
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def _upload(server: RunningServer, web: StaticServer, dataset_id: int, entries: list[dict[str, Any]]) -> dict[str, Any]:
    manifest = web.write_json(f"manifests/m{len(list(web.root.glob('manifests/*')))}.json", entries)
    with api(server) as client:
        response = client.post(f"/{dataset_id}/upload/", data={"manifest_url": manifest})
    assert response.status_code == 200, response.text
    task = wait_task(server, response.json()["task_id"])
    assert task["state"] == "SUCCESS", task
    return task


@pytest.fixture
def populated(theos_server: RunningServer, image_http_server: StaticServer) -> tuple[RunningServer, int]:
    """A dataset with 3 train images (200x100, external ids a/0..a/2) and one valid image."""
    web = image_http_server
    entries = [
        {"url": web.write(f"img/{i}.png", make_image(200, 100)), "split": "train", "external_id": f"a/{i}"}
        for i in range(3)
    ]
    entries.append({"url": web.write("img/v.jpg", make_image(30, 20, "JPEG")), "split": "valid", "external_id": "v"})
    with api(theos_server) as client:
        ds = _dataset(client)
    _upload(theos_server, web, ds, entries)
    return theos_server, ds


# -- auth and routing ---------------------------------------------------------------


def test_missing_and_wrong_token_are_401(theos_server: RunningServer) -> None:
    url = f"{theos_server.url}/v1/project/{theos_server.project_key}/datasets/"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert "detail" in missing.json()
    wrong = httpx.get(url, headers={"Authorization": "Token nope"})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "Invalid token."}
    assert httpx.get(url, headers={"Authorization": f"Bearer {theos_server.token}"}).status_code == 401
    task = httpx.get(f"{theos_server.url}/v1/tasks/abc/")
    assert task.status_code == 401


def test_other_project_key_is_404(theos_server: RunningServer) -> None:
    response = httpx.get(
        f"{theos_server.url}/v1/project/other/datasets/", headers={"Authorization": f"Token {theos_server.token}"}
    )
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}


def test_unknown_ids_are_404_never_500(theos_server: RunningServer) -> None:
    with api(theos_server) as client:
        for path in ("/7/", "/99999999999999999999999/", "/7/examples/1/", "/x/"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json() == {"detail": "Not found."}
        assert client.post("/7/delete/").status_code == 404
        assert client.post("/7/upload/", data={"manifest_url": "http://127.0.0.1:1/m.json"}).status_code == 404
        assert client.post("/7/classes/create/", data={"name": "a", "color": "#000000"}).status_code == 404
    headers = {"Authorization": f"Token {theos_server.token}"}
    assert httpx.get(f"{theos_server.url}/v1/tasks/no-such-task/", headers=headers).status_code == 404
    assert httpx.get(f"{theos_server.url}/media/../../theos.sqlite").status_code == 404
    assert httpx.get(f"{theos_server.url}/media/%2e%2e%2ftheos.sqlite").status_code == 404


def test_wrong_method_is_405_json(theos_server: RunningServer) -> None:
    with api(theos_server) as client:
        response = client.get("/create/")
        assert response.status_code == 405
        assert response.json() == {"detail": 'Method "GET" not allowed.'}


def test_request_body_cap_is_413(theos_server: RunningServer) -> None:
    with api(theos_server) as client:
        try:
            response = client.post("/create/", data={"name": "x" * (17 * 1024 * 1024)})
        except httpx.TransportError:
            return  # the server may close before the client finishes sending; still refused
        assert response.status_code == 413
        assert "detail" in response.json()
        assert client.get("/").json() == []


# -- datasets -----------------------------------------------------------------------


def test_dataset_create_list_get_delete(populated: tuple[RunningServer, int]) -> None:
    server, ds = populated
    with api(server) as client:
        listed = client.get("/").json()
        assert isinstance(listed, list) and [d["id"] for d in listed] == [ds]
        got = client.get(f"/{ds}/").json()
        assert set(got) == {"id", "name", "created", "counts", "classes"}
        assert got["name"] == "Vehicles"
        assert got["counts"] == {"train": 3, "valid": 1, "test": 0}
        assert got["classes"] == []
        other = client.post("/create/", data={"name": "Other"}).json()
        assert other["counts"] == {"train": 0, "valid": 0, "test": 0} and other["id"] != ds
        media = list((server.data_dir / "media").rglob("*.*"))
        assert len(media) == 8  # 4 images + 4 thumbnails
        deleted = client.post(f"/{ds}/delete/")
        assert deleted.status_code == 200
        assert client.get(f"/{ds}/").status_code == 404
        assert [d["id"] for d in client.get("/").json()] == [other["id"]]
        assert list((server.data_dir / "media").rglob("*.*")) == []


@pytest.mark.parametrize(
    ("data", "field"),
    [({}, "name"), ({"name": "   "}, "name"), ({"name": "x" * 256}, "name")],
)
def test_dataset_create_refuses_bad_name(theos_server: RunningServer, data: dict[str, str], field: str) -> None:
    with api(theos_server) as client:
        response = client.post("/create/", data=data)
        assert response.status_code == 400
        body = response.json()
        assert list(body) == [field] and isinstance(body[field], list)
        assert client.get("/").json() == []


def test_json_and_urlencoded_bodies_are_accepted(theos_server: RunningServer) -> None:
    with api(theos_server) as client:
        assert client.post("/create/", json={"name": "J"}).json()["name"] == "J"
        assert client.post("/create/", data={"name": "U"}).json()["name"] == "U"
        assert client.post("/create/", files={"name": (None, "M")}).json()["name"] == "M"
        assert client.post("/create/", content=b"[1]", headers={"Content-Type": "application/json"}).status_code == 400


# -- classes ------------------------------------------------------------------------


def test_class_create_validates_fields(theos_server: RunningServer) -> None:
    with api(theos_server) as client:
        ds = _dataset(client)
        car = client.post(f"/{ds}/classes/create/", data={"name": "Car", "color": "#4AFFBA"}).json()
        assert car == {"id": 0, "db_id": car["db_id"], "name": "Car", "color": "#4AFFBA", "with_text": False, "is_superclass": False}
        plate = client.post(f"/{ds}/classes/create/", data={"name": "Plate", "color": "#000000", "with_text": "true"}).json()
        assert plate["id"] == 1 and plate["with_text"] is True
        for data, field in [
            ({"color": "#4AFFBA"}, "name"),
            ({"name": "X"}, "color"),
            ({"name": "X", "color": "red"}, "color"),
            ({"name": "X", "color": "#4AFFBAA"}, "color"),
            ({"name": "X", "color": "#4AFFBA", "with_text": "yes"}, "with_text"),
        ]:
            response = client.post(f"/{ds}/classes/create/", data=data)
            assert response.status_code == 400 and field in response.json(), (data, response.text)
        assert len(client.get(f"/{ds}/").json()["classes"]) == 2


def test_class_edit(theos_server: RunningServer) -> None:
    with api(theos_server) as client:
        ds = _dataset(client)
        other = _dataset(client, "Other")
        car = client.post(f"/{ds}/classes/create/", data={"name": "Car", "color": "#4AFFBA"}).json()
        edited = client.post(f"/{ds}/classes/{car['db_id']}/edit/", data={"name": "Ferrari"}).json()
        assert edited["name"] == "Ferrari" and edited["color"] == "#4AFFBA"
        edited = client.post(f"/{ds}/classes/{car['db_id']}/edit/", data={"color": "#A8327F"}).json()
        assert edited["name"] == "Ferrari" and edited["color"] == "#A8327F"
        assert client.post(f"/{ds}/classes/{car['db_id']}/edit/").status_code == 400
        assert client.post(f"/{ds}/classes/{car['db_id']}/edit/", data={"color": "nope"}).status_code == 400
        assert client.post(f"/{other}/classes/{car['db_id']}/edit/", data={"name": "A"}).status_code == 404
        assert client.post(f"/{ds}/classes/999/edit/", data={"name": "A"}).status_code == 404
        assert client.get(f"/{ds}/").json()["classes"][0]["name"] == "Ferrari"


def _classes(client: httpx.Client, ds: int, names: list[str], with_text: bool = False) -> list[dict[str, Any]]:
    return [
        client.post(
            f"/{ds}/classes/create/", data={"name": n, "color": "#112233", "with_text": str(with_text).lower()}
        ).json()
        for n in names
    ]


def _box(class_id: int, x: float = 1, **extra: Any) -> dict[str, Any]:
    return {"class_id": class_id, "x": x, "y": 1, "width": 10, "height": 10, **extra}


def _set(client: httpx.Client, ds: int, external_id: str, labels: list[dict[str, Any]]) -> httpx.Response:
    return client.post(f"/{ds}/examples/external/{external_id}/labels/set/", data={"labels": json.dumps(labels)})


def test_class_delete_removes_labels_and_renumbers(populated: tuple[RunningServer, int]) -> None:
    server, ds = populated
    with api(server) as client:
        a, b, c, d = _classes(client, ds, ["A", "B", "C", "D"])
        assert _set(client, ds, "a/0", [_box(0), _box(1, 2), _box(2, 3), _box(3, 4)]).status_code == 200
        assert _set(client, ds, "a/1", [_box(1)]).status_code == 200
        response = client.post(f"/{ds}/classes/delete/", data={"db_ids": json.dumps([b["db_id"], d["db_id"]])})
        assert response.status_code == 200 and set(response.json()) == {"task_id"}
        task = wait_task(server, response.json()["task_id"])
        assert task["state"] == "SUCCESS" and task["complete"] is True and task["success"] is True
        classes = client.get(f"/{ds}/").json()["classes"]
        assert [(k["id"], k["db_id"], k["name"]) for k in classes] == [(0, a["db_id"], "A"), (1, c["db_id"], "C")]
        assert client.get(f"/{ds}/examples/external/a/0/").json()["labels"] == [_box(0), _box(1, 3)]
        only_b = client.get(f"/{ds}/examples/external/a/1/").json()
        assert only_b["labels"] == [] and only_b["labeled"] is False


def test_class_delete_and_merge_refuse_bad_db_ids(theos_server: RunningServer) -> None:
    with api(theos_server) as client:
        ds = _dataset(client)
        a, b = _classes(client, ds, ["A", "B"])
        for path, data in [
            ("delete", {}),
            ("delete", {"db_ids": "[]"}),
            ("delete", {"db_ids": "1,2"}),
            ("delete", {"db_ids": "[true]"}),
            ("delete", {"db_ids": "[999]"}),
            ("merge", {"db_ids": json.dumps([a["db_id"]]), "name": "M", "color": "#000000"}),
            ("merge", {"db_ids": json.dumps([a["db_id"], a["db_id"]]), "name": "M", "color": "#000000"}),
            ("merge", {"db_ids": json.dumps([a["db_id"], b["db_id"]]), "color": "#000000"}),
            ("merge", {"db_ids": json.dumps([a["db_id"], b["db_id"]]), "name": "M", "color": "000000"}),
        ]:
            response = client.post(f"/{ds}/classes/{path}/", data=data)
            assert response.status_code == 400, (path, data, response.text)
        assert len(client.get(f"/{ds}/").json()["classes"]) == 2


def test_class_merge_rewrites_labels(populated: tuple[RunningServer, int]) -> None:
    server, ds = populated
    with api(server) as client:
        a, b, c = _classes(client, ds, ["Car", "Van", "Bus"])
        assert _set(client, ds, "a/0", [_box(0), _box(1, 2), _box(2, 3)]).status_code == 200
        response = client.post(
            f"/{ds}/classes/merge/",
            data={"db_ids": json.dumps([a["db_id"], c["db_id"]]), "name": "Vehicle", "color": "#A8327F"},
        )
        task = wait_task(server, response.json()["task_id"])
        assert task["state"] == "SUCCESS"
        classes = client.get(f"/{ds}/").json()["classes"]
        assert [(k["id"], k["name"]) for k in classes] == [(0, "Van"), (1, "Vehicle")]
        assert classes[1]["db_id"] == task["result"]["db_id"] and classes[1]["color"] == "#A8327F"
        assert classes[0]["db_id"] == b["db_id"]
        assert client.get(f"/{ds}/examples/external/a/0/").json()["labels"] == [_box(1), _box(0, 2), _box(1, 3)]


# -- examples and labels ------------------------------------------------------------


def test_examples_pages(theos_server: RunningServer, image_http_server: StaticServer) -> None:
    web = image_http_server
    web.write("tiny.png", make_image(8, 8))
    entries = [{"url": web.url_for("tiny.png"), "split": "train", "external_id": f"t{i}"} for i in range(101)]
    entries.append({"url": web.url_for("tiny.png"), "split": "test"})
    with api(theos_server) as client:
        ds = _dataset(client)
        _upload(theos_server, web, ds, entries)
        first = client.get(f"/{ds}/examples/", params={"split": "train", "page": "1"}).json()
        assert set(first) == {"page", "page_count", "count", "examples"}
        assert (first["page"], first["page_count"], first["count"], len(first["examples"])) == (1, 2, 101, 100)
        second = client.post(f"/{ds}/examples/", files={"split": (None, "train"), "page": (None, "2")}).json()
        assert (second["page"], len(second["examples"])) == (2, 1)
        ids = {e["id"] for e in first["examples"]} | {e["id"] for e in second["examples"]}
        assert len(ids) == 101
        default = client.post(f"/{ds}/examples/").json()
        assert default["page"] == 1 and default["count"] == 101
        test = client.get(f"/{ds}/examples/", params={"split": "test"}).json()
        assert test["count"] == 1 and test["examples"][0]["external_id"] is None
        empty = client.get(f"/{ds}/examples/", params={"split": "valid"}).json()
        assert (empty["page_count"], empty["examples"]) == (0, [])
        assert client.get(f"/{ds}/examples/", params={"split": "dev"}).status_code == 400
        assert client.get(f"/{ds}/examples/", params={"page": "0"}).status_code == 400
        assert client.get(f"/{ds}/examples/", params={"page": "x"}).status_code == 400
        assert client.get(f"/{ds}/examples/", params={"page": "3"}).status_code == 404


def test_example_by_id_and_external_id_and_media(populated: tuple[RunningServer, int]) -> None:
    server, ds = populated
    with api(server) as client:
        by_ext = client.get(f"/{ds}/examples/external/a/1/").json()
        assert set(by_ext) == {"id", "external_id", "split", "image", "thumbnail", "width", "height", "labels", "labeled", "skipped"}
        assert (by_ext["external_id"], by_ext["split"], by_ext["width"], by_ext["height"]) == ("a/1", "train", 200, 100)
        assert (by_ext["labels"], by_ext["labeled"], by_ext["skipped"]) == ([], False, False)
        by_id = client.get(f"/{ds}/examples/{by_ext['id']}/").json()
        assert by_id == by_ext
        encoded = client.get(f"/{ds}/examples/external/{quote('a/1', safe='')}/").json()
        assert encoded == by_ext
        assert client.get(f"/{ds}/examples/external/a/9/").status_code == 404
        image = httpx.get(by_ext["image"])
        assert image.status_code == 200 and image.content == make_image(200, 100)
        assert by_ext["image"].startswith(server.url + "/")
        import io

        from PIL import Image

        thumb = httpx.get(by_ext["thumbnail"])
        assert thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size == (200, 100)  # never upscaled


# ids the path converter alone cannot carry: a leading or trailing '/', '//', and ids that
# look like the routes' own suffixes
AWKWARD_IDS = ["/lead", "trail/", "/both/", "a//b", "//", "/", "x/labels/set", "y/skip", "z/skip/", "%2F", "a b?c#d%/é"]


def test_awkward_external_ids_round_trip_through_the_client(
    theos_server: RunningServer, image_http_server: StaticServer
) -> None:
    from manifester.errors import NotFoundError
    from manifester.theos import TheosClient

    web = image_http_server
    url = web.write("awkward.png", make_image(40, 30))
    with api(theos_server) as client:
        ds = _dataset(client)
        _classes(client, ds, ["Car"])
    _upload(theos_server, web, ds, [{"url": url, "split": "train", "external_id": i} for i in AWKWARD_IDS])
    with TheosClient(api_url=theos_server.url, project_key=theos_server.project_key, api_token=theos_server.token) as theos:
        ids = {}
        for external_id in AWKWARD_IDS:
            example = theos.get_example(ds, external_id=external_id)
            assert example.external_id == external_id
            ids[external_id] = example.id
        assert len(set(ids.values())) == len(AWKWARD_IDS)  # each id found its own example
        for external_id in AWKWARD_IDS:
            labeled = theos.set_labels(ds, [_box(0)], external_id=external_id)
            assert (labeled.id, labeled.external_id, labeled.labeled) == (ids[external_id], external_id, True)
            skipped = theos.skip_example(ds, external_id=external_id)
            assert (skipped.id, skipped.skipped) == (ids[external_id], True)
        with pytest.raises(NotFoundError):
            theos.get_example(ds, external_id="/lead/")  # exact match: no slash is dropped or added


def test_thumbnail_is_downscaled(theos_server: RunningServer, image_http_server: StaticServer) -> None:
    import io

    from PIL import Image

    web = image_http_server
    with api(theos_server) as client:
        ds = _dataset(client)
        _upload(theos_server, web, ds, [{"url": web.write("big.png", make_image(600, 300)), "split": "train", "external_id": "big"}])
        example = client.get(f"/{ds}/examples/external/big/").json()
        assert (example["width"], example["height"]) == (600, 300)
        assert Image.open(io.BytesIO(httpx.get(example["thumbnail"]).content)).size == (256, 128)


def test_labels_set_and_skip(populated: tuple[RunningServer, int]) -> None:
    server, ds = populated
    with api(server) as client:
        _classes(client, ds, ["Car"])
        _classes(client, ds, ["Plate"], with_text=True)
        example = client.get(f"/{ds}/examples/external/a/0/").json()
        boxes = [
            {"class_id": 0, "x": 0, "y": 0, "width": 200, "height": 100},
            {"class_id": 1, "x": 10.5, "y": 20.25, "width": 30, "height": 10, "text": "AB-123"},
        ]
        response = client.post(f"/{ds}/examples/{example['id']}/labels/set/", data={"labels": json.dumps(boxes)})
        assert response.status_code == 200, response.text
        assert response.json()["labels"] == boxes and response.json()["labeled"] is True
        assert client.get(f"/{ds}/examples/{example['id']}/").json()["labels"] == boxes
        skipped = client.post(f"/{ds}/examples/external/a/2/skip/").json()
        assert (skipped["skipped"], skipped["labeled"], skipped["labels"]) == (True, True, [])
        skipped = client.post(f"/{ds}/examples/{example['id']}/skip/").json()
        assert skipped["skipped"] is True and skipped["labels"] == []
        again = _set(client, ds, "a/2", [_box(0)]).json()
        assert (again["skipped"], again["labeled"]) == (False, True)
        assert client.post(f"/{ds}/examples/9999/skip/").status_code == 404
        assert client.post(f"/{ds}/examples/external/nope/labels/set/", data={"labels": "[]"}).status_code == 404


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ("not json", "not valid JSON"),
        ('{"class_id": 0}', "labels:"),
        (json.dumps([{"class_id": 0, "x": 1, "y": 1, "width": 10}]), "height"),
        (json.dumps([_box(5)]), "class_id: 5 is not a class"),
        (json.dumps([_box(-1)]), "labels[0].class_id"),
        (json.dumps([_box(0, x=-1)]), "labels[0].x"),
        (json.dumps([_box(0, x=195)]), "does not fit inside the 200x100 image"),
        (json.dumps([{"class_id": 0, "x": 0, "y": 95, "width": 1, "height": 10}]), "does not fit"),
        (json.dumps([_box(0, text="hi")]), "with_text"),
        (json.dumps([_box(0, colour="red")]), "Additional properties"),
        (json.dumps([{"class_id": 0, "x": True, "y": 1, "width": 1, "height": 1}]), "labels[0].x"),
        (json.dumps([{"class_id": 0.5, "x": 1, "y": 1, "width": 1, "height": 1}]), "labels[0].class_id"),
        ('[{"class_id": 0, "x": NaN, "y": 1, "width": 1, "height": 1}]', "NaN"),
        ('[{"class_id": 0, "x": 1e999, "y": 1, "width": 1, "height": 1}]', "finite"),
        ('[{"class_id": 0, "x": ' + '9' * 5000 + ', "y": 1, "width": 1, "height": 1}]', "usable JSON"),
        ("", "required"),
    ],
)
def test_labels_refused_name_the_problem(populated: tuple[RunningServer, int], labels: str, fragment: str) -> None:
    server, ds = populated
    with api(server) as client:
        _classes(client, ds, ["Car"])
        assert _set(client, ds, "a/0", [_box(0)]).status_code == 200
        response = client.post(f"/{ds}/examples/external/a/0/labels/set/", data={"labels": labels})
        assert response.status_code == 400
        body = response.json()
        assert list(body) == ["labels"]
        assert fragment in body["labels"][0], body
        assert client.get(f"/{ds}/examples/external/a/0/").json()["labels"] == [_box(0)]  # nothing written


def test_labels_from_a_file_part(populated: tuple[RunningServer, int]) -> None:
    server, ds = populated
    with api(server) as client:
        _classes(client, ds, ["Car"])
        files = {"labels": ("labels.json", json.dumps([_box(0)]).encode(), "application/json")}
        response = client.post(f"/{ds}/examples/external/a/0/labels/set/", files=files)
        assert response.status_code == 200 and response.json()["labels"] == [_box(0)]


def test_token_is_hidden_from_repr(theos_server: RunningServer) -> None:
    assert theos_server.token not in repr(theos_server)
    assert "<hidden>" in repr(theos_server)


def test_odd_input_is_a_400_naming_the_field_never_a_500(theos_server: RunningServer) -> None:
    # Each of these once reached an unguarded int()/encode() and answered 500.
    with api(theos_server) as client:
        ds = _dataset(client)
        as_json = {"Content-Type": "application/json"}
        cases: list[tuple[httpx.Response, str]] = [
            (client.get(f"/{ds}/examples/", params={"page": "\u00b2"}), "page"),  # '²'.isdigit() is True
            (client.post("/create/", content=b'{"name": "\\ud800"}', headers=as_json), "name"),  # lone surrogate
            (client.post(f"/{ds}/upload/", content=b'{"manifest_url": "http://a\\ud800/m.json"}', headers=as_json),
             "manifest_url"),
            (client.post(f"/{ds}/classes/delete/", data={"db_ids": "[" + "9" * 5000 + "]"}), "db_ids"),
            (client.post(f"/{ds}/upload/", data={"manifest_url": "http://exa\u00e9mple..com/m.json"}), "manifest_url"),
            (client.post(f"/{ds}/upload/", data={"manifest_url": "http://[::1/m.json"}), "manifest_url"),
            (client.post(f"/{ds}/upload/", data={"manifest_url": "http://127.0.0.1:99999/m.json"}), "manifest_url"),
        ]
        for response, field in cases:
            assert response.status_code == 400, (field, response.text)
            assert field in response.json(), response.text
        assert [d["name"] for d in client.get("/").json()] == ["Vehicles"]  # nothing written
        assert client.get(f"/{ds}/").json()["counts"] == {"train": 0, "valid": 0, "test": 0}
