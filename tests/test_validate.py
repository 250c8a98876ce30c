"""Validation: the packaged schema, the fast path, readable messages, whole documents."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifester.validate import (
    EcmaDraft202012Validator,
    EntryValidator,
    load_schema,
    validate_manifest,
)

GOOD = [
    {"url": "https://bucket.s3.amazonaws.com/a%20b.jpg?X-Amz-Signature=abc", "split": "train", "external_id": "x"},
    {"url": "http://127.0.0.1:9000/b/c.jpg", "split": "valid"},
    {"url": "https://cdn.example.com/%C3%BC.png", "split": "test", "external_id": "3f0c-ü-id"},
]
BAD = [
    ({"url": "ftp://x/a.jpg", "split": "train"}, "url"),
    ({"url": "https://x/a b.jpg", "split": "train"}, "url"),
    ({"url": "https://x/a.jpg\n", "split": "train"}, "url"),
    ({"url": "https:///a.jpg", "split": "train"}, "url"),
    ({"url": "https://x/a.jpg", "split": "training"}, "split"),
    ({"url": "https://x/a.jpg"}, "split"),
    ({"split": "train"}, "url"),
    ({"url": "https://x/a.jpg", "split": "train", "external_id": ""}, "external_id"),
    ({"url": "https://x/a.jpg", "split": "train", "external_id": "a\x01b"}, "external_id"),
    ({"url": "https://x/a.jpg", "split": "train", "external_id": "ab\n"}, "external_id"),
    ({"url": "https://x/a.jpg", "split": "train", "external_id": "x" * 1025}, "external_id"),
    ({"url": "https://x/a.jpg", "split": "train", "external_id": 5}, "external_id"),
    ({"url": "https://x/a.jpg", "split": "train", "labels": []}, "labels"),
]


def test_schema_ships_in_the_package() -> None:
    schema = load_schema()
    assert schema["maxItems"] == 100_000
    assert schema["$defs"]["entry"]["additionalProperties"] is False


@pytest.mark.parametrize("entry", GOOD)
def test_good_entries(entry: dict[str, Any]) -> None:
    v = EntryValidator()
    assert v.check(entry) is None and v.is_valid(entry)
    assert v.all_valid(GOOD)


@pytest.mark.parametrize(("entry", "field"), BAD)
def test_bad_entries_have_a_message_naming_the_field(entry: dict[str, Any], field: str) -> None:
    v = EntryValidator()
    message = v.check(entry)
    assert message is not None and field in message
    assert not v.is_valid(entry)
    assert not v.all_valid([*GOOD, entry])


def test_validate_manifest_whole_document() -> None:
    assert validate_manifest(GOOD) == []
    assert validate_manifest([]) == []
    problems = validate_manifest([GOOD[0], BAD[4][0], 7, BAD[0][0]])
    assert problems[0].startswith("[1] split:")
    assert problems[1].startswith("[2] ") and "object" in problems[1]
    assert problems[2].startswith("[3] url:")
    assert validate_manifest({"url": "x"}) == ["{'url': 'x'} is not of type 'array'"]


def test_validate_manifest_max_items_and_cap() -> None:
    entry = {"url": "https://x/a.jpg", "split": "train"}
    too_many = [entry] * 100_001
    assert validate_manifest(too_many) == ["the manifest has 100001 entries; maxItems is 100000"]
    many_bad = [{"url": "nope", "split": "train"}] * 30
    problems = validate_manifest(many_bad, limit=20)
    assert len(problems) == 21 and problems[-1] == "... and 10 more"


# --- the fast path and jsonschema agree --------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_url = st.one_of(
    _text,
    st.builds(lambda s, h, p: f"{s}://{h}{p}", st.sampled_from(["http", "https", "ftp", "HTTP"]), _text, _text),
    st.builds(lambda p: f"https://example.com/{p}", _text),
)
_value = st.one_of(st.none(), st.integers(), st.booleans(), _text, st.lists(st.integers(), max_size=2))
_entry = st.one_of(
    st.fixed_dictionaries(
        {"url": _url, "split": st.sampled_from(["train", "valid", "test", "Train", "val"])},
        optional={"external_id": st.one_of(_text, st.integers()), "extra": _value},
    ),
    st.dictionaries(st.sampled_from(["url", "split", "external_id", "x"]), _value, max_size=4),
)


@settings(max_examples=400)
@given(entry=_entry)
def test_fast_path_and_jsonschema_agree(entry: dict[str, Any]) -> None:
    v = EntryValidator()
    slow = EcmaDraft202012Validator(load_schema()["$defs"]["entry"])
    assert v.is_valid(entry) == slow.is_valid(entry)
    assert (v.check(entry) is None) == slow.is_valid(entry)
