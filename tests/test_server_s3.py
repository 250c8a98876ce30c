"""Uploads whose manifest and images are presigned S3 URLs served by SeaweedFS (which checks signatures)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manifester.server import RunningServer
from tests.support.theos_server import api, make_image, wait_task

pytest.importorskip("boto3")


def _presigner(server: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def test_upload_from_presigned_seaweedfs_urls(theos_server: RunningServer, seaweed_s3: Any, bucket_name: str) -> None:
    files = {f"photos/cat {i}.jpg": make_image(30 + i, 20, "JPEG") for i in range(3)}
    seaweed_s3.make_bucket(bucket_name, files)
    s3 = _presigner(seaweed_s3)

    def sign(key: str) -> str:
        return str(s3.generate_presigned_url("get_object", Params={"Bucket": bucket_name, "Key": key}, ExpiresIn=600))

    entries = [{"url": sign(key), "split": "train", "external_id": key} for key in sorted(files)]
    good = sign("photos/cat 0.jpg")
    tampered = good.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    entries.append({"url": tampered, "split": "valid", "external_id": "tampered"})
    s3.put_object(Bucket=bucket_name, Key="manifests/m.json", Body=json.dumps(entries).encode())

    with api(theos_server) as client:
        ds = client.post("/create/", data={"name": "S3"}).json()["id"]
        response = client.post(f"/{ds}/upload/", data={"manifest_url": sign("manifests/m.json")})
        assert response.status_code == 200
        task = wait_task(theos_server, response.json()["task_id"])
        assert task["state"] == "SUCCESS", task
        assert task["result"]["created"] == 3
        [failure] = task["result"]["failed"]
        assert failure["external_id"] == "tampered" and "403" in failure["error"]
        example = client.get(f"/{ds}/examples/external/photos/cat 1.jpg/").json()
        assert (example["width"], example["height"]) == (31, 20)

        # An unsigned manifest URL is refused by SeaweedFS: the task fails, nothing imported.
        unsigned = f"{seaweed_s3.endpoint_url}/{bucket_name}/manifests/m.json"
        other = client.post("/create/", data={"name": "S3b"}).json()["id"]
        task = wait_task(theos_server, client.post(f"/{other}/upload/", data={"manifest_url": unsigned}).json()["task_id"])
        assert task["state"] == "FAILURE" and "403" in task["result"]
