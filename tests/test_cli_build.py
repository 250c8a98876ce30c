"""`manifester build` on the command line: output, --json, and clean one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from manifester.cli import main

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "sample_buckets" / "photos"
TEMPLATE = "https://cdn.example.com/{key}"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: ")
    assert len(lines) <= 3, err  # the message, plus at most a hint line
    for needle in needles:
        assert needle in lines[0], (needle, err)


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["build", "--help"], capsys)
    assert code == 0 and "manifester build s3://" in out and "--url-template" in out


def test_build_local_human_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["build", str(PHOTOS), "--out", str(tmp_path / "o"), "--url-template", TEMPLATE, "--max-entries", "10",
         "--exclude", "animals/**", "--seed", "x"],
        capsys,
    )
    assert code == 0, err
    assert "manifest-00001.json" in out and "skipped" in out and "excluded" in out and "train" in out
    code, out, err = run(
        ["build", str(PHOTOS), "--out", str(tmp_path / "j"), "--url-template", TEMPLATE, "--json",
         "--split", "train=1,test=1", "--external-id", "key", "--extensions", "png"],
        capsys,
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan == json.loads((tmp_path / "j" / "plan.json").read_text())
    assert plan["options"]["split"] == "train=1,valid=0,test=1" and plan["counts"]["valid"] == 0
    entries = json.loads((tmp_path / "j" / "manifest-00001.json").read_text())
    assert all(e["external_id"].lower().endswith(".png") for e in entries)


def test_build_s3_via_environment(s3_env: Any, bucket_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s3_env.make_bucket(bucket_name, {"a/x y.jpg": b"1", "a/z.png": b"22", "b.txt": b"3"})
    code, out, err = run(["build", f"s3://{bucket_name}/a/", "--out", str(tmp_path), "--expires", "15m", "--json"], capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["totals"]["entries"] == 2 and plan["options"]["expires"] == 900
    urls = [e["url"] for e in json.loads((tmp_path / "manifest-00001.json").read_text())]
    assert "/a/x%20y.jpg?" in urls[0] and "X-Amz-Expires=900" in urls[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["ftp://host/path"], ["unknown source scheme 'ftp'"]),
        ([str(PHOTOS), "--split", "train=80,valid=ten"], ["--split", "'ten'"]),
        ([str(PHOTOS), "--split", "train=-5"], ["--split"]),
        ([str(PHOTOS), "--group-by", "(oops"], ["--group-by", "'(oops'"]),
        ([str(PHOTOS), "--max-entries", "100001"], ["--max-entries"]),
        ([str(PHOTOS), "--max-bytes", "100000001"], ["--max-bytes"]),
        ([str(PHOTOS), "--expires", "soon"], ["--expires", "'soon'"]),
        ([str(PHOTOS)], ["needs --url-template"]),
        ([str(PHOTOS), "--url-template", "ftp://x/{key}"], ["--url-template"]),
        (["/definitely/not/here", "--url-template", TEMPLATE], ["/definitely/not/here"]),
    ],
)
def test_bad_input_is_one_clean_line(
    args: list[str], needles: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["build", *args, "--out", str(tmp_path / "out")], capsys)
    assert_clean_error(code, err, *needles)
    assert not list((tmp_path / "out").glob("manifest-*.json")) if (tmp_path / "out").exists() else True


def test_empty_selection_warns_on_stderr_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run(["build", str(empty), "--out", str(tmp_path / "o1"), "--url-template", TEMPLATE], capsys)
    assert code == 0, err
    assert "entries  0 of 0 listed" in out
    assert err.strip().splitlines() == [
        f"warning: no objects kept from {empty}: 0 listed — check the prefix and filters"
    ]
    # a filter that keeps nothing: the warning names the skip reasons; --json stays clean JSON
    code, out, err = run(
        ["build", str(PHOTOS), "--out", str(tmp_path / "o2"), "--url-template", TEMPLATE, "--include", "nothing/*",
         "--json"],
        capsys,
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["totals"]["entries"] == 0 and plan["totals"]["listed"] > 0
    (line,) = err.strip().splitlines()
    assert line.startswith(f"warning: no objects kept from {PHOTOS}: {plan['totals']['listed']} listed, ")
    assert "not-included" in line and line.endswith("— check the prefix and filters")
    # something kept: no warning
    code, _, err = run(["build", str(PHOTOS), "--out", str(tmp_path / "o3"), "--url-template", TEMPLATE], capsys)
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize(
    ("argv", "first", "command"),
    [
        (["build", str(PHOTOS), "--out", "o", "--max-entries", "many"],
         "error: invalid value for '--max-entries': 'many' is not a valid integer.", "manifester build"),
        (["build", str(PHOTOS)], "error: missing option '--out'.", "manifester build"),
        (["build"], "error: missing argument 'SOURCE'.", "manifester build"),
        (["build", str(PHOTOS), "--out", "o", "--bogus"], "error: no such option '--bogus'.", "manifester build"),
        (["build", str(PHOTOS), "--out", "o", "--external-id", "zz"], "error: invalid value for '--external-id'",
         "manifester build"),
        (["datasets", "list", "extra"], "error: got unexpected extra argument (extra)", "manifester datasets list"),
        (["nosuch"], "error: no such command 'nosuch'.", "manifester"),
    ],
)
def test_usage_errors_are_one_error_line_and_a_hint(
    argv: list[str], first: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    lines = err.rstrip("\n").splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(first), err
    assert lines[1] == f"  hint: see '{command} --help'"
    assert "Usage:" not in err


def test_help_and_bare_groups_still_show_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["build", "--help"], capsys)
    assert code == 0 and out.startswith("Usage: manifester build [OPTIONS] SOURCE")
    code, _, err = run(["datasets"], capsys)  # a group without a command: its help, as before
    assert code == 2 and "Usage: manifester datasets" in err and "Commands:" in err


def test_output_dir_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run(["build", str(PHOTOS), "--out", str(blocker / "out"), "--url-template", TEMPLATE], capsys)
    assert_clean_error(code, err, "--out", str(blocker / "out"))
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        code, _, err = run(["build", str(PHOTOS), "--out", str(ro), "--url-template", TEMPLATE], capsys)
        assert_clean_error(code, err, "not writable", str(ro))


def test_missing_bucket(s3_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["build", "s3://no-such-bucket-manifester", "--out", str(tmp_path)], capsys)
    assert_clean_error(code, err, "no-such-bucket-manifester")
    assert list(tmp_path.iterdir()) == []


def test_no_credentials(s3_env: Any, monkeypatch: pytest.MonkeyPatch, bucket_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s3_env.make_bucket(bucket_name, {"a.jpg": b"1"})
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    code, _, err = run(["build", f"s3://{bucket_name}", "--out", str(tmp_path)], capsys)
    assert_clean_error(code, err)
    assert "credential" in err.lower()
    assert s3_env.secret_key not in err


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from manifester.cli import main; main()", "build", str(PHOTOS),
         "--out", str(tmp_path), "--split", "train=80,valid=10,tst=10", "--url-template", TEMPLATE],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 2
    assert_clean_error(proc.returncode, proc.stderr, "'tst'")


@pytest.mark.parametrize(
    ("blocked", "source", "extra"),
    [("boto3", "s3://photos-missing-extra", "s3"), ("google.cloud.storage", "gs://photos-missing-extra", "gcs")],
)
def test_missing_sdk_names_the_extra(blocked: str, source: str, extra: str, tmp_path: Path) -> None:
    # A fresh interpreter in which importing the SDK fails, as after `pip install manifester`.
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {blocked!r} or name.startswith({blocked!r} + '.'):\n"
        "            raise ImportError('No module named ' + repr(name))\n"
        "sys.meta_path.insert(0, Block())\n"
        "from manifester.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "build", source, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert_clean_error(proc.returncode, proc.stderr, f"'{extra}' extra", source)
    assert f"pip install 'manifester[{extra}]'" in proc.stderr


def test_build_from_a_listing_file_uses_only_its_keys(tmp_path: Path) -> None:
    """--listing replaces the scan: only the listed keys are built, URLs still from the source."""
    folder = Path(__file__).resolve().parents[1] / "sample_buckets" / "splits"
    keys = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*") if p.is_file() and p.suffix != ".md")[:5]
    listing = tmp_path / "keys.txt"
    listing.write_text("".join(k + "\n" for k in keys))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "manifester", "build", str(folder), "--out", str(out),
         "--listing", str(listing), "--url-template", "https://cdn.example.com/{key}", "--json"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    entries = json.loads((out / "manifest-00001.json").read_text())
    assert [e["url"] for e in entries] == [f"https://cdn.example.com/{quote(k, safe='/~')}" for k in keys]


def test_unsorted_listing_file_is_a_clear_error(tmp_path: Path) -> None:
    listing = tmp_path / "keys.txt"
    listing.write_text("b.jpg\na.jpg\n")
    proc = subprocess.run(
        [sys.executable, "-m", "manifester", "build", str(tmp_path), "--out", str(tmp_path / "out"),
         "--listing", str(listing), "--url-template", "https://cdn.example.com/{key}"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "keys.txt" in proc.stderr


def test_sdk_warnings_are_one_redacted_line_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    import botocore  # noqa: F401 - importing it adds its NullHandler, as in a real run

    from manifester.cli import _configure_logging

    names = ("manifester", "botocore", "boto3", "google", "urllib3", "httpx")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate, logging.getLogger(n).level) for n in names}
    try:
        _configure_logging()
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("botocore.credentials").warning(
                "refresh failed for https://b.example/k?X-Amz-Signature=deadbeef", exc_info=True
            )
        err = capsys.readouterr().err
    finally:  # leave logging as other tests expect it
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(level)
    assert "WARNING: botocore.credentials: refresh failed" in err
    assert "deadbeef" not in err and "Traceback" not in err
