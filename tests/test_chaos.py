"""Chaos: whatever fails, a migration loses nothing and creates nothing twice.

Seeded and repeatable. ``make test`` runs the short form; ``make chaos``
(``MANIFESTER_CHAOS=long``) runs the long form: more trials, more images.

* **Process death**: ``manifester migrate`` (the real command line, a subprocess)
  against SeaweedFS (signatures checked) and the local Theos server, SIGKILLed at a
  seeded random moment, sometimes again while resuming, then re-run until it exits 0.
  After each trial the dataset holds exactly the expected external ids, each once,
  each with its split, and the ledger agrees with the server.
* **API faults**: the same migration through :class:`FaultProxy` with a seeded
  schedule of every fault kind (429 with/without Retry-After, 5xx before and after
  processing, resets, cut bodies, slow answers, truncated JSON, HTML pages), a task
  that ends FAILURE, and the server restarted mid-task. Each run completes or stops
  with a clear, resumable error; after re-running, the dataset is exact.
* **Storage faults**: objects deleted between listing and upload (reported by key,
  the run continues), a manifest store that refuses writes mid-run, presigned URLs
  that expire before the server reaches them (caught by the canary).
* **Concurrency**: two ``ingest`` runs on one ledger: one runs, the other refuses.

Every test adds to ``FIGURES``; the module prints them at the end (and writes them
to ``$MANIFESTER_CHAOS_REPORT`` if set) for the README.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import manifester
from manifester.errors import ManifesterError, PublishError, TaskFailedError
from manifester.ledger import Ledger
from manifester.server import RunningServer, start_server
from manifester.theos import TheosClient
from tests.support.fault_proxy import AFTER_FAULTS, ALL_FAULTS, FaultProxy
from tests.support.storage_servers import S3Server, subprocess_env, unique_bucket_name
from tests.support.theos_server import StaticServer, make_image

LONG = os.environ.get("MANIFESTER_CHAOS", "").lower() == "long"
KILL_TRIALS = 24 if LONG else 3
N_IMAGES = 300 if LONG else 60
FAULT_SEEDS = list(range(12)) if LONG else [1, 2]
SHARD = "25" if LONG else "20"
CANARY = "5"
MANIFESTER = str(Path(sys.executable).parent / "manifester")

FIGURES: dict[str, Any] = {
    "mode": "long" if LONG else "short",
    "images_per_dataset": N_IMAGES,
    "kill_trials": 0,
    "sigkills": 0,
    "runs": 0,
    "runs_stopped_with_clear_error": 0,
    "faults_injected": Counter(),
    "server_restarts": 0,
    "objects_expected": 0,
    "objects_lost": 0,
    "objects_duplicated": 0,
    "duplicate_sends_absorbed_by_server": 0,
    "deleted_objects_reported": 0,
    "concurrent_runs_refused": 0,
}


@pytest.fixture(scope="module", autouse=True)
def report_figures(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    figures = {
        k: (dict(v) if isinstance(v, Counter) else v) for k, v in FIGURES.items()
    }
    figures["faults_injected_total"] = sum(FIGURES["faults_injected"].values())
    text = json.dumps(figures, indent=1, sort_keys=True)
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("\nchaos figures: " + text)
    target = os.environ.get("MANIFESTER_CHAOS_REPORT")
    if target:
        Path(target).write_text(text + "\n")


# ------------------------------------------------------------------------------ world


class Source:
    """A SeaweedFS bucket of real images, the manifest bucket, and the expected dataset."""

    def __init__(self, s3: S3Server, tmp: Path) -> None:
        self.s3 = s3
        self.bucket = unique_bucket_name("chaos")
        self.store = unique_bucket_name("chaos-m")
        files: dict[str, bytes] = {}
        rng = random.Random(42)
        for i in range(N_IMAGES):
            fmt = "PNG" if i % 3 else "JPEG"
            color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            key = f"set{i % 5}/img-{i:04d}.{fmt.lower().replace('jpeg', 'jpg')}"
            files[key] = make_image(16 + i % 13, 12 + i % 7, fmt, color)
        s3.make_bucket(self.bucket, files)
        s3.make_bucket(self.store)
        self.keys = sorted(files)
        # the expected dataset: what `build` computes for this bucket
        from manifester.builder import build

        with _env(s3.env()):
            plan = build(f"s3://{self.bucket}", tmp / "expected")
        self.expected = sorted(
            (e["external_id"], e["split"])
            for p in plan.shard_paths
            for e in json.loads(p.read_bytes())
        )
        assert len(self.expected) == N_IMAGES

    def env(self, theos: RunningServer, api_url: str | None = None) -> dict[str, str]:
        env = subprocess_env(self.s3, drop=("AWS_", "THEOS_", "MANIFESTER_"))
        env.update(
            THEOS_API_URL=api_url or theos.url,
            THEOS_PROJECT_KEY=theos.project_key,
            THEOS_API_TOKEN=theos.token,
        )
        return env


class _env:
    """Apply environment variables for a block ("" means unset); restore afterwards."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            if v:
                os.environ[k] = v
            else:
                os.environ.pop(k, None)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def source(seaweed_s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Source:
    return Source(seaweed_s3, tmp_path_factory.mktemp("chaos-src"))


@pytest.fixture
def theos(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "theos", download_timeout=10.0)
    yield server
    server.stop()


def fast_client(url: str, server: RunningServer, timeout: float = 10.0) -> TheosClient:
    """Real retries and backoff, but sleeps shortened so tests stay quick."""
    return TheosClient(
        api_url=url,
        project_key=server.project_key,
        api_token=server.token,
        timeout=timeout,
        sleep=lambda s: time.sleep(min(s, 0.05)),
    )


def dataset_content(server: RunningServer, dataset_id: str) -> list[tuple[str, str]]:
    with fast_client(server.url, server) as client:
        out = [
            (e.external_id, split)
            for split in ("train", "valid", "test")
            for e in client.iter_examples(dataset_id, split)
        ]
    return sorted(out)  # type: ignore[arg-type]


def find_dataset_id(server: RunningServer, name: str) -> str | None:
    with fast_client(server.url, server) as client:
        found = client.find_dataset(name)
    return None if found is None else str(found.id)


def verify(
    source: Source,
    server: RunningServer,
    dataset_id: str,
    state: Path,
    missing_ok: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """The dataset is exactly the expected one (minus ``missing_ok`` external ids); the ledger agrees."""
    content = dataset_content(server, dataset_id)
    ids = Counter(e for e, _ in content)
    duplicated = sum(n - 1 for n in ids.values() if n > 1)
    expected = [(e, s) for e, s in source.expected if e not in missing_ok]
    lost = len({e for e, _ in expected} - set(ids))
    FIGURES["objects_expected"] += len(expected)
    FIGURES["objects_lost"] += lost
    FIGURES["objects_duplicated"] += duplicated
    assert duplicated == 0, f"{duplicated} examples duplicated"
    assert lost == 0, f"{lost} objects lost"
    assert content == expected, (
        "the dataset differs from the expected external ids/splits"
    )
    with Ledger.open(state) as ledger:
        objects = ledger.objects(dataset_id)
        dup_sends = sum(
            (s.result or {}).get("duplicates") or 0 for s in ledger.shards(dataset_id)
        )
    created = sorted(
        (o.external_id, o.split) for o in objects if o.outcome == "created"
    )
    assert created == expected, "the ledger disagrees with the server"
    assert {o.external_id for o in objects if o.outcome != "created"} == set(missing_ok)
    FIGURES["duplicate_sends_absorbed_by_server"] += dup_sends
    return {"duplicates_sent": dup_sends}


# ------------------------------------------------------------------------------ process death


def _migrate_argv(source: Source, name: str, state: Path, prefix: str) -> list[str]:
    return _run_argv("migrate", source, ["--dataset", name], state, prefix)


def _run_argv(command: str, source: Source, dataset: list[str], state: Path, prefix: str) -> list[str]:
    """``manifester migrate|ingest`` of the source bucket in small shards, without progress bars."""
    return [
        MANIFESTER,
        command,
        f"s3://{source.bucket}",
        *dataset,
        "--manifest-store",
        f"s3://{source.store}/{prefix}",
        "--state",
        str(state),
        "--canary",
        CANARY,
        "--max-entries",
        SHARD,
        "--no-progress",
    ]


def _run_until_done(
    argv: list[str],
    env: dict[str, str],
    rng: random.Random,
    budget: float,
    max_kills: int,
) -> tuple[int, int]:
    """Run, SIGKILL at a seeded moment (up to ``max_kills`` times), re-run until exit 0.

    Returns (kills, runs).
    """
    kills = runs = 0
    while True:
        runs += 1
        FIGURES["runs"] += 1
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        kill_at = (
            rng.uniform(0.15, budget)
            if kills < max_kills and (kills == 0 or rng.random() < 0.5)
            else None
        )
        try:
            _, err = (
                proc.communicate(timeout=kill_at)
                if kill_at is not None
                else proc.communicate(timeout=300)
            )
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
            FIGURES["sigkills"] += 1
            continue
        text = err.decode(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        if proc.returncode == 0:
            return kills, runs
        # a resumable error is allowed (e.g. a canary interrupted mid-flight); run again
        assert proc.returncode in (1, 130), text[-3000:]
        assert text.strip(), "non-zero exit without a message"
        FIGURES["runs_stopped_with_clear_error"] += 1
        assert runs < 12, f"no progress after {runs} runs: {text[-2000:]}"


def test_sigkill_at_random_moments_then_rerun(
    source: Source, theos: RunningServer, tmp_path: Path
) -> None:
    env = source.env(theos)
    # calibrate: one clean run tells how long a migration takes here
    state0 = tmp_path / "clean.sqlite"
    started = time.monotonic()
    proc = subprocess.run(
        _migrate_argv(source, "Clean", state0, "clean"),
        env=env,
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    budget = max(1.0, time.monotonic() - started)
    verify(source, theos, find_dataset_id(theos, "Clean") or "", state0)

    for trial in range(KILL_TRIALS):
        rng = random.Random(1000 + trial)
        name, state = f"Kill-{trial}", tmp_path / f"kill-{trial}.sqlite"
        _run_until_done(
            _migrate_argv(source, name, state, f"k{trial}"),
            env,
            rng,
            budget,
            max_kills=3,
        )
        FIGURES["kill_trials"] += 1
        dataset_id = find_dataset_id(theos, name)
        assert dataset_id is not None
        verify(source, theos, dataset_id, state)
        # a re-run afterwards sends nothing
        again = subprocess.run(
            [*_migrate_argv(source, name, state, f"k{trial}"), "--json"],
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        summary = json.loads(again.stdout)
        assert (
            summary["nothing_new"]
            and summary["created"] == 0
            and summary["shards"] == 0
        )


# ------------------------------------------------------------------------------ API faults


def _migrate_with_retries(
    source: Source,
    client: TheosClient,
    name: str,
    state: Path,
    prefix: str,
    attempts: int = 10,
    **kw: Any,
) -> Any:
    """Call migrate until it succeeds; every failure must be a clear ManifesterError."""
    errors: list[str] = []
    options: dict[str, Any] = {"canary": int(CANARY), "max_entries": int(SHARD), **kw}
    with _env(source.s3.env()):
        for _ in range(attempts):
            FIGURES["runs"] += 1
            try:
                return manifester.migrate(
                    f"s3://{source.bucket}",
                    dataset=name,
                    manifest_store=f"s3://{source.store}/{prefix}",
                    state=state,
                    client=client,
                    progress=False,
                    poll_interval=0.05,
                    **options,
                ), errors
            except ManifesterError as exc:
                FIGURES["runs_stopped_with_clear_error"] += 1
                text = str(exc)
                assert text and "Traceback" not in text
                errors.append(f"{type(exc).__name__}: {text.splitlines()[0]}")
    pytest.fail(f"migrate did not complete in {attempts} runs: {errors}")


@pytest.mark.parametrize("seed", FAULT_SEEDS)
def test_seeded_api_faults(
    seed: int, source: Source, theos: RunningServer, tmp_path: Path
) -> None:
    proxy = FaultProxy(
        theos.url, seed=seed, rate=0.12, kinds=ALL_FAULTS, slow_seconds=1.2
    )
    try:
        client = fast_client(proxy.url, theos, timeout=1.0)
        state = tmp_path / "l.sqlite"
        name = f"Faults-{seed}"
        summary, errors = _migrate_with_retries(source, client, name, state, f"f{seed}")
        FIGURES["faults_injected"].update(proxy.injected)
        assert proxy.total_injected() > 0
    finally:
        proxy.stop()
    dataset_id = find_dataset_id(theos, name)
    assert dataset_id is not None and summary.ok, (summary.lines(), errors)
    verify(source, theos, dataset_id, state)


def test_every_fault_kind_gives_survival_or_a_clear_error(theos: RunningServer) -> None:
    """Each fault kind once on a read (retried: must succeed) and on a create (not retried
    blindly: succeeds or raises a clear TheosError); never a second dataset of one name."""
    proxy = FaultProxy(theos.url, slow_seconds=1.2)
    outcomes: dict[str, str] = {}
    try:
        for kind in ALL_FAULTS:
            client = fast_client(proxy.url, theos, timeout=1.0)
            proxy.inject(kind, method="GET")
            if (
                kind == "wrong_shape"
            ):  # valid JSON of another shape is not transient: a clear error
                with pytest.raises(ManifesterError, match="unexpected answer"):
                    client.list_datasets()
            else:  # reads are retried through every transient fault
                assert isinstance(client.list_datasets(), list), kind
            proxy.inject(kind, method="POST")
            name = f"kind-{kind}"
            try:
                client.create_dataset(name)
                outcomes[kind] = "ok"
            except ManifesterError as exc:
                assert str(exc) and getattr(exc, "hint", None), kind
                outcomes[kind] = type(exc).__name__
            names = [d.name for d in fast_client(theos.url, theos).list_datasets()]
            assert names.count(name) <= 1, (kind, names)
        FIGURES["faults_injected"].update(proxy.injected)
    finally:
        proxy.stop()
    assert proxy.total_injected() == 2 * len(ALL_FAULTS)


def test_upload_answer_lost_after_the_server_acted(
    source: Source, theos: RunningServer, tmp_path: Path
) -> None:
    """Every kind of "the server acted, the client never heard" on upload/: reconciled, never sent twice."""
    proxy = FaultProxy(theos.url, slow_seconds=1.2)
    after = AFTER_FAULTS
    for (
        kind
    ) in after:  # rules fire in order: the first upload gets the first kind, and so on
        proxy.inject(kind, method="POST", path=r"/upload/$", times=1)
    try:
        client = fast_client(proxy.url, theos, timeout=1.0)
        state = tmp_path / "l.sqlite"
        # shards of 6: at least 10 uploads, so every kind fires
        summary, errors = _migrate_with_retries(
            source, client, "Lost", state, "lost", max_entries=6
        )
        FIGURES["faults_injected"].update(proxy.injected)
    finally:
        proxy.stop()
    assert summary.ok, (summary.lines(), errors)
    assert sum(proxy.injected.values()) == len(after)
    checked = verify(source, theos, find_dataset_id(theos, "Lost") or "", state)
    # reconciling waits for the unheard upload's import to end, so nothing is re-sent
    assert checked["duplicates_sent"] == 0, checked


def test_task_failure_and_server_restart_mid_task(
    source: Source, tmp_path: Path
) -> None:
    """The server restarts while a task runs (the task ends FAILURE): re-running completes exactly."""
    data = tmp_path / "theos"
    servers = [start_server(data, download_timeout=10.0)]
    proxy = FaultProxy(servers[0].url)
    polls = {"n": 0}
    restarts = int(FIGURES["server_restarts"])

    def hook(method: str, path: str) -> None:
        if path.startswith("/v1/tasks/"):
            polls["n"] += 1
            if polls["n"] in (
                3,
                14,
            ):  # while the canary, then a later shard, is running
                old = servers[-1]
                old.stop()
                servers.append(
                    start_server(
                        data,
                        project_key=old.project_key,
                        token=old.token,
                        download_timeout=10.0,
                    )
                )
                proxy.retarget(servers[-1].url)
                FIGURES["server_restarts"] += 1

    proxy.on_request(hook)
    try:
        client = fast_client(proxy.url, servers[0], timeout=5.0)
        state = tmp_path / "l.sqlite"
        summary, errors = _migrate_with_retries(
            source, client, "Restart", state, "restart"
        )
    finally:
        proxy.stop()
        try:
            assert summary.ok, (summary.lines(), errors)
            assert FIGURES["server_restarts"] > restarts
            current = servers[-1]
            verify(source, current, find_dataset_id(current, "Restart") or "", state)
        finally:
            for s in servers:
                s.stop()


# ------------------------------------------------------------------------------ storage faults


def test_object_deleted_between_listing_and_upload(
    seaweed_s3: S3Server, theos: RunningServer, tmp_path: Path
) -> None:
    bucket = unique_bucket_name("chaos-del")
    store = unique_bucket_name("chaos-delm")
    files = {f"d/img-{i:03d}.png": make_image(20 + i, 20) for i in range(30)}
    seaweed_s3.make_bucket(bucket, files)
    seaweed_s3.make_bucket(store)
    doomed = [k for k in sorted(files)][
        -4:
    ]  # sorted keys: the last ones go in the last shard
    proxy = FaultProxy(theos.url)

    def hook(method: str, path: str) -> None:
        if method == "POST" and path.endswith("/upload/") and doomed:
            c = seaweed_s3.client()
            for key in doomed:
                c.delete_object(Bucket=bucket, Key=key)
            proxy.on_request(None)

    proxy.on_request(hook)
    state = tmp_path / "l.sqlite"
    try:
        with _env(seaweed_s3.env()):
            summary = manifester.migrate(
                f"s3://{bucket}",
                dataset="Deleted",
                manifest_store=f"s3://{store}/m",
                state=state,
                client=fast_client(proxy.url, theos),
                canary=3,
                max_entries=10,
                progress=False,
                poll_interval=0.05,
            )
    finally:
        proxy.stop()
    failed = sorted(f.key for f in summary.failed)
    assert failed == sorted(doomed), summary.lines()
    assert not summary.ok and summary.exit_code == 1
    FIGURES["deleted_objects_reported"] += len(failed)
    dataset_id = find_dataset_id(theos, "Deleted") or ""
    content = dataset_content(theos, dataset_id)
    assert len(content) == len(files) - len(doomed) == len({e for e, _ in content})
    FIGURES["objects_expected"] += len(content)


def test_manifest_store_refuses_writes_mid_run(
    source: Source, theos: RunningServer, tmp_path: Path
) -> None:
    """A local-folder store served over HTTP, where the third manifest cannot be written.

    A directory sits where ``run-000001/manifest-00003.json`` goes, so that write fails
    after two shards were sent (root ignores permissions, so chmod would not do).
    """
    web = StaticServer(tmp_path / "web")
    store = tmp_path / "web" / "store"
    blocker = store / "run-000001" / "manifest-00003.json"
    blocker.mkdir(parents=True)
    state = tmp_path / "l.sqlite"
    kw: dict[str, Any] = {
        "dataset": "Store",
        "manifest_store": str(store),
        "manifest_base_url": f"{web.url}/store",
        "state": state,
        "canary": int(CANARY),
        "max_entries": int(SHARD),
        "progress": False,
        "poll_interval": 0.05,
        "client": fast_client(theos.url, theos),
    }
    try:
        with _env(source.s3.env()):
            with pytest.raises(PublishError, match="manifest-00003") as info:
                manifester.migrate(f"s3://{source.bucket}", **kw)
            assert info.value.hint and "--manifest-store" in info.value.hint
            FIGURES["runs"] += 1
            FIGURES["runs_stopped_with_clear_error"] += 1
            dataset_id = find_dataset_id(theos, "Store") or ""
            sent_before = len(dataset_content(theos, dataset_id))
            assert (
                0 < sent_before < N_IMAGES
            )  # the canary and a shard went; the run stopped cleanly
            blocker.rmdir()  # the store is fixed; the same command resumes
            summary = manifester.migrate(f"s3://{source.bucket}", **kw)
            FIGURES["runs"] += 1
    finally:
        web.stop()
    assert summary.ok, summary.lines()
    verify(source, theos, dataset_id, state)


def test_presigned_lifetime_shorter_than_the_wait_is_caught_by_the_canary(
    source: Source, theos: RunningServer, tmp_path: Path
) -> None:
    proxy = FaultProxy(theos.url, slow_seconds=2.5)
    # hold the upload request itself: 1-second URLs have expired when the server fetches them
    proxy.on_request(
        lambda m, p: (
            time.sleep(2.5) if (m == "POST" and p.endswith("/upload/")) else None
        )
    )
    try:
        with (
            _env(source.s3.env()),
            pytest.raises(TaskFailedError, match="canary") as info,
        ):
            manifester.migrate(
                f"s3://{source.bucket}",
                dataset="Short",
                manifest_store=f"s3://{source.store}/short",
                state=tmp_path / "l.sqlite",
                client=fast_client(proxy.url, theos),
                canary=3,
                url_lifetime="1s",
                progress=False,
                poll_interval=0.05,
            )
        uploads = [
            entry
            for entry in proxy.log
            if entry[0] == "POST" and entry[1].endswith("/upload/")
        ]
    finally:
        proxy.stop()
    assert "--url-lifetime" in (info.value.hint or "")
    assert len(uploads) == 1  # nothing was sent after the canary
    FIGURES["runs"] += 1
    FIGURES["runs_stopped_with_clear_error"] += 1


# ------------------------------------------------------------------------------ concurrency


def test_two_ingest_runs_on_one_ledger(
    source: Source, theos: RunningServer, tmp_path: Path
) -> None:
    env = source.env(theos)
    with fast_client(theos.url, theos) as client:
        dataset_id = str(client.create_dataset("Ingest").id)
    state = tmp_path / "l.sqlite"
    argv = _run_argv("ingest", source, ["--dataset-id", dataset_id], state, "ingest")
    barrier = threading.Barrier(2)
    results: list[subprocess.CompletedProcess[bytes]] = []

    def run() -> None:
        barrier.wait()
        results.append(
            subprocess.run(argv, env=env, capture_output=True, check=False, timeout=300)
        )

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    FIGURES["runs"] += 2
    codes = sorted(r.returncode for r in results)
    refused = [r for r in results if r.returncode != 0]
    for r in results:
        assert b"Traceback" not in r.stderr
    if refused:  # the usual case: the second one found the lock held
        assert codes == [0, 1], [r.stderr.decode()[-500:] for r in results]
        assert b"holds the lock" in refused[0].stderr, refused[0].stderr.decode()
        FIGURES["concurrent_runs_refused"] += 1
    verify(source, theos, dataset_id, state)
    # and the next scheduled run finds nothing new
    again = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=120)
    assert again.returncode == 0 and b"nothing new" in again.stdout, (
        again.stdout + again.stderr
    )
