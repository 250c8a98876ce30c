"""Amazon S3 (and S3-compatible servers) as a storage backend, through boto3.

Credentials, region and endpoint come from the SDK's own default chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` and ``~/.aws``, SSO, IAM roles; ``AWS_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_S3`` for MinIO, SeaweedFS, R2 and friends); manifester never
parses them itself. Without a configured region, ``us-east-1`` is used.

Every botocore error is converted here, at this module's boundary, into the
manifester tree: a missing bucket is :class:`SourceNotFoundError`, missing or
refused credentials :class:`CredentialsError`, an unreachable endpoint a
transient :class:`SourceError`, failed writes :class:`PublishError`.

Presigning many keys uses :mod:`manifester.storage.sigv4` (~50x faster than
boto3) after proving, once per batch, that it reproduces boto3's URL exactly.
Listing uses :mod:`manifester.storage.s3_list` (about 3x faster than boto3's
paginator, which spends most of a listing's time parsing XML into dicts), and goes
on with boto3 from the page it reached if that path fails for any reason.
"""

from __future__ import annotations

import builtins  # annotations in Storage classes: there `list` is the listing method
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote, urlsplit

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
from .sigv4 import SigV4Presigner

__all__ = ["S3Storage"]

log = logging.getLogger(__name__)

_MAX_EXPIRES = 7 * 24 * 3600
#: Temporary credentials whose expiry the SDK does not know: assume a role
#: session's longest default lifetime rather than promise 7 days.
_UNKNOWN_TOKEN_LIFETIME = 12 * 3600
#: Below this batch size the one-off self-check costs more than it saves.
_FAST_MIN_BATCH = 8

_CRED_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary keys), "
    "or AWS_PROFILE, or run where an IAM role is attached"
)
_RENEW_HINT = (
    "renew the credentials where they come from (aws sso login, a new session token, the profile's "
    "credential_process or role), then run again: a migrate/ingest resumes where it stopped"
)


def _credential_source_errors() -> tuple[type[Exception], ...]:
    """botocore's errors for a credential provider that failed (names vary across versions)."""
    import botocore.exceptions as bex  # type: ignore[import-untyped]

    names = (
        "CredentialRetrievalError",
        "RefreshWithMFAUnsupportedError",
        "SSOTokenLoadError",
        "UnauthorizedSSOTokenError",
        "TokenRetrievalError",
        "LoginRefreshRequired",
        "LoginTokenLoadError",
    )
    return tuple(c for c in (getattr(bex, n, None) for n in names) if isinstance(c, type) and issubclass(c, Exception))


_REFUSED_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "403",
        "Forbidden",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _expires_ok(expires: int) -> int:
    if not isinstance(expires, int) or not 1 <= expires <= _MAX_EXPIRES:
        raise ConfigError(
            f"presigned URL lifetime {expires!r} s is out of range",
            hint=f"S3 (SigV4) allows 1 to {_MAX_EXPIRES} seconds (7 days)",
        )
    return expires


class S3Storage(Storage):
    """A bucket (plus optional prefix) on S3 or an S3-compatible server.

    ``page_size`` caps keys per ListObjectsV2 page (default: the server's, 1000 on
    AWS); tests use small pages to exercise paging.

    >>> store = S3Storage("photos", "2024/")          # doctest: +SKIP
    >>> next(store.list())                             # doctest: +SKIP
    StorageObject(key='2024/a.jpg', size=1234, etag='9b2cf535f27731c974343645a3985328')
    >>> store.presign("2024/a.jpg", 3600)              # doctest: +SKIP
    'https://photos.s3.amazonaws.com/2024/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&...'
    """

    scheme = "s3"

    def __init__(
        self, bucket: str, prefix: str = "", *, page_size: int | None = None, fast_list: bool = True
    ) -> None:
        super().__init__(bucket, prefix)
        try:
            import boto3  # type: ignore[import-untyped]
            import botocore.exceptions  # noqa: F401 - needed by _errors
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError:
            raise MissingExtraError(f"the S3 source {self.root_uri}", "s3") from None
        self._page_size = page_size
        try:
            self._session = boto3.session.Session()
            region = self._session.region_name or "us-east-1"
            self._client: Any = self._session.client(
                "s3",
                region_name=region,
                # s3v4 everywhere: boto3 would otherwise presign SigV2 URLs in us-east-1.
                config=Config(signature_version="s3v4", retries={"mode": "standard"}),
            )
        except ManifesterError:
            raise
        except _credential_source_errors() as exc:  # the client loads credentials now
            raise CredentialsError(
                f"cannot get the AWS credentials for s3://{bucket}: {exc}", hint=_RENEW_HINT
            ) from exc
        except Exception as exc:  # ProfileNotFound, bad endpoint URL, unreadable config ...
            raise ConfigError(
                f"cannot set up the S3 client for s3://{bucket}: {type(exc).__name__}: {exc}",
                hint="check AWS_PROFILE, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION and ~/.aws/config",
            ) from exc
        self._fast_list = fast_list and self._fast_list_fits()

    def _fast_list_fits(self) -> bool:
        """Whether httpx would reach the endpoint exactly as boto3 does.

        The fast lister fetches presigned pages with httpx, which honours the standard
        proxy environment variables but not proxies or a client certificate set in
        ``~/.aws/config``; with either, the listing goes through boto3 from the start
        rather than fail (and time out) first. A CA bundle is handed on (``_ca_bundle``).
        """
        config = self._client.meta.config
        return not (getattr(config, "proxies", None) or getattr(config, "client_cert", None))

    def _ca_bundle(self) -> str | None:
        """The CA bundle boto3 verifies with (``AWS_CA_BUNDLE`` or the profile's ``ca_bundle``)."""
        try:
            bundle = self._session._session.get_config_variable("ca_bundle")
        except Exception:  # an older botocore without this lookup: the system's store
            return None
        return str(bundle) if bundle else None

    @property
    def endpoint_url(self) -> str:
        """The endpoint boto3 resolved (AWS regional endpoint, or the custom one)."""
        return str(self._client.meta.endpoint_url)

    @property
    def region(self) -> str:
        """The region requests are signed for."""
        return str(self._client.meta.region_name)

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _errors(self, action: str, key: str | None = None, *, writing: bool = False) -> Iterator[None]:
        """Convert botocore errors raised inside the block (the module's one boundary)."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            ParamValidationError,
            PartialCredentialsError,
        )

        where = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
            message = str(err.get("Message") or "").strip()
            detail = f"{code}: {message}" if message else code
            if code == "NoSuchBucket":
                raise SourceNotFoundError(
                    f"bucket s3://{self.bucket} does not exist (at {self.endpoint_url})",
                    hint="check the bucket name, and AWS_ENDPOINT_URL / AWS_DEFAULT_REGION if it is not on AWS",
                ) from exc
            if code in _NOT_FOUND_CODES and key is not None:
                raise SourceNotFoundError(f"object {where} does not exist", hint="list the source again") from exc
            if code in _REFUSED_CODES:
                raise CredentialsError(
                    f"S3 refused the credentials while trying to {action} {where} ({detail})",
                    hint="check the access key, secret and session token, and that they may "
                    + ("write to" if writing else "read")
                    + " this bucket; "
                    + _CRED_HINT,
                ) from exc
            cls = PublishError if writing else SourceError
            error = cls(f"S3 could not {action} {where} ({detail})", hint="retry later if this is a server error")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int) and (status >= 500 or status == 429) or code in ("SlowDown", "RequestTimeout"):
                error.transient = True
            raise error from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise CredentialsError(f"no usable AWS credentials to {action} {where}", hint=_CRED_HINT) from exc
        except _credential_source_errors() as exc:
            # the SDK's credential source (credential_process, SSO, role, container) failed
            # to renew temporary keys: a problem to fix, not one that a retry will solve
            raise CredentialsError(
                f"cannot renew the AWS credentials to {action} {where}: {exc}", hint=_RENEW_HINT
            ) from exc
        except RuntimeError as exc:
            # botocore raises a bare RuntimeError when a refresh returns keys that are
            # already expired; anything else is not ours to translate
            if "expired" not in str(exc) or "redentials" not in str(exc):
                raise
            raise CredentialsError(
                f"the AWS credentials expired and the SDK could not renew them to {action} {where}",
                hint=_RENEW_HINT,
            ) from exc
        except ParamValidationError as exc:
            raise ConfigError(f"S3 refused the request to {action} {where}: {exc}") from exc
        except BotoCoreError as exc:
            # EndpointConnectionError, timeouts, dropped connections, credential-provider failures.
            cls = PublishError if writing else SourceError
            error = cls(
                f"cannot {action} {where}: {exc} (endpoint {self.endpoint_url})",
                hint="check the network and AWS_ENDPOINT_URL, then retry",
            )
            error.transient = True
            raise error from exc

    # ------------------------------------------------------------------ listing

    def list(self, prefix: str | None = None) -> Iterator[StorageObject]:
        """Yield objects page by page in key order; "folder marker" keys ending in '/' are skipped."""
        want = self.prefix if prefix is None else prefix
        token: str | None = None
        if self._fast_list:
            from .s3_list import FastListUnavailable, list_objects_fast

            try:
                yield from list_objects_fast(
                    self._client, self.bucket, want, self._page_size, ca_bundle=self._ca_bundle()
                )
                return
            except FastListUnavailable as exc:
                # boto3 goes on from the first page not yet yielded, and reports any
                # real problem (missing bucket, refused credentials) in the usual words
                log.debug("fast listing of s3://%s stopped (%s); listing on through boto3", self.bucket, exc)
                token = exc.token
        yield from self._list_boto3(want, token)

    def _list_boto3(self, prefix: str, token: str | None) -> Iterator[StorageObject]:
        """ListObjectsV2 through boto3 from ``token`` (None: the first page)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if prefix:
            kwargs["Prefix"] = prefix
        if self._page_size:
            kwargs["MaxKeys"] = self._page_size
        with self._errors("list", prefix or None):
            while True:
                if token is not None:
                    kwargs["ContinuationToken"] = token
                page = self._client.list_objects_v2(**kwargs)
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue
                    etag = str(obj.get("ETag") or "").strip('"') or None
                    yield StorageObject(key=key, size=int(obj.get("Size", 0)), etag=etag)
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    return

    # ------------------------------------------------------------------ objects

    def read(self, key: str) -> bytes:
        """Return the object's bytes."""
        with self._errors("read", key):
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def write(self, key: str, data: bytes, *, content_type: str = "application/json") -> None:
        """Create or replace the object (private: no ACL is sent, so the bucket's default applies)."""
        with self._errors("write", key, writing=True):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def head(self, key: str) -> StorageObject | None:
        """Size and etag of the object, or None if it does not exist."""
        from botocore.exceptions import ClientError

        with self._errors("inspect", key):
            try:
                r = self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in _NOT_FOUND_CODES:
                    return None
                raise
        etag = str(r.get("ETag") or "").strip('"') or None
        return StorageObject(key=key, size=int(r.get("ContentLength", 0)), etag=etag)

    # ------------------------------------------------------------------ URLs

    def presign(self, key: str, expires: int) -> str:
        """A SigV4 presigned GET URL, exactly as boto3 makes it.

        >>> S3Storage("photos").presign("a b.jpg", 3600)  # doctest: +SKIP
        'https://photos.s3.amazonaws.com/a%20b.jpg?X-Amz-Algorithm=...'
        """
        _expires_ok(expires)
        with self._errors("presign", key):
            url = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
            )
        return str(url)

    def presign_many(self, keys: Iterable[str], expires: int) -> builtins.list[str]:
        """Presign a batch, ~50x faster than boto3 (same URLs; one timestamp per batch).

        Credentials are re-read from the session for every batch, so refreshed
        role credentials are picked up. Falls back to boto3 if the fast path
        cannot reproduce boto3's URL for the batch's first key.

        >>> S3Storage("photos").presign_many(["a.jpg", "b.jpg"], 3600)  # doctest: +SKIP
        ['https://photos.s3.amazonaws.com/a.jpg?...', 'https://photos.s3.amazonaws.com/b.jpg?...']
        """
        _expires_ok(expires)
        keys = list(keys)
        if len(keys) < _FAST_MIN_BATCH:
            return [self.presign(k, expires) for k in keys]
        fast = self._fast_presigner(keys[0], expires)
        if fast is None:
            return [self.presign(k, expires) for k in keys]
        presigner, when = fast
        return presigner.presign_many(keys, expires, when)

    def _fast_presigner(self, probe: str, expires: int) -> tuple[SigV4Presigner, str] | None:
        """Build a presigner that provably matches boto3 for this client, or None."""
        for _attempt in range(2):  # a credential refresh between the two reads: try once more
            with self._errors("presign", probe):
                creds = self._session.get_credentials()
                if creds is None:
                    from botocore.exceptions import NoCredentialsError

                    raise NoCredentialsError()
                frozen = creds.get_frozen_credentials()
                ref = str(
                    self._client.generate_presigned_url(
                        "get_object", Params={"Bucket": self.bucket, "Key": probe}, ExpiresIn=expires
                    )
                )
            path_part, _, query = ref.partition("?")
            qkey = quote(probe, safe="/~")
            if not path_part.endswith(qkey):
                log.debug("fast presign disabled: unexpected URL layout")
                return None
            params = dict(p.partition("=")[::2] for p in query.split("&"))
            cred = unquote(params.get("X-Amz-Credential", "")).split("/")
            when = params.get("X-Amz-Date", "")
            if (
                params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256"
                or params.get("X-Amz-SignedHeaders") != "host"
                or len(cred) < 5
                or len(when) != 16
            ):
                log.debug("fast presign disabled: unexpected query parameters")
                return None
            presigner = SigV4Presigner(
                base_url=path_part[: len(path_part) - len(qkey)],
                region=cred[-3],
                access_key=frozen.access_key,
                secret_key=frozen.secret_key,
                token=frozen.token,
                service=cred[-2],
            )
            if presigner.presign(probe, expires, when) == ref:
                return presigner, when
        log.debug("fast presign disabled: its URL differs from boto3's; using boto3 for this batch")
        return None

    def max_presign_seconds(self) -> int:
        """7 days, or less when temporary credentials expire sooner (a URL dies with its token)."""
        try:
            creds = self._session.get_credentials()
        except Exception:  # credential-provider failures surface later, where they can be reported
            return _MAX_EXPIRES
        if creds is None:
            return _MAX_EXPIRES
        # RefreshableCredentials keep their expiry in a private attribute; there
        # is no public accessor, and guessing too long makes URLs die mid-import.
        expiry = getattr(creds, "_expiry_time", None)
        if expiry is not None:
            remaining = int(expiry.timestamp() - time.time()) - 60
            return max(1, min(_MAX_EXPIRES, remaining))
        if getattr(creds, "token", None):
            return _UNKNOWN_TOKEN_LIFETIME
        return _MAX_EXPIRES

    def public_url(self, key: str) -> str:
        """Plain URL of the object: virtual-host on AWS, path-style on a custom endpoint.

        >>> S3Storage("photos").public_url("a b.jpg")  # doctest: +SKIP
        'https://photos.s3.us-east-1.amazonaws.com/a%20b.jpg'
        """
        qkey = quote(key, safe="/~")
        endpoint = self.endpoint_url
        host = (urlsplit(endpoint).hostname or "").lower()
        if host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
            suffix = "amazonaws.com.cn" if host.endswith(".cn") else "amazonaws.com"
            if "." in self.bucket:  # dotted names break the *.s3 TLS wildcard
                return f"https://s3.{self.region}.{suffix}/{self.bucket}/{qkey}"
            return f"https://{self.bucket}.s3.{self.region}.{suffix}/{qkey}"
        return f"{endpoint.rstrip('/')}/{self.bucket}/{qkey}"

    def close(self) -> None:
        """Close the client's connection pool."""
        try:
            self._client.close()
        except Exception:  # closing is best-effort
            pass
