"""Shared helpers for the benchmarks: rows of the results table, timing, synthetic keys.

Every benchmark module exposes ``run(args) -> list[Row]`` and a ``main()`` that
prints its rows (``python bench/<name>.py``) or writes them as JSON
(``--json FILE``, used by ``bench/run_all.py``). Benchmarks print figures; they
never assert.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Cached inputs (listing files, seeded server data); gitignored.
CACHE = ROOT / ".bench"

if (
    str(ROOT) not in sys.path
):  # so "python bench/x.py" imports manifester and tests.support
    sys.path.insert(0, str(ROOT))

SEED = 20240501


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    value: str
    baseline: str
    ratio: str
    goal: str
    met: str  # "yes", "no", "n/a" (not measurable here), "-" (informational)
    note: str = ""


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}/s"


def fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def yes(ok: bool) -> str:
    return "yes" if ok else "no"


def median_time(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls and the last call's result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def synthetic_keys(n: int, seed: int = SEED) -> list[str]:
    """``n`` distinct, sorted, image-like keys of ~60 bytes (a few with spaces and unicode).

    Deterministic for a seed, so every run and every baseline sees the same keys.
    """
    rnd = random.Random(seed)
    cams = [f"cam-{i:03d}" for i in range(40)]
    keys: list[str] = []
    for i in range(n):
        cam = cams[i % len(cams)]
        session = f"session-{(i // 997) % 500:04d}"
        tag = f"{rnd.getrandbits(24):06x}"
        # 1 in 50 keys has a space and a non-ASCII character, as real buckets do.
        name = (
            f"frame {i:09d}-é-{tag}.jpg" if i % 50 == 7 else f"frame-{i:09d}-{tag}.jpg"
        )
        keys.append(f"datasets/2024/{cam}/{session}/{name}")
    keys.sort()
    return keys


def start_cached_seaweedfs() -> Any:
    """SeaweedFS with its data in ``.bench/seaweed`` (seeded buckets survive between runs),
    and this process's environment pointed at it (boto3 and manifester use it)."""
    from tests.support.storage_servers import start_seaweedfs

    state = CACHE / "seaweed"
    state.mkdir(parents=True, exist_ok=True)
    server = start_seaweedfs(state)
    use_server_env(server)
    return server


def use_server_env(server: Any) -> None:
    """Point this process's environment (boto3, manifester) at ``server``; ``""`` values unset."""
    for k, v in server.env().items():
        if v:
            os.environ[k] = v
        else:
            os.environ.pop(k, None)


def seed_seaweed_bucket(server: Any, bucket: str, keys: Sequence[str], body: bytes = b"x" * 100) -> float:
    """Fill ``bucket`` with ``keys`` once; seconds spent (0.0 when an earlier run did it).

    Writes go to the filer's HTTP API (16 connections), which needs no request signing:
    ~1,600 objects/s here, about 4x what boto3's ``put_object`` manages. A marker object,
    written last (zero bytes, so scans skip it), says the seed finished.
    """
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import quote

    import httpx

    marker = f"zz-bench-seeded-{len(keys)}"
    client = server.client()
    try:
        client.head_object(Bucket=bucket, Key=marker)
        return 0.0
    except client.exceptions.ClientError:  # not seeded yet (404, or no such bucket)
        pass
    t0 = time.perf_counter()
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.ClientError as exc:  # already there from an interrupted seed
        if "BucketAlready" not in str(exc):
            raise
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(limits=limits, timeout=60) as http:

        def put(key: str) -> None:
            r = http.put(f"{server.filer_url}/buckets/{bucket}/{quote(key)}", content=body)
            r.raise_for_status()

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, keys))
    client.put_object(Bucket=bucket, Key=marker, Body=b"")
    return time.perf_counter() - t0


def listing_file(n: int, *, seed: int = SEED) -> Path:
    """A cached text listing (``key<TAB>size`` per line) of ``n`` synthetic keys."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"keys-{n}-{seed}.tsv"
    if not path.exists():
        rnd = random.Random(seed + 1)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            buf: list[str] = []
            for key in synthetic_keys(n, seed):
                buf.append(f"{key}\t{rnd.randint(20_000, 900_000)}\n")
                if len(buf) >= 100_000:
                    fh.write("".join(buf))
                    buf.clear()
            fh.write("".join(buf))
        os.replace(tmp, path)
    return path


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--json",
        metavar="FILE",
        help="write the rows as JSON to FILE (used by run_all.py)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smaller workloads, for a smoke test"
    )
    return p


def emit(rows: Sequence[Row], json_path: str | None) -> None:
    if json_path:
        Path(json_path).write_text(
            json.dumps([asdict(r) for r in rows], indent=1), encoding="utf-8"
        )
    print_table(rows)


def print_table(rows: Iterable[Row], *, file: Any = None) -> None:
    """A Markdown table (readable in a terminal and pasteable into the README)."""
    rows = list(rows)
    head = ["figure", "value", "baseline (same run)", "ratio", "goal", "met?"]
    lines = [[r.figure, r.value, r.baseline, r.ratio, r.goal, r.met] for r in rows]
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
        for i, h in enumerate(head)
    ]
    out = file or sys.stdout

    def show(cells: list[str]) -> None:
        print(
            "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |",
            file=out,
        )

    show(head)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)
    for line in lines:
        show(line)
    notes = [(r.figure, r.note) for r in rows if r.note]
    if notes:
        print(file=out)
        for fig, note in notes:
            print(f"- {fig}: {note}", file=out)
    out.flush()


def _burn(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def parallel_capacity(workers: int | None = None, n: int = 6_000_000) -> float:
    """How much faster ``workers`` processes run pure-Python CPU work than one, right now.

    Shared machines are noisy: a figure that depends on using every core is only
    meaningful next to this, measured in the same run.
    """
    import multiprocessing

    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    for _ in range(workers):
        _burn(n)
    serial = time.perf_counter() - t0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        pool.map(_burn, [10] * workers)
        t0 = time.perf_counter()
        pool.map(_burn, [n] * workers)
        parallel = time.perf_counter() - t0
    return serial / parallel


def machine() -> dict[str, str]:
    """nproc, CPU model, Python version, load average: what the README's table ran on."""
    import platform

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load average at start": load,
    }
