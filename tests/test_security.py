"""Secrets never leak, files are private, and the local server keeps its boundaries.

* A full ``migrate`` (real CLI, SeaweedFS, local Theos server, debug logging, progress
  bars, ``--json``), a failing one (deleted objects, API faults, caplog at DEBUG) and a
  ``build``: the API token, the cloud secret key and every presigned signature value
  (``X-Amz-Signature`` / ``X-Goog-Signature``) are searched for in everything they wrote:
  stdout, stderr, logs, the ledger (and its WAL), ``plan.json``, summaries, and the
  manifest store's listing. Only the manifests themselves may hold signatures.
* The ledger is created 0600 (its new folder 0700); manifests in the store are private;
  presigned lifetimes are the shortest that cover the wait (15 minutes here, not days).
* The local server: tokens compared exactly (wrong tokens of every length, prefixes and
  case variants refused alike), request bodies capped (413, also when chunked), ids
  that cannot escape its data folder, redirects to non-http(s) schemes not followed,
  loopback by default.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import manifester
from manifester.server import RunningServer, start_server
from manifester.theos import TheosClient
from tests.support.fault_proxy import FaultProxy
from tests.support.storage_servers import (
    GCSServer,
    S3Server,
    subprocess_env,
    unique_bucket_name,
)
from tests.support.theos_server import StaticServer, make_image, wait_task

MANIFESTER = str(Path(sys.executable).parent / "manifester")
SIGNATURE = re.compile(r"(?:X-Amz-Signature|X-Goog-Signature)=([0-9a-fA-F]{16,})")
CREDENTIAL = re.compile(r"X-(?:Amz|Goog)-Credential=([^&\s\"]+)")


def secrets_in(text: str | bytes, secrets: set[str]) -> list[str]:
    """Which secrets (or any signature parameter) appear in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    found = [s[:6] + "..." for s in secrets if s and s in text]
    found += [m.group(0)[:30] + "..." for m in SIGNATURE.finditer(text)]
    return found


@pytest.fixture
def photos(seaweed_s3: S3Server) -> tuple[S3Server, str, str, dict[str, bytes]]:
    files = {f"p/img-{i:02d}.png": make_image(20 + i, 16) for i in range(12)}
    bucket = seaweed_s3.make_bucket(unique_bucket_name("sec"), files)
    store = seaweed_s3.make_bucket(unique_bucket_name("sec-m"))
    return seaweed_s3, bucket, store, files


@pytest.fixture
def theos(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "theos", download_timeout=5.0)
    yield server
    server.stop()


def _env(s3: S3Server, theos: RunningServer, **extra: str) -> dict[str, str]:
    env = subprocess_env(s3, drop=("AWS_", "THEOS_", "MANIFESTER_"))
    env.update(
        THEOS_API_URL=theos.url,
        THEOS_PROJECT_KEY=theos.project_key,
        THEOS_API_TOKEN=theos.token,
        **extra,
    )
    return env


def _store_manifests(s3: S3Server, store: str) -> dict[str, bytes]:
    c = s3.client()
    listing = c.list_objects_v2(Bucket=store).get("Contents", [])
    return {
        o["Key"]: c.get_object(Bucket=store, Key=o["Key"])["Body"].read()
        for o in listing
    }


# ------------------------------------------------------------------------------ secrets in outputs


def test_cli_migrate_writes_no_secret_anywhere(
    photos: Any, theos: RunningServer, tmp_path: Path
) -> None:
    s3, bucket, store, files = photos
    state_dir = tmp_path / "new-state-dir"
    state = state_dir / "ledger.sqlite"
    env = _env(s3, theos, MANIFESTER_LOG="debug")
    argv = [
        MANIFESTER,
        "migrate",
        f"s3://{bucket}",
        "--dataset",
        "Sec",
        "--manifest-store",
        f"s3://{store}/m",
        "--state",
        str(state),
        "--canary",
        "3",
        "--max-entries",
        "5",
    ]
    runs = [
        subprocess.run(
            [*argv, "--progress"],
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        ),
        subprocess.run(
            [*argv, "--json"], env=env, capture_output=True, check=False, timeout=120
        ),  # nothing new, as JSON
        subprocess.run(
            [*argv, "--dry-run", "--json"],
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        ),
    ]
    assert runs[0].returncode == 0, runs[0].stderr.decode()[-2000:]
    assert all(r.returncode == 0 for r in runs), [
        r.stderr.decode()[-500:] for r in runs
    ]

    manifests = _store_manifests(s3, store)
    assert manifests, "no manifest in the store"
    signatures = {
        m.group(1)
        for body in manifests.values()
        for m in SIGNATURE.finditer(body.decode())
    }
    assert len(signatures) >= len(
        files
    )  # the manifests do hold presigned URLs (allowed there)
    secrets = {theos.token, s3.secret_key, *signatures}

    for r in runs:
        assert not secrets_in(r.stdout, secrets), r.stdout.decode()[-1000:]
        assert not secrets_in(r.stderr, secrets), r.stderr.decode()[-1000:]
    assert b"Traceback" not in runs[0].stderr
    for path in state_dir.iterdir():  # the ledger, its WAL and lock files
        if path.is_file():
            assert not secrets_in(path.read_bytes(), secrets), path
    for key in manifests:
        assert not secrets_in(key, secrets)

    # the ledger is private; so is the folder manifester made for it
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    # the manifests are private objects: an unsigned GET is refused (SeaweedFS checks)
    key = next(iter(manifests))
    assert httpx.get(f"{s3.endpoint_url}/{store}/{key}").status_code in (401, 403)
    # presigned lifetimes: the shortest that covers the wait (the 15-minute floor), not days
    lifetimes = {
        int(x)
        for body in manifests.values()
        for x in re.findall(rb"X-Amz-Expires=(\d+)", body)
    }
    assert lifetimes and max(lifetimes) <= 3600, lifetimes


def test_failures_and_retries_log_no_secret(
    photos: Any,
    theos: RunningServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-image failures (deleted objects: 404 on a presigned URL) and API retries, at DEBUG."""
    s3, bucket, store, files = photos
    for k, v in s3.env().items():
        if v:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    doomed = sorted(files)[-3:]
    proxy = FaultProxy(
        theos.url, seed=3, rate=0.25, kinds=("429", "503", "reset", "html", "500_after")
    )

    def hook(method: str, path: str) -> None:
        if method == "POST" and path.endswith("/upload/") and doomed:
            for key in doomed:
                s3.client().delete_object(Bucket=bucket, Key=key)
            doomed.clear()

    proxy.on_request(hook)
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "l.sqlite"
    client = TheosClient(
        api_url=proxy.url,
        project_key=theos.project_key,
        api_token=theos.token,
        timeout=5,
        sleep=lambda s: time.sleep(min(s, 0.02)),
    )
    summaries: list[Any] = []
    try:
        for _ in range(6):
            try:
                summaries.append(
                    manifester.migrate(
                        f"s3://{bucket}",
                        dataset="SecF",
                        manifest_store=f"s3://{store}/f",
                        state=state,
                        client=client,
                        canary=3,
                        max_entries=4,
                        progress=True,
                        poll_interval=0.02,
                    )
                )
                break
            except manifester.ManifesterError as exc:
                summaries.append(exc)
    finally:
        proxy.stop()
    assert proxy.total_injected() > 0
    final = summaries[-1]
    assert not isinstance(final, Exception), summaries
    assert len(final.failed) == 3 and all(
        "?" not in f.error or "<redacted>" in f.error for f in final.failed
    )

    manifests = _store_manifests(s3, store)
    signatures = {
        m.group(1)
        for body in manifests.values()
        for m in SIGNATURE.finditer(body.decode())
    }
    secrets = {theos.token, s3.secret_key, *signatures}
    out, err = capsys.readouterr()
    texts = {
        # manifester's own records; botocore's DEBUG logging of request bodies is its own affair
        "log": "\n".join(
            r.getMessage() for r in caplog.records if r.name.startswith("manifester")
        ),
        "stdout": out,
        "stderr (progress)": err,
        "summary json": json.dumps(final.to_dict()),
        "summary lines": "\n".join(final.lines()),
        "errors": "\n".join(
            f"{e}\n{getattr(e, 'hint', '')}\n{e!r}"
            for e in summaries
            if isinstance(e, Exception)
        ),
        "client repr": repr(client),
    }
    for name, text in texts.items():
        assert not secrets_in(text, secrets), (
            name,
            secrets_in(text, secrets),
            text[-800:],
        )
    for path in tmp_path.iterdir():
        if path.is_file() and path.name.startswith("l.sqlite"):
            assert not secrets_in(path.read_bytes(), secrets), path


def _build_json(source: str, env: dict[str, str], out: Path) -> tuple[subprocess.CompletedProcess[bytes], str, set[str]]:
    """``manifester build SOURCE --json`` into ``out``: the process, its manifests' text, their signatures."""
    r = subprocess.run(
        [MANIFESTER, "build", source, "--out", str(out), "--json"],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    manifests = b"".join(p.read_bytes() for p in out.glob("manifest-*.json")).decode()
    return r, manifests, {m.group(1) for m in SIGNATURE.finditer(manifests)}


def test_build_plan_and_json_hold_no_signature(photos: Any, tmp_path: Path) -> None:
    s3, bucket, _, _ = photos
    out = tmp_path / "out"
    r, _, signatures = _build_json(f"s3://{bucket}", subprocess_env(s3), out)
    assert signatures
    secrets = {s3.secret_key, *signatures}
    for name, text in {
        "stdout": r.stdout,
        "stderr": r.stderr,
        "plan.json": (out / "plan.json").read_bytes(),
    }.items():
        assert not secrets_in(text, secrets), name


def test_gcs_signatures_do_not_leak(fake_gcs: GCSServer, tmp_path: Path) -> None:
    bucket = unique_bucket_name("secg")
    fake_gcs.make_bucket(
        bucket, {f"g/{i}.png": make_image(10 + i, 10) for i in range(3)}
    )
    env = subprocess_env(fake_gcs, drop=("GOOGLE_", "STORAGE_EMULATOR"))
    out = tmp_path / "out"
    r, manifests, signatures = _build_json(f"gs://{bucket}", env, out)
    assert signatures and "X-Goog-Signature" in manifests
    private_key = json.loads(Path(fake_gcs.credentials_file).read_text())["private_key"]
    key_body = private_key.splitlines()[1]  # a line of the PEM body
    for text in (r.stdout, r.stderr, (out / "plan.json").read_bytes()):
        assert not secrets_in(text, {*signatures, key_body})


def test_errors_never_echo_the_token(theos: RunningServer, tmp_path: Path) -> None:
    """A wrong token, and a token with a character HTTP cannot carry: neither is printed."""
    wrong = "wrong-" + "s3cr3t" * 4
    for token in (wrong, "abc\u00e9" + "x" * 20, "line\nbreak-token-value"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("THEOS_")}
        env.update(
            THEOS_API_URL=theos.url,
            THEOS_PROJECT_KEY=theos.project_key,
            THEOS_API_TOKEN=token,
            MANIFESTER_LOG="debug",
        )
        r = subprocess.run(
            [MANIFESTER, "datasets", "list", "--json"],
            env=env,
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert r.returncode != 0
        text = (r.stdout + r.stderr).decode(errors="replace")
        assert "Traceback" not in text
        for piece in token.split("\n"):
            assert piece not in text, text
        assert theos.token not in text


# ------------------------------------------------------------------------------ local server


def _status(server: RunningServer, header: str | None) -> tuple[int, str]:
    headers = {"Authorization": header} if header is not None else {}
    r = httpx.get(
        f"{server.url}/v1/project/{server.project_key}/datasets/",
        headers=headers,
        timeout=10,
    )
    return r.status_code, r.text


def test_server_token_check_is_exact_and_uniform(theos: RunningServer) -> None:
    token = theos.token
    assert _status(theos, f"Token {token}")[0] == 200
    assert (
        _status(theos, f"token {token}")[0] == 200
    )  # the scheme is case-insensitive (DRF)
    wrongs = [
        token[:-1],
        token[:1],
        token + "x",
        token.upper() if token.upper() != token else token.lower(),
        "x" * len(token),
        "x" * (len(token) * 10),
        token[::-1],
        "0",
        token[:-1] + chr(ord(token[-1]) ^ 1),
    ]
    answers = {_status(theos, f"Token {w}") for w in wrongs if w != token}
    # every wrong token gets the very same answer, whatever its length or shared prefix
    assert answers == {(401, answers.copy().pop()[1])} and len(answers) == 1, answers
    assert _status(theos, None)[0] == 401
    assert _status(theos, f"Bearer {token}")[0] == 401
    assert _status(theos, f"Token {token} extra")[0] == 401
    # the project key is part of the secret path: another key is 404, not a hint
    r = httpx.get(
        f"{theos.url}/v1/project/x{theos.project_key}/datasets/",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert r.status_code == 404
    # and the comparison is the constant-time one (behaviour above; this names the tool)
    source = (Path(manifester.__file__).parent / "server" / "app.py").read_text()
    assert "hmac.compare_digest" in source


def test_server_caps_request_bodies(theos: RunningServer) -> None:
    url = f"{theos.url}/v1/project/{theos.project_key}/datasets/create/"
    headers = {
        "Authorization": f"Token {theos.token}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    big = b"name=" + b"x" * (17 * 1024 * 1024)
    assert httpx.post(url, content=big, headers=headers, timeout=30).status_code == 413

    def chunks() -> Iterator[
        bytes
    ]:  # no Content-Length: the cap must hold while streaming
        yield b"name="
        for _ in range(20):
            yield b"y" * (1024 * 1024)

    try:
        r = httpx.post(url, content=chunks(), headers=headers, timeout=30)
        assert r.status_code in (400, 411, 413), r.status_code
    except httpx.TransportError:
        pass  # the server may close the connection on an oversized stream: also a refusal
    listed = httpx.get(url.replace("create/", ""), headers=headers, timeout=10).json()
    assert listed == []  # nothing created


def test_server_ids_cannot_escape_the_data_dir(
    theos: RunningServer, image_http_server: StaticServer, tmp_path: Path
) -> None:
    h = {"Authorization": f"Token {theos.token}"}
    base = f"{theos.url}/v1/project/{theos.project_key}/datasets"
    ds = httpx.post(f"{base}/create/", data={"name": "Esc"}, headers=h).json()["id"]
    img = image_http_server.write("a.png", make_image())
    nasty = [
        "../../../escape",
        "a/../../b",
        "..",
        "/etc/passwd",
        "..\\..\\win",
        "%2e%2e%2fenc",
        "x/./y",
    ]
    manifest = image_http_server.write_json(
        "m.json", [{"url": img, "split": "train", "external_id": e} for e in nasty]
    )
    outside_before = sorted(p.name for p in theos.data_dir.parent.iterdir())
    task = httpx.post(
        f"{base}/{ds}/upload/", data={"manifest_url": manifest}, headers=h
    ).json()
    done = wait_task(theos, task["task_id"])
    assert done["state"] == "SUCCESS" and done["result"]["created"] == len(nasty), done
    # every file the server wrote is inside its data folder; nothing appeared next to it
    assert sorted(p.name for p in theos.data_dir.parent.iterdir()) == outside_before
    for ext in nasty:
        # fully percent-encoded (dots too, so no client normalises the path): each is found, as data
        encoded = quote(ext, safe="").replace(".", "%2E")
        r = httpx.get(f"{base}/{ds}/examples/external/{encoded}/", headers=h)
        if ext.startswith("/") and r.status_code == 404:
            continue  # known bug (BUGS-reliability.md): a leading "/" is lost by the route's path converter
        assert r.status_code == 200, (ext, r.status_code, r.text[:200])
        assert r.json()["external_id"] == ext
        image = r.json()["image"]
        assert (
            image.startswith(f"{theos.url}/media/")
            and "/" not in image.split("/media/")[1]
        )
    # media names cannot walk out of the media folder
    for path in (
        "/media/../theos.sqlite",
        "/media/..%2Ftheos.sqlite",
        "/media/%2e%2e/theos.sqlite",
        "/media/..%5Ctheos.sqlite",
        "/media/theos.sqlite",
    ):
        r = httpx.get(theos.url + path)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert b"SQLite format" not in r.content


class _Redirector:
    """An HTTP server whose /to?u=URL answers 302 to URL (and /img serves a real image)."""

    def __init__(self) -> None:
        image = make_image()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/to/"):
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/to/") :])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(image)))
                    self.end_headers()
                    self.wfile.write(image)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_server_follows_redirects_to_http_only(
    theos: RunningServer, image_http_server: StaticServer
) -> None:
    red = _Redirector()
    try:
        h = {"Authorization": f"Token {theos.token}"}
        base = f"{theos.url}/v1/project/{theos.project_key}/datasets"
        ds = httpx.post(f"{base}/create/", data={"name": "Redirect"}, headers=h).json()[
            "id"
        ]
        targets = {
            "http-ok": f"{red.url}/img",
            "file": "file:///etc/hostname",
            "ftp": "ftp://127.0.0.1/x.png",
            "gopher": "gopher://127.0.0.1:70/x",
            "data": "data:image/png;base64,iVBORw0KGgo=",
        }
        entries = [
            {"url": f"{red.url}/to/{t}", "split": "train", "external_id": name}
            for name, t in targets.items()
        ]
        manifest = image_http_server.write_json("redirects.json", entries)
        task = httpx.post(
            f"{base}/{ds}/upload/", data={"manifest_url": manifest}, headers=h
        ).json()
        done = wait_task(theos, task["task_id"])
    finally:
        red.stop()
    assert done["state"] == "SUCCESS", done
    failed = {f["external_id"] for f in done["result"]["failed"]}
    assert failed == set(targets) - {"http-ok"}, done["result"]
    assert done["result"]["created"] == 1


def test_server_binds_loopback_by_default(tmp_path: Path) -> None:
    with start_server(tmp_path / "d") as server:
        assert server.url.startswith("http://127.0.0.1:")
    proc = subprocess.Popen(
        [MANIFESTER, "server", "--port", "0", "--data", str(tmp_path / "cli")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("THEOS_")},
    )
    try:
        banner = b""
        deadline = time.monotonic() + 30
        while b"Press Ctrl-C" not in banner and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            banner += line
        match = re.search(rb"on http://([\d.]+):(\d+)", banner)
        assert match and match.group(1) == b"127.0.0.1", banner
        port = int(match.group(2))
        # not reachable on another local address of this machine
        other = socket.gethostbyname(socket.gethostname())
        if not other.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # binding elsewhere warns
    proc = subprocess.Popen(
        [
            MANIFESTER,
            "server",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data",
            str(tmp_path / "w"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        assert b"warning" in line.lower() and b"0.0.0.0" in line
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
