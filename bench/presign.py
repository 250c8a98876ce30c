"""Figure 4a: presigning 100,000 S3 and 20,000 GCS V4 URLs.

S3: ``S3Storage.presign_many`` (manifester's SigV4 signer, proven against boto3 once
per batch) on 100,000 keys, against boto3's ``generate_presigned_url`` called once
per key, on one core. GCS: ``GCSStorage.presign_many`` (one signing process per
core) on 20,000 keys, against google-cloud-storage's ``Blob.generate_signed_url
(version="v4")`` once per key on one core, with a throwaway RSA service-account key
made with ``cryptography``. Baselines run on a subset (5,000 S3 / 1,000 GCS keys)
and are reported per second. No network is used: signing is local.

    python bench/presign.py [--quick]
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from common import (
    ROOT,
    Row,
    emit,
    fmt_rate,
    fmt_s,
    parallel_capacity,
    parser,
    synthetic_keys,
    yes,
)

EXPIRES = 24 * 3600

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIABENCHMARKEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "bench/secret/not-a-real-key-000000000000",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_CLEAR = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "STORAGE_EMULATOR_HOST",
)


def _env_for_signing(sa_file: Path) -> None:
    # This benchmark process only: fake AWS keys and a throwaway GCS key, no endpoints.
    for name in _CLEAR:
        os.environ.pop(name, None)
    os.environ.update(_AWS_ENV)
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(sa_file)


def bench_s3(n: int, n_base: int) -> Row:
    from manifester.storage.s3 import S3Storage

    keys = synthetic_keys(n)
    store = S3Storage("bench-photos")
    store.presign_many(keys[:100], EXPIRES)  # warm imports and the client
    t0 = time.perf_counter()
    urls = store.presign_many(keys, EXPIRES)
    fast_s = time.perf_counter() - t0
    assert len(urls) == n
    client = store._client  # the same boto3 client manifester uses
    t0 = time.perf_counter()
    for k in keys[:n_base]:
        client.generate_presigned_url(
            "get_object", Params={"Bucket": "bench-photos", "Key": k}, ExpiresIn=EXPIRES
        )
    base_s = time.perf_counter() - t0
    store.close()
    rate, base_rate = n / fast_s, n_base / base_s
    return Row(
        figure=f"presign S3 ({n:,} URLs)",
        value=f"{fmt_rate(rate)} ({fmt_s(fast_s)})",
        baseline=fmt_rate(base_rate) + f" (boto3, {n_base:,} keys)",
        ratio=f"{rate / base_rate:.0f}x",
        goal="faster than boto3 (informational)",
        met=yes(rate > base_rate),
        note=f"one process; boto3 generate_presigned_url one key at a time on {n_base:,} keys, per second "
        f"(100,000 would take {n / base_rate:.0f} s)",
    )


def bench_gcs(n: int, n_base: int, sa_file: Path) -> list[Row]:
    from google.cloud import storage as gcs

    from manifester.storage.gcs import GCSStorage

    keys = synthetic_keys(n)
    store = GCSStorage("bench-photos")
    try:
        store.presign_many(keys[:10], EXPIRES)  # credentials, imports
        t0 = time.perf_counter()
        urls = store.presign_many(keys, EXPIRES)  # includes starting the signing pool
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        urls = store.presign_many(keys, EXPIRES)
        warm_s = time.perf_counter() - t0
        assert len(urls) == n
    finally:
        store.close()
    client = gcs.Client(project=None)
    bucket = client.bucket("bench-photos")
    t0 = time.perf_counter()
    for k in keys[:n_base]:
        bucket.blob(k).generate_signed_url(
            version="v4", expiration=timedelta(seconds=EXPIRES), method="GET"
        )
    base_s = time.perf_counter() - t0
    cores = os.cpu_count() or 1
    capacity = parallel_capacity(cores)
    rate, base_rate = n / warm_s, n_base / base_s
    return [
        Row(
            figure=f"presign GCS V4 ({n:,} URLs)",
            value=f"{fmt_rate(rate)} ({fmt_s(warm_s)})",
            baseline=fmt_rate(base_rate) + f" (generate_signed_url, {n_base:,} keys)",
            ratio=f"{rate / base_rate:.2f}x",
            goal=f"uses every core (~{cores}x on {cores})",
            met=yes(rate / base_rate >= 0.75 * cores),
            note=f"{cores} signing processes; first batch incl. starting the pool {fmt_s(cold_s)} "
            f"({fmt_rate(n / cold_s)}); {cores} processes ran plain CPU work {capacity:.2f}x as fast as one in "
            f"this run (the most this machine offered); baseline one key at a time on one core, {n_base:,} keys, per second",
        )
    ]


def run(
    s3_keys: int = 100_000,
    gcs_keys: int = 20_000,
    s3_base: int = 5_000,
    gcs_base: int = 1_000,
) -> list[Row]:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.support.storage_servers import make_service_account_info

    with tempfile.TemporaryDirectory(
        prefix="bench-sign-", dir=str(ROOT / ".bench")
    ) as tmp:
        sa_file = Path(tmp) / "sa.json"
        sa_file.write_text(
            json.dumps(make_service_account_info("bench-project")), encoding="utf-8"
        )
        os.chmod(sa_file, 0o600)
        _env_for_signing(sa_file)
        rows = [bench_s3(s3_keys, s3_base)]
        rows += bench_gcs(gcs_keys, gcs_base, sa_file)
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rows = run(20_000, 4_000, 1_000, 300) if args.quick else run()
    emit(rows, args.json)


if __name__ == "__main__":
    main()
