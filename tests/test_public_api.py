"""The public surface: everything in manifester.__all__ resolves, and errors form one tree."""

from __future__ import annotations

import subprocess
import sys

import pytest

import manifester
from manifester import errors


@pytest.mark.parametrize("name", manifester.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(manifester, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        manifester.no_such_thing  # noqa: B018


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_derives_from_the_root(name: str) -> None:
    assert issubclass(getattr(errors, name), errors.ManifesterError)


def test_error_message_carries_hint() -> None:
    exc = errors.SourceNotFoundError("bucket s3://nope does not exist", hint="check the name")
    assert str(exc) == "bucket s3://nope does not exist\n  hint: check the name"
    assert not exc.transient
    assert errors.TransientError("x").transient


def test_missing_extra_names_the_extra() -> None:
    exc = errors.MissingExtraError("GCS sources", "gcs")
    assert "manifester[gcs]" in str(exc)
    assert exc.exit_code == 2


def test_import_is_cheap_and_needs_no_cloud_sdk() -> None:
    code = "import sys, manifester; print(sorted(m for m in ('boto3','google.cloud.storage','flask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
