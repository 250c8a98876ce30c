"""Figures 4b and 5: the gap between shards, and the time to the first (canary) upload.

Everything runs in this process: moto's S3 server (``ThreadedMotoServer``; its
backend is seeded directly, which is fast) and the local Theos-compatible server,
with ``manifester.migrate()`` and default options (canary 20, poll interval 1 s,
polls timed for the task's estimated end, at least 0.25 s apart).
The Theos client is a subclass of ``TheosClient`` that only records when
``upload`` is called and what each task poll saw; nothing in manifester is patched.

* gap: a 3-shard migration (canary 20, then 2 x 1,000 real PNG images). For each
  shard after the first: time from the end of the previous task to the next
  ``upload`` call. The end lies between the last poll that saw the task running
  and the first that saw it finished; the value is the upper bound.
* time to first upload: buckets of 20,000 and 200,000 objects; time from calling
  ``migrate`` to the canary's ``upload`` call (the run is then stopped).

    python bench/migration.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CACHE, ROOT, Row, emit, fmt_s, parser, synthetic_keys, yes


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
    from manifester.storage.s3 import S3Storage
    from tests.support.storage_servers import start_moto
    from tests.support.theos_server import make_image

    real_list = S3Storage.list
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-", dir=str(CACHE)))
    moto = start_moto()
    theos = start_server(work / "theos")
    rows: list[Row] = []
    try:
        for k, v in moto.env().items():
            if v:
                os.environ[k] = v
            else:
                os.environ.pop(k, None)
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
        firsts: dict[int, float] = {}
        pages: dict[int, float] = {}
        listed: dict[int, float] = {}
        body = make_image(8, 8)
        # Instrumentation from outside: note how long the server took to answer the first
        # ListObjectsV2 page (moto's cost per page grows with the bucket size, real S3's
        # does not), and whether the listing ended before the canary went, to tell the
        # server's time from manifester's own work before the canary.
        first_page: list[float] = []
        list_end: list[float] = []

        def timed_list(self: Any, prefix: str | None = None) -> Any:
            started = time.monotonic()
            for i, obj in enumerate(real_list(self, prefix)):
                if i == 0:
                    first_page.append(time.monotonic() - started)
                yield obj
            list_end.append(time.monotonic())

        S3Storage.list = timed_list  # type: ignore[method-assign]
        for n in first_sizes:
            bucket = f"bench-first-{n}"
            seeded = _seed(backend, s3, bucket, synthetic_keys(n, seed=n), body)
            c = client(stop_at_first_upload=True)
            t0 = time.monotonic()
            try:
                manifester.migrate(
                    f"s3://{bucket}",
                    dataset=f"Bench {n}",
                    manifest_store=f"s3://bench-manifests/first-{n}",
                    state=work / f"first-{n}.sqlite",
                    client=c,
                    progress=False,
                )
            except _Stop:
                pass
            firsts[n] = (c.uploads[0] - t0) if c.uploads else float("nan")
            pages[n] = first_page[0] if first_page else float("nan")
            # the scan runs on in a background thread and is stopped with the run at the
            # canary's upload, so the listing has normally not ended (nan)
            listed[n] = (list_end[-1] - t0) if list_end and list_end[-1] <= c.uploads[0] else float("nan")
            list_end.clear()
            first_page.clear()
            print(
                f"first upload after {firsts[n]:.2f} s for {n:,} objects, of which {pages[n]:.2f} s waiting for "
                f"the first listing page (seeded in {seeded:.1f} s)",
                file=sys.stderr,
            )
            backend.buckets.pop(bucket, None)  # free moto's memory before the next size
        small, big = first_sizes
        ratio = firsts[big] / firsts[small]
        ours = {k: firsts[k] - pages[k] for k in firsts}
        ours_ratio = ours[big] / ours[small]
        listing_note = (
            "the listing had not ended when the canary went"
            if listed[big] != listed[big]  # nan
            else f"the source listing ended after {listed[big]:.1f} s / {listed[small]:.1f} s, before the canary went"
        )
        rows.append(
            Row(
                figure=f"time to first upload ({big:,} objects)",
                value=fmt_s(firsts[big]),
                baseline=f"{fmt_s(firsts[small])} ({small:,} objects)",
                ratio=f"{ratio:.2f}",
                goal="<= 10 s, ratio <= 1.5",
                met=yes(firsts[big] <= 10 and ratio <= 1.5),
                note="moto in-process (seeded through its backend), local Theos server; from calling migrate() to the "
                "canary's upload call. migrate() streams: the scan records objects in a background thread and the "
                "canary goes as soon as its 20 objects are committed (after the first 1,000-key page); "
                f"{listing_note}. Of it, moto took {pages[big]:.2f} s / {pages[small]:.2f} s to answer the first "
                f"ListObjectsV2 page (its cost per page grows with the bucket size; S3's does not): "
                f"without it {ours[big]:.2f} s / {ours[small]:.2f} s, ratio {ours_ratio:.2f} (see the next row)",
            )
        )
        rows.append(
            Row(
                figure=f"time to first upload, minus moto's first page ({big:,} objects)",
                value=fmt_s(ours[big]),
                baseline=f"{fmt_s(ours[small])} ({small:,} objects)",
                ratio=f"{ours_ratio:.2f}",
                goal="ratio <= 1.5",
                met=yes(ours_ratio <= 1.5),
                note="the same runs, minus the time from the listing's start to its first object (the server's "
                "answer to the first ListObjectsV2 page): manifester's own time before the canary's upload",
            )
        )
    finally:
        S3Storage.list = real_list  # type: ignore[method-assign]
        theos.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rows = run((2_000, 20_000), 200) if args.quick else run()
    emit(rows, args.json)


if __name__ == "__main__":
    main()
