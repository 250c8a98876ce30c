"""A seeded, repeatable fault-injecting HTTP proxy, for tests of the Theos client and pipeline.

It listens on a free 127.0.0.1 port, forwards every request to ``target`` (the local
Theos-compatible server) and, according to explicit rules or a seeded schedule,
answers some of them with a fault instead:

=================== ===========================================================================
kind                what the client sees
=================== ===========================================================================
``429``             429 with ``Retry-After: 0`` (the server never saw the request)
``429_no_retry``    429 without ``Retry-After``
``500`` ``502``     5xx with a JSON body; by default *before* forwarding (server never saw it)
``503``
``500_after``       the request **was** forwarded and processed, then the client gets a 500
``reset``           the connection is closed without any response (server never saw it)
``reset_after``     forwarded and processed, then the connection is closed without a response
``reset_mid_body``  forwarded; status line, headers and half of the body, then the socket closes
``slow``            forwarded; the answer is held ``slow_seconds`` (longer than the client timeout)
``truncated_json``  forwarded; a 200 whose JSON body is cut in half (Content-Length matches)
``html``            a 502 HTML error page, as a load balancer in front of an API sends
``html_200``        a 200 HTML page where JSON was expected (a captive portal / wrong URL)
``wrong_shape``     forwarded; a 200 whose body is valid JSON of another shape (``wrong_shape_body``)
=================== ===========================================================================

Faults "after" forwarding are the dangerous ones: the server acted, the client cannot
know. They are what proves "nothing sent twice".

Example::

    proxy = FaultProxy(theos.url, seed=7, rate=0.2)       # 20 % of requests, seeded kinds
    proxy.inject("reset_after", method="POST", path=r"/upload/$", times=1)  # plus one rule
    client = TheosClient(api_url=proxy.url, ...)
    ...
    proxy.injected        # Counter({'429': 3, 'reset_after': 1, ...})
    proxy.stop()

The schedule is a :class:`random.Random` seeded once and consulted once per request in
arrival order, so a sequential client sees the same faults on every run.
"""

from __future__ import annotations

import http.server
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import httpx
import pytest

__all__ = [
    "AFTER_FAULTS",
    "ALL_FAULTS",
    "BEFORE_FAULTS",
    "FaultProxy",
    "Rule",
    "fault_proxy",
    "fault_proxy_factory",
]

#: faults decided before the request reaches the server: it never saw the request
BEFORE_FAULTS: tuple[str, ...] = (
    "429",
    "429_no_retry",
    "500",
    "502",
    "503",
    "reset",
    "html",
)
#: faults applied to the server's answer: the server did act on the request
AFTER_FAULTS: tuple[str, ...] = (
    "500_after",
    "reset_after",
    "reset_mid_body",
    "slow",
    "truncated_json",
    "html_200",
    "wrong_shape",
)
ALL_FAULTS: tuple[str, ...] = BEFORE_FAULTS + AFTER_FAULTS

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
}

_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)


@dataclass
class Rule:
    """Inject ``fault`` on requests matching ``method``/``path`` (regex, searched in the path).

    ``skip`` matching requests pass first, then the next ``times`` matching ones get the
    fault (``times=None``: all of them).
    """

    fault: str
    method: str | None = None
    path: str | None = None
    times: int | None = 1
    skip: int = 0
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or re.search(self.path, path) is not None

    def take(self) -> bool:
        """Count one matching request; True when this one gets the fault."""
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class FaultProxy:
    """Forward HTTP to ``target``, injecting faults by rule or by a seeded schedule.

    ``rate``: probability that a request (matching ``paths``, a regex, if given) gets a
    fault drawn from ``kinds``. ``slow_seconds``: how long ``slow`` holds an answer.
    ``max_faults``: stop the random schedule after that many injections (rules still fire).
    """

    def __init__(
        self,
        target: str,
        *,
        seed: int = 0,
        rate: float = 0.0,
        kinds: Sequence[str] = ALL_FAULTS,
        paths: str | None = None,
        slow_seconds: float = 2.0,
        max_faults: int | None = None,
        wrong_shape_body: bytes = b'{"unexpected": ["shape"], "id": null}',
    ) -> None:
        unknown = set(kinds) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.target = target.rstrip("/")
        self.rate = rate
        self.kinds = tuple(kinds)
        self.paths = paths
        self.slow_seconds = slow_seconds
        self.max_faults = max_faults
        self.wrong_shape_body = wrong_shape_body
        self.rules: list[Rule] = []
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.requests = 0
        #: (method, path, fault or None) per request, in arrival order
        self.log: list[tuple[str, str, str | None]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60, follow_redirects=False)
        self._hook: Callable[[str, str], str | None] | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = (
                handle_one
            )

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()

    # -- configuration ---------------------------------------------------------------

    def inject(
        self,
        fault: str,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int | None = 1,
        skip: int = 0,
    ) -> Rule:
        """Add a rule (checked before the random schedule, in the order added)."""
        if fault not in ALL_FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        rule = Rule(fault, method, path, times, skip)
        with self._lock:
            self.rules.append(rule)
        return rule

    def on_request(self, hook: Callable[[str, str], str | None] | None) -> None:
        """``hook(method, path)`` may return a fault kind; called before rules and schedule."""
        self._hook = hook

    def clear(self) -> None:
        """No more faults: drop rules, set the rate to 0."""
        with self._lock:
            self.rules.clear()
            self.rate = 0.0
            self._hook = None

    def retarget(self, target: str) -> None:
        """Point at another server (e.g. the same server restarted on a new port)."""
        self.target = target.rstrip("/")

    def total_injected(self) -> int:
        return sum(self.injected.values())

    # -- request handling --------------------------------------------------------------

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            fault: str | None = None
            if self._hook is not None:
                fault = self._hook(method, path)
            if fault is None:
                for rule in self.rules:
                    if rule.matches(method, path) and rule.take():
                        fault = rule.fault
                        break
            if (
                fault is None
                and self.rate > 0
                and (self.paths is None or re.search(self.paths, path))
            ):
                # Draw both numbers on every eligible request so the sequence does not
                # depend on which earlier requests were faulted.
                roll, pick = self._rng.random(), self._rng.choice(self.kinds)
                if roll < self.rate and (
                    self.max_faults is None or self.total_injected() < self.max_faults
                ):
                    fault = pick
            if fault is not None:
                self.injected[fault] += 1
            self.log.append((method, path, fault))
            return fault

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        method, path = h.command, h.path
        fault = self._decide(method, path.split("?", 1)[0])

        if fault in ("429", "429_no_retry", "500", "502", "503"):
            status = int(fault[:3])
            headers = {"Retry-After": "0"} if fault == "429" else {}
            self._send(
                h, status, b'{"detail": "injected fault"}', "application/json", headers
            )
            return
        if fault == "html":
            self._send(h, 502, _HTML_PAGE, "text/html")
            return
        if fault == "reset":
            self._reset(h)
            return

        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            response = self._http.request(
                method, self.target + path, content=body, headers=headers
            )
        except httpx.HTTPError:
            self._reset(
                h
            )  # the server is down (e.g. restarting): the client sees a reset
            return
        with self._lock:
            self.forwarded += 1
        content = response.content
        ctype = response.headers.get("content-type", "application/json")
        passthrough = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in _HOP_BY_HOP | {"content-type", "date", "server"}
        }
        if fault == "500_after":
            self._send(
                h,
                500,
                b'{"detail": "injected fault after processing"}',
                "application/json",
            )
        elif fault == "reset_after":
            self._reset(h)
        elif fault == "reset_mid_body":
            self._send(h, response.status_code, content, ctype, passthrough, cut=True)
        elif fault == "slow":
            time.sleep(self.slow_seconds)
            self._send(h, response.status_code, content, ctype, passthrough)
        elif fault == "truncated_json":
            self._send(h, 200, content[: max(1, len(content) // 2)], "application/json")
        elif fault == "html_200":
            self._send(h, 200, _HTML_PAGE, "text/html")
        elif fault == "wrong_shape":
            self._send(h, 200, self.wrong_shape_body, "application/json")
        else:
            self._send(h, response.status_code, content, ctype, passthrough)

    @staticmethod
    def _send(
        h: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
        *,
        cut: bool = False,
    ) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            if cut:
                h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body[: len(body) // 2] if cut else body)
            h.wfile.flush()
            if cut:
                FaultProxy._reset(h)
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True

    @staticmethod
    def _reset(h: http.server.BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        try:
            h.wfile.flush()
            # SO_LINGER 0: close sends a TCP RST, the client sees "connection reset"
            h.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def fault_proxy_factory() -> Iterator[Callable[..., FaultProxy]]:
    """``factory(target_url, **FaultProxy kwargs)``; every proxy is stopped after the test."""
    started: list[FaultProxy] = []

    def factory(target: str, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(target, **kwargs)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()


@pytest.fixture
def fault_proxy(
    theos_server: Any, fault_proxy_factory: Callable[..., FaultProxy]
) -> FaultProxy:
    """A :class:`FaultProxy` (no faults yet) in front of the ``theos_server`` fixture."""
    return fault_proxy_factory(theos_server.url)
