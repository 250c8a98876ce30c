"""``manifester server``: starts, prints its URL and credentials as documented, stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

from manifester.cli import cli


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from manifester.cli import main; main()", "server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_banner(stream: IO[str]) -> dict[str, str]:
    lines: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if line.startswith("Local Theos-compatible server on "):
            lines["url"] = line.split(" on ", 1)[1].strip()
        elif ":" in line and line.startswith("  "):
            name, value = line.strip().split(":", 1)
            lines[name] = value.strip()
        if line.startswith("Press Ctrl-C"):
            return lines
    pytest.fail(f"server printed no banner: {lines}")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[str, str]:
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail("server did not stop on its signal")
    return out, err


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THEOS_", "MANIFESTER_"))}
    env.update(extra)
    return env


def test_generated_credentials_are_printed_once_and_work(tmp_path: Path) -> None:
    proc = _start(["--port", "0", "--data", str(tmp_path / "d")], _clean_env())
    assert proc.stdout is not None
    banner = _read_banner(proc.stdout)
    token = banner["API token"].split()[0]
    key = banner["project key"]
    url = banner["url"]
    response = httpx.get(f"{url}/v1/project/{key}/datasets/", headers={"Authorization": f"Token {token}"})
    assert response.status_code == 200 and response.json() == []
    out, err = _stop(proc)
    assert proc.returncode == 0
    assert "stopped" in out
    assert token not in out + err  # printed once in the banner, nowhere after
    assert (tmp_path / "d" / "theos.sqlite").is_file()


def test_credentials_from_environment_are_not_printed(tmp_path: Path) -> None:
    env = _clean_env(THEOS_PROJECT_KEY="envkey", THEOS_API_TOKEN="envtoken-secret")
    proc = _start(["--port", "0", "--data", str(tmp_path / "d"), "--access-log"], env)
    assert proc.stdout is not None
    banner = _read_banner(proc.stdout)
    assert banner["project key"] == "envkey" and "API token" not in banner
    ok = httpx.get(f"{banner['url']}/v1/project/envkey/datasets/", headers={"Authorization": "Token envtoken-secret"})
    assert ok.status_code == 200
    out, err = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 0
    assert "envtoken-secret" not in out + err
    assert "/v1/project/envkey/datasets/" in err  # the access log shows the request line, not headers


def test_non_loopback_bind_warns(tmp_path: Path) -> None:
    proc = _start(["--host", "0.0.0.0", "--port", "0", "--data", str(tmp_path / "d"), "--token", "t", "--project-key", "k"], _clean_env())
    assert proc.stdout is not None
    banner = _read_banner(proc.stdout)
    assert banner["url"].startswith("http://127.0.0.1:")
    _, err = _stop(proc)
    assert "warning: binding 0.0.0.0" in err


def test_port_in_use_is_a_clean_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", "from manifester.cli import main; main()", "server", "--port", str(port), "--data", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
        )
    assert done.returncode == 2
    assert "error: cannot listen on 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


def test_help_has_an_example() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["server", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "THEOS_API_TOKEN" in result.output
