"""Run every benchmark and print ONE table: figure, value, baseline (same run), ratio, goal, met?

Each benchmark runs in its own subprocess (``python bench/<name>.py --json FILE``)
so that one failing or slow benchmark cannot take the others down, and memory
figures start from a fresh process. The table is Markdown; it is also written to
``.bench/last-table.md`` with the machine it ran on.

    .venv/bin/python bench/run_all.py [--quick] [--only build_throughput,memory]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CACHE, Row, machine, print_table

HERE = Path(__file__).resolve().parent

#: (script, timeout in seconds): together well under 15 minutes on 2 cores.
BENCHMARKS: list[tuple[str, int]] = [
    ("build_throughput", 240),
    ("memory", 180),
    ("presign", 180),
    ("listing", 300),
    ("migration", 420),
]


def run_one(name: str, timeout: int, quick: bool) -> tuple[list[Row], float]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)] + (
        ["--quick"] if quick else []
    )
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(HERE),
            check=False,
        )
        took = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists() or not out.read_text():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [
                "no output"
            ]
            return [
                Row(
                    name,
                    "error",
                    "-",
                    "-",
                    "-",
                    "error",
                    f"exit {proc.returncode}: {tail[0][:300]}",
                )
            ], took
        rows = [Row(**r) for r in json.loads(out.read_text())]
        return rows, took
    except subprocess.TimeoutExpired:
        # subprocess.run kills the child it started on timeout.
        return [
            Row(name, "timeout", "-", "-", "-", "error", f"stopped after {timeout} s")
        ], time.perf_counter() - t0
    finally:
        out.unlink(missing_ok=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller workloads (smoke test, not the real figures)",
    )
    p.add_argument("--only", help="comma-separated benchmark names")
    args = p.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    info = machine()
    started = time.perf_counter()
    rows: list[Row] = []
    for name, timeout in BENCHMARKS:
        if wanted is not None and name not in wanted:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        got, took = run_one(name, timeout, args.quick)
        print(f"  {name}: {took:.0f} s", file=sys.stderr, flush=True)
        rows.extend(got)
    total = time.perf_counter() - started
    buf = io.StringIO()
    print_table(rows, file=buf)
    print(file=buf)
    print(
        f"Machine: {info['nproc']} cores ({info['cpu']}), Python {info['python']}, {info['os']}, "
        f"load average at start {info['load average at start']}; total {total:.0f} s"
        + (" (--quick: NOT the real workloads)" if args.quick else ""),
        file=buf,
    )
    text = buf.getvalue()
    print(text)
    CACHE.mkdir(exist_ok=True)
    (CACHE / "last-table.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
