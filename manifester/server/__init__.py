"""A local Theos-compatible server: every call of the Theos Datasets API, for real.

It downloads manifests and images, decodes them with Pillow, stores images and
thumbnails under the data directory and keeps its state in SQLite, so a migration
can be rehearsed offline and in CI exactly as against Theos. The contract it follows
is ``api-contract.md`` (paths, fields, task object, errors); see the README section
"Local Theos-compatible server" for what it assumes where the public docs are silent.

    from manifester.server import start_server

    with start_server("theos-data") as server:      # free port on 127.0.0.1
        print(server.url, server.project_key)       # token in server.token

Needs the ``server`` extra (Flask, Pillow).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ..errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

    from .store import Store
    from .tasks import TaskRunner

__all__ = ["INTERRUPTED_REASON", "RunningServer", "is_loopback", "start_server"]

INTERRUPTED_REASON = "server restarted while the task was running; it did not finish (send it again)"
_log = logging.getLogger("manifester.server")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0")
    (True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RunningServer:
    """A started server: its base ``url``, credentials and ``data_dir``; ``stop()`` ends it.

    >>> server = start_server(tmp_path)   # doctest: +SKIP
    >>> server.url                        # doctest: +SKIP
    'http://127.0.0.1:54321'
    >>> server.stop()                     # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        url: str,
        project_key: str,
        token: str,
        data_dir: Path,
        http: BaseWSGIServer,
        store: Store,
        runner: TaskRunner,
    ) -> None:
        self.url = url
        self.project_key = project_key
        self.token = token
        self.data_dir = data_dir
        self._http = http
        self._store = store
        self._runner = runner
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.name = f"theos-server-{http.port}"

    def _start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the state; tasks still running are recorded as FAILURE at the next start."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._http.shutdown()
        self._http.server_close()
        self._runner.shutdown()
        self._store.close()

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from another thread or a signal handler)."""
        while not self._stopped.wait(0.5):
            pass

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer(url={self.url!r}, project_key={self.project_key!r}, token=<hidden>, data_dir={str(self.data_dir)!r})"


def start_server(
    data_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    project_key: str | None = None,
    token: str | None = None,
    download_workers: int = 8,
    download_timeout: float = 30.0,
    access_log: bool = False,
) -> RunningServer:
    """Start the server in a background thread; return once it accepts connections.

    ``port=0`` picks a free port. Key and token are generated with :mod:`secrets`
    when not given. State and media live under ``data_dir`` and survive a restart.

    >>> with start_server("theos-data") as server:   # doctest: +SKIP
    ...     httpx.get(f"{server.url}/v1/project/{server.project_key}/datasets/",
    ...               headers={"Authorization": f"Token {server.token}"}).json()
    []
    """
    try:
        from werkzeug.serving import WSGIRequestHandler, make_server

        from .app import ServerContext, create_app
        from .images import MediaStore
        from .store import Store
        from .tasks import TaskRunner
    except ImportError as exc:  # Flask or Pillow missing
        raise MissingExtraError("the local Theos-compatible server", "server") from exc

    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--data {root} is a file, not a directory", hint="pass a directory (it is created if missing)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {root}: {exc.strerror}", hint="check the path and permissions") from exc
    if project_key is not None and not project_key.strip():
        raise ConfigError("the project key is empty", hint="pass --project-key KEY or leave it out to generate one")
    if token is not None and not token.strip():
        raise ConfigError("the API token is empty", hint="pass --token TOKEN or leave it out to generate one")
    if project_key is not None and ("/" in project_key or any(ch.isspace() for ch in project_key)):
        raise ConfigError("the project key cannot contain '/' or spaces", hint="use letters, digits, '-' or '_'")
    key = project_key or secrets.token_hex(8)
    api_token = token or secrets.token_hex(20)

    store = Store(root)
    interrupted = store.fail_interrupted_tasks(INTERRUPTED_REASON)
    if interrupted:
        _log.warning("%d task(s) left running by the previous server were marked FAILURE", interrupted)
    media = MediaStore(root)
    runner = TaskRunner(store, media, download_workers=download_workers, download_timeout=download_timeout)
    app = create_app(ServerContext(store=store, media=media, runner=runner, project_key=key, token=api_token))

    class Handler(WSGIRequestHandler):
        # Request lines never contain the token (it travels in a header), but per-request
        # logs are noise for a rehearsal server: off unless asked for.
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if access_log:
                super().log_request(code, size)

    try:
        # Bind here rather than in werkzeug, which prints and calls sys.exit on a busy port.
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        store.close()
        runner.shutdown()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="pick another --port or stop what uses it"
        ) from exc
    with listener:  # werkzeug works on a duplicate of the descriptor
        http = make_server(
            host, listener.getsockname()[1], app, threaded=True, request_handler=Handler, fd=listener.fileno()
        )
    # A slow client must not keep the process alive. make_server is typed as returning
    # BaseWSGIServer; with threaded=True it is a ThreadedWSGIServer, which has the attribute.
    http.daemon_threads = True  # type: ignore[attr-defined]
    bound_port = http.port
    # A wildcard bind is reached through loopback from this machine.
    shown_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    server = RunningServer(
        url=f"http://{shown_host}:{bound_port}",
        project_key=key,
        token=api_token,
        data_dir=root,
        http=http,
        store=store,
        runner=runner,
    )
    server._start()
    return server
