"""The curl command lines of the Theos Datasets page, run as they are against the local server.

Only the base URL and the ``<placeholders>`` are swapped; curl's own output flags are
appended to read the status code. Skipped when curl is not installed.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from manifester.server import RunningServer
from tests.support.theos_server import StaticServer, api, make_image

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

# Verbatim from the Theos Datasets page (line continuations included).
PAGE = {
    "create_dataset": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/create/ \
     -F "name=Vehicles" \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "list_datasets": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/ \
     -H "Authorization: Token <api_token>"''',
    "get_dataset": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/ \
     -H "Authorization: Token <api_token>"''',
    "delete_dataset": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/delete/ \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "upload": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/upload/ \
     -F "manifest_url=<manifest_url>" \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "task": r'''curl https://api.theos.ai/v1/tasks/<task_id>/ \
     -H "Authorization: Token <api_token>"''',
    "stop_upload": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/upload/stop/ \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "create_class": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/classes/create/ \
     -F "name=Car" \
     -F "color=#4AFFBA" \
     -F "with_text=false" \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "delete_classes": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/classes/delete/ \
     -F "db_ids=[1,4,6]" \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "edit_class": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/classes/<class_db_id>/edit/ \
     -F "name=Ferrari" \
     -F "color=#4AFFBA" \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "merge_classes": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/classes/merge/ \
     -F "db_ids=[1,4,6]" \
     -F "name=Truck" \
     -F "color=#A8327F" \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "examples": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/examples/ \
     -F "split=train" \
     -F "page=1" \
     -H "Authorization: Token <api_token>"''',
    "example": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/examples/<example_id>/ \
     -H "Authorization: Token <api_token>"''',
    "example_external": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/examples/external/<external_example_id>/ \
     -H "Authorization: Token <api_token>"''',
    "labels_set": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/examples/<example_id>/labels/set/ \
     -F "labels=<theos_json_labels>" \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "labels_set_external": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/examples/external/<external_example_id>/labels/set/ \
     -F "labels=<theos_json_labels>" \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "skip": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/examples/<example_id>/skip/ \
     -H "Authorization: Token <api_token>" \
     -X POST''',
    "skip_external": r'''curl https://api.theos.ai/v1/project/<project_key>/datasets/<dataset_id>/examples/external/<external_example_id>/skip/ \
     -H "Authorization: Token <api_token>" \
     -X POST''',
}


def _curl(name: str, server: RunningServer, **values: Any) -> tuple[int, Any]:
    """Run one page command with the base URL and placeholders swapped; return (status, JSON)."""
    subs = {"project_key": server.project_key, "api_token": server.token, **{k: str(v) for k, v in values.items()}}
    args = []
    # The shell joins backslash-newline continuations; split first so substituted JSON is not re-quoted.
    for arg in shlex.split(PAGE[name].replace("\\\n", " ")):
        arg = arg.replace("https://api.theos.ai", server.url)
        for key, value in subs.items():
            arg = arg.replace(f"<{key}>", value)
        assert "<" not in arg, f"unfilled placeholder in {arg!r}"
        args.append(arg)
    done = subprocess.run(
        [*args, "--silent", "--show-error", "--write-out", "\n%{http_code}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def _until_complete(server: RunningServer, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        status, task = _curl("task", server, task_id=task_id)
        assert status == 200
        if task["complete"]:
            return dict(task)
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


def test_every_page_command(theos_server: RunningServer, image_http_server: StaticServer) -> None:
    s, web = theos_server, image_http_server
    status, ds = _curl("create_dataset", s)
    assert status == 200 and ds["name"] == "Vehicles"
    dataset_id = ds["id"]
    status, listed = _curl("list_datasets", s)
    assert status == 200 and [d["id"] for d in listed] == [dataset_id]

    manifest = web.write_json(
        "manifest.json",
        [
            {"url": web.write("a.jpg", make_image(120, 80, "JPEG")), "split": "train", "external_id": "cam-1/frame-001"},
            {"url": web.write("b.png", make_image(50, 50)), "split": "valid"},
        ],
    )
    status, upload = _curl("upload", s, dataset_id=dataset_id, manifest_url=manifest)
    assert status == 200 and list(upload) == ["task_id"]
    task = _until_complete(s, upload["task_id"])
    assert task["state"] == "SUCCESS" and task["result"]["created"] == 2
    status, stop = _curl("stop_upload", s, dataset_id=dataset_id)
    assert status == 200 and stop["task_id"] is None

    status, car = _curl("create_class", s, dataset_id=dataset_id)
    assert status == 200 and (car["id"], car["db_id"], car["name"], car["with_text"]) == (0, 1, "Car", False)
    with api(s) as client:
        for name in ("B", "C", "D", "E", "F"):
            client.post(f"/{dataset_id}/classes/create/", data={"name": name, "color": "#000000"})
    status, edited = _curl("edit_class", s, dataset_id=dataset_id, class_db_id=2)
    assert status == 200 and (edited["db_id"], edited["name"], edited["color"]) == (2, "Ferrari", "#4AFFBA")

    status, page = _curl("examples", s, dataset_id=dataset_id)
    assert status == 200 and page["page_count"] == 1 and page["count"] == 1
    example = page["examples"][0]
    status, same = _curl("example", s, dataset_id=dataset_id, example_id=example["id"])
    assert status == 200 and same == example
    status, by_ext = _curl("example_external", s, dataset_id=dataset_id, external_example_id="cam-1/frame-001")
    assert status == 200 and by_ext == example

    labels = json.dumps([{"class_id": 5, "x": 10, "y": 10, "width": 20, "height": 20}])
    status, labeled = _curl("labels_set", s, dataset_id=dataset_id, example_id=example["id"], theos_json_labels=labels)
    assert status == 200 and labeled["labels"][0]["class_id"] == 5
    status, labeled = _curl(
        "labels_set_external", s, dataset_id=dataset_id, external_example_id="cam-1/frame-001", theos_json_labels=labels
    )
    assert status == 200 and labeled["labeled"] is True

    status, merge = _curl("merge_classes", s, dataset_id=dataset_id)  # db_ids [1,4,6]: Car, D, F
    assert status == 200
    assert _until_complete(s, merge["task_id"])["state"] == "SUCCESS"
    status, ds = _curl("get_dataset", s, dataset_id=dataset_id)
    assert [(c["id"], c["name"]) for c in ds["classes"]] == [(0, "Ferrari"), (1, "C"), (2, "E"), (3, "Truck")]
    status, by_ext = _curl("example_external", s, dataset_id=dataset_id, external_example_id="cam-1/frame-001")
    assert by_ext["labels"][0]["class_id"] == 3  # F (index 5) became Truck (index 3)

    status, skipped = _curl("skip", s, dataset_id=dataset_id, example_id=example["id"])
    assert status == 200 and skipped["skipped"] is True
    status, skipped = _curl("skip_external", s, dataset_id=dataset_id, external_example_id="cam-1/frame-001")
    assert status == 200 and skipped["labels"] == []

    status, _ = _curl("delete_dataset", s, dataset_id=dataset_id)
    assert status == 200
    status, missing = _curl("get_dataset", s, dataset_id=dataset_id)
    assert status == 404 and missing == {"detail": "Not found."}


def test_page_delete_classes_command(theos_server_factory: Callable[..., RunningServer]) -> None:
    s = theos_server_factory()
    with api(s) as client:
        dataset_id = client.post("/create/", data={"name": "D"}).json()["id"]
        for name in "ABCDEF":
            client.post(f"/{dataset_id}/classes/create/", data={"name": name, "color": "#000000"})
    status, deleted = _curl("delete_classes", s, dataset_id=dataset_id)
    assert status == 200
    assert _until_complete(s, deleted["task_id"])["state"] == "SUCCESS"
    status, ds = _curl("get_dataset", s, dataset_id=dataset_id)
    assert [(c["id"], c["db_id"], c["name"]) for c in ds["classes"]] == [(0, 2, "B"), (1, 3, "C"), (2, 5, "E")]
    status, wrong = _curl("get_dataset", s, dataset_id=dataset_id, api_token="wrong")
    assert status == 401
