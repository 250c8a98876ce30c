"""Uploads on the local Theos-compatible server: manifests, images, limits, busy, stop, restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from manifester.server import RunningServer
from tests.support.theos_server import (
    StaticServer,
    api,
    corrupt_image,
    make_image,
    wait_task,
)


def _dataset(server: RunningServer) -> int:
    with api(server) as client:
        return int(client.post("/create/", data={"name": "Uploads"}).json()["id"])


def _start(server: RunningServer, dataset_id: int, manifest_url: str) -> str:
    with api(server) as client:
        response = client.post(f"/{dataset_id}/upload/", data={"manifest_url": manifest_url})
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["task_id"]
    return str(response.json()["task_id"])


def _counts(server: RunningServer, dataset_id: int) -> dict[str, int]:
    with api(server) as client:
        return dict(client.get(f"/{dataset_id}/").json()["counts"])


def test_upload_imports_counts_duplicates_and_reports_failures(
    theos_server: RunningServer, image_http_server: StaticServer
) -> None:
    web = image_http_server
    good = [web.write(f"ok/{i}.jpg", make_image(40 + i, 30, "JPEG")) for i in range(4)]
    corrupt = web.write("bad/corrupt.jpg", corrupt_image())
    text = web.write("bad/text.png", b"this is not a png")
    missing = web.url_for("bad/missing.jpg")
    entries = [
        {"url": good[0], "split": "train", "external_id": "g0"},
        {"url": good[1], "split": "valid", "external_id": "g1"},
        {"url": good[2], "split": "test"},
        {"url": good[3], "split": "train", "external_id": "g0"},  # duplicate inside the manifest
        {"url": corrupt, "split": "train", "external_id": "c"},
        {"url": text, "split": "train"},
        {"url": missing, "split": "train", "external_id": "m"},
    ]
    ds = _dataset(theos_server)
    task = wait_task(theos_server, _start(theos_server, ds, web.write_json("m1.json", entries)))
    assert task["state"] == "SUCCESS" and task["complete"] is True and task["success"] is True
    assert task["progress"] == {"pending": False, "current": 7, "total": 7, "percent": 100.0}
    result = task["result"]
    assert (result["created"], result["duplicates"]) == (3, 1)
    failed = {f["url"]: f for f in result["failed"]}
    assert set(failed) == {corrupt, text, missing}
    assert failed[corrupt]["external_id"] == "c" and "decodable" in failed[corrupt]["error"]
    assert failed[text]["external_id"] is None and "decodable" in failed[text]["error"]
    assert failed[missing]["external_id"] == "m" and "404" in failed[missing]["error"]
    assert _counts(theos_server, ds) == {"train": 1, "valid": 1, "test": 1}

    # The same manifest again: the external ids already there are duplicates, the rest is new.
    again = wait_task(theos_server, _start(theos_server, ds, web.url_for("m1.json")))["result"]
    assert (again["created"], again["duplicates"]) == (1, 3)  # only the entry without external_id
    assert _counts(theos_server, ds) == {"train": 1, "valid": 1, "test": 2}


def test_upload_refuses_missing_or_bad_manifest_url(theos_server: RunningServer) -> None:
    ds = _dataset(theos_server)
    with api(theos_server) as client:
        for data in ({}, {"manifest_url": ""}, {"manifest_url": "file:///etc/passwd"}, {"manifest_url": "not a url"}):
            response = client.post(f"/{ds}/upload/", data=data)
            assert response.status_code == 400 and "manifest_url" in response.json(), data


def _failure(server: RunningServer, ds: int, manifest_url: str) -> str:
    task = wait_task(server, _start(server, ds, manifest_url))
    assert task["state"] == "FAILURE" and task["complete"] is True and task["success"] is False, task
    assert _counts(server, ds) == {"train": 0, "valid": 0, "test": 0}  # nothing imported
    assert isinstance(task["result"], str)
    return str(task["result"])


def test_invalid_manifests_fail_whole_and_name_the_entry(
    theos_server: RunningServer, image_http_server: StaticServer
) -> None:
    web = image_http_server
    ok = web.write("ok.png", make_image())
    ds = _dataset(theos_server)
    bad_split = [{"url": ok, "split": "train"}, {"url": ok, "split": "train"}, {"url": ok, "split": "dev"}]
    message = _failure(theos_server, ds, web.write_json("split.json", bad_split))
    assert "entry 2" in message and "split" in message and "dev" in message
    message = _failure(theos_server, ds, web.write_json("url.json", [{"url": "ftp://x/y.png", "split": "train"}]))
    assert "entry 0" in message and "url" in message
    message = _failure(theos_server, ds, web.write_json("extra.json", [{"url": ok, "split": "train", "x": 1}]))
    assert "entry 0" in message and "'x'" in message
    assert "not valid JSON" in _failure(theos_server, ds, web.write("broken.json", b'[{"url": '))
    assert "JSON array" in _failure(theos_server, ds, web.write_json("object.json", {"url": ok}))
    assert "404" in _failure(theos_server, ds, web.url_for("absent.json"))


def test_server_refuses_exactly_what_the_builder_refuses(
    theos_server: RunningServer, image_http_server: StaticServer
) -> None:
    # JSON Schema patterns are ECMA-262: "$" does not match before a final newline. A
    # plain jsonschema validator (Python re) let this URL through, then the download crashed.
    from manifester.validate import validate_manifest

    web = image_http_server
    entries = [{"url": web.write("ok.png", make_image()), "split": "train"}]
    entries.append({"url": entries[0]["url"] + "\n", "split": "train"})
    assert validate_manifest(entries)  # the builder refuses it...
    message = _failure(theos_server, _dataset(theos_server), web.write_json("newline.json", entries))
    assert "entry 1: url" in message  # ...and so does the server, naming the entry


def test_unrequestable_image_urls_are_per_image_failures(
    theos_server: RunningServer, image_http_server: StaticServer
) -> None:
    # These match the schema's URL pattern but httpx cannot request them; they once
    # crashed the whole upload as an internal error (and logged the URL).
    web = image_http_server
    bad = ["http://[::1/x.png", "http://exa\u00e9mple..com/x.png", "http://xn--a.example/x.png"]
    entries = [{"url": web.write("ok.png", make_image()), "split": "train"}]
    entries += [{"url": url, "split": "train"} for url in bad]
    task = wait_task(theos_server, _start(theos_server, _dataset(theos_server), web.write_json("bad.json", entries)))
    assert task["state"] == "SUCCESS", task
    assert task["result"]["created"] == 1
    failed = {f["url"]: f["error"] for f in task["result"]["failed"]}
    assert set(failed) == set(bad)
    assert all("not a requestable URL" in error and "x.png" not in error for error in failed.values())


def test_manifest_over_the_entry_limit_fails(theos_server: RunningServer, image_http_server: StaticServer) -> None:
    web = image_http_server
    entry = json.dumps({"url": web.url_for("ok.png"), "split": "train"}).encode()
    web.write("huge.json", b"[" + b",".join([entry] * 100_001) + b"]")
    message = _failure(theos_server, _dataset(theos_server), web.url_for("huge.json"))
    assert "100,001 entries" in message and "100,000" in message


def test_manifest_over_the_byte_limit_fails(theos_server: RunningServer, image_http_server: StaticServer) -> None:
    ds = _dataset(theos_server)
    declared = _failure(theos_server, ds, f"{image_http_server.url}/bytes/100000001")
    assert "100,000,000-byte limit" in declared
    streamed = _failure(theos_server, ds, f"{image_http_server.url}/bytes/100000001?chunked")
    assert "100,000,000-byte limit" in streamed


def _slow_manifest(web: StaticServer, fast: int, slow: int, name: str = "slow.json") -> str:
    entries: list[dict[str, Any]] = []
    for i in range(fast):
        entries.append({"url": web.write(f"fast/{i}.png", make_image(10, 10)), "split": "train", "external_id": f"f{i}"})
    for i in range(slow):
        web.write(f"held/{i}.png", make_image(10, 10))
        entries.append({"url": web.url_for(f"held/{i}.png", slow=True), "split": "valid", "external_id": f"s{i}"})
    return web.write_json(name, entries)


def _in_progress(fast: int, total: int) -> Callable[[dict[str, Any]], bool]:
    return lambda t: t["state"] == "PROGRESS" and t["progress"]["current"] >= fast and t["progress"]["total"] == total


def test_second_upload_is_409_and_stop_revokes_keeping_imports(
    theos_server: RunningServer, image_http_server: StaticServer
) -> None:
    web = image_http_server
    ds = _dataset(theos_server)
    task_id = _start(theos_server, ds, _slow_manifest(web, fast=3, slow=20))
    running = wait_task(theos_server, task_id, until=_in_progress(3, 23))
    assert running["complete"] is False and running["success"] is None
    assert running["progress"]["pending"] is False
    assert running["progress"]["percent"] == round(100 * running["progress"]["current"] / 23, 2)

    with api(theos_server) as client:
        busy = client.post(f"/{ds}/upload/", data={"manifest_url": web.url_for("slow.json")})
        assert busy.status_code == 409 and "detail" in busy.json()
        other = client.post("/create/", data={"name": "Other"}).json()["id"]  # other datasets are not blocked
        other_task = _start(theos_server, other, web.write_json("empty.json", []))
        assert wait_task(theos_server, other_task)["state"] == "SUCCESS"

        stopped = client.post(f"/{ds}/upload/stop/")
        assert stopped.status_code == 200 and stopped.json()["task_id"] == task_id
    task = wait_task(theos_server, task_id)
    assert task["state"] == "REVOKED" and task["complete"] is True and task["success"] is False
    assert _counts(theos_server, ds) == {"train": 3, "valid": 0, "test": 0}

    # Held downloads finish after the stop: they must not be imported.
    web.release()
    follow_up = wait_task(theos_server, _start(theos_server, ds, web.write_json("one.json", [
        {"url": web.url_for("fast/0.png"), "split": "test"}
    ])))
    assert follow_up["state"] == "SUCCESS"
    assert _counts(theos_server, ds) == {"train": 3, "valid": 0, "test": 1}
    with api(theos_server) as client:
        assert client.post(f"/{ds}/upload/stop/").json()["task_id"] is None  # nothing running: a no-op


def test_restart_keeps_data_and_fails_interrupted_task(
    theos_server_factory: Callable[..., RunningServer], image_http_server: StaticServer, tmp_path: Any
) -> None:
    web = image_http_server
    data_dir = tmp_path / "theos"
    first = theos_server_factory(data_dir, project_key="proj", token="tok")
    ds = _dataset(first)
    task_id = _start(first, ds, _slow_manifest(web, fast=2, slow=5))
    wait_task(first, task_id, until=_in_progress(2, 7))
    with api(first) as client:
        example = client.get(f"/{ds}/examples/external/f1/").json()
    first.stop()

    second = theos_server_factory(data_dir, project_key="proj", token="tok")
    web.release()
    task = wait_task(second, task_id)
    assert task["state"] == "FAILURE" and "restarted" in task["result"]
    assert _counts(second, ds) == {"train": 2, "valid": 0, "test": 0}
    with api(second) as client:
        again = client.get(f"/{ds}/examples/external/f1/").json()
        assert again["id"] == example["id"] and again["width"] == 10
        assert httpx.get(again["image"]).content == make_image(10, 10)
        # The dataset is free again: a new upload runs.
        new = client.post(f"/{ds}/upload/", data={"manifest_url": web.write_json("e.json", [])})
        assert new.status_code == 200


def test_delete_dataset_during_upload(theos_server: RunningServer, image_http_server: StaticServer) -> None:
    web = image_http_server
    ds = _dataset(theos_server)
    task_id = _start(theos_server, ds, _slow_manifest(web, fast=1, slow=3))
    wait_task(theos_server, task_id, until=_in_progress(1, 4))
    with api(theos_server) as client:
        assert client.post(f"/{ds}/delete/").status_code == 200
        assert client.get(f"/{ds}/").status_code == 404
    assert wait_task(theos_server, task_id)["state"] == "REVOKED"
    assert list((theos_server.data_dir / "media").rglob("*.*")) == []
