"""The server's downloader against a server that drips bytes: deadline and stop hold on every read."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from manifester.server.images import FetchError, fetch


@pytest.fixture
def drip_url() -> Iterator[str]:
    """A URL whose response declares 1 MB and then sends one byte every 10 ms, forever below any read timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nContent-Type: image/png\r\n\r\n")
                try:
                    while not done.wait(0.01):
                        conn.sendall(b"x")
                except OSError:
                    pass  # the client gave up: what the tests want

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/drip.png"
    done.set()
    listener.close()
    thread.join(5)


# Before the fix, fetch asked httpx for 64 KiB chunks: httpx buffers until it has
# 64 KiB, so neither check ran for ~11 minutes (pytest-timeout would end the test).


def test_a_dripping_download_hits_the_deadline(drip_url: str) -> None:
    with httpx.Client(timeout=5) as client, pytest.raises(FetchError, match="took longer than"):
        fetch(client, drip_url, max_bytes=10_000_000, deadline_seconds=0.3, what="image")


def test_a_dripping_download_sees_the_stop_flag(drip_url: str) -> None:
    reads = 0

    def should_stop() -> bool:
        nonlocal reads
        reads += 1
        return reads > 3

    with httpx.Client(timeout=5) as client, pytest.raises(FetchError, match="stopped"):
        fetch(client, drip_url, max_bytes=10_000_000, deadline_seconds=600, should_stop=should_stop, what="image")
