"""S3Storage against moto (listing, writes) and SeaweedFS (signatures really checked)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from manifester.errors import ConfigError, CredentialsError, SourceNotFoundError
from manifester.storage import open_storage
from manifester.storage.s3 import S3Storage
from manifester.storage.sigv4 import SigV4Presigner, amz_date
from tests.support.storage_servers import S3Server

SAMPLES = Path(__file__).resolve().parent.parent / "sample_buckets"

KEYS = {
    "a b/c d.jpg": b"1",
    "café/ñandú.jpg": b"2",
    "日本/猫.png": b"3",
    "plus+sign.jpg": b"4",
    "100% done.jpg": b"5",
    "hash#tag.jpg": b"6",
    "what?.jpg": b"7",
    "tilde~x.jpg": b"8",
    "x//double.jpg": b"9",
    "eq=&amp;.jpg": b"10",
    "emoji 🐱.png": b"11",
    "deep/er/and/deeper/leaf.webp": b"12",
}


# --------------------------------------------------------------- fast presigner == boto3


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE+/tok=="])
@pytest.mark.parametrize(
    ("endpoint", "region"),
    [(None, "us-east-1"), (None, "eu-west-3"), ("http://127.0.0.1:9000", "us-east-1"), ("https://MinIO.example.com:443", "ap-south-1")],
)
@pytest.mark.parametrize("bucket", ["bucket", "my.bucket"])
def test_sigv4_matches_boto3_with_frozen_clock(
    monkeypatch: pytest.MonkeyPatch, token: str | None, endpoint: str | None, region: str, bucket: str
) -> None:
    import boto3
    import botocore.auth
    from botocore.config import Config

    frozen = dt.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: frozen)
    session = boto3.session.Session(
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="wJal/rXUt+nFEMI", aws_session_token=token, region_name=region
    )
    client = session.client("s3", endpoint_url=endpoint, config=Config(signature_version="s3v4"))
    for key in KEYS:
        ref = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=900)
        base = ref.split("?")[0][: -len(quote(key, safe="/~"))]
        mine = SigV4Presigner(base, region, "AKIDEXAMPLE", "wJal/rXUt+nFEMI", token).presign(key, 900, amz_date(frozen))
        assert mine == ref


def test_presigner_hides_secrets() -> None:
    p = SigV4Presigner("http://h/b/", "us-east-1", "AK", "very-secret", "very-token")
    assert "very-secret" not in repr(p) and "very-token" not in repr(p)


# --------------------------------------------------------------- moto: listing, objects, errors


def test_list_pages_in_order_and_skips_markers(s3_env: S3Server, bucket_name: str) -> None:
    files = dict(KEYS, **{"folder/": b""})
    s3_env.make_bucket(bucket_name, files)
    store = S3Storage(bucket_name, page_size=2)
    objs = list(store.list())
    assert [o.key for o in objs] == sorted(KEYS)
    assert all(o.etag and '"' not in o.etag for o in objs)
    assert {o.key: o.size for o in objs} == {k: len(v) for k, v in KEYS.items()}
    assert [o.key for o in store.list("deep/")] == ["deep/er/and/deeper/leaf.webp"]
    assert [o.key for o in S3Storage(bucket_name, "caf").list()] == ["café/ñandú.jpg"]


def test_read_write_head(s3_env: S3Server, bucket_name: str) -> None:
    s3_env.make_bucket(bucket_name)
    store = open_storage(f"s3://{bucket_name}/manifests/")
    assert isinstance(store, S3Storage)
    assert store.head("manifests/1.json") is None
    store.write("manifests/1.json", b"[]")
    assert store.read("manifests/1.json") == b"[]"
    head = store.head("manifests/1.json")
    assert head is not None and head.size == 2
    obj = s3_env.client().head_object(Bucket=bucket_name, Key="manifests/1.json")
    assert obj["ContentType"] == "application/json"
    with pytest.raises(SourceNotFoundError, match="manifests/2.json"):
        store.read("manifests/2.json")


def test_missing_bucket(s3_env: S3Server) -> None:
    with pytest.raises(SourceNotFoundError, match="s3://no-such-bucket-here"):
        list(S3Storage("no-such-bucket-here").list())


def test_no_credentials(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Storage("whatever-bucket")
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID"):
        list(store.list())
    with pytest.raises(CredentialsError):
        store.presign_many([f"k{i}" for i in range(20)], 60)


def test_unreachable_endpoint_is_transient(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.storage_servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(Exception) as info:
        list(S3Storage("some-bucket").list())
    assert type(info.value).__module__ == "manifester.errors"
    assert info.value.transient  # type: ignore[attr-defined]


def test_public_url_and_limits(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = S3Storage("photos")
    assert store.public_url("a b/ñ.jpg") == f"{s3_env.endpoint_url}/photos/a%20b/%C3%B1.jpg"
    assert store.max_presign_seconds() == 7 * 24 * 3600
    with pytest.raises(ConfigError):
        store.presign("a.jpg", 8 * 24 * 3600)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert S3Storage("photos").public_url("a b.jpg") == "https://photos.s3.eu-west-3.amazonaws.com/a%20b.jpg"
    assert S3Storage("my.photos").public_url("a.jpg") == "https://s3.eu-west-3.amazonaws.com/my.photos/a.jpg"


# --------------------------------------------------------------- SeaweedFS: signatures checked


@pytest.fixture(scope="module")
def weed_photos(seaweed_s3: S3Server) -> tuple[str, dict[str, bytes]]:
    from tests.support.storage_servers import unique_bucket_name

    name = unique_bucket_name("photos")
    seaweed_s3.make_bucket(name, KEYS)
    return name, KEYS


def test_fast_presigned_urls_download(
    seaweed_env: S3Server, weed_photos: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, files = weed_photos
    store = S3Storage(bucket)
    calls = []
    real = store._client.generate_presigned_url
    monkeypatch.setattr(store._client, "generate_presigned_url", lambda *a, **k: calls.append(1) or real(*a, **k))
    keys = sorted(files)
    urls = store.presign_many(keys, 600)
    assert len(calls) == 1  # one boto3 reference URL, the rest from the fast path
    with httpx.Client() as http:
        for key, url in zip(keys, urls):
            r = http.get(url)
            assert r.status_code == 200, (key, r.text[:200])
            assert r.content == files[key]
        single = store.presign("日本/猫.png", 60)
        assert http.get(single).content == files["日本/猫.png"]


def test_tampered_expired_and_unsigned_urls_fail(seaweed_env: S3Server, weed_photos: tuple[str, dict[str, bytes]]) -> None:
    bucket, _ = weed_photos
    store = S3Storage(bucket)
    url = store.presign_many(sorted(KEYS), 600)[0]
    sig = url.rsplit("=", 1)[1]
    tampered = url[: -len(sig)] + ("0" if sig[0] != "0" else "1") + sig[1:]
    other_key = url.replace(quote(sorted(KEYS)[0], safe="/~"), "plus+sign.jpg", 1)
    base = url.split("?")[0][: -len(quote(sorted(KEYS)[0], safe="/~"))]
    old = amz_date(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    expired = SigV4Presigner(base, "us-east-1", seaweed_env.access_key, seaweed_env.secret_key).presign(
        "plus+sign.jpg", 60, old
    )
    wrong_secret = SigV4Presigner(base, "us-east-1", seaweed_env.access_key, "nope").presign("plus+sign.jpg", 60)
    with httpx.Client() as http:
        assert http.get(url).status_code == 200
        for bad in (tampered, other_key, expired, wrong_secret, url.split("?")[0]):
            assert http.get(bad).status_code == 403, bad


def test_wrong_credentials(seaweed_env: S3Server, weed_photos: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    bucket, _ = weed_photos
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong")
    with pytest.raises(CredentialsError) as info:
        list(S3Storage(bucket).list())
    assert "definitely-wrong" not in str(info.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "UNKNOWNKEY")
    with pytest.raises(CredentialsError):
        S3Storage(bucket).read("plus+sign.jpg")


def _write_process_credentials(path: Path, access: str, secret: str, expires_in: dt.timedelta) -> None:
    """What a `credential_process` prints: temporary keys with an expiry (rewritten to rotate them)."""
    import json

    expiry = dt.datetime.now(dt.UTC) + expires_in
    path.write_text(
        json.dumps(
            {
                "Version": 1,
                "AccessKeyId": access,
                "SecretAccessKey": secret,
                "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )


@pytest.fixture
def process_credentials(seaweed_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials from the SDK chain's `credential_process` (profile in AWS_CONFIG_FILE), not from the env.

    Their expiry is 5 minutes away, inside botocore's mandatory-refresh window, so the SDK
    runs the process again whenever credentials are read: rewriting the file rotates them,
    the way a role session or SSO token is renewed during a long run.
    """
    creds = tmp_path / "creds.json"
    _write_process_credentials(creds, seaweed_env.access_key, seaweed_env.secret_key, dt.timedelta(minutes=5))
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\ncredential_process = cat {creds}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    return creds


def _credential_of(url: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].split("/")[0]


def test_rotated_credentials_are_used_by_the_next_presign_batch(
    seaweed_env: S3Server, weed_photos: tuple[str, dict[str, bytes]], process_credentials: Path
) -> None:
    assert seaweed_env.alt_access_key and seaweed_env.alt_secret_key
    bucket, files = weed_photos
    keys = sorted(files)
    store = S3Storage(bucket)  # one store for the whole "run", as the pipeline keeps it
    first = store.presign_many(keys, 600)
    _write_process_credentials(
        process_credentials, seaweed_env.alt_access_key, seaweed_env.alt_secret_key, dt.timedelta(minutes=5)
    )
    second = store.presign_many(keys, 600)  # fast path (a full batch)
    small = store.presign_many(keys[:2], 600)  # boto3 path (below the fast-path batch size)
    assert {_credential_of(u) for u in first} == {seaweed_env.access_key}
    assert {_credential_of(u) for u in second + small} == {seaweed_env.alt_access_key}
    with httpx.Client() as http:
        for key, url in [*zip(keys, first), *zip(keys, second), *zip(keys, small)]:
            response = http.get(url)
            assert response.status_code == 200, (key, response.text[:200])
            assert response.content == files[key]
    assert store.read(keys[0]) == files[keys[0]]  # and the other calls sign with them too


def test_expired_or_refused_credentials_mid_run_are_a_credentials_error(
    seaweed_env: S3Server, weed_photos: tuple[str, dict[str, bytes]], process_credentials: Path
) -> None:
    bucket, files = weed_photos
    keys = sorted(files)
    store = S3Storage(bucket)
    assert len(store.presign_many(keys, 600)) == len(keys)
    # the credential source now hands out keys that are already expired
    _write_process_credentials(process_credentials, "EXPIREDKEY", "expired-secret", dt.timedelta(minutes=-1))
    for call in (lambda: store.presign_many(keys, 600), lambda: store.presign(keys[0], 600), lambda: list(store.list())):
        with pytest.raises(CredentialsError) as info:
            call()
        assert f"s3://{bucket}" in str(info.value) and "expired" in str(info.value)
        assert info.value.hint and "run again" in info.value.hint
        assert "expired-secret" not in str(info.value)
    # the credential source fails outright (e.g. an SSO session that ended)
    process_credentials.unlink()
    with pytest.raises(CredentialsError) as info:
        store.presign_many(keys, 600)
    assert f"s3://{bucket}" in str(info.value) and info.value.hint
    with pytest.raises(CredentialsError, match=f"s3://{bucket}"):
        S3Storage(bucket)  # a new run: refused up front, with the same kind of error
    # keys the server does not know: presigning cannot tell, the first request can
    _write_process_credentials(process_credentials, "UNKNOWNKEY", "unknown-secret", dt.timedelta(minutes=5))
    url = store.presign_many(keys, 600)[0]
    assert httpx.get(url).status_code == 403
    with pytest.raises(CredentialsError) as info:
        store.read(keys[0])
    assert f"s3://{bucket}" in str(info.value) and info.value.hint and "unknown-secret" not in str(info.value)


def test_sample_bucket_round_trip(seaweed_env: S3Server, bucket_name: str) -> None:
    keys = seaweed_env.seed_dir(bucket_name, SAMPLES / "photos")
    store = S3Storage(bucket_name, page_size=7)
    assert [o.key for o in store.list()] == keys
    urls = dict(zip(keys, store.presign_many(keys, 300)))
    with httpx.Client() as http:
        for key in ("café/ñandú.jpg", "street/2024/06/night 100%.jpg", "street/2025/01/snow#1.jpg", "empty.jpg"):
            assert http.get(urls[key]).content == (SAMPLES / "photos" / key).read_bytes()
