"""Validation stage: manifest entries against ``schemas/manifest.schema.json``.

The schema file is the single source of truth. For speed it is compiled with
fastjsonschema (~25x faster than jsonschema per entry); only when an entry fails is
jsonschema asked for a readable message. Formats are not checked by either: the
schema's ``pattern`` is what enforces the URL shape, so every validator agrees.

One deliberate detail: JSON Schema patterns are ECMA-262 regexes, where ``$`` matches
only at the very end; Python's ``re`` also lets ``$`` match before a final newline.
fastjsonschema already rewrites ``$``; the jsonschema validator used here does the
same, so both reject ``"https://x/a.jpg\\n"`` and agree on every input.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from operator import itemgetter
from typing import Any

import fastjsonschema
import jsonschema  # type: ignore[import-untyped]
from jsonschema import Draft202012Validator

from .errors import ConfigError

__all__ = ["MAX_PROBLEMS", "EntryValidator", "load_schema", "manifest_validator", "validate_manifest"]

#: How many problems a report lists before it stops counting them individually.
MAX_PROBLEMS = 20

# An unescaped "$" (ECMA end of input) -> Python's "\Z" (fastjsonschema does the same).
_DOLLAR = re.compile(r"(?<!\\)\$")


def load_schema(name: str = "manifest.schema.json") -> dict[str, Any]:
    """Load a JSON Schema shipped in the package (``manifester/schemas/``).

    >>> load_schema()["maxItems"]
    100000
    """
    try:
        text = (importlib.resources.files("manifester") / "schemas" / name).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(f"schema {name!r} is not installed with manifester", hint="reinstall the package") from exc
    data: dict[str, Any] = json.loads(text)
    return data


@lru_cache(maxsize=64)
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(_DOLLAR.sub(r"\\Z", pattern))


def _ecma_pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(patrn).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")


#: Draft 2020-12 with ECMA-262 ``$`` semantics for ``pattern`` (see the module docstring).
EcmaDraft202012Validator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def _format_error(err: jsonschema.ValidationError) -> str:
    path = "/".join(str(p) for p in err.absolute_path)
    return f"{path}: {err.message}" if path else err.message


#: Keywords the batch pre-check (:func:`_column_checker`) understands; any other keyword
#: in the entry definition turns it off, and fastjsonschema alone decides.
_OBJECT_KEYWORDS = frozenset({"type", "required", "additionalProperties", "properties", "description", "title", "$comment"})
_STRING_KEYWORDS = frozenset({"type", "pattern", "enum", "minLength", "maxLength", "description", "title", "$comment"})


def _column_checker(entry: dict[str, Any]) -> Callable[[list[dict[str, Any]]], bool] | None:
    """Compile the entry definition into a batch check that works column by column.

    It answers True only if every entry is valid, using C-level loops (``map``, ``set``)
    instead of one generated Python function call per entry; it may answer False for
    valid entries (it is stricter: exact ``dict``/``str`` types), and then the caller
    asks fastjsonschema, whose answer is final. So True here implies fastjsonschema's
    True (same regex rewriting of ``$``), and the schema file stays the only source of
    the rules. Returns None when the definition uses a keyword it does not handle.
    """
    if not isinstance(entry, dict) or set(entry) - _OBJECT_KEYWORDS:
        return None
    if entry.get("type") != "object" or entry.get("additionalProperties", True) is not False:
        return None
    props = entry.get("properties", {})
    required = entry.get("required", [])
    if not isinstance(props, dict) or not isinstance(required, list) or not set(required) <= set(props):
        return None
    columns: list[tuple[Any, frozenset[str] | None, int | None, int | None, re.Pattern[str] | None]] = []
    for name, sub in props.items():
        if not isinstance(sub, dict) or set(sub) - _STRING_KEYWORDS:
            return None
        if sub.get("type", "string") != "string":
            return None
        enum = sub.get("enum")
        if enum is not None and not (isinstance(enum, list) and all(isinstance(v, str) for v in enum)):
            return None
        low, high, pattern = sub.get("minLength"), sub.get("maxLength"), sub.get("pattern")
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in (low, high)):
            return None
        if pattern is not None and not isinstance(pattern, str):
            return None
        columns.append(
            (
                name,
                frozenset(enum) if enum is not None else None,
                low,
                high,
                _ecma_regex(pattern) if pattern is not None else None,
            )
        )
    allowed, needed = frozenset(props), frozenset(required)

    def check(docs: list[dict[str, Any]]) -> bool:
        if not docs:
            return True
        if set(map(type, docs)) != {dict}:
            return False
        shapes = set(map(tuple, docs))  # the distinct key lists: one, for built entries
        for shape in shapes:
            keys = set(shape)
            if not needed <= keys or not keys <= allowed:
                return False
        for name, enum, low, high, rx in columns:
            if all(name in shape for shape in shapes):
                col = list(map(itemgetter(name), docs))
            else:
                col = [d[name] for d in docs if name in d]
                if not col:
                    continue
            if set(map(type, col)) != {str}:
                return False
            if enum is not None and not enum.issuperset(col):
                return False
            if low is not None and min(map(len, col)) < low:
                return False
            if high is not None and max(map(len, col)) > high:
                return False
            if rx is not None and not all(map(rx.search, col)):
                return False
        return True

    return check


class EntryValidator:
    """Checks one manifest entry (a dict) against the schema's ``entry`` definition.

    >>> v = EntryValidator()
    >>> v.check({"url": "https://x.example/a.jpg", "split": "train"}) is None
    True
    >>> v.check({"url": "ftp://x/a.jpg", "split": "train"}).startswith("url: 'ftp://x/a.jpg' does not match")
    True
    """

    def __init__(self, schema: dict[str, Any] | None = None) -> None:
        schema = schema if schema is not None else load_schema()
        entry = dict(schema["$defs"]["entry"])
        self.schema = entry
        # fastjsonschema speaks draft-07 at most; the entry definition uses only
        # keywords whose meaning is the same in 2020-12, and contains no $ref.
        self._fast = fastjsonschema.compile(entry, use_formats=False)
        self._slow = EcmaDraft202012Validator(entry)
        # The same definition applied to a whole batch in one call: the generated loop
        # saves a Python call and a try block per entry on the common, all-valid path.
        self._fast_many = fastjsonschema.compile({"type": "array", "items": entry}, use_formats=False)
        # Faster still for big batches: the same definition checked column by column;
        # a "no" from it is only a hint, fastjsonschema then decides.
        self._columns = _column_checker(entry)

    def all_valid(self, entries: list[dict[str, Any]]) -> bool:
        """True when every entry passes; use :meth:`check` on each to find the bad ones."""
        if self._columns is not None and self._columns(entries):
            return True
        try:
            self._fast_many(entries)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    def is_valid(self, entry: dict[str, Any]) -> bool:
        """True when the entry passes (fast path only)."""
        try:
            self._fast(entry)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    def check(self, entry: dict[str, Any]) -> str | None:
        """None if the entry is valid, else one readable line naming the field(s)."""
        try:
            self._fast(entry)
            return None
        except fastjsonschema.JsonSchemaValueException as fast_error:
            errors = sorted(self._slow.iter_errors(entry), key=lambda e: list(e.absolute_path))
            if not errors:  # cannot happen while both read the same schema; keep a message anyway
                return str(fast_error.message)
            return "; ".join(_format_error(e) for e in errors)


@lru_cache(maxsize=4)
def _document_validators(name: str) -> tuple[Any, Any, EntryValidator | None]:
    schema = load_schema(name)
    top = {k: v for k, v in schema.items() if k != "items"}
    # Entries are checked one by one (fast, then jsonschema only for the bad ones) when
    # the schema's items are the entry definition, as in manifest.schema.json; a 100k
    # document with one bad entry then takes milliseconds, not a full jsonschema pass.
    per_entry = EntryValidator(schema) if schema.get("items") == {"$ref": "#/$defs/entry"} else None
    return fastjsonschema.compile(schema, use_formats=False), EcmaDraft202012Validator(top if per_entry else schema), per_entry


def manifest_validator(name: str = "manifest.schema.json") -> Any:
    """The compiled fast validator of a whole manifest document (raises on failure)."""
    return _document_validators(name)[0]


def validate_manifest(doc: Any, *, limit: int = MAX_PROBLEMS, name: str = "manifest.schema.json") -> list[str]:
    """Every problem of a whole manifest document (capped at ``limit``), ``[]`` if valid.

    Checks the document against the whole schema, including ``maxItems``. Each problem
    names the entry index and field: ``"[3] split: 'training' is not one of [...]"``.

    >>> validate_manifest([{"url": "https://x.example/a.jpg", "split": "train"}])
    []
    >>> validate_manifest({"url": "https://x.example/a.jpg"})
    ["{'url': 'https://x.example/a.jpg'} is not of type 'array'"]
    """
    fast, slow, per_entry = _document_validators(name)
    try:
        fast(doc)
        return []
    except fastjsonschema.JsonSchemaValueException as fast_error:
        problems: list[str] = []
        extra = 0

        def report(line: str) -> None:
            nonlocal extra
            if len(problems) < limit:
                problems.append(line)
            else:
                extra += 1

        for err in slow.iter_errors(doc):
            path = list(err.absolute_path)
            if path and isinstance(path[0], int):
                rest = "/".join(str(p) for p in path[1:])
                report(f"[{path[0]}] {rest}: {err.message}" if rest else f"[{path[0]}] {err.message}")
            else:
                report(_format_error(err) if path else _short(err))
        if per_entry is not None and isinstance(doc, list):
            for index, item in enumerate(doc):
                message = per_entry.check(item) if isinstance(item, dict) else None
                if message is None and not isinstance(item, dict):
                    message = f"{_clip(repr(item))} is not of type 'object'"
                if message is not None:
                    report(f"[{index}] {message}")
        if extra:
            problems.append(f"... and {extra} more")
        return problems or [str(fast_error.message)]


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _short(err: jsonschema.ValidationError) -> str:
    # jsonschema quotes the whole instance; for a 100k-entry array that is megabytes.
    if err.validator in ("maxItems", "minItems") and isinstance(err.instance, list):
        return f"the manifest has {len(err.instance)} entries; {err.validator} is {err.validator_value}"
    msg = str(err.message)
    return msg if len(msg) <= 300 else msg[:297] + "..."
