"""End-to-end: migrate from SeaweedFS (signatures and expiry checked) and fake-gcs-server
into the local Theos-compatible server; resume after kill -9; API faults; clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import manifester
from manifester.errors import (
    AuthError,
    LockedError,
    NotFoundError,
    PublishError,
    TaskFailedError,
)
from manifester.ledger import Ledger
from manifester.server import start_server
from manifester.theos import TheosClient
from tests.support.storage_servers import S3Server, unique_bucket_name

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "sample_buckets" / "photos"
N_IMAGES = 30  # images the default filters keep in sample_buckets/photos (empty.jpg is skipped)


# ---------------------------------------------------------------------------- helpers


@pytest.fixture
def theos(tmp_path: Path) -> Iterator[Any]:
    server = start_server(tmp_path / "theos")
    try:
        yield server
    finally:
        server.stop()


def fast_client(url: str, server: Any, **kw: Any) -> TheosClient:
    """A client whose waits are short (tests must not sleep for real backoffs)."""
    return TheosClient(
        api_url=url, project_key=server.project_key, api_token=kw.pop("token", server.token),
        sleep=lambda s: time.sleep(min(s, 0.05)), timeout=kw.pop("timeout", 10.0), **kw,
    )


def dataset_content(client: TheosClient, dataset_id: str) -> list[tuple[str, str]]:
    """Every (external_id, split) in the dataset, sorted; duplicates would show twice."""
    out = []
    for split in ("train", "valid", "test"):
        out.extend((e.external_id, split) for e in client.iter_examples(dataset_id, split))
    return sorted(out)  # type: ignore[arg-type]


def ledger_content(state: Path, dataset_id: str) -> list[tuple[str, str]]:
    with Ledger.open(state) as ledger:
        objects = ledger.objects(dataset_id)
    assert {o.outcome for o in objects} == {"created"}
    return sorted((o.external_id, o.split) for o in objects)


def duplicates_sent(state: Path, dataset_id: str) -> int:
    with Ledger.open(state) as ledger:
        return sum((s.result or {}).get("duplicates") or 0 for s in ledger.shards(dataset_id))


_SHARED: dict[str, tuple[str, str]] = {}


@pytest.fixture
def photos_s3(seaweed_env: S3Server) -> tuple[S3Server, str, str]:
    """A bucket seeded once with sample_buckets/photos, and a manifest bucket (both shared:
    SeaweedFS gives every bucket its own volumes, and runs out of them after a few dozen)."""
    if seaweed_env.endpoint_url not in _SHARED:
        bucket = unique_bucket_name("photos")
        seaweed_env.seed_dir(bucket, PHOTOS)
        store = unique_bucket_name("manifests")
        seaweed_env.make_bucket(store)
        _SHARED[seaweed_env.endpoint_url] = (bucket, store)
    bucket, store = _SHARED[seaweed_env.endpoint_url]
    return seaweed_env, bucket, store


# ---------------------------------------------------------------------------- a small fault proxy

Fault = Callable[[str, str, int], Any]


class FaultProxy:
    """Forwards HTTP to ``target``; ``fault(method, path, n)`` may return a status code, "drop",
    ("delay", seconds) or None (pass through). ``n`` counts requests per (method, path kind)."""

    def __init__(self, target: str, fault: Fault) -> None:
        self.target = target.rstrip("/")
        self.fault = fault
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                kind = "task" if "/tasks/" in self.path else self.path.rstrip("/").rsplit("/", 1)[-1]
                key = f"{self.command} {kind}"
                with proxy.lock:
                    proxy.counts[key] = proxy.counts.get(key, 0) + 1
                    n = proxy.counts[key]
                action = proxy.fault(self.command, kind, n)
                if isinstance(action, tuple) and action[0] == "delay":
                    time.sleep(action[1])
                    action = None
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if isinstance(action, int):
                    payload = b'{"detail": "injected"}'
                    self.send_response(action)
                    if action == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = httpx.request(self.command, proxy.target + self.path, content=body, headers=headers, timeout=30)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = _handle

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


# ---------------------------------------------------------------------------- happy paths


def test_migrate_seaweedfs_every_image_once_then_rerun_sends_nothing(photos_s3: Any, theos: Any, tmp_path: Path) -> None:
    _, bucket, store = photos_s3
    client = fast_client(theos.url, theos)
    state = tmp_path / "ledger.sqlite"
    prefix = unique_bucket_name("theos")
    kw = dict(manifest_store=f"s3://{store}/{prefix}", state=state, client=client, canary=5, max_entries=10,
              progress=False, poll_interval=0.1)
    summary = manifester.migrate(f"s3://{bucket}", dataset="Photos", **kw)
    assert summary.ok and summary.exit_code == 0
    assert summary.created == N_IMAGES and summary.duplicates == 0 and summary.failed == ()
    assert summary.shards == 4  # canary 5, then 10, 10, 5
    content = dataset_content(client, summary.dataset_id)
    assert len(content) == N_IMAGES == len({e for e, _ in content})
    assert content == ledger_content(state, summary.dataset_id)
    # the same external ids and splits as `build` computes
    from manifester.builder import build

    plan = build(f"s3://{bucket}", out=tmp_path / "built")
    built = sorted(
        (e["external_id"], e["split"]) for p in plan.shard_paths for e in json.loads(p.read_bytes())
    )
    assert built == content
    # manifests are in the store, private: an unsigned GET is refused
    listing = photos_s3[0].client().list_objects_v2(Bucket=store, Prefix=prefix + "/")
    keys = [o["Key"] for o in listing["Contents"]]
    assert len(keys) == 4 and all(k.startswith(f"{prefix}/run-") for k in keys)
    assert httpx.get(f"{photos_s3[0].endpoint_url}/{store}/{keys[0]}").status_code == 403

    again = manifester.migrate(f"s3://{bucket}", dataset="Photos", **kw)
    assert again.nothing_new and again.shards == 0 and again.already_present == N_IMAGES
    assert again.dataset_id == summary.dataset_id
    assert duplicates_sent(state, summary.dataset_id) == 0


def test_migrate_from_gcs(gcs_env: Any, theos: Any, tmp_path: Path) -> None:
    bucket = unique_bucket_name("gphotos")
    gcs_env.seed_dir(bucket, PHOTOS / "animals")
    store = unique_bucket_name("gmanifests")
    gcs_env.make_bucket(store)
    client = fast_client(theos.url, theos)
    summary = manifester.migrate(
        f"gs://{bucket}", dataset="G", manifest_store=f"gs://{store}/m", state=tmp_path / "l.sqlite",
        client=client, canary=2, progress=False, poll_interval=0.1,
    )
    assert summary.ok and summary.created > 0
    content = dataset_content(client, summary.dataset_id)
    assert content == ledger_content(tmp_path / "l.sqlite", summary.dataset_id)


def test_dry_run_writes_and_sends_nothing(photos_s3: Any, theos: Any, tmp_path: Path) -> None:
    s3, bucket, store = photos_s3
    client = fast_client(theos.url, theos)
    state = tmp_path / "ledger.sqlite"
    prefix = unique_bucket_name("dry")
    summary = manifester.migrate(
        f"s3://{bucket}", dataset="Dry", manifest_store=f"s3://{store}/{prefix}", state=state, client=client,
        dry_run=True, canary=5, max_entries=10, progress=False,
    )
    assert summary.dry_run and summary.exit_code == 0 and summary.plan is not None
    assert summary.plan.total == N_IMAGES and summary.plan.shards == 4 and summary.plan.canary == 5
    assert summary.plan.dataset_exists is False and summary.plan.url_lifetime_first >= 900
    assert client.find_dataset("Dry") is None  # not created
    assert not state.exists()  # no ledger written
    assert "Contents" not in s3.client().list_objects_v2(Bucket=store, Prefix=prefix)  # no manifest written


# ---------------------------------------------------------------------------- clear errors


def test_wrong_token_unknown_dataset_unwritable_store(photos_s3: Any, theos: Any, tmp_path: Path) -> None:
    _, bucket, store = photos_s3
    kw = dict(state=tmp_path / "l.sqlite", progress=False, poll_interval=0.1)
    with pytest.raises(AuthError):
        manifester.migrate(f"s3://{bucket}", dataset="X", manifest_store=f"s3://{store}/m",
                           client=fast_client(theos.url, theos, token="wrong-token"), **kw)
    client = fast_client(theos.url, theos)
    with pytest.raises(NotFoundError, match="dataset 999 does not exist") as info:
        manifester.migrate(f"s3://{bucket}", dataset_id="999", manifest_store=f"s3://{store}/m", client=client, **kw)
    assert "--dataset-id" in (info.value.hint or "")


def test_missing_manifest_store_is_a_clear_error(s3_env: S3Server, theos: Any, tmp_path: Path) -> None:
    # moto, not SeaweedFS: SeaweedFS creates a missing bucket on the first write
    bucket = unique_bucket_name("src")
    s3_env.seed_dir(bucket, PHOTOS / "animals")
    client = fast_client(theos.url, theos)
    with pytest.raises(PublishError, match="manifest store") as perr:
        manifester.migrate(f"s3://{bucket}", dataset="X", manifest_store="s3://no-such-bucket-here/m",
                           client=client, state=tmp_path / "l.sqlite", progress=False)
    assert "--manifest-store" in (perr.value.hint or "")
    # nothing half-sent: the objects wait in the ledger for the next run
    ds = client.find_dataset("X")
    assert ds is not None and ds.total == 0
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        assert ledger.count_to_send(ds.id)[0] > 0 and ledger.unfinished_shards(ds.id) == []


def test_lock_refuses_a_concurrent_run(photos_s3: Any, theos: Any, tmp_path: Path) -> None:
    _, bucket, store = photos_s3
    state = tmp_path / "l.sqlite"
    holder = Ledger.open(state)
    holder.acquire()
    try:
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            manifester.migrate(f"s3://{bucket}", dataset="L", manifest_store=f"s3://{store}/m", state=state,
                               client=fast_client(theos.url, theos), progress=False)
    finally:
        holder.close()


def test_short_url_lifetime_is_caught_by_the_canary(photos_s3: Any, theos: Any, tmp_path: Path) -> None:
    _, bucket, store = photos_s3
    # the proxy holds each upload request 2.5 s before the server sees it: 1 s URLs expire first
    proxy = FaultProxy(theos.url, lambda m, kind, n: ("delay", 2.5) if kind == "upload" else None)
    try:
        client = fast_client(proxy.url, theos)
        with pytest.raises(TaskFailedError, match="canary") as info:
            manifester.migrate(f"s3://{bucket}", dataset="Short", manifest_store=f"s3://{store}/m",
                               state=tmp_path / "l.sqlite", client=client, canary=3, url_lifetime="1s",
                               progress=False, poll_interval=0.1)
        assert "--url-lifetime" in (info.value.hint or "")
        assert proxy.counts.get("POST upload") == 1  # nothing sent after the canary
    finally:
        proxy.stop()
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        [shard] = [s for s in ledger.shards() if s.state != "failed" or s.task_id]
        assert shard.kind == "canary"
        assert ledger.count_outcomes(shard.dataset_id).get("created", 0) == 0


def test_api_faults_are_survived(photos_s3: Any, theos: Any, tmp_path: Path) -> None:
    _, bucket, store = photos_s3

    def fault(method: str, kind: str, n: int) -> Any:
        if kind == "task" and n in (1, 4):
            return 429
        if kind == "task" and n == 2:
            return 503
        if kind == "task" and n == 6:
            return "drop"
        if kind == "upload" and n == 2:
            return 500  # not forwarded: the client cannot know, the pipeline reconciles
        if kind == "datasets" and n == 1:
            return 502
        return None

    proxy = FaultProxy(theos.url, fault)
    try:
        client = fast_client(proxy.url, theos)
        state = tmp_path / "l.sqlite"
        summary = manifester.migrate(f"s3://{bucket}", dataset="Faults", manifest_store=f"s3://{store}/m",
                                     state=state, client=client, canary=5, max_entries=10, progress=False,
                                     poll_interval=0.05)
    finally:
        proxy.stop()
    assert summary.ok, summary.lines()
    direct = fast_client(theos.url, theos)
    content = dataset_content(direct, summary.dataset_id)
    assert len(content) == N_IMAGES == len({e for e, _ in content})
    assert content == ledger_content(state, summary.dataset_id)


# ---------------------------------------------------------------------------- kill -9, then resume

_CRASHER = r"""
import os, signal, sys
point, nth = os.environ["CRASH_AT"], int(os.environ["CRASH_NTH"])
calls = {"n": 0}

def crash_after(owner, name):
    original = getattr(owner, name)
    def wrapper(*a, **kw):
        result = original(*a, **kw)
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, name, wrapper)

from manifester.ledger import Ledger
from manifester.theos import TheosClient
owner = TheosClient if point == "upload" else Ledger
crash_after(owner, point)
from manifester.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    ("point", "nth"),
    [
        ("mark_published", 2),  # manifest written, never sent
        ("mark_sending", 2),  # before the upload request
        ("upload", 2),  # the server accepted it, the task id was never recorded
        ("mark_uploading", 3),  # while a task runs
        ("mark_done", 2),  # between shards
    ],
)
def test_kill9_then_rerun_gives_exactly_the_dataset(
    point: str, nth: int, photos_s3: Any, theos: Any, tmp_path: Path
) -> None:
    s3, bucket, store = photos_s3
    state = tmp_path / "l.sqlite"
    env = {k: v for k, v in os.environ.items()}
    for k, v in s3.env().items():
        if v:
            env[k] = v
        else:
            env.pop(k, None)
    env.update(THEOS_API_URL=theos.url, THEOS_PROJECT_KEY=theos.project_key, THEOS_API_TOKEN=theos.token,
               CRASH_AT=point, CRASH_NTH=str(nth), PYTHONPATH=str(REPO))
    args = ["migrate", f"s3://{bucket}", "--dataset", "Kill", "--manifest-store", f"s3://{store}/m",
            "--state", str(state), "--canary", "5", "--max-entries", "10", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", _CRASHER, *args], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    client = fast_client(theos.url, theos)
    summary = manifester.migrate(f"s3://{bucket}", dataset="Kill", manifest_store=f"s3://{store}/m", state=state,
                                 client=client, canary=5, max_entries=10, progress=False, poll_interval=0.1)
    assert summary.ok, summary.lines()
    content = dataset_content(client, summary.dataset_id)
    assert len(content) == N_IMAGES == len({e for e, _ in content})
    assert content == ledger_content(state, summary.dataset_id)
    if point != "upload":  # elsewhere nothing reached the server twice
        assert duplicates_sent(state, summary.dataset_id) == 0
    if point in ("upload", "mark_uploading"):
        assert summary.resumed_shards == 1


# ---------------------------------------------------------------------------- per-image failures, dry run


def test_per_image_failures_are_sent_once_more_then_listed_by_key(s3_env: S3Server, theos: Any, tmp_path: Path) -> None:
    from tests.support.theos_server import corrupt_image, make_image

    bucket = unique_bucket_name("mixed")
    good = {f"ok/{i:02d}.png": make_image(color=(i * 20, 0, 0)) for i in range(7)}
    s3_env.make_bucket(bucket, {**good, "bad/broken.jpg": corrupt_image(), "bad/text.jpg": b"not an image"})
    store = unique_bucket_name("mm")
    s3_env.make_bucket(store)
    proxy = FaultProxy(theos.url, lambda m, kind, n: None)
    try:
        summary = manifester.migrate(
            f"s3://{bucket}", dataset="Mixed", manifest_store=f"s3://{store}/m", state=tmp_path / "l.sqlite",
            client=fast_client(proxy.url, theos), canary=0, max_entries=4, progress=False, poll_interval=0.05,
        )
    finally:
        proxy.stop()
    assert not summary.ok and summary.exit_code == 1
    assert summary.created == len(good) and summary.remaining == 0
    assert sorted(f.key for f in summary.failed) == ["bad/broken.jpg", "bad/text.jpg"]
    assert all("image" in f.error for f in summary.failed)
    assert any(line.startswith("failed: bad/broken.jpg: ") for line in summary.lines())
    # each bad image went in exactly two shards (first try, then once more), the good ones in one
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        objects = {o.key: o for o in ledger.objects(summary.dataset_id)}
        shards = ledger.shards(summary.dataset_id)
    assert {k: o.attempts for k, o in objects.items() if k.startswith("bad/")} == {"bad/broken.jpg": 2, "bad/text.jpg": 2}
    # shards of 4: [bad, bad, ok00, ok01], [ok02..ok05], then ok06 with the two bad ones again
    assert proxy.counts["POST upload"] == len(shards) == 3
    assert len(dataset_content(fast_client(theos.url, theos), summary.dataset_id)) == len(good)


def test_dry_run_against_an_existing_ledger_and_dataset_only_reads(
    photos_s3: Any, theos: Any, tmp_path: Path
) -> None:
    s3, bucket, store = photos_s3
    state = tmp_path / "ledger.sqlite"
    client = fast_client(theos.url, theos)
    kw: dict[str, Any] = dict(manifest_store=f"s3://{store}/dry2", state=state, canary=5, max_entries=10,
                              progress=False, poll_interval=0.05)
    first = manifester.migrate(f"s3://{bucket}", dataset="Dry2", client=client, include=["animals/**"], **kw)
    assert first.ok and first.created > 0
    before = state.read_bytes()
    proxy = FaultProxy(theos.url, lambda m, kind, n: None)
    try:
        plan = manifester.migrate(f"s3://{bucket}", dataset_id=first.dataset_id, client=fast_client(proxy.url, theos),
                                  dry_run=True, **kw)
    finally:
        proxy.stop()
    assert plan.dry_run and plan.plan is not None
    assert plan.plan.already_present == first.created and plan.plan.total == N_IMAGES - first.created
    assert proxy.counts and all(k.startswith("GET ") for k in proxy.counts), proxy.counts
    assert state.read_bytes() == before
    with Ledger.open(state) as ledger:
        assert len(ledger.runs()) == 1


# ---------------------------------------------------------------------------- streaming


class _GatedStorage:
    """A real storage whose listing stops after ``at`` objects until ``gate`` is set (or 60 s pass).

    ``gate_results`` records whether the gate was opened (True) or timed out (False);
    ``fail`` raises it at the gate instead of going on.
    """

    def __init__(self, inner: Any, at: int, gate: threading.Event, fail: Exception | None = None) -> None:
        self._inner = inner
        self._at = at
        self._gate = gate
        self._fail = fail
        self.gate_results: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def list(self, prefix: str | None = None) -> Iterator[Any]:
        for n, obj in enumerate(self._inner.list(prefix)):
            if n == self._at:
                self.gate_results.append(self._gate.wait(60))
                if self._fail is not None:
                    raise self._fail
            yield obj


def _folder_of_images(root: Path, n: int) -> Path:
    from tests.support.theos_server import make_image

    folder = root / "imgs"
    folder.mkdir(parents=True)
    body = make_image(4, 4)
    for i in range(n):
        (folder / f"img-{i:05d}.png").write_bytes(body)
    return folder


def _streaming_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, fail: Exception | None = None) -> Any:
    from manifester import pipeline
    from tests.support.theos_server import StaticServer

    web = StaticServer(tmp_path / "web")
    folder = _folder_of_images(tmp_path / "web", n)
    uploaded = threading.Event()
    gated: list[_GatedStorage] = []
    real_open = pipeline.open_storage

    def open_storage(uri: str, **kw: Any) -> Any:
        storage = real_open(uri, **kw)
        if uri == str(folder):
            # the builder works 1,000 listed objects at a time: hold the listing just after the first batch
            gated.append(_GatedStorage(storage, 1000, uploaded, fail))
            return gated[-1]
        return storage

    monkeypatch.setattr(pipeline, "open_storage", open_storage)
    kw: dict[str, Any] = dict(
        url_template=f"{web.url}/imgs/{{key}}", manifest_store=str(tmp_path / "web" / "store"),
        manifest_base_url=f"{web.url}/store", state=tmp_path / "l.sqlite", canary=5, progress=False,
        poll_interval=0.05,
    )
    return web, folder, uploaded, gated, kw


def _scan_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "manifester-scan"]


def test_canary_is_sent_while_the_source_is_still_being_listed_then_resume_is_exact(
    theos: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manifester.errors import Interrupted

    n = 1010
    web, folder, uploaded, gated, kw = _streaming_setup(tmp_path, monkeypatch, n)
    tasks: list[str] = []

    class Client(TheosClient):
        interrupt = True

        def upload(self, dataset_id: Any, manifest_url: str) -> str:
            uploaded.set()
            tasks.append(str(super().upload(dataset_id, manifest_url)))
            return tasks[-1]

        def get_task(self, task_id: str) -> Any:
            if self.interrupt and task_id != tasks[0]:
                raise KeyboardInterrupt  # Ctrl-C while following the second shard
            return super().get_task(task_id)

    def client() -> Client:
        return Client(api_url=theos.url, project_key=theos.project_key, api_token=theos.token, timeout=10.0)

    try:
        with pytest.raises(Interrupted):
            manifester.migrate(str(folder), dataset="Streaming", client=client(), **kw)
        # the listing was held after its first 1,000 objects until the canary's upload released it:
        # without streaming, the canary could only go after the whole listing (the gate would time out)
        assert gated[0].gate_results == [True] and len(tasks) == 2
        assert not _scan_threads()  # the background scan was stopped and joined
        again = client()
        again.interrupt = False
        summary = manifester.migrate(str(folder), dataset="Streaming", client=again, **kw)
    finally:
        web.stop()
    assert summary.ok, summary.lines()
    assert summary.resumed_shards == 1  # the canary's task was followed, not sent again
    content = dataset_content(fast_client(theos.url, theos), summary.dataset_id)
    assert len(content) == len({e for e, _ in content}) == n
    assert ledger_content(tmp_path / "l.sqlite", summary.dataset_id) == content
    assert duplicates_sent(tmp_path / "l.sqlite", summary.dataset_id) == 0


def test_a_listing_error_after_the_canary_stops_the_run_with_that_error(
    theos: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manifester.errors import SourceError

    web, folder, uploaded, gated, kw = _streaming_setup(
        tmp_path, monkeypatch, 1005, fail=SourceError("listing broke", hint="try again")
    )

    class Client(TheosClient):
        def upload(self, dataset_id: Any, manifest_url: str) -> str:
            uploaded.set()
            return str(super().upload(dataset_id, manifest_url))

    try:
        with pytest.raises(SourceError, match="listing broke"):
            manifester.migrate(str(folder), dataset="Broken", client=Client(
                api_url=theos.url, project_key=theos.project_key, api_token=theos.token, timeout=10.0), **kw)
    finally:
        web.stop()
    assert gated[0].gate_results == [True] and not _scan_threads()
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        shards = ledger.shards()
        objects = ledger.objects(shards[0].dataset_id)
    # the canary went and was followed to its end; what the scan recorded stays queued for the next run
    assert [(s.kind, s.state) for s in shards] == [("canary", "done")]
    assert sum(o.outcome == "created" for o in objects) == 5
    # (committed batch by batch: the batch being filled when the listing broke is listed again next run)
    assert {o.outcome for o in objects} == {"created", "pending"} and 5 < len(objects) <= 1000


def test_reconcile_waits_while_an_unheard_upload_still_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    # After an upload whose answer was lost, the server may still be importing it: the
    # per-object check must wait until the dataset stops growing, or it would re-send
    # (and Theos would count as duplicates) what the lost task was about to create.
    import types

    from manifester import pipeline

    monkeypatch.setattr(pipeline, "_SETTLE_QUIET", 0.3)
    totals = iter([0, 3, 6, 9, 10])  # the lost task imports 10 images, then stays put
    seen: list[int] = []

    class Client:
        def get_dataset(self, dataset_id: str) -> Any:
            total = next(totals, 10)
            seen.append(total)
            return types.SimpleNamespace(total=total)

    run = types.SimpleNamespace(client=Client(), dataset_id="1", poll_interval=0.05)
    started = time.monotonic()
    pipeline._Run._settle(run)  # type: ignore[arg-type]
    waited = time.monotonic() - started
    assert seen[:5] == [0, 3, 6, 9, 10]
    # it returned only once the count had stayed at 10 for the quiet window
    assert seen[5:] and set(seen[5:]) == {10}
    assert waited >= 0.3
