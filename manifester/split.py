"""Split stage: a repeatable train/valid/test assignment per object.

An object's split depends only on its key (or its group key) and the seed, never on
the other objects, the listing order or the process, so adding objects never moves
an existing one, and anyone can reproduce the split elsewhere. The formula:

1. ``group_key`` is the object key (bucket-relative, as listed) unless ``group_by``
   is set: then ``m = re.search(group_by, key)``; the group key is ``m.group(1)`` if
   the regex has a capture group that took part in the match, else ``m.group(0)``;
   no match at all means the key itself.
2. ``h = sha256(utf8(seed + "\\x00" + group_key))`` (raw 32-byte digest).
3. ``b = int.from_bytes(h[:8], "big") % 10000`` (the first 8 bytes as an unsigned
   big-endian 64-bit integer, modulo 10000).
4. With weights ``w_train, w_valid, w_test`` and ``total`` their sum, the thresholds
   are ``t_s = floor(cumulative_weight_up_to_and_including_s * 10000 / total)``
   (so the last non-empty split always ends at exactly 10000).
5. The split is the first of train, valid, test whose ``t_s > b``. A weight of 0
   gives that split no objects.

With ``from_path`` a folder segment of the key (not the file name) named
``train``, ``valid``/``val``/``validation`` or ``test`` (case-insensitive, the first
such segment from the left) decides the split; keys without one are hashed as above.

Python's built-in ``hash()`` is never used: it is salted per process.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError
from .records import SPLITS

__all__ = ["BUCKETS", "DEFAULT_SPLIT", "SplitSpec", "Splitter", "split_bucket"]

DEFAULT_SPLIT = "train=80,valid=10,test=10"

#: Resolution of the hash buckets: weights are honoured to 1/10000.
BUCKETS = 10_000

#: Folder names that --split-from-path recognises (compared lower-cased).
PATH_SPLITS: dict[str, str] = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}


@dataclass(frozen=True)
class SplitSpec:
    """Weights for train, valid, test (non-negative integers, at least one positive)."""

    train: int = 80
    valid: int = 10
    test: int = 10

    def __post_init__(self) -> None:
        for name in SPLITS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"--split: weight of {name} must be a non-negative integer, not {value!r}",
                    hint=f"write e.g. --split {DEFAULT_SPLIT}",
                )
        if self.total == 0:
            raise ConfigError("--split: every weight is 0", hint=f"write e.g. --split {DEFAULT_SPLIT}")

    @classmethod
    def parse(cls, text: str | SplitSpec) -> SplitSpec:
        """Parse ``name=weight,...``; splits not named get weight 0.

        >>> SplitSpec.parse("train=80,valid=10,test=10")
        SplitSpec(train=80, valid=10, test=10)
        >>> SplitSpec.parse("train=1,test=1").valid
        0
        """
        if isinstance(text, SplitSpec):
            return text
        hint = f"write e.g. --split {DEFAULT_SPLIT} (names: train, valid, test; integer weights)"
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"--split: {text!r} is empty", hint=hint)
        weights: dict[str, int] = {}
        for part in text.split(","):
            part = part.strip()
            name, eq, value = part.partition("=")
            name, value = name.strip(), value.strip()
            if not eq or not name:
                raise ConfigError(f"--split: {part!r} is not NAME=WEIGHT", hint=hint)
            if name not in SPLITS:
                raise ConfigError(f"--split: unknown split name {name!r} in {part!r}", hint=hint)
            if name in weights:
                raise ConfigError(f"--split: {name!r} is given twice", hint=hint)
            if not value.isdigit() or not value.isascii():
                raise ConfigError(f"--split: weight {value!r} in {part!r} is not a non-negative integer", hint=hint)
            weights[name] = int(value)
        return cls(**{name: weights.get(name, 0) for name in SPLITS})

    @property
    def weights(self) -> tuple[int, int, int]:
        return (self.train, self.valid, self.test)

    @property
    def total(self) -> int:
        return self.train + self.valid + self.test

    def thresholds(self) -> tuple[int, ...]:
        """Cumulative thresholds in [0, 10000]: ``floor(cum * 10000 / total)``.

        >>> SplitSpec(80, 10, 10).thresholds()
        (8000, 9000, 10000)
        """
        out: list[int] = []
        cum = 0
        for w in self.weights:
            cum += w
            out.append(cum * BUCKETS // self.total)
        return tuple(out)

    def __str__(self) -> str:
        return ",".join(f"{name}={w}" for name, w in zip(SPLITS, self.weights))


def split_bucket(seed: str, group_key: str) -> int:
    """The hash bucket in [0, 10000) of one group key; the heart of the formula.

    >>> split_bucket("", "cats/a.jpg") == int.from_bytes(
    ...     hashlib.sha256(b"\\x00cats/a.jpg").digest()[:8], "big") % 10000
    True
    """
    digest = hashlib.sha256((seed + "\x00" + group_key).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class Splitter:
    """Assigns keys to splits by the documented formula.

    >>> Splitter(SplitSpec.parse("train=1"), seed="v1").assign("cats/a.jpg")
    'train'
    >>> Splitter(SplitSpec(), from_path=True).assign("data/val/a.jpg")
    'valid'
    """

    def __init__(
        self,
        spec: SplitSpec | str = DEFAULT_SPLIT,
        seed: str = "",
        group_by: str | None = None,
        from_path: bool = False,
    ) -> None:
        self.spec = SplitSpec.parse(spec)
        self.seed = seed
        self.from_path = from_path
        self._thresholds = list(self.spec.thresholds())
        self._prefix = (seed + "\x00").encode("utf-8", "surrogatepass")
        self._group: re.Pattern[str] | None = compile_group_by(group_by)

    def group_key(self, key: str) -> str:
        """The text that is hashed for ``key`` (see the module docstring)."""
        rx = self._group
        if rx is None:
            return key
        m = rx.search(key)
        if m is None:
            return key
        if rx.groups and m.group(1) is not None:
            return m.group(1)
        return m.group(0)

    def path_split(self, key: str) -> str | None:
        """The split named by the first train/valid/val/validation/test folder of ``key``, if any."""
        for segment in key.split("/")[:-1]:
            found = PATH_SPLITS.get(segment.lower())
            if found is not None:
                return found
        return None

    def assign(self, key: str) -> str:
        """The split of one key."""
        if self.from_path:
            found = self.path_split(key)
            if found is not None:
                return found
        gk = self.group_key(key) if self._group is not None else key
        digest = hashlib.sha256(self._prefix + gk.encode("utf-8", "surrogatepass")).digest()
        b = int.from_bytes(digest[:8], "big") % BUCKETS
        return SPLITS[bisect.bisect_right(self._thresholds, b)]

    def assign_many(self, keys: Iterable[str]) -> list[str]:
        """The splits of many keys; the same as ``[assign(k) for k in keys]``, faster."""
        if self.from_path or self._group is not None:
            return [self.assign(k) for k in keys]
        # Plain hashing: inline the loop body to save a method call per key, and hash the
        # seed prefix once, copying that state per key (same digest as hashing prefix + key).
        copy = hashlib.sha256(self._prefix).copy
        thresholds, frombytes, right, names = self._thresholds, int.from_bytes, bisect.bisect_right, SPLITS
        out: list[str] = []
        append = out.append
        for k in keys:
            state = copy()
            state.update(k.encode("utf-8", "surrogatepass"))
            append(names[right(thresholds, frombytes(state.digest()[:8], "big") % BUCKETS)])
        return out


def compile_group_by(pattern: str | None) -> re.Pattern[str] | None:
    """Compile ``--group-by``; a bad regex is a ConfigError naming it."""
    if pattern is None or pattern == "":
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"--group-by: {pattern!r} is not a valid regular expression ({exc})",
            hint=r"use Python regex syntax, e.g. --group-by '^([^/]+)/' to group by top folder",
        ) from exc
