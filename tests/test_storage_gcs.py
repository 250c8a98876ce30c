"""GCSStorage against fake-gcs-server: paging, V4 signed URLs (inline and multi-process), errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from manifester.errors import ConfigError, CredentialsError, SourceNotFoundError
from manifester.storage import gcs as gcs_mod
from manifester.storage import open_storage
from manifester.storage.gcs import GCSStorage, V4Request, sign_v4_urls
from tests.support.storage_servers import GCSServer

KEYS = {
    "a b/c d.jpg": b"1",
    "café/ñandú.jpg": b"2",
    "日本/猫.png": b"3",
    "plus+sign.jpg": b"4",
    "100% done.jpg": b"5",
    "hash#tag.jpg": b"6",
    "what?.jpg": b"7",
    "tilde~x.jpg": b"8",
    "emoji 🐱.png": b"9",
    "deep/er/leaf.webp": b"10",
}


@pytest.fixture(scope="module")
def gcs_photos(fake_gcs: GCSServer) -> str:
    from tests.support.storage_servers import unique_bucket_name

    name = unique_bucket_name("photos")
    fake_gcs.make_bucket(name, dict(KEYS, **{"folder/": b""}))
    return name


def test_list_pages_in_order(gcs_env: GCSServer, gcs_photos: str) -> None:
    store = GCSStorage(gcs_photos, page_size=2)
    objs = list(store.list())
    assert [o.key for o in objs] == sorted(KEYS)
    assert {o.key: o.size for o in objs} == {k: len(v) for k, v in KEYS.items()}
    assert all(o.etag and o.etag.isdigit() for o in objs)
    assert [o.key for o in store.list("caf")] == ["café/ñandú.jpg"]
    assert [o.key for o in GCSStorage(gcs_photos, "deep/").list()] == ["deep/er/leaf.webp"]


def test_read_write_head(gcs_env: GCSServer, bucket_name: str) -> None:
    gcs_env.make_bucket(bucket_name)
    store = open_storage(f"gs://{bucket_name}/m")
    assert isinstance(store, GCSStorage)
    assert store.head("m/1.json") is None
    store.write("m/1.json", b"[1]")
    assert store.read("m/1.json") == b"[1]"
    head = store.head("m/1.json")
    assert head is not None and head.size == 3
    with pytest.raises(SourceNotFoundError, match="m/2.json"):
        store.read("m/2.json")


def test_missing_bucket(gcs_env: GCSServer) -> None:
    with pytest.raises(SourceNotFoundError, match="gs://no-such-bucket-here"):
        list(GCSStorage("no-such-bucket-here").list())


def test_signed_urls_download(gcs_env: GCSServer, gcs_photos: str) -> None:
    store = GCSStorage(gcs_photos)
    keys = sorted(KEYS)
    urls = store.presign_many(keys, 600)
    assert all(u.startswith(f"{gcs_env.url}/{gcs_photos}/") and "X-Goog-Signature=" in u for u in urls)
    with httpx.Client() as http:
        for key, url in zip(keys, urls):
            assert http.get(url).content == KEYS[key], key
        assert http.get(store.presign("日本/猫.png", 60)).content == KEYS["日本/猫.png"]
    assert store.public_url("a b/ñ.jpg") == f"{gcs_env.url}/{gcs_photos}/a%20b/%C3%B1.jpg"
    assert store.max_presign_seconds() == 7 * 24 * 3600
    with pytest.raises(ConfigError):
        store.presign("x", 8 * 24 * 3600)


def test_v4_urls_match_the_library(gcs_env: GCSServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import storage
    from google.cloud.storage import _signing
    from google.oauth2 import service_account

    info = json.loads(Path(gcs_env.credentials_file).read_text())
    creds = service_account.Credentials.from_service_account_info(info)
    monkeypatch.setattr(_signing, "get_v4_now_dtstamps", lambda: ("20260102T030405Z", "20260102"))
    for endpoint in ("https://storage.googleapis.com", gcs_env.url):
        client = storage.Client(project="p", credentials=creds, client_options={"api_endpoint": endpoint})
        req = V4Request(endpoint, "bkt", creds.signer_email, 900, "20260102T030405Z")
        mine = sign_v4_urls(req, list(KEYS), creds.signer)
        for key, url in zip(KEYS, mine):
            ref = client.bucket("bkt").blob(key).generate_signed_url(version="v4", expiration=900, method="GET")
            assert url == ref


def test_pool_signing_equals_inline(gcs_env: GCSServer, gcs_photos: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcs_mod, "v4_timestamp", lambda now=None: "20260102T030405Z")
    monkeypatch.setattr(gcs_mod, "_POOL_MIN_BATCH", 50)
    monkeypatch.setattr(gcs_mod, "_CHUNK", 20)
    keys = [f"k/{i:04d} ñ.jpg" for i in range(120)]
    pooled = GCSStorage(gcs_photos, workers=2)
    inline = GCSStorage(gcs_photos, workers=1)
    try:
        a = pooled.presign_many(keys, 600)
        assert pooled._pool is not None  # the pool really ran
        assert a == inline.presign_many(keys, 600)
    finally:
        pooled.close()
        inline.close()


def test_credentials_that_cannot_sign(gcs_env: GCSServer, gcs_photos: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), None))
    with pytest.raises(CredentialsError) as info:
        GCSStorage(gcs_photos).presign("a.jpg", 60)
    assert "service-account" in str(info.value) and "--url-template" in str(info.value)


def test_no_credentials(gcs_env: GCSServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud ADC
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # never probe the metadata server
    store = GCSStorage("anything")  # the emulator needs none for listing ...
    with pytest.raises(CredentialsError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        store.presign("a.jpg", 60)  # ... but signing does
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    with pytest.raises(CredentialsError):
        GCSStorage("anything")


def test_unreachable_endpoint_after_retries_is_transient_with_a_hint(gcs_env: GCSServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the SDK raises once its 120 s retry budget is spent on a dead endpoint.
    import requests
    from google.api_core.exceptions import RetryError

    from manifester.errors import SourceError

    store = GCSStorage("anything")

    def dead(*args: object, **kwargs: object) -> None:
        raise RetryError("Timeout of 120.0s exceeded", cause=requests.ConnectionError("connection refused"))

    monkeypatch.setattr(store._client, "list_blobs", dead)
    with pytest.raises(SourceError) as info:
        list(store.list())
    err = info.value
    assert "gs://anything" in str(err) and gcs_env.url in str(err) and "ConnectionError" in str(err)
    assert err.hint and "STORAGE_EMULATOR_HOST" in err.hint
    assert err.transient
