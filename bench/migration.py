"""Figures 4b and 5: the gap between shards, and the time to the first (canary) upload.

``manifester.migrate()`` with default options (canary 20, polls timed for the task's
estimated end, at least 0.25 s apart) into the local Theos-compatible server (in this
process). The Theos client is a subclass of ``TheosClient`` that only records when
``upload`` is called and what each task poll saw; nothing in manifester is patched.

* gap: a 3-shard migration (canary 20, then 2 x 1,000 real PNG images) from moto's
  S3 server (``ThreadedMotoServer`` in this process). For each shard after the
  first: time from the end of the previous task to the next ``upload`` call. The
  end lies between the last poll that saw the task running and the first that saw
  it finished; the value is the upper bound.
* time to first upload: buckets of 20,000 and 200,000 objects in SeaweedFS (its own
  process, seeded once through its filer and kept in ``.bench/seaweed``); time from
  calling ``migrate`` to the canary's ``upload`` call (the run is then stopped). Not
  moto: its cost per ListObjectsV2 page grows with the bucket (0.17 s at 20 k, 0.57 s
  at 200 k objects), and in this process it would compete with manifester for the GIL.

    python bench/migration.py [--quick]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    CACHE,
    ROOT,
    Row,
    emit,
    fmt_s,
    parser,
    seed_seaweed_bucket,
    start_cached_seaweedfs,
    synthetic_keys,
    use_server_env,
    yes,
)


class _Stop(BaseException):
    """Raised from upload() to end a run once the first upload call has been seen."""


def _client_class() -> Any:
    from manifester.theos import TheosClient

    class TimingClient(TheosClient):  # type: ignore[misc]
        def __init__(
            self, *a: Any, stop_at_first_upload: bool = False, **kw: Any
        ) -> None:
            super().__init__(*a, **kw)
            self.uploads: list[float] = []
            self.polls: list[tuple[float, str, bool]] = []  # (time, task id, finished?)
            self.stop_at_first_upload = stop_at_first_upload

        def upload(self, dataset_id: Any, manifest_url: str) -> str:
            self.uploads.append(time.monotonic())
            if self.stop_at_first_upload:
                raise _Stop()
            return str(super().upload(dataset_id, manifest_url))

        def get_task(self, task_id: str) -> Any:
            task = super().get_task(task_id)
            state = str(getattr(task, "state", "") or "").upper()
            self.polls.append(
                (time.monotonic(), task_id, state in ("SUCCESS", "FAILURE", "REVOKED"))
            )
            return task

    return TimingClient


def _seed(
    backend: Any, client: Any, bucket: str, keys: list[str], body: bytes
) -> float:
    t0 = time.perf_counter()
    client.create_bucket(Bucket=bucket)
    put = backend.put_object
    for k in keys:
        put(bucket, k, body)
    return time.perf_counter() - t0


def run(
    first_sizes: tuple[int, int] = (20_000, 200_000), gap_shard: int = 1000
) -> list[Row]:
    sys.path.insert(0, str(ROOT))
    import logging

    from moto.backends import get_backend

    import manifester
    from manifester.server import start_server
    from tests.support.storage_servers import start_moto
    from tests.support.theos_server import make_image

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-", dir=str(CACHE)))
    moto = start_moto()
    theos = start_server(work / "theos")
    rows: list[Row] = []
    try:
        use_server_env(moto)
        s3 = moto.client()
        backend = get_backend("s3")["123456789012"]["global"]
        s3.create_bucket(Bucket="bench-manifests")
        TimingClient = _client_class()

        def client(**kw: Any) -> Any:
            return TimingClient(
                api_url=theos.url,
                project_key=theos.project_key,
                api_token=theos.token,
                **kw,
            )

        # ---------------------------------------------------------------- gap
        n_gap = 20 + 2 * gap_shard
        _seed(
            backend, s3, "bench-gap", synthetic_keys(n_gap, seed=7), make_image(16, 16)
        )
        c = client()
        t0 = time.monotonic()
        summary = manifester.migrate(
            "s3://bench-gap",
            dataset="Bench gap",
            manifest_store="s3://bench-manifests/gap",
            state=work / "gap.sqlite",
            client=c,
            progress=False,
            max_entries=gap_shard,
        )
        total_s = time.monotonic() - t0
        uppers, lowers = [], []
        for up in c.uploads[1:]:
            before = [p for p in c.polls if p[0] < up]
            running = [p[0] for p in before if not p[2]]
            done = [p[0] for p in before if p[2]]
            if done:
                lowers.append(up - done[-1])
                uppers.append(up - (running[-1] if running else done[-1]))
        worst = max(uppers) if uppers else float("nan")
        rows.append(
            Row(
                figure=f"gap between shards ({summary.shards}-shard migration)",
                value=fmt_s(worst),
                baseline="-",
                ratio="-",
                goal="<= 1 s",
                met=yes(bool(uppers) and worst <= 1.0),
                note=(
                    f"moto + local Theos server, canary 20 + 2 x {gap_shard:,} images, {summary.created:,} created in "
                    f"{total_s:.1f} s; per shard, task end -> next upload call: upper bounds "
                    f"{', '.join(f'{u:.2f}' for u in uppers)} s, lower bounds {', '.join(f'{x:.2f}' for x in lowers)} s "
                    "(the end lies between the last poll that saw the task running and the first that saw it done; "
                    f"{len(c.polls)} task polls in all: timed for the estimated end, >= 0.25 s apart)"
                ),
            )
        )

        # ---------------------------------------------------------------- first upload
        moto.stop()
        seaweed = start_cached_seaweedfs()  # points the environment at SeaweedFS
        try:
            rows += _first_upload(seaweed, client, work, first_sizes)
        finally:
            seaweed.stop()
    finally:
        theos.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _first_upload(seaweed: Any, client: Any, work: Path, sizes: tuple[int, int]) -> list[Row]:
    import manifester
    from manifester.storage.s3 import S3Storage

    real_list = S3Storage.list
    firsts: dict[int, float] = {}
    pages: dict[int, float] = {}
    seeded: dict[int, float] = {}
    ended: dict[int, bool] = {}
    s3 = seaweed.client()
    try:
        s3.create_bucket(Bucket="bench-manifests")
    except s3.exceptions.BucketAlreadyOwnedByYou:  # kept in .bench/seaweed from an earlier run
        pass
    # Instrumentation from outside: when the server answered the first ListObjectsV2 page,
    # and whether the listing ended before the canary went (it must not have: streaming).
    first_page: list[float] = []
    list_end: list[float] = []

    def timed_list(self: Any, prefix: str | None = None) -> Any:
        started = time.monotonic()
        for i, obj in enumerate(real_list(self, prefix)):
            if i == 0:
                first_page.append(time.monotonic() - started)
            yield obj
        list_end.append(time.monotonic())

    def first_upload(n: int, attempt: int) -> tuple[float, float, bool]:
        """(seconds to the canary's upload call, of which the first page, listing ended first)."""
        c = client(stop_at_first_upload=True)
        first_page.clear()
        list_end.clear()
        t0 = time.monotonic()
        try:
            manifester.migrate(
                f"s3://bench-first-{n}",
                dataset=f"Bench {n} {attempt}",
                manifest_store=f"s3://bench-manifests/first-{n}-{attempt}",
                state=work / f"first-{n}-{attempt}.sqlite",  # a fresh ledger: a first run each time
                client=c,
                progress=False,
            )
        except _Stop:
            pass
        if not c.uploads:
            return float("nan"), float("nan"), True
        return c.uploads[0] - t0, first_page[0] if first_page else float("nan"), bool(list_end) and list_end[-1] <= c.uploads[0]

    S3Storage.list = timed_list  # type: ignore[method-assign]
    try:
        for n in sizes:
            seeded[n] = seed_seaweed_bucket(seaweed, f"bench-first-{n}", synthetic_keys(n, seed=n))
        first_upload(sizes[0], 0)  # warm-up (imports, connections): not counted
        # median of 3 per size, the sizes interleaved so that machine noise hits both alike
        samples: dict[int, list[tuple[float, float, bool]]] = {n: [] for n in sizes}
        for attempt in range(1, 4):
            for n in sizes:
                samples[n].append(first_upload(n, attempt))
        for n in sizes:
            by_time = sorted(samples[n])
            firsts[n], pages[n], _ = by_time[len(by_time) // 2]
            ended[n] = any(e for _, _, e in samples[n])
            print(
                f"first upload after {firsts[n]:.2f} s (median of 3) for {n:,} objects, of which {pages[n]:.2f} s "
                "waiting for the first listing page" + (f" (seeded in {seeded[n]:.0f} s)" if seeded[n] else ""),
                file=sys.stderr,
            )
    finally:
        S3Storage.list = real_list  # type: ignore[method-assign]
    small, big = sizes
    ratio = firsts[big] / firsts[small]
    seed_note = ", ".join(
        f"{n:,} seeded in {seeded[n]:.0f} s" if seeded[n] else f"{n:,} reused from .bench/seaweed" for n in sizes
    )
    listing_note = (
        "the source listing had ENDED before the canary went (not streaming)"
        if ended[big]
        else "the listing had not ended when the canary went"
    )
    return [
        Row(
            figure=f"time to first upload ({big:,} objects)",
            value=fmt_s(firsts[big]),
            baseline=f"{fmt_s(firsts[small])} ({small:,} objects)",
            ratio=f"{ratio:.2f}",
            goal="<= 10 s, ratio <= 1.5",
            met=yes(firsts[big] <= 10 and ratio <= 1.5),
            note=f"SeaweedFS ({seed_note}), local Theos server; median of 3 (after one warm-up run), from calling "
            "migrate() with a fresh ledger to the canary's upload call. migrate() streams: the scan records objects in a background thread and the canary goes as soon "
            f"as its 20 objects are committed; {listing_note}. Of it, the server took {pages[big]:.2f} s / "
            f"{pages[small]:.2f} s to answer the first ListObjectsV2 page",
        )
    ]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rows = run((2_000, 20_000), 200) if args.quick else run()
    emit(rows, args.json)


if __name__ == "__main__":
    main()
