"""``make demo`` / ``python -m manifester.demo``: a whole migration, offline, in seconds.

It starts, on 127.0.0.1 only:

1. an S3-compatible server (moto's ``ThreadedMotoServer``, in this process), seeded
   from ``sample_buckets/photos`` (bucket ``photos``) plus an empty ``manifests`` bucket;
2. the local Theos-compatible server (:func:`manifester.server.start_server`) in a
   temporary data directory;

then runs ``manifester migrate s3://photos --dataset Demo --manifest-store
s3://manifests/theos`` through the real command line (progress bars included), prints
the dataset's counts per split, runs the same command again to show that nothing is sent
twice, and stops both servers, also when something fails. The ledger and the server's
data are kept in a temporary folder whose path is printed. Nothing leaves the machine. Requires the ``dev`` extra (moto)
and the ``server`` extra.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["main"]

_SAMPLES = Path(__file__).resolve().parent.parent / "sample_buckets" / "photos"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _s3_server() -> Iterator[str]:
    """moto's threaded server on a free loopback port; yields its endpoint URL."""
    import logging

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # pragma: no cover - the dev extra is missing
        sys.exit("the demo needs moto: pip install 'manifester[dev]' (or run `make demo`)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _seed(endpoint: str, samples: Path) -> int:
    import boto3  # type: ignore[import-untyped]

    s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="photos")
    s3.create_bucket(Bucket="manifests")
    count = 0
    for path in sorted(samples.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket="photos", Key=path.relative_to(samples).as_posix(), Body=path.read_bytes())
            count += 1
    return count


def _cli(args: list[str]) -> int:
    """Run the real command line in this process; its exit code."""
    from .cli import main as cli_main

    print("$ manifester " + " ".join(args), flush=True)
    try:
        cli_main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the migration's exit code.

    The servers are stopped at the end; the ledger and the local Theos server's data are
    kept (and their folder printed) so that what the demo says can be checked afterwards.

    >>> main()   # doctest: +SKIP
    """
    from .server import start_server
    from .theos import TheosClient

    samples = Path(argv[0]) if argv else _SAMPLES
    if not samples.is_dir():
        print(f"demo: sample images not found at {samples}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="manifester-demo-"))
    ledger = workdir / "ledger.sqlite"
    code = 1
    try:
        with _s3_server() as endpoint:
            # The demo is its own process: pointing the SDKs at the local servers through the
            # environment is exactly what a user would do, and never touches real cloud accounts.
            os.environ.update(
                AWS_ENDPOINT_URL=endpoint,
                AWS_ACCESS_KEY_ID="demo-key",
                AWS_SECRET_ACCESS_KEY="demo-secret",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_CONFIG_FILE=os.devnull,
                AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                AWS_EC2_METADATA_DISABLED="true",
            )
            n = _seed(endpoint, samples)
            print(f"S3-compatible server  {endpoint}  (bucket photos: {n} files from {samples})")
            with start_server(workdir / "theos") as theos:
                os.environ.update(THEOS_API_URL=theos.url, THEOS_PROJECT_KEY=theos.project_key, THEOS_API_TOKEN=theos.token)
                print(f"Theos-compatible API  {theos.url}  (data in {workdir / 'theos'})")
                print()
                args = [
                    "migrate", "s3://photos", "--dataset", "Demo", "--manifest-store", "s3://manifests/theos",
                    "--state", str(ledger), "--canary", "5", "--max-entries", "10", "--progress",
                ]
                code = _cli(args)
                with TheosClient() as client:
                    dataset = client.find_dataset("Demo")
                    if dataset is not None:
                        counts = ", ".join(f"{s} {dataset.counts.get(s, 0)}" for s in ("train", "valid", "test"))
                        print()
                        print(f"dataset {dataset.name!r} (id {dataset.id}): {counts}")
                        if code == 0:  # every candidate is in: the difference is what the filters skipped
                            print(f"  ({n - dataset.total} of the {n} files are empty or not images: skipped, as `build` does)")
                        for example in list(client.iter_examples(dataset.id, "valid"))[:3]:
                            print(f"  valid example {example.id}: external_id {example.external_id}")
                if code == 0:
                    print()
                    print("the same command again finds everything in the ledger and sends nothing:")
                    code = _cli(args[:-1] + ["--no-progress"])
    finally:
        print()
        print("servers stopped" + ("" if code == 0 else f"; the migration exited with code {code}"))
        if ledger.exists():
            print(f"kept: the ledger {ledger}; inspect it with")
            print(f"  sqlite3 {ledger} 'SELECT idx, kind, state, entries, task_id FROM shards'")
        print(f"kept: the local Theos server's data in {workdir / 'theos'}")
        print(f"remove both with: rm -rf {workdir}")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
