"""Figure 1: build throughput, 1,000,000 keys from a local listing file to manifest files.

manifester: ``manifester.build()`` on a :class:`ListingStorage` (the keys of a local
folder, read from a listing file) with a URL template: scan, split, external id,
URL, validation of every entry against ``schemas/manifest.schema.json``, sharding
into exact-byte manifest files (fsynced), ``plan.json``. Median of 3 runs.

Baseline (same run): a straightforward implementation of the same pipeline with
the same output bytes: per entry ``hashlib.sha256`` split, ``uuid.uuid5``,
``urllib.parse.quote``, ``jsonschema`` validation against the same schema file,
``json.dumps``; shards cut on the same limits and written whole. It runs on the
first 50,000 keys (jsonschema makes 1M take over a minute) and is reported per
second; its output is compared byte for byte with manifester's on that subset.

    python bench/build_throughput.py [--keys N] [--quick]
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common import ROOT, Row, emit, fmt_rate, listing_file, median_time, parser, yes

TEMPLATE_HEAD = "https://cdn.example.com/"
TEMPLATE = TEMPLATE_HEAD + "{key}"
SEED_TEXT = "bench-v1"
LOCAL_ROOT = "/srv/photos"  # keys are relative to this folder; it need not exist
EXTENSIONS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"}


def manifester_build(listing: Path, out: Path) -> Any:
    from manifester.builder import build
    from manifester.storage.listing import ListingStorage
    from manifester.storage.local import LocalStorage

    storage = ListingStorage(listing, LocalStorage(LOCAL_ROOT))
    return build(storage, out, url_template=TEMPLATE, seed=SEED_TEXT)


def naive_build(
    listing: Path, out: Path, max_entries: int = 100_000, max_bytes: int = 100_000_000
) -> int:
    """The straightforward version: one entry at a time, jsonschema, json.dumps, sha256."""
    import jsonschema

    schema = json.loads(
        (ROOT / "schemas" / "manifest.schema.json").read_text(encoding="utf-8")
    )
    validator = jsonschema.Draft202012Validator(schema["$defs"]["entry"])
    root = str(Path(LOCAL_ROOT).resolve())
    out.mkdir(parents=True, exist_ok=True)
    shard: list[bytes] = []
    shard_bytes = 2
    index = 0
    count = 0

    def flush() -> None:
        nonlocal index, shard, shard_bytes
        index += 1
        body = b"[" + b",".join(shard) + b"]"
        (out / f"manifest-{index:05d}.json").write_bytes(body)
        hashlib.sha256(body).hexdigest()
        shard, shard_bytes = [], 2

    with open(listing, encoding="utf-8") as fh:
        for line in fh:
            key, _, size = line.rstrip("\n").partition("\t")
            if int(size) == 0:
                continue
            name = key.rsplit("/", 1)[-1]
            if "." not in name or name.rsplit(".", 1)[1].lower() not in EXTENSIONS:
                continue
            digest = hashlib.sha256((SEED_TEXT + "\0" + key).encode("utf-8")).digest()
            bucket = int.from_bytes(digest[:8], "big") % 10000
            split = "train" if bucket < 8000 else "valid" if bucket < 9000 else "test"
            uri = "file://" + quote(root + "/" + key, safe="/")
            doc = {
                "url": TEMPLATE_HEAD + quote(key, safe="/~"),
                "split": split,
                "external_id": str(uuid.uuid5(uuid.NAMESPACE_URL, uri)),
            }
            validator.validate(doc)
            data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(
                "utf-8"
            )
            if shard and (
                len(shard) >= max_entries or shard_bytes + 1 + len(data) > max_bytes
            ):
                flush()
            shard_bytes += len(data) + (1 if shard else 0)
            shard.append(data)
            count += 1
    if shard:
        flush()
    return count


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("manifest-*.json"))
    if not names or names != sorted(p.name for p in b.glob("manifest-*.json")):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def run(
    keys: int = 1_000_000, baseline_keys: int = 50_000, repeat: int = 3
) -> list[Row]:
    big = listing_file(keys)
    small = listing_file(baseline_keys)
    work = Path(tempfile.mkdtemp(prefix="bench-build-", dir=str(ROOT / ".bench")))
    try:
        # Byte-identical check on the subset, and the baseline's rate.
        plan_small = manifester_build(small, work / "m-small")
        t0 = time.perf_counter()
        n_naive = naive_build(small, work / "naive-small")
        naive_s = time.perf_counter() - t0
        identical = (
            same_files(work / "m-small", work / "naive-small")
            and n_naive == plan_small.entries
        )
        naive_rate = n_naive / naive_s

        def once() -> Any:
            out = work / "m-big"
            shutil.rmtree(out, ignore_errors=True)
            return manifester_build(big, out)

        seconds, plan = median_time(once, repeat)
        rate = plan.entries / seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = rate / naive_rate
    return [
        Row(
            figure=f"build throughput ({keys:,} keys)",
            value=fmt_rate(rate),
            baseline=fmt_rate(naive_rate) + f" (naive, {baseline_keys // 1000}k keys)",
            ratio=f"{ratio:.1f}x",
            goal=">= 200,000/s and >= 10x",
            met=yes(rate >= 200_000 and ratio >= 10),
            note=(
                f"median of {repeat} builds, {plan.entries:,} entries in {plan.totals['shards']} shards, "
                f"{seconds:.2f} s each; baseline = jsonschema + json.dumps + sha256 per entry, measured on "
                f"the first {baseline_keys:,} keys and reported per second; "
                f"baseline output byte-identical to manifester's: {yes(identical)}"
            ),
        )
    ]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    args = p.parse_args()
    keys = 100_000 if args.quick else args.keys
    rows = run(
        keys,
        baseline_keys=20_000 if args.quick else 50_000,
        repeat=1 if args.quick else 3,
    )
    emit(rows, args.json)


if __name__ == "__main__":
    main()
