"""ingest: only new objects are sent; changed ETags skipped unless --changed resend; nothing new."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import manifester
from manifester.ledger import Ledger
from tests.support.storage_servers import S3Server, unique_bucket_name
from tests.test_migrate import (
    PHOTOS,
    dataset_content,
    fast_client,
    ledger_content,
    theos,
)

_ = theos  # the fixture, re-exported for this module


def _png(n: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8 + n, 8), (n * 10 % 255, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def test_ingest_picks_up_new_and_changed_objects(s3_env: S3Server, theos: Any, tmp_path: Path) -> None:
    bucket = unique_bucket_name("ingest")
    s3_env.seed_dir(bucket, PHOTOS / "animals")
    store = unique_bucket_name("imanifests")
    s3_env.make_bucket(store)
    client = fast_client(theos.url, theos)
    dataset_id = client.create_dataset("Ingest").id
    state = tmp_path / "l.sqlite"
    kw = dict(dataset_id=dataset_id, manifest_store=f"s3://{store}/m", state=state, client=client, canary=2,
              progress=False, poll_interval=0.05)

    first = manifester.ingest(f"s3://{bucket}", **kw)
    assert first.ok and first.created > 0
    n0 = first.created

    nothing = manifester.ingest(f"s3://{bucket}", **kw)
    assert nothing.nothing_new and nothing.exit_code == 0 and nothing.already_present == n0
    assert "nothing new" in nothing.lines()[0]

    s3 = s3_env.client()
    s3.put_object(Bucket=bucket, Key="new/one.png", Body=_png(1))
    s3.put_object(Bucket=bucket, Key="new/two.png", Body=_png(2))
    second = manifester.ingest(f"s3://{bucket}", **kw)
    assert second.ok and second.created == 2 and second.already_present == n0 and second.shards == 1

    # a changed object: skipped by default, re-sent with changed="resend"
    s3.put_object(Bucket=bucket, Key="new/one.png", Body=_png(7))
    skipped = manifester.ingest(f"s3://{bucket}", **kw)
    assert skipped.nothing_new
    resent = manifester.ingest(f"s3://{bucket}", **{**kw, "changed": "resend"})
    assert resent.shards == 1 and resent.created + resent.duplicates == 1

    content = dataset_content(client, dataset_id)
    assert len(content) == n0 + 2 == len({e for e, _ in content})
    assert content == ledger_content(state, dataset_id)
    with Ledger.open(state) as ledger:
        kinds = [r["kind"] for r in ledger.runs()]
        assert kinds == ["ingest"] * 5
        assert all(r["status"] == "done" for r in ledger.runs())
        # no secret in the ledger: no token, no signature
        blob = state.read_bytes() + Path(str(state) + "-wal").read_bytes() if Path(str(state) + "-wal").exists() else state.read_bytes()
    assert theos.token.encode() not in blob
    assert b"X-Amz-Signature" not in blob


def test_ingest_prefix_source_and_dry_run(s3_env: S3Server, theos: Any, tmp_path: Path) -> None:
    bucket = unique_bucket_name("iprefix")
    s3_env.seed_dir(bucket, PHOTOS)
    client = fast_client(theos.url, theos)
    dataset_id = client.create_dataset("Prefix").id
    summary = manifester.ingest(f"s3://{bucket}/street", dataset_id=dataset_id, state=tmp_path / "l.sqlite",
                                client=client, dry_run=True, progress=False)
    assert summary.dry_run and summary.plan is not None and summary.plan.dataset_exists is True
    assert 0 < summary.plan.total < 30
    assert summary.plan.shards == 1 if summary.plan.total <= 20 else 2
    assert any("to send" in line for line in summary.lines())
