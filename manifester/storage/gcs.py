"""Google Cloud Storage as a storage backend, through google-cloud-storage.

Credentials come from Google's default chain (``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud auth application-default login``, the metadata server). With
``STORAGE_EMULATOR_HOST`` set, the library itself talks to that emulator
anonymously; signed URLs then point at the emulator too.

Signed URLs (V4, ``GOOG4-RSA-SHA256``) need credentials that can sign locally,
i.e. a service-account key. RSA signing is CPU-bound (~0.9 k URLs/s per core)
and threads do not help, so large batches are signed in a pool of worker
processes, one per core, forked with the parent's signer. The URLs are built
here (same bytes as the library's ``Blob.generate_signed_url(version="v4")``,
which tests check with a frozen clock) so that inline and pooled signing share one code path.

Every google-api-core / google-auth / requests error is converted at this
module's boundary: missing bucket -> :class:`SourceNotFoundError`, 401/403 and
missing credentials -> :class:`CredentialsError`, the rest -> :class:`SourceError`
(:class:`PublishError` when writing).
"""

from __future__ import annotations

import binascii
import builtins  # annotations in Storage classes: there `list` is the listing method
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import (
    ConfigError,
    CredentialsError,
    ManifesterError,
    MissingExtraError,
    PublishError,
    SourceError,
    SourceNotFoundError,
)
from ..records import StorageObject
from .base import Storage

__all__ = ["GCSStorage", "V4Request", "sign_v4_urls"]

log = logging.getLogger(__name__)

_MAX_EXPIRES = 7 * 24 * 3600
#: Below this many keys a worker pool costs more to start than it saves.
_POOL_MIN_BATCH = 2000
_CHUNK = 500
_SIGN_HINT = (
    "signed URLs need a service-account key: set GOOGLE_APPLICATION_CREDENTIALS to its JSON file; "
    "or use --urls public (public bucket) or --url-template"
)
_CRED_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON key, "
    "or run 'gcloud auth application-default login'"
)


@dataclass(frozen=True)
class V4Request:
    """Everything but the key that a batch of V4 signed GET URLs shares."""

    endpoint: str  # "https://storage.googleapis.com" or the emulator's URL
    bucket: str
    signer_email: str
    expires: int
    timestamp: str  # YYYYMMDDTHHMMSSZ, UTC


def v4_timestamp(now: datetime | None = None) -> str:
    """The V4 request timestamp for ``now`` (default: the current time), UTC.

    >>> v4_timestamp(datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc))
    '20240501T120000Z'
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ")


def sign_v4_urls(req: V4Request, keys: Iterable[str], signer: Any) -> list[str]:
    """V4 signed GET URLs for ``keys``; ``signer`` has ``sign(bytes) -> bytes`` (RSA-SHA256).

    Byte-for-byte what google-cloud-storage's ``generate_signed_url(version="v4")``
    builds for the same timestamp, path-style, no extra headers or parameters.
    """
    endpoint = req.endpoint.rstrip("/")
    host = urlsplit(endpoint).netloc
    scope = f"{req.timestamp[:8]}/auto/storage/goog4_request"
    params = {
        "X-Goog-Algorithm": "GOOG4-RSA-SHA256",
        "X-Goog-Credential": f"{req.signer_email}/{scope}",
        "X-Goog-Date": req.timestamp,
        "X-Goog-Expires": str(req.expires),
        "X-Goog-SignedHeaders": "host",
    }
    query = "&".join(sorted(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in params.items()))
    tail = f"\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD"
    head = f"GOOG4-RSA-SHA256\n{req.timestamp}\n{scope}\n"
    bucket_path = f"/{req.bucket}/"
    out: list[str] = []
    for key in keys:
        resource = bucket_path + quote(key.encode("utf-8"), safe=b"/~")
        digest = hashlib.sha256(("GET\n" + resource + tail).encode("ascii")).hexdigest()
        sig = binascii.hexlify(signer.sign((head + digest).encode("ascii"))).decode("ascii")
        out.append(f"{endpoint}{resource}?{query}&X-Goog-Signature={sig}")
    return out


# ---------------------------------------------------------------- worker processes
# A worker process keeps the signer its parent handed over at fork time: that is
# per-process state of the pool's own processes, never of the main program.
_worker_signer: Any = None


def _worker_init(signer: Any) -> None:
    global _worker_signer
    _worker_signer = signer


def _worker_sign(req: V4Request, keys: list[str]) -> list[str]:
    return sign_v4_urls(req, keys, _worker_signer)


def _chunks(seq: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class GCSStorage(Storage):
    """A bucket (plus optional prefix) on Google Cloud Storage or fake-gcs-server.

    ``page_size`` caps objects per list page (tests use small pages); ``workers``
    caps signing processes (default: every core; 1 disables the pool).

    >>> store = GCSStorage("photos", "2024/")      # doctest: +SKIP
    >>> next(store.list())                          # doctest: +SKIP
    StorageObject(key='2024/a.jpg', size=1234, etag='1714560000000000')
    """

    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        page_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__(bucket, prefix)
        try:
            import google.api_core.exceptions  # noqa: F401 - needed by _errors
            from google.cloud import storage  # type: ignore[import-untyped]
        except ImportError:
            raise MissingExtraError(f"the GCS source {self.root_uri}", "gcs") from None
        self._page_size = page_size
        self._workers = workers if workers is not None else (os.cpu_count() or 1)
        self._pool: Executor | None = None
        self._signing: Any = None
        with self._errors("connect to"):
            # project=None: listing, reading and writing objects need no project,
            # and a user's ADC often has none. With STORAGE_EMULATOR_HOST set the
            # library switches to the emulator and anonymous credentials itself.
            self._client: Any = storage.Client(project=None)
        self._bucket = self._client.bucket(bucket)

    @property
    def endpoint_url(self) -> str:
        """The API endpoint in use (``https://storage.googleapis.com`` or the emulator)."""
        return str(self._client.api_endpoint).rstrip("/")

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _errors(self, action: str, key: str | None = None, *, writing: bool = False) -> Iterator[None]:
        """Convert google / requests errors raised inside the block (the module's one boundary)."""
        import google.auth.exceptions as gauth
        from google.api_core import exceptions as gexc

        where = f"gs://{self.bucket}/{key}" if key is not None else f"gs://{self.bucket}"
        try:
            yield
        except ManifesterError:
            raise
        except gexc.NotFound as exc:
            if key is None:
                raise SourceNotFoundError(
                    f"bucket gs://{self.bucket} does not exist",
                    hint="check the bucket name (and STORAGE_EMULATOR_HOST if you use an emulator)",
                ) from exc
            raise SourceNotFoundError(f"object {where} does not exist", hint="list the source again") from exc
        except (gexc.Forbidden, gexc.Unauthorized) as exc:
            raise CredentialsError(
                f"GCS refused the credentials while trying to {action} {where} ({exc.code} {_short(exc)})",
                hint="check that the account may " + ("write to" if writing else "read") + " this bucket; " + _CRED_HINT,
            ) from exc
        except gauth.DefaultCredentialsError as exc:
            raise CredentialsError(f"no Google credentials found to {action} {where}", hint=_CRED_HINT) from exc
        except gauth.RefreshError as exc:
            raise CredentialsError(
                f"Google credentials could not be refreshed to {action} {where}", hint=_CRED_HINT
            ) from exc
        except gexc.GoogleAPICallError as exc:
            cls = PublishError if writing else SourceError
            error = cls(f"GCS could not {action} {where} ({exc.code} {_short(exc)})")
            error.transient = isinstance(exc, (gexc.ServerError, gexc.TooManyRequests))
            raise error from exc
        except gexc.RetryError as exc:
            # The SDK retries connection errors for up to 120 s, then wraps the last one;
            # its own message ("Timeout of 120.0s exceeded") says nothing about why.
            cls = PublishError if writing else SourceError
            cause = type(exc.cause).__name__ if exc.cause is not None else "no answer"
            error = cls(
                f"cannot {action} {where}: {cause} after retrying (endpoint {self.endpoint_url})",
                hint="check the network (and STORAGE_EMULATOR_HOST), then retry",
            )
            error.transient = True
            raise error from exc
        except (gauth.GoogleAuthError, gexc.GoogleAPIError) as exc:
            cls = PublishError if writing else SourceError
            raise cls(f"cannot {action} {where}: {type(exc).__name__}: {_short(exc)}") from exc
        except Exception as exc:
            # requests' ConnectionError / Timeout and google-resumable-media's errors
            # have no common base we can import cheaply; anything else is a bug.
            mod = type(exc).__module__
            if not mod.startswith(("requests", "urllib3", "google")):
                raise
            cls = PublishError if writing else SourceError
            error = cls(
                f"cannot {action} {where}: {type(exc).__name__} (endpoint {self.endpoint_url})",
                hint="check the network (and STORAGE_EMULATOR_HOST), then retry",
            )
            error.transient = True
            raise error from exc

    # ------------------------------------------------------------------ listing

    def list(self, prefix: str | None = None) -> Iterator[StorageObject]:
        """Yield objects page by page in name order; placeholder names ending in '/' are skipped."""
        want = self.prefix if prefix is None else prefix
        with self._errors("list"):
            blobs = self._client.list_blobs(self.bucket, prefix=want or None, page_size=self._page_size)
            for page in blobs.pages:
                for blob in page:
                    if blob.name.endswith("/"):
                        continue
                    yield StorageObject(key=blob.name, size=int(blob.size or 0), etag=str(blob.generation))

    # ------------------------------------------------------------------ objects

    def read(self, key: str) -> bytes:
        """Return the object's bytes."""
        with self._errors("read", key):
            return bytes(self._bucket.blob(key).download_as_bytes())

    def write(self, key: str, data: bytes, *, content_type: str = "application/json") -> None:
        """Create or replace the object (private: no ACL is sent, the bucket's default applies)."""
        with self._errors("write", key, writing=True):
            self._bucket.blob(key).upload_from_string(data, content_type=content_type)

    def head(self, key: str) -> StorageObject | None:
        """Size and generation of the object, or None if it does not exist."""
        with self._errors("inspect", key):
            blob = self._bucket.get_blob(key)
        if blob is None:
            return None
        return StorageObject(key=key, size=int(blob.size or 0), etag=str(blob.generation))

    # ------------------------------------------------------------------ URLs

    def _signing_credentials(self) -> Any:
        """Credentials from the default chain that can sign locally (cached per storage)."""
        if self._signing is None:
            import google.auth
            from google.auth.credentials import Signing

            with self._errors("presign URLs for"):
                creds, _ = google.auth.default()
            if not isinstance(creds, Signing) or not getattr(creds, "signer_email", None):
                raise CredentialsError(
                    f"the Google credentials in use ({type(creds).__name__}) cannot sign URLs for gs://{self.bucket}",
                    hint=_SIGN_HINT,
                )
            self._signing = creds
        return self._signing

    def _request(self, expires: int) -> V4Request:
        if not isinstance(expires, int) or not 1 <= expires <= _MAX_EXPIRES:
            raise ConfigError(
                f"signed URL lifetime {expires!r} s is out of range",
                hint=f"GCS V4 signatures allow 1 to {_MAX_EXPIRES} seconds (7 days)",
            )
        creds = self._signing_credentials()
        return V4Request(
            endpoint=self.endpoint_url,
            bucket=self.bucket,
            signer_email=str(creds.signer_email),
            expires=expires,
            timestamp=v4_timestamp(),
        )

    def presign(self, key: str, expires: int) -> str:
        """A V4 signed GET URL (path-style; at the emulator when one is configured).

        >>> GCSStorage("photos").presign("a b.jpg", 3600)  # doctest: +SKIP
        'https://storage.googleapis.com/photos/a%20b.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256&...'
        """
        return self.presign_many([key], expires)[0]

    def presign_many(self, keys: Iterable[str], expires: int) -> builtins.list[str]:
        """Sign a batch; large batches use one worker process per core (RSA is CPU-bound).

        >>> GCSStorage("photos").presign_many(["a.jpg", "b.jpg"], 3600)  # doctest: +SKIP
        ['https://storage.googleapis.com/photos/a.jpg?...', 'https://storage.googleapis.com/photos/b.jpg?...']
        """
        keys = list(keys)
        req = self._request(expires)
        creds = self._signing
        try:
            if len(keys) >= _POOL_MIN_BATCH and self._workers > 1:
                pooled = self._sign_in_pool(req, keys)
                if pooled is not None:
                    return pooled
            return sign_v4_urls(req, keys, creds.signer)
        except ManifesterError:
            raise
        except Exception as exc:  # signer failures (IAM signBlob, bad key)
            raise PublishError(
                f"signing URLs for gs://{self.bucket} failed: {type(exc).__name__}", hint=_SIGN_HINT
            ) from exc

    def _sign_in_pool(self, req: V4Request, keys: builtins.list[str]) -> builtins.list[str] | None:
        import multiprocessing

        from google.oauth2 import service_account

        # Only plain service-account keys sign locally; anything else (e.g.
        # impersonation through IAM) gains nothing from more processes.
        if not isinstance(self._signing, service_account.Credentials):
            return None
        # fork, not spawn/forkserver: those re-run the caller's __main__ script in
        # every worker (a script without a main guard would run again), and they
        # would have to rebuild the signer from the environment. A forked worker
        # inherits the signer as is and only runs hashing and RSA code, touching
        # no lock that the parent's other threads might hold.
        if "fork" not in multiprocessing.get_all_start_methods():
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_worker_init,
                initargs=(self._signing.signer,),
            )
        try:
            n_chunks = (len(keys) + _CHUNK - 1) // _CHUNK
            parts = self._pool.map(_worker_sign, [req] * n_chunks, _chunks(keys, _CHUNK))
            return [url for part in parts for url in part]
        except Exception as exc:  # a broken pool must not break the run: sign inline
            log.warning("signing pool failed (%s); signing in this process", type(exc).__name__)
            self._close_pool()
            return None

    def max_presign_seconds(self) -> int:
        """7 days, the V4 maximum."""
        return _MAX_EXPIRES

    def public_url(self, key: str) -> str:
        """``https://storage.googleapis.com/<bucket>/<key>`` (or the emulator's host).

        >>> GCSStorage("photos").public_url("a b.jpg")  # doctest: +SKIP
        'https://storage.googleapis.com/photos/a%20b.jpg'
        """
        return f"{self.endpoint_url}/{self.bucket}/{quote(key.encode('utf-8'), safe=b'/~')}"

    def _close_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the signing processes and close the HTTP session."""
        self._close_pool()
        try:
            self._client.close()
        except Exception:  # closing is best-effort
            pass


def _short(exc: BaseException) -> str:
    """First line of an error's message, capped (server bodies can be long)."""
    text = getattr(exc, "message", None) or str(exc)
    return str(text).strip().splitlines()[0][:200] if text else ""
