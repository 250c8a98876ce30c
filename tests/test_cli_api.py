"""The API commands (datasets, classes, examples, tasks, upload): output, --json, options, errors.

A tiny canned HTTP server on 127.0.0.1 plays the Theos API (so the CLI's real client and
transport are used); the end-to-end checks at the bottom use the local Theos-compatible
server when its fixture is available, and the installed ``manifester`` script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from manifester.cli import cli
from manifester.cli.api import commands
from manifester.errors import AuthError, ConfigError, NotFoundError, TaskFailedError

TOKEN = "cli-SECRET-token-31337"
P = "/v1/project/pk/datasets"

DATASET = {"id": 42, "name": "Vehicles", "created": "2026-01-01T00:00:00Z",
           "counts": {"train": 8, "valid": 1, "test": 1},
           "classes": [{"id": 0, "db_id": 17, "name": "Car", "color": "#4AFFBA", "with_text": False,
                        "is_superclass": False}]}
EXAMPLE = {"id": 1234, "external_id": "cats/001.jpg", "split": "train", "image": "http://x/i.jpg",
           "thumbnail": "http://x/t.jpg", "width": 640, "height": 480, "labels": [], "labeled": False,
           "skipped": False}


def task_body(state: str, current: int, result: Any = None, total: int = 4) -> dict[str, Any]:
    done = state in {"SUCCESS", "FAILURE", "REVOKED"}
    return {"state": state, "complete": done, "success": (state == "SUCCESS") if done else None,
            "progress": {"pending": False, "current": current, "total": total, "percent": 100.0 * current / total},
            "result": result}


class Canned:
    """Answers keyed by (method, path); a list answer is consumed one item per request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = {}
        self.requests: list[tuple[str, str, dict[str, str], str]] = []

    def set(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.routes[(method, path)] = list(answers)

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        answers = self.routes.get((method, path))
        if not answers:
            return 404, {"detail": "Not found."}
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
def api() -> Iterator[tuple[Canned, str]]:
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            canned.requests.append((self.command, self.path, dict(self.headers.items()), body))
            if self.headers.get("authorization") != f"Token {TOKEN}":
                status, payload = 401, {"detail": "Invalid token."}
            else:
                status, payload = canned.answer(self.command, self.path)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield canned, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run(url: str, *args: str, token: str = TOKEN, input: str | None = None) -> Any:
    env = {"THEOS_API_URL": url, "THEOS_PROJECT_KEY": "pk", "THEOS_API_TOKEN": token, "MANIFESTER_CONFIG": ""}
    return CliRunner().invoke(cli, list(args), env=env, input=input)


def test_commands_are_registered() -> None:
    assert [c.name for c in commands] == ["datasets", "classes", "examples", "tasks", "upload"]


def test_every_command_has_help_with_an_example_and_no_token_flag() -> None:
    for group in commands:
        assert "Example" in (group.help or "")
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            assert "Example" in (command.help or ""), f"{group.name} {name}"
            opts = {o for p in command.params for o in getattr(p, "opts", [])}
            assert {"--json", "--api-url", "--project-key"} <= opts, f"{group.name} {name}"
            assert not any("token" in o for o in opts)


def test_datasets_list_human_and_json(api: tuple[Canned, str]) -> None:
    canned, url = api
    canned.set("GET", f"{P}/", (200, [DATASET, {"id": 43, "name": "Empty"}]))
    result = run(url, "datasets", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TRAIN", "VALID", "TEST", "CLASSES", "CREATED"]
    assert lines[1].split()[:6] == ["42", "Vehicles", "8", "1", "1", "1"]
    result = run(url, "datasets", "list", "--json")
    data = json.loads(result.output)
    assert data[0]["id"] == "42" and data[0]["counts"]["train"] == 8 and data[1]["name"] == "Empty"
    assert "raw" not in data[0]


def test_datasets_create_get_delete(api: tuple[Canned, str]) -> None:
    canned, url = api
    canned.set("POST", f"{P}/create/", (200, DATASET))
    canned.set("GET", f"{P}/42/", (200, DATASET))
    canned.set("POST", f"{P}/42/delete/", (200, {"deleted": True}))
    result = run(url, "datasets", "create", "Vehicles")
    assert result.output.strip() == "created dataset 42 (Vehicles)"
    assert 'name="name"\r\n\r\nVehicles' in canned.requests[-1][3]
    result = run(url, "datasets", "get", "42")
    assert "dataset 42: Vehicles" in result.output and "#4AFFBA" in result.output and "17" in result.output
    result = run(url, "datasets", "delete", "42", input="n\n")
    assert result.exit_code != 0 and not any(r[1].endswith("/delete/") for r in canned.requests)
    result = run(url, "datasets", "delete", "42", "--yes", "--json")
    assert json.loads(result.output) == {"deleted": "42"}


def test_options_on_group_and_command_override_the_environment(api: tuple[Canned, str]) -> None:
    canned, url = api
    canned.set("GET", "/v1/project/other/datasets/", (200, []))
    result = run("http://127.0.0.1:9", "datasets", "--api-url", url, "--project-key", "other", "list")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no datasets"
    result = run("http://127.0.0.1:9", "datasets", "list", "--api-url", url, "--project-key", "other")
    assert result.exit_code == 0, result.output


def test_config_file_supplies_settings(api: tuple[Canned, str], tmp_path: Path) -> None:
    canned, url = api
    canned.set("GET", f"{P}/", (200, []))
    config = tmp_path / "m.toml"
    config.write_text(f'[theos]\napi_url = "{url}"\nproject_key = "pk"\napi_token = "{TOKEN}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "datasets", "list"],
                                env={"THEOS_API_URL": "", "THEOS_PROJECT_KEY": "", "THEOS_API_TOKEN": ""})
    assert result.exit_code == 0, result.output


def test_classes_commands_and_task_waiting(api: tuple[Canned, str]) -> None:
    canned, url = api
    canned.set("POST", f"{P}/42/classes/create/", (200, DATASET["classes"][0]))  # type: ignore[index]
    canned.set("POST", f"{P}/42/classes/17/edit/", (200, {**DATASET["classes"][0], "name": "Ferrari"}))  # type: ignore[dict-item]
    canned.set("POST", f"{P}/42/classes/delete/", (200, {"task_id": "del-1"}))
    canned.set("POST", f"{P}/42/classes/merge/", (200, {"task_id": "merge-1"}))
    canned.set("GET", "/v1/tasks/del-1/", (200, task_body("PROGRESS", 1)), (200, task_body("SUCCESS", 4, {"deleted": 2})))
    canned.set("GET", "/v1/tasks/merge-1/", (200, task_body("FAILURE", 2, "classes are in use")))

    result = run(url, "classes", "create", "42", "--name", "Car", "--color", "#4AFFBA", "--with-text")
    assert "created class Car (id 0, db_id 17" in result.output
    assert 'name="with_text"\r\n\r\ntrue' in canned.requests[-1][3]
    result = run(url, "classes", "edit", "42", "17", "--name", "Ferrari", "--json")
    assert json.loads(result.output)["name"] == "Ferrari"
    result = run(url, "classes", "edit", "42", "17")
    assert result.exit_code == 2 and "--name" in result.output

    result = run(url, "classes", "delete", "42", "1", "4", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.output
    assert "task del-1: SUCCESS 4/4" in result.output
    assert 'name="db_ids"\r\n\r\n[1, 4]' in canned.requests[-3][3]
    result = run(url, "classes", "delete", "42", "1", "--no-wait")
    assert result.output.strip() == "del-1"
    result = run(url, "classes", "merge", "42", "1", "4", "--name", "Truck", "--color", "#A8327F", "--no-wait", "--json")
    assert json.loads(result.output) == {"task_id": "merge-1"}

    result = run(url, "classes", "merge", "42", "1", "4", "--name", "Truck", "--color", "#A8327F", "--poll-interval", "0.05")
    assert result.exit_code == 1
    assert "task merge-1: FAILURE" in result.output
    assert isinstance(result.exception, TaskFailedError)
    assert "classes are in use" in str(result.exception)


def test_examples_commands(api: tuple[Canned, str], tmp_path: Path) -> None:
    canned, url = api
    page = lambda n, items: (200, {"page": n, "page_count": 2, "count": 3, "examples": items})
    canned.set("POST", f"{P}/42/examples/", page(1, [EXAMPLE, {**EXAMPLE, "id": 1235, "external_id": "b"}]),
               page(2, [{**EXAMPLE, "id": 1236, "external_id": "c", "skipped": True}]),
               page(1, [EXAMPLE]))
    result = run(url, "examples", "list", "42", "--all", "--json")
    assert [e["external_id"] for e in json.loads(result.output)] == ["cats/001.jpg", "b", "c"]
    result = run(url, "examples", "list", "42", "--split", "valid")
    assert "cats/001.jpg" in result.output and "640x480" in result.output
    assert result.output.strip().endswith("page 1 of 2 (3 valid examples)")
    assert 'name="split"\r\n\r\nvalid' in canned.requests[-1][3]
    assert run(url, "examples", "list", "42", "--all", "--page", "2").exit_code == 2

    canned.set("GET", f"{P}/42/examples/external/cats%2F001.jpg/", (200, EXAMPLE))
    canned.set("GET", f"{P}/42/examples/1234/", (200, EXAMPLE))
    result = run(url, "examples", "get", "42", "--external-id", "cats/001.jpg")
    assert "example 1234 (external_id cats/001.jpg)" in result.output
    assert json.loads(run(url, "examples", "get", "42", "1234", "--json").output)["width"] == 640
    assert run(url, "examples", "get", "42").exit_code == 2
    assert run(url, "examples", "get", "42", "1234", "--external-id", "x").exit_code == 2

    boxes = [{"class_id": 0, "x": 1, "y": 2, "width": 3, "height": 4}]
    canned.set("POST", f"{P}/42/examples/1234/labels/set/", (200, {**EXAMPLE, "labels": boxes, "labeled": True}))
    canned.set("POST", f"{P}/42/examples/external/cats%2F001.jpg/skip/", (200, {**EXAMPLE, "skipped": True}))
    result = run(url, "examples", "labels", "42", "1234", "--labels", json.dumps(boxes))
    assert result.output.strip() == "set 1 label(s) on example 1234"
    labels_file = tmp_path / "boxes.json"
    labels_file.write_text(json.dumps(boxes))
    result = run(url, "examples", "labels", "42", "1234", "--labels-file", str(labels_file), "--json")
    assert json.loads(result.output)["labels"] == boxes
    result = run(url, "examples", "labels", "42", "1234", "--labels", "[{oops")
    assert result.exit_code == 1 and "not valid JSON" in str(result.exception)
    result = run(url, "examples", "labels", "42", "1234", "--labels-file", str(tmp_path / "missing.json"))
    assert isinstance(result.exception, ConfigError)
    result = run(url, "examples", "skip", "42", "--external-id", "cats/001.jpg")
    assert result.output.strip() == "skipped example 1234"


def test_tasks_and_upload(api: tuple[Canned, str]) -> None:
    canned, url = api
    result_body = {"created": 3, "duplicates": 1, "failed": [{"url": "https://b/x.jpg?X-Amz-Signature=zzz",
                                                               "external_id": "x.jpg", "error": "HTTP 403"}]}
    canned.set("POST", f"{P}/42/upload/", (200, {"task_id": "up-1"}))
    canned.set("GET", "/v1/tasks/up-1/", (200, task_body("PENDING", 0)), (200, task_body("PROGRESS", 2)),
               (200, task_body("SUCCESS", 4, result_body)))
    canned.set("POST", f"{P}/42/upload/stop/", (200, {"detail": "Upload stopped."}))
    result = run(url, "upload", "start", "42", "--manifest-url", "https://b/m.json?sig=1")
    assert result.output.strip() == "up-1"
    assert 'name="manifest_url"\r\n\r\nhttps://b/m.json?sig=1' in canned.requests[-1][3]
    result = run(url, "tasks", "wait", "up-1", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.output
    assert "task up-1: SUCCESS 4/4 (100.0%)" in result.output
    assert "created: 3, duplicates: 1, failed: 1" in result.output
    assert "x.jpg: HTTP 403" in result.output
    result = run(url, "tasks", "get", "up-1", "--json")
    task = json.loads(result.output)
    assert task["state"] == "SUCCESS" and task["result"]["created"] == 3 and task["total"] == 4
    # the failed image's presigned URL is in the task result: its signature is not printed
    assert task["result"]["failed"][0]["url"] == "https://b/x.jpg?<redacted>" and "zzz" not in result.output
    result = run(url, "upload", "start", "42", "--manifest-url", "https://b/m.json", "--wait", "--poll-interval", "0.05", "--json")
    assert json.loads(result.output)["state"] == "SUCCESS"
    assert run(url, "upload", "stop", "42").output.strip() == "stopped the upload of dataset 42"


def test_errors_are_library_errors(api: tuple[Canned, str]) -> None:
    canned, url = api
    result = run(url, "datasets", "get", "999")
    assert isinstance(result.exception, NotFoundError) and "dataset 999" in str(result.exception)
    result = run(url, "datasets", "list", token="wrong")
    assert isinstance(result.exception, AuthError)


def _script() -> str:
    return str(Path(sys.executable).parent / "manifester")


def test_installed_script_prints_clean_errors(api: tuple[Canned, str]) -> None:
    canned, url = api
    env = {**os.environ, "THEOS_API_URL": url, "THEOS_PROJECT_KEY": "pk", "THEOS_API_TOKEN": "wrong-" + TOKEN}
    env.pop("MANIFESTER_CONFIG", None)
    proc = subprocess.run([_script(), "datasets", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: list datasets: the Theos API refused the credentials")
    assert "THEOS_API_TOKEN" in proc.stderr and "Traceback" not in proc.stderr
    assert TOKEN not in proc.stderr + proc.stdout
    env.pop("THEOS_API_TOKEN")
    env["HOME"] = "/nonexistent"
    proc = subprocess.run([_script(), "datasets", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no Theos API token" in proc.stderr


# --------------------------------------------------------------------------- the local Theos server


@pytest.fixture
def live(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("theos_server")
    except pytest.FixtureLookupError:
        pytest.skip("the local Theos server fixture (tests/support/theos_server.py) is not available yet")


def test_cli_against_the_local_server(live: Any) -> None:
    env = {**os.environ, "THEOS_API_URL": live.url, "THEOS_PROJECT_KEY": live.project_key,
           "THEOS_API_TOKEN": live.token}
    env.pop("MANIFESTER_CONFIG", None)

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_script(), *args], env=env, capture_output=True, text=True, timeout=60)

    created = json.loads(sh("datasets", "create", "CLI live", "--json").stdout)
    ds_id = created["id"]
    klass = json.loads(sh("classes", "create", ds_id, "--name", "Car", "--color", "#4AFFBA", "--json").stdout)
    other = json.loads(sh("classes", "create", ds_id, "--name", "Bus", "--color", "#000000", "--json").stdout)
    merged = sh("classes", "merge", ds_id, str(klass["db_id"]), str(other["db_id"]), "--name", "Vehicle",
                "--color", "#123456", "--poll-interval", "0.05")
    assert merged.returncode == 0, merged.stderr
    assert "SUCCESS" in merged.stdout
    shown = json.loads(sh("datasets", "get", ds_id, "--json").stdout)
    assert [c["name"] for c in shown["classes"]] == ["Vehicle"]
    listed = sh("examples", "list", ds_id)
    assert listed.returncode == 0, listed.stderr
    missing = sh("examples", "get", ds_id, "--external-id", "nope.jpg")
    assert missing.returncode == 1 and "nope.jpg" in missing.stderr
    assert sh("datasets", "delete", ds_id, "--yes").returncode == 0
    gone = sh("datasets", "get", ds_id)
    assert gone.returncode == 1 and f"dataset {ds_id} not found" in gone.stderr
