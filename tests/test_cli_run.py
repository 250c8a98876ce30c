"""`manifester migrate` / `manifester ingest` on the command line: JSON, exit codes, config file."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from manifester.cli import main
from manifester.ledger import Ledger
from tests.support.storage_servers import S3Server, unique_bucket_name
from tests.test_migrate import PHOTOS, theos

_ = theos


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def setup(s3_env: S3Server, theos: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    bucket = unique_bucket_name("cli")
    s3_env.seed_dir(bucket, PHOTOS / "animals")
    store = unique_bucket_name("climanifests")
    s3_env.make_bucket(store)
    monkeypatch.setenv("THEOS_API_URL", theos.url)
    monkeypatch.setenv("THEOS_PROJECT_KEY", theos.project_key)
    monkeypatch.setenv("THEOS_API_TOKEN", theos.token)
    return {"bucket": bucket, "store": store, "state": str(tmp_path / "l.sqlite"), "token": theos.token}


def test_migrate_json_then_ingest_from_config_says_nothing_new(
    setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["migrate", f"s3://{setup['bucket']}", "--dataset", "Cli", "--manifest-store", f"s3://{setup['store']}/m",
         "--state", setup["state"], "--canary", "2", "--json"],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ok"] and summary["created"] > 0 and summary["failed"] == []
    assert setup["token"] not in out + err

    config = tmp_path / "manifester.toml"
    config.write_text(
        f'[ingest]\nsource = "s3://{setup["bucket"]}"\ndataset_id = "{summary["dataset_id"]}"\n'
        f'manifest_store = "s3://{setup["store"]}/m"\nstate = "{setup["state"]}"\n'
    )
    code, out, err = run_cli(["--config", str(config), "ingest"], capsys)
    assert code == 0, err
    assert out.startswith("nothing new")


def test_dry_run_prints_the_plan(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        ["migrate", f"s3://{setup['bucket']}", "--dataset", "Plan", "--manifest-store", f"s3://{setup['store']}/m",
         "--state", setup["state"], "--dry-run", "--split", "train=50,valid=50"],
        capsys,
    )
    assert code == 0
    assert "dry run" in out and "to send:" in out and "URL lifetime" in out and "would be created" in out
    assert not Path(setup["state"]).exists()


@pytest.mark.parametrize(
    ("args", "needle", "exit_code"),
    [
        (["ingest", "s3://b", "--manifest-store", "s3://m"], "ingest needs --dataset-id", 2),
        (["ingest", "--dataset-id", "1", "--manifest-store", "s3://m"], "no SOURCE given", 2),
        (["migrate", "s3://b", "--manifest-store", "s3://m"], "--dataset NAME or --dataset-id", 2),
        (["migrate", "s3://b", "--dataset", "a", "--dataset-id", "1"], "not both", 2),
        (["migrate", "s3://b", "--dataset", "a"], "needs --manifest-store", 2),
        (["migrate", "s3://b", "--dataset", "a", "--manifest-store", "s3://m", "--url-lifetime", "soon"],
         "--url-lifetime", 2),
        (["migrate", "s3://b", "--dataset", "a", "--manifest-store", "s3://m", "--canary", "-1"], "--canary", 2),
    ],
)
def test_bad_flags_are_one_clear_line(
    args: list[str], needle: str, exit_code: int, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_cli([*args, "--state", str(tmp_path / "l.sqlite")], capsys)
    assert code == exit_code
    assert needle in err and "Traceback" not in err


def test_locked_ledger_exits_with_a_clear_message(setup: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    holder = Ledger.open(setup["state"])
    holder.acquire()
    try:
        code, _, err = run_cli(
            ["ingest", f"s3://{setup['bucket']}", "--dataset-id", "1", "--manifest-store", f"s3://{setup['store']}/m",
             "--state", setup["state"]],
            capsys,
        )
    finally:
        holder.close()
    assert code == 1
    assert err.startswith("error: another manifester run holds the lock") and "hint:" in err


@pytest.mark.parametrize("stop_remote", [False, True])
def test_ctrl_c_stops_cleanly_with_exit_130_and_stop_remote_stops_the_upload(
    stop_remote: bool, setup: dict[str, str], theos: Any, tmp_path: Path
) -> None:
    """SIGINT while a task runs: state recorded, exit 130, upload/stop/ only with --stop-remote; a re-run finishes."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    import manifester
    from tests.test_migrate import (
        REPO,
        FaultProxy,
        dataset_content,
        fast_client,
        ledger_content,
    )

    # task polls are slowed down so that the run is surely following a task when interrupted
    proxy = FaultProxy(theos.url, lambda m, kind, n: ("delay", 0.3) if kind == "task" else None)
    state = Path(setup["state"])
    env = {**os.environ, "THEOS_API_URL": proxy.url, "PYTHONPATH": str(REPO)}
    args = ["migrate", f"s3://{setup['bucket']}", "--dataset", "Int", "--manifest-store", f"s3://{setup['store']}/m",
            "--state", str(state), "--canary", "2", "--max-entries", "3", "--no-progress"]
    if stop_remote:
        args.append("--stop-remote")
    proc = subprocess.Popen([sys.executable, "-c", "from manifester.cli import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists():
                with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)) as db:
                    with contextlib.suppress(sqlite3.OperationalError):
                        if db.execute("SELECT count(*) FROM shards WHERE state = 'uploading'").fetchone()[0]:
                            break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.stop()
    text = err.decode()
    assert proc.returncode == 130, text
    assert "interrupted" in text and "run the same command again" in text and "Traceback" not in text
    assert proxy.counts.get("POST stop", 0) == (1 if stop_remote else 0)
    with Ledger.open(state) as ledger:
        [run] = ledger.runs()
    assert run["status"] == "interrupted"

    client = fast_client(theos.url, theos)
    summary = manifester.migrate(f"s3://{setup['bucket']}", dataset="Int", manifest_store=f"s3://{setup['store']}/m",
                                 state=state, client=client, canary=2, max_entries=3, progress=False,
                                 poll_interval=0.05)
    assert summary.ok, summary.lines()
    content = dataset_content(client, summary.dataset_id)
    assert len(content) == len({e for e, _ in content}) > 0
    assert content == ledger_content(state, summary.dataset_id)


def test_make_demo_says_only_what_is_true(tmp_path: Path) -> None:
    """The demo migrates, shows that a re-run sends nothing, and keeps the ledger it tells you to inspect."""
    import os
    import re
    import sqlite3
    import subprocess
    import sys

    from tests.test_migrate import REPO

    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "manifester.demo"], env=env, capture_output=True, timeout=240)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "30 created" in out and "train 24, valid 3, test 3" in out
    assert "nothing new" in out.split("the same command again", 1)[1]
    assert "servers stopped" in out
    [ledger] = re.findall(r"sqlite3 (\S+) ", out)
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        assert db.execute("SELECT count(*) FROM shards WHERE state = 'done'").fetchone()[0] == 4
    [workdir] = re.findall(r"rm -rf (\S+)", out)
    assert Path(workdir).parent == tmp_path and Path(ledger).parent == Path(workdir)
