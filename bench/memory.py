"""Figure 2: peak memory of a build at 200,000 and 2,000,000 keys.

Each build runs in a fresh subprocess (the same build as figure 1: a local
listing file, a URL template, every entry validated, shards written), which
reports its own peak RSS (``VmHWM`` from /proc/self/status, and ``ru_maxrss``). The
baseline is the same build at 200,000 keys; a streaming build should use about
the same memory at 10x the keys.

    python bench/memory.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, Row, emit, listing_file, parser, yes

HERE = Path(__file__).resolve().parent


def child(n: int, out: str) -> None:
    """Run one build and print {"entries":..., "peak_mb":...} (in the subprocess)."""
    import resource

    import build_throughput

    plan = build_throughput.manifester_build(listing_file(n), Path(out))
    # ru_maxrss survives fork+exec on Linux (it would report the parent's peak if
    # that was higher); VmHWM is this process image's own peak, so prefer it.
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    hwm_kb = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm_kb = int(line.split()[1])
    except OSError:
        pass
    peak_kb = hwm_kb if hwm_kb is not None else maxrss_kb
    print(
        json.dumps(
            {
                "entries": plan.entries,
                "peak_mb": peak_kb / 1024,
                "ru_maxrss_mb": maxrss_kb / 1024,
            }
        )
    )


def measure(n: int) -> dict[str, float]:
    listing_file(n)  # create the cached input outside the measured process
    out = tempfile.mkdtemp(prefix="bench-mem-", dir=str(ROOT / ".bench"))
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / "memory.py"), "--child", str(n), out],
            capture_output=True,
            text=True,
            check=True,
            cwd=str(HERE),
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(small: int = 200_000, big: int = 2_000_000) -> list[Row]:
    base = measure(small)
    large = measure(big)
    ratio = large["peak_mb"] / base["peak_mb"]
    return [
        Row(
            figure=f"memory (build, {big:,} keys)",
            value=f"{large['peak_mb']:.0f} MB",
            baseline=f"{base['peak_mb']:.0f} MB ({small:,} keys)",
            ratio=f"{ratio:.2f}",
            goal="ratio <= 1.3, <= 200 MB",
            met=yes(ratio <= 1.3 and large["peak_mb"] <= 200),
            note=(
                f"peak RSS (VmHWM; ru_maxrss {large['ru_maxrss_mb']:.0f} / {base['ru_maxrss_mb']:.0f} MB) of a fresh "
                f"process per build, {int(large['entries']):,} and {int(base['entries']):,} entries"
            ),
        )
    ]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3])
        return
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rows = run(20_000, 200_000) if args.quick else run()
    emit(rows, args.json)


if __name__ == "__main__":
    main()
