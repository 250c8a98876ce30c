"""Split stage: parsing, the documented formula, stability, ratios, grouping, paths."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifester.errors import ConfigError
from manifester.split import SplitSpec, Splitter, split_bucket

keys_st = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)


def reference_split(key: str, seed: str, weights: tuple[int, int, int]) -> str:
    """The formula exactly as the README states it, written independently."""
    h = hashlib.sha256((seed + "\x00" + key).encode("utf-8")).digest()
    b = int.from_bytes(h[:8], "big") % 10000
    total = sum(weights)
    cum = 0
    for name, w in zip(("train", "valid", "test"), weights):
        cum += w
        if math.floor(cum * 10000 / total) > b:
            return name
    raise AssertionError("unreachable")


def test_parse_and_str() -> None:
    spec = SplitSpec.parse("train=80,valid=10,test=10")
    assert spec == SplitSpec(80, 10, 10)
    assert str(spec) == "train=80,valid=10,test=10"
    assert SplitSpec.parse(" test = 1 , train=3 ") == SplitSpec(3, 0, 1)
    assert SplitSpec(80, 10, 10).thresholds() == (8000, 9000, 10000)
    assert SplitSpec(1, 1, 1).thresholds() == (3333, 6666, 10000)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train=80,valid=10,tst=10", "'tst'"),
        ("train=80,valid=-1", "'-1'"),
        ("train=eighty", "'eighty'"),
        ("train=1.5", "'1.5'"),
        ("train=0,valid=0,test=0", "every weight is 0"),
        ("train=1,train=2", "'train' is given twice"),
        ("train", "'train'"),
        ("", "empty"),
        ("val=10,train=90", "'val'"),
    ],
)
def test_parse_errors_name_the_bad_part(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        SplitSpec.parse(text)
    assert needle in str(info.value) and "--split" in str(info.value)


@given(key=keys_st, seed=st.text(max_size=10), w=st.tuples(*[st.integers(0, 50)] * 3).filter(lambda t: sum(t) > 0))
def test_matches_the_documented_formula(key: str, seed: str, w: tuple[int, int, int]) -> None:
    splitter = Splitter(SplitSpec(*w), seed=seed)
    assert splitter.assign(key) == reference_split(key, seed, w)
    assert splitter.assign_many([key]) == [splitter.assign(key)]


def test_known_values_pin_the_formula() -> None:
    # Pinned so an accidental change to the formula (which would move users' data) fails loudly.
    assert split_bucket("", "cats/a.jpg") == int.from_bytes(hashlib.sha256(b"\x00cats/a.jpg").digest()[:8], "big") % 10000
    s = Splitter("train=80,valid=10,test=10", seed="v1")
    got = [s.assign(f"img{i}.jpg") for i in range(8)]
    assert got == [reference_split(f"img{i}.jpg", "v1", (80, 10, 10)) for i in range(8)]


@settings(max_examples=30)
@given(old=st.lists(keys_st, max_size=40), new=st.lists(keys_st, max_size=40), seed=st.text(max_size=5))
def test_adding_objects_never_moves_existing_ones(old: list[str], new: list[str], seed: str) -> None:
    s = Splitter("train=70,valid=20,test=10", seed=seed)
    before = dict(zip(old, s.assign_many(old)))
    combined = sorted(set(old) | set(new))
    after = dict(zip(combined, Splitter("train=70,valid=20,test=10", seed=seed).assign_many(combined)))
    assert all(after[k] == v for k, v in before.items())


@settings(max_examples=15, deadline=None)
@given(w=st.tuples(*[st.integers(0, 20)] * 3).filter(lambda t: sum(t) > 0), seed=st.text(max_size=4))
def test_ratios_within_tolerance_on_20k_keys(w: tuple[int, int, int], seed: str) -> None:
    n = 20_000
    keys = [f"photos/{i // 100:04d}/img_{i:06d}.jpg" for i in range(n)]
    splits = Splitter(SplitSpec(*w), seed=seed).assign_many(keys)
    total = sum(w)
    for name, weight in zip(("train", "valid", "test"), w):
        p = weight / total
        got = splits.count(name) / n
        if weight == 0:
            assert got == 0
        else:
            # 6 standard deviations plus the 1/10000 threshold rounding: never flaky.
            assert abs(got - p) <= 6 * math.sqrt(p * (1 - p) / n) + 2e-4, (name, got, p)


@given(groups=st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=1, max_size=20), seed=st.text(max_size=4))
def test_group_by_puts_a_group_in_one_split(groups: list[str], seed: str) -> None:
    s = Splitter("train=34,valid=33,test=33", seed=seed, group_by=r"^([^/]+)/")
    for g in groups:
        keys = [f"{g}/frame_{i}.jpg" for i in range(12)]
        assert len(set(s.assign_many(keys))) == 1
        assert s.assign(keys[0]) == reference_split(g, seed, (34, 33, 33))


def test_group_key_rules() -> None:
    with_group = Splitter(group_by=r"patient-(\d+)")
    assert with_group.group_key("scans/patient-12/a.png") == "12"
    assert with_group.group_key("scans/other/a.png") == "scans/other/a.png"  # no match -> the key
    whole = Splitter(group_by=r"^[^/]+")
    assert whole.group_key("cats/a.jpg") == "cats"  # no capture group -> the whole match
    optional = Splitter(group_by=r"^(x)?cats")
    assert optional.group_key("cats/a.jpg") == "cats"  # group 1 did not take part -> the whole match


def test_bad_regex_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        Splitter(group_by="([unclosed")
    assert "--group-by" in str(info.value) and "'([unclosed'" in str(info.value)


def test_split_from_path() -> None:
    s = Splitter("train=1", from_path=True)
    assert s.assign("data/train/a.jpg") == "train"
    assert s.assign("data/Val/a.jpg") == "valid"
    assert s.assign("validation/x/a.jpg") == "valid"
    assert s.assign("valid/a.jpg") == "valid"
    assert s.assign("test/train/a.jpg") == "test"  # first such segment from the left
    assert s.assign("data/other/test") == "train"  # the file name is not a folder: hashed (train=1 -> train)
    assert s.assign("testing/a.jpg") == "train"


def test_independent_of_python_hash_seed() -> None:
    code = (
        "from manifester.split import Splitter;"
        "print(''.join(s[0] for s in Splitter('train=1,valid=1,test=1', seed='s').assign_many("
        "[f'k{i}' for i in range(300)])))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": str(seed)}
        ).stdout
        for seed in (1, 2)
    }
    assert len(outs) == 1
    assert outs.pop().strip() == "".join(Splitter("train=1,valid=1,test=1", seed="s").assign(f"k{i}")[0] for i in range(300))
