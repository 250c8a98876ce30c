"""The bad-input catalogue: one table, every row run through the real command line.

Each row runs ``manifester ...`` as a subprocess (the honest check that nothing prints a
traceback) against real local servers (moto for S3, the local Theos-compatible server,
a static HTTP server for user-built manifests, a fault proxy for answers of unexpected
shape) and asserts:

* a non-zero exit code;
* stderr has a line that names the thing (flag, file, key, field, entry) and no "Traceback";
* nothing inconsistent was written: no partial manifests or plan in ``--out``, no example
  added to any dataset, no shard recorded as sent in the ledger, no dataset created
  unless the row allows it.

Bucket contents with awkward keys (1,024 bytes, ``?#%+``, spaces, unicode, newlines) are
a second table: each key must either be built into a URL that really fetches that object
(SeaweedFS checks the signature) or be rejected with a message naming the key.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from manifester.server import RunningServer, start_server
from tests.support.fault_proxy import FaultProxy
from tests.support.storage_servers import S3Server, subprocess_env, unique_bucket_name
from tests.support.theos_server import StaticServer, make_image

REPO = Path(__file__).resolve().parent.parent
MANIFESTER = [str(Path(sys.executable).parent / "manifester")]
if not Path(MANIFESTER[0]).exists():  # pragma: no cover - an unusual install
    MANIFESTER = [sys.executable, "-m", "manifester"]


# ------------------------------------------------------------------------------ the world


@dataclass
class World:
    """Servers and fixtures shared by every row (started once for the module)."""

    root: Path
    s3: S3Server
    theos: RunningServer
    web: StaticServer
    bucket: str
    empty_bucket: str
    store: str
    dataset_id: str
    folder: Path
    a_file: Path
    busy_port: int
    proxies: dict[str, FaultProxy] = field(default_factory=dict)

    def base_env(self, tmp: Path) -> dict[str, str]:
        env = subprocess_env(
            self.s3,
            drop=("AWS_", "THEOS_", "MANIFESTER_", "GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR"),
        )
        env.update(
            THEOS_API_URL=self.theos.url,
            THEOS_PROJECT_KEY=self.theos.project_key,
            THEOS_API_TOKEN=self.theos.token,
            MANIFESTER_STATE=str(tmp / "ledger.sqlite"),
            HOME=str(tmp / "home"),
            XDG_STATE_HOME=str(tmp / "state"),
            NO_COLOR="1",
            COLUMNS="200",
        )
        return env

    def server_state(self) -> tuple[int, int]:
        """(datasets, examples) on the Theos server: refused input must not change the examples."""
        with httpx.Client(
            timeout=10, headers={"Authorization": f"Token {self.theos.token}"}
        ) as c:
            base = f"{self.theos.url}/v1/project/{self.theos.project_key}/datasets/"
            datasets = c.get(base).json()
            total = 0
            for d in datasets:
                got = c.get(f"{base}{d['id']}/").json()
                total += sum((got.get("counts") or {}).values())
        return len(datasets), total


@pytest.fixture(scope="module")
def world(
    moto_s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("badinput")
    theos = start_server(root / "theos", download_timeout=5.0)
    web = StaticServer(root / "web")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    proxies: dict[str, FaultProxy] = {}
    try:
        images = {f"cats/c{i}.png": make_image(8 + i, 8) for i in range(3)}
        bucket = moto_s3.make_bucket(unique_bucket_name("bad-src"), images)
        empty = moto_s3.make_bucket(unique_bucket_name("bad-empty"))
        store = moto_s3.make_bucket(unique_bucket_name("bad-store"))
        folder = root / "folder"
        for key, data in images.items():
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            (folder / key).write_bytes(data)
        a_file = root / "a-file.png"
        a_file.write_bytes(make_image())
        with httpx.Client(
            timeout=10, headers={"Authorization": f"Token {theos.token}"}
        ) as c:
            ds = c.post(
                f"{theos.url}/v1/project/{theos.project_key}/datasets/create/",
                data={"name": "Existing"},
            ).json()
        w = World(
            root,
            moto_s3,
            theos,
            web,
            bucket,
            empty,
            store,
            str(ds["id"]),
            folder,
            a_file,
            busy.getsockname()[1],
            proxies,
        )
        _write_user_manifests(w)
        yield w
    finally:
        for proxy in proxies.values():
            proxy.stop()
        busy.close()
        web.stop()
        theos.stop()


def _write_user_manifests(w: World) -> None:
    """Manifests as a user might build them by hand, served by the static server."""
    img = w.web.write("img/ok.png", make_image())
    good = {"url": img, "split": "train", "external_id": "ok-1"}
    w.web.write_json(
        "m/bad-split.json",
        [good, {"url": img, "split": "training", "external_id": "x2"}],
    )
    w.web.write_json("m/no-url.json", [good, {"split": "train", "external_id": "x3"}])
    w.web.write_json(
        "m/extra-field.json", [good, {**good, "external_id": "x4", "labels": []}]
    )
    w.web.write_json("m/not-a-list.json", {"entries": [good]})
    w.web.write("m/not-json.json", b'[{"url": "' + img.encode() + b'", ')
    w.web.write_json(
        "m/ftp-url.json",
        [
            good,
            {
                "url": "ftp://example.invalid/a.png",
                "split": "train",
                "external_id": "x5",
            },
        ],
    )
    # a fault proxy that always answers with HTML / truncated JSON: an API of unexpected shape
    # Answers of unexpected shape. Only the non-retried kinds are here: HTML pages, cut
    # JSON and refused connections are retried with real backoff (about 15 s in a
    # subprocess); tests/test_chaos.py covers those in-process with a fast clock.
    for name, body in {
        "object": b'{"unexpected": ["shape"], "id": null}',
        "list": b"[1, 2, 3]",
        "string": b'"hello"',
        "null": b"null",
    }.items():
        proxy = FaultProxy(w.theos.url, wrong_shape_body=body)
        proxy.inject("wrong_shape", times=None)
        w.proxies[name] = proxy
    w.proxies["task-shape"] = FaultProxy(w.theos.url)
    w.proxies["task-shape"].inject("wrong_shape", path=r"^/v1/tasks/", times=None)


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    """One bad input. ``names``: every one must appear in stderr (case-insensitive)."""

    id: str
    argv: tuple[str, ...]
    names: tuple[str, ...]
    env: tuple[tuple[str, str | None], ...] = ()
    setup: str | None = None
    may_create_dataset: bool = False
    #: an empty source may also succeed, if the output says that nothing was found
    empty_ok: bool = False
    #: the row documents a known bug: it is marked xfail until fixed
    known_bug: str | None = None
    timeout: float = 60.0
    upload_accepted: bool = False


def C(
    id: str,
    argv: str | list[str],
    *names: str,
    env: dict[str, str | None] | None = None,
    setup: str | None = None,
    may_create_dataset: bool = False,
    empty_ok: bool = False,
    known_bug: str | None = None,
    timeout: float = 60.0,
    upload_accepted: bool = False,
) -> Case:
    args = tuple(argv.split()) if isinstance(argv, str) else tuple(argv)
    return Case(
        id,
        args,
        names,
        tuple((env or {}).items()),
        setup,
        may_create_dataset,
        empty_ok,
        known_bug,
        timeout,
        upload_accepted,
    )


BUILD = "build {folder} --out {out} --url-template https://cdn.example.com/{{key}}"
BUILD_S3 = "build s3://{bucket} --out {out}"
MIGRATE = "migrate s3://{bucket} --dataset-id {ds} --manifest-store s3://{store}/m --state {tmp}/ledger.sqlite --no-progress"

CASES: list[Case] = [
    # -- build flags ----------------------------------------------------------------------
    C("split-not-int", f"{BUILD} --split train=abc", "--split", "abc"),
    C("split-unknown-name", f"{BUILD} --split cats=50,train=50", "--split", "cats"),
    C("split-all-zero", f"{BUILD} --split train=0,valid=0,test=0", "--split"),
    C("split-negative", f"{BUILD} --split train=-5,test=10", "--split", "-5"),
    C("split-empty", [*f"{BUILD}".split(), "--split", ""], "--split"),
    C("group-by-bad-regex", [*BUILD.split(), "--group-by", "(["], "--group-by"),
    C("expires-bad-duration", f"{BUILD_S3} --expires 10x", "--expires", "10x"),
    C("expires-zero", f"{BUILD_S3} --expires 0s", "--expires"),
    C("expires-over-7-days", f"{BUILD_S3} --expires 30d", "--expires"),
    C(
        "max-entries-over-limit",
        f"{BUILD} --max-entries 100001",
        "--max-entries",
        "100000",
    ),
    C("max-entries-zero", f"{BUILD} --max-entries 0", "--max-entries"),
    C("max-entries-negative", f"{BUILD} --max-entries -3", "--max-entries"),
    C("max-entries-not-int", f"{BUILD} --max-entries lots", "--max-entries"),
    C(
        "max-bytes-over-limit",
        f"{BUILD} --max-bytes 100000001",
        "--max-bytes",
        "100000000",
    ),
    C("max-bytes-zero", f"{BUILD} --max-bytes 0", "--max-bytes"),
    C("max-bytes-too-small-for-one-entry", f"{BUILD} --max-bytes 20", "--max-bytes"),
    C("urls-unknown-mode", f"{BUILD_S3} --urls signed", "--urls", "signed"),
    C(
        "url-template-unknown-placeholder",
        "build {folder} --out {out} --url-template https://cdn.example.com/{{nope}}",
        "--url-template",
        "nope",
    ),
    C(
        "url-template-no-key",
        "build {folder} --out {out} --url-template https://cdn.example.com/static",
        "--url-template",
    ),
    C(
        "url-template-not-http",
        "build {folder} --out {out} --url-template ftp://cdn.example.com/{{key}}",
        "--url-template",
    ),
    C("external-id-unknown", f"{BUILD} --external-id md5", "--external-id", "md5"),
    C("extensions-empty", [*BUILD.split(), "--extensions", ","], "--extensions"),
    C(
        "out-is-a-file",
        "build {folder} --out {file} --url-template https://cdn.example.com/{{key}}",
        "a-file.png",
    ),
    # -- sources ----------------------------------------------------------------------------
    C(
        "folder-without-template",
        "build {folder} --out {out}",
        "--url-template",
        "folder",
    ),
    C(
        "folder-missing",
        "build {tmp}/no-such-folder --out {out} --url-template https://cdn.example.com/{{key}}",
        "no-such-folder",
    ),
    C(
        "source-is-a-file",
        "build {file} --out {out} --url-template https://cdn.example.com/{{key}}",
        "a-file.png",
    ),
    C("unknown-scheme", "build ftp://host/photos --out {out}", "ftp://"),
    C("s3-missing-bucket-name", "build s3:// --out {out}", "bucket"),
    C(
        "s3-no-such-bucket",
        "build s3://no-such-bucket-zz9 --out {out}",
        "no-such-bucket-zz9",
    ),
    C(
        "s3-no-credentials",
        BUILD_S3,
        "credentials",
        env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
    ),
    C("s3-empty-bucket", "build s3://{empty} --out {out}", "{empty}", empty_ok=True),
    C(
        "s3-prefix-matches-nothing",
        "build s3://{bucket}/no/such/prefix --out {out}",
        "no/such/prefix",
        empty_ok=True,
    ),
    C(
        "filters-leave-nothing",
        f"{BUILD_S3} --include dogs/*",
        "not-included",
        empty_ok=True,
    ),
    # -- config files -------------------------------------------------------------------------
    C(
        "config-missing",
        "--config {tmp}/nope.toml build {folder} --out {out}",
        "nope.toml",
    ),
    C(
        "config-not-toml",
        "--config {tmp}/bad.toml build {folder} --out {out}",
        "bad.toml",
        setup="config_not_toml",
    ),
    C(
        "config-wrong-type",
        "--config {tmp}/c.toml build {folder} --out {out} --url-template https://x.example/{{key}}",
        "max-entries",
        "lots",
        setup="config_wrong_type",
    ),
    C(
        "config-unknown-table",
        "--config {tmp}/c.toml build {folder} --out {out} --url-template https://x.example/{{key}}",
        "bogus",
        setup="config_unknown_table",
    ),
    C(
        "config-unknown-key",
        "--config {tmp}/c.toml build {folder} --out {out} --url-template https://x.example/{{key}}",
        "max_entrys",
        setup="config_unknown_key",
    ),
    C(
        "config-token-not-a-string",
        "--config {tmp}/c.toml datasets list",
        "api_token",
        setup="config_token_int",
        env={"THEOS_API_TOKEN": None},
    ),
    C("config-is-a-directory", "--config {tmp} build {folder} --out {out}", "--config"),
    # -- migrate / ingest ----------------------------------------------------------------------
    C(
        "migrate-no-manifest-store",
        "migrate s3://{bucket} --dataset-id {ds} --state {tmp}/ledger.sqlite",
        "--manifest-store",
    ),
    C("migrate-dataset-and-id", f"{MIGRATE} --dataset X", "--dataset"),
    C(
        "migrate-unknown-dataset-id",
        MIGRATE.replace("{ds}", "987654"),
        "987654",
        "--dataset-id",
    ),
    C("migrate-no-token", MIGRATE, "THEOS_API_TOKEN", env={"THEOS_API_TOKEN": None}),
    C(
        "migrate-wrong-token",
        MIGRATE,
        "token",
        env={"THEOS_API_TOKEN": "not-the-token"},
    ),
    C("migrate-token-with-space", MIGRATE, "token", env={"THEOS_API_TOKEN": "abc def"}),
    C(
        "migrate-no-project-key",
        MIGRATE,
        "THEOS_PROJECT_KEY",
        env={"THEOS_PROJECT_KEY": None},
    ),
    C(
        "migrate-api-url-not-http",
        MIGRATE,
        "THEOS_API_URL",
        env={"THEOS_API_URL": "ftp://127.0.0.1:1"},
    ),
    C(
        "api-answer-object-of-other-shape",
        MIGRATE,
        "unexpected",
        env={"THEOS_API_URL": "{object}"},
    ),
    C(
        "api-answer-list-for-object",
        MIGRATE,
        "unexpected",
        env={"THEOS_API_URL": "{list}"},
    ),
    C(
        "api-answer-string-for-object",
        MIGRATE,
        "unexpected",
        env={"THEOS_API_URL": "{string}"},
    ),
    C(
        "api-answer-null-for-object",
        MIGRATE,
        "unexpected",
        env={"THEOS_API_URL": "{null}"},
    ),
    C(
        "api-list-answer-object",
        "datasets list",
        "unexpected",
        env={"THEOS_API_URL": "{object}"},
    ),
    C(
        "api-task-of-other-shape",
        MIGRATE,
        "task",
        env={"THEOS_API_URL": "{task-shape}"},
        timeout=8,
        # the fake API really accepted the upload before its task answer turned out
        # malformed, so the ledger rightly records the shard as sent
        upload_accepted=True,
    ),
    C("migrate-canary-negative", f"{MIGRATE} --canary -1", "--canary"),
    C(
        "migrate-url-lifetime-bad",
        f"{MIGRATE} --url-lifetime soon",
        "--url-lifetime",
        "soon",
    ),
    C("migrate-url-lifetime-zero", f"{MIGRATE} --url-lifetime 0s", "--url-lifetime"),
    C(
        "migrate-store-unknown-scheme",
        MIGRATE.replace("s3://{store}/m", "ftp://x/m"),
        "ftp://",
    ),
    C(
        "migrate-store-no-such-bucket",
        MIGRATE.replace("{store}", "no-such-store-zz9"),
        "no-such-store-zz9",
        may_create_dataset=True,
    ),
    C(
        "migrate-state-is-a-directory",
        MIGRATE.replace("{tmp}/ledger.sqlite", "{tmp}"),
        "--state",
    ),
    C("migrate-state-not-sqlite", MIGRATE, "ledger.sqlite", setup="garbage_ledger"),
    C("migrate-state-newer-schema", MIGRATE, "ledger.sqlite", setup="future_ledger"),
    C(
        "migrate-no-source",
        "migrate --dataset X --manifest-store s3://{store}/m",
        "SOURCE",
    ),
    C("migrate-changed-bad", f"{MIGRATE} --changed maybe", "--changed", "maybe"),
    C(
        "ingest-no-dataset-id",
        "ingest s3://{bucket} --manifest-store s3://{store}/m",
        "--dataset-id",
    ),
    C(
        "migrate-local-store-without-base-url",
        MIGRATE.replace("s3://{store}/m", "{tmp}/store"),
        "--manifest-base-url",
    ),
    # -- API command line -------------------------------------------------------------------
    C("api-unknown-dataset", "datasets get 987654", "987654"),
    C(
        "api-no-token",
        "datasets list",
        "THEOS_API_TOKEN",
        env={"THEOS_API_TOKEN": None},
    ),
    C("api-bad-color", "classes create {ds} --name car --color red", "color", "red"),
    C("api-bad-color-hex", "classes create {ds} --name car --color #12345G", "color"),
    C(
        "api-labels-not-json",
        ["examples", "labels", "{ds}", "--external-id", "nope", "--labels", "[{{"],
        "--labels",
    ),
    C(
        "api-labels-wrong-shape",
        ["examples", "labels", "{ds}", "1", "--labels", '{{"class_id": 0}}'],
        "labels",
    ),
    C(
        "api-unknown-task",
        "tasks get 00000000-0000-0000-0000-000000000000",
        "00000000-0000-0000-0000-000000000000",
    ),
    C(
        "api-unknown-external-id",
        "examples get {ds} --external-id no-such-ext",
        "no-such-ext",
    ),
    C("api-token-on-command-line", "datasets list --token abc", "--token"),
    # -- manifests built by users, posted to the local server --------------------------------
    C(
        "user-manifest-bad-split",
        "upload start {ds} --manifest-url {web}/m/bad-split.json --wait",
        "entry 1",
        "split",
    ),
    C(
        "user-manifest-no-url",
        "upload start {ds} --manifest-url {web}/m/no-url.json --wait",
        "entry 1",
        "url",
    ),
    C(
        "user-manifest-extra-field",
        "upload start {ds} --manifest-url {web}/m/extra-field.json --wait",
        "entry 1",
        "labels",
    ),
    C(
        "user-manifest-not-a-list",
        "upload start {ds} --manifest-url {web}/m/not-a-list.json --wait",
        "array",
    ),
    C(
        "user-manifest-not-json",
        "upload start {ds} --manifest-url {web}/m/not-json.json --wait",
        "json",
    ),
    C(
        "user-manifest-ftp-url",
        "upload start {ds} --manifest-url {web}/m/ftp-url.json --wait",
        "entry 1",
    ),
    C(
        "user-manifest-404",
        "upload start {ds} --manifest-url {web}/m/missing.json --wait",
        "404",
    ),
    C(
        "user-manifest-url-not-http",
        "upload start {ds} --manifest-url file:///etc/passwd --wait",
        "manifest",
    ),
    # -- local server command line -------------------------------------------------------------
    C("server-busy-port", "server --port {busy_port} --data {tmp}/data", "{busy_port}"),
    C("server-data-is-a-file", "server --port 0 --data {file}", "a-file.png"),
    C("server-port-out-of-range", "server --port 70000 --data {tmp}/data", "--port"),
]


def _setup(case: Case, tmp: Path) -> None:
    if case.setup == "config_not_toml":
        (tmp / "bad.toml").write_text("[build\nmax_entries = = 3\n")
    elif case.setup == "config_wrong_type":
        (tmp / "c.toml").write_text('[build]\nmax_entries = "lots"\n')
    elif case.setup == "config_unknown_table":
        (tmp / "c.toml").write_text("[bogus]\nx = 1\n")
    elif case.setup == "config_unknown_key":
        (tmp / "c.toml").write_text("[build]\nmax_entrys = 10\n")
    elif case.setup == "config_token_int":
        (tmp / "c.toml").write_text("[theos]\napi_token = 12345\n")
    elif case.setup == "garbage_ledger":
        (tmp / "ledger.sqlite").write_bytes(
            b"this is not a database, but a text file " * 100
        )
    elif case.setup == "future_ledger":
        conn = sqlite3.connect(tmp / "ledger.sqlite")
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (999)")
        conn.commit()
        conn.close()


def _fill(text: str, w: World, tmp: Path) -> str:
    return text.format(
        tmp=tmp,
        out=tmp / "out",
        folder=w.folder,
        file=w.a_file,
        bucket=w.bucket,
        empty=w.empty_bucket,
        store=w.store,
        ds=w.dataset_id,
        busy_port=w.busy_port,
        web=w.web.url,
        **{name: proxy.url for name, proxy in w.proxies.items()},
    )


def _ledger_sent(path: Path) -> int:
    """Shards the ledger says reached the server (task id recorded); 0 if there is no ledger."""
    if not path.is_file():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(
                conn.execute(
                    "SELECT count(*) FROM shards WHERE task_id IS NOT NULL"
                ).fetchone()[0]
            )
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return (
            0  # not a ledger (the garbage-ledger row): untouched is what we check below
        )


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(reason=c.known_bug, strict=False))
        if c.known_bug
        else c
        for c in CASES
    ],
    ids=[c.id for c in CASES],
)
def test_bad_input_is_refused_clearly(case: Case, world: World, tmp_path: Path) -> None:
    _setup(case, tmp_path)
    argv = [_fill(a, world, tmp_path) for a in case.argv]
    env = world.base_env(tmp_path)
    for k, v in case.env:
        if v is None:
            env.pop(k, None)
        else:
            env[k] = _fill(v, world, tmp_path)
    before_files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    datasets_before, examples_before = world.server_state()

    proc = subprocess.run(
        [*MANIFESTER, *argv],
        env=env,
        capture_output=True,
        check=False,
        timeout=case.timeout,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    out, err = (
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )
    shown = (
        f"exit {proc.returncode}\n--- stdout\n{out[-1500:]}\n--- stderr\n{err[-3000:]}"
    )

    if case.empty_ok and proc.returncode == 0:
        # accepted: an empty selection is not an error for build, if it says so plainly
        assert "entries  0 of" in out, shown
        assert "warning: no objects kept from" in err and "check the prefix and filters" in err, shown
        assert not list((tmp_path / "out").glob("manifest-*.json")), shown
        for name in case.names:
            assert _fill(name, world, tmp_path).lower() in (out + err).lower(), shown
        return
    assert proc.returncode not in (0, None), shown
    assert proc.returncode > 0, f"killed by a signal: {shown}"
    assert "Traceback" not in err and "Traceback" not in out, shown
    for name in case.names:
        assert _fill(name, world, tmp_path).lower() in err.lower(), (
            f"stderr does not name {name!r}: {shown}"
        )
    # the message is short and readable: a first line that says what is wrong
    first = next((line for line in err.splitlines() if line.strip()), "")
    assert first and len(first) < 400, shown

    # nothing inconsistent written
    out_dir = tmp_path / "out"
    if out_dir.is_dir():
        written = sorted(p.name for p in out_dir.iterdir())
        assert not [
            n for n in written if n.startswith("manifest-") or n == "plan.json"
        ], written
    for p, data in before_files.items():
        # byte for byte, the future ledger included: the version is checked before any write
        assert p.read_bytes() == data, f"{p} was changed by a refused command"
    if not case.upload_accepted:
        assert _ledger_sent(tmp_path / "ledger.sqlite") == 0
    datasets_after, examples_after = world.server_state()
    if not case.upload_accepted:
        assert examples_after == examples_before, "a refused command added examples"
    if not case.may_create_dataset:
        assert datasets_after == datasets_before, "a refused command created a dataset"
    assert len(CASES) >= 40


# ------------------------------------------------------------------------------ awkward keys

AWKWARD_KEYS: dict[str, str] = {
    "key-1024-bytes": "long/" + "k" * (1024 - len("long/") - len(".png")) + ".png",
    "question-mark": "odd/what?.png",
    "hash": "odd/#1.png",
    "percent": "odd/100%.png",
    "percent-encoded-looking": "odd/a%20b.png",
    "plus": "odd/a+b.png",
    "space": "odd/with space.png",
    "unicode": "odd/ünïcødé/猫.png",
    "ampersand-equals": "odd/a&b=c.png",
    "newline": "odd/new\nline.png",
    "tab": "odd/tab\there.png",
    "double-slash": "odd//double.png",
    "dot-segments": "odd/../dots.png",
}


@pytest.fixture(scope="module")
def awkward_bucket(seaweed_s3: S3Server) -> tuple[S3Server, str, dict[str, bytes]]:
    data = {key: make_image(10 + i, 10) for i, key in enumerate(AWKWARD_KEYS.values())}
    bucket = unique_bucket_name("awkward")
    seaweed_s3.make_bucket(bucket)
    c = seaweed_s3.client()
    stored: dict[str, bytes] = {}
    for key, body in data.items():
        try:
            c.put_object(Bucket=bucket, Key=key, Body=body)
        except ClientError:  # the store itself refuses the key: nothing to build
            continue
        stored[key] = body
    return seaweed_s3, bucket, stored


def test_awkward_keys_are_built_correctly_or_named(
    awkward_bucket: Any, tmp_path: Path
) -> None:
    """Every stored key ends up as a URL that fetches exactly its bytes, or an error naming it."""
    s3, bucket, _ = awkward_bucket
    env = subprocess_env(s3, drop=("AWS_", "THEOS_", "MANIFESTER_"))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            *MANIFESTER,
            "build",
            f"s3://{bucket}",
            "--out",
            str(out),
            "--extensions",
            "*",
            "--json",
        ],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    # the store may normalise keys (SeaweedFS folds "a//b" to "a/b"): what it lists is the truth
    c = s3.client()
    listed = {
        o["Key"]: c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in c.list_objects_v2(Bucket=bucket)["Contents"]
    }
    assert len(listed) >= len(AWKWARD_KEYS) - 3, sorted(listed)
    if proc.returncode != 0:
        # refused: the message must name an awkward key (repr, so a newline shows as \n)
        assert any(repr(k)[1:-1] in err or k in err for k in listed), err
        assert not out.exists() or not list(out.glob("manifest-*.json"))
        return
    plan = json.loads(proc.stdout)
    entries = [
        e
        for p in sorted(out.glob("manifest-*.json"))
        for e in json.loads(p.read_bytes())
    ]
    skipped_text = json.dumps(plan.get("skipped_examples") or {})
    built_keys: set[str] = set()
    with httpx.Client(timeout=10) as http:
        for e in entries:
            r = http.get(e["url"])
            assert r.status_code == 200, (e["url"], r.status_code, r.text[:300])
            matches = [k for k, body in listed.items() if body == r.content]
            assert len(matches) == 1, e["url"]
            built_keys.add(matches[0])
    # every key is either built (and fetches its own bytes) or reported as skipped by name
    for key in listed:
        assert key in built_keys or json.dumps(key)[1:-1] in skipped_text, (
            key,
            plan.get("skipped"),
        )
    assert len(entries) == len(built_keys)  # each once
