"""Pytest plugin: the local Theos-compatible server and a plain static HTTP server.

Fixtures
--------
``theos_server``
    A :class:`manifester.server.RunningServer` on a free loopback port with a fresh
    data directory; stopped after the test.
``theos_server_factory``
    ``factory(data_dir=None, **start_server_kwargs)`` starts servers (several, or one
    again on the same ``data_dir`` to test restarts); all are stopped after the test.
``image_http_server``
    A :class:`StaticServer`: stdlib ``http.server`` in a thread serving a temp dir.
    ``write(relpath, bytes)``, ``write_json(relpath, obj)``, ``url_for(relpath)``.
    Paths under ``/slow/<relpath>`` serve ``<relpath>`` only after ``release()`` (or
    teardown), to keep an upload running; ``/bytes/<n>`` streams ``n`` spaces with a
    Content-Length, ``/bytes/<n>?chunked`` without one.

Helpers: :func:`make_image` (real images via Pillow), :func:`corrupt_image`,
:func:`api` (an httpx client for the datasets prefix), :func:`wait_task`.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from manifester.server import RunningServer, start_server

__all__ = ["TERMINAL", "StaticServer", "api", "corrupt_image", "make_image", "wait_task"]

TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


def make_image(width: int = 64, height: int = 48, fmt: str = "PNG", color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real image of the given size and format, encoded by Pillow."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, fmt)
    return out.getvalue()


def corrupt_image() -> bytes:
    """A JPEG cut in half: the header parses, decoding the pixels fails."""
    from PIL import Image

    out = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(out, "JPEG", quality=95)
    data = out.getvalue()
    return data[: len(data) // 2]


def api(server: RunningServer) -> httpx.Client:
    """An httpx client whose base URL is ``<url>/v1/project/<key>/datasets`` with the token set."""
    return httpx.Client(
        base_url=f"{server.url}/v1/project/{server.project_key}/datasets",
        headers={"Authorization": f"Token {server.token}"},
        timeout=30,
    )


def wait_task(
    server: RunningServer,
    task_id: str,
    *,
    until: Callable[[dict[str, Any]], bool] = lambda t: t["state"] in TERMINAL,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll ``/v1/tasks/<id>/`` until ``until(task)`` holds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Token {server.token}"}
    with httpx.Client(timeout=10) as client:
        while True:
            response = client.get(f"{server.url}/v1/tasks/{task_id}/", headers=headers)
            assert response.status_code == 200, response.text
            task = response.json()
            if until(task):
                return task
            if time.monotonic() > deadline:
                pytest.fail(f"task {task_id} did not reach the expected state in {timeout} s: {task}")
            time.sleep(0.02)


class StaticServer:
    """A plain HTTP server for manifests and images (see module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.released = threading.Event()
        self.slow_waiting = 0
        self._count_lock = threading.Lock()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(outer.root), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path.startswith("/slow/"):
                    with outer._count_lock:
                        outer.slow_waiting += 1
                    outer.released.wait(60)
                    self.path = self.path[len("/slow") :]
                elif parts.path.startswith("/bytes/"):
                    self._send_bytes(int(parts.path.split("/")[2]), chunked=parts.query == "chunked")
                    return
                super().do_GET()

            def _send_bytes(self, n: int, *, chunked: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if chunked:
                    self.send_header("Connection", "close")  # body ends when the connection does
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(n))
                self.end_headers()
                block = b" " * 1_000_000
                try:
                    while n > 0:
                        self.wfile.write(block[: min(n, len(block))])
                        n -= len(block)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def url_for(self, relpath: str, *, slow: bool = False) -> str:
        """The URL of a file under the root (``slow=True``: held until :meth:`release`)."""
        return f"{self.url}{'/slow' if slow else ''}/{quote(relpath)}"

    def write(self, relpath: str, data: bytes) -> str:
        """Write a file under the root; return its URL."""
        path = self.root / unquote(relpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.url_for(relpath)

    def write_json(self, relpath: str, obj: Any) -> str:
        return self.write(relpath, json.dumps(obj).encode())

    def release(self) -> None:
        """Let every held ``/slow/`` request proceed (now and later)."""
        self.released.set()

    def stop(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def image_http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticServer]:
    server = StaticServer(tmp_path_factory.mktemp("web"))
    yield server
    server.stop()


@pytest.fixture
def theos_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def factory(data_dir: Path | None = None, **kwargs: Any) -> RunningServer:
        kwargs.setdefault("download_timeout", 10.0)
        server = start_server(data_dir or tmp_path_factory.mktemp("theos"), **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def theos_server(theos_server_factory: Callable[..., RunningServer]) -> RunningServer:
    return theos_server_factory()
