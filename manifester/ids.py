"""External ids: the stable reference Theos keeps for each image.

Two modes:

* ``"uri"`` (default): the RFC 4122 version-5 UUID of the object's canonical URI in
  the URL namespace, i.e. ``str(uuid.uuid5(uuid.NAMESPACE_URL, "s3://bucket/key"))``,
  e.g. ``"3f0c...-5..."``. Reproducible in any language with a UUIDv5 function; 36
  characters whatever the key length; never leaks the key itself.
* ``"key"``: the object key itself (bucket-relative, not URL-encoded).

Both are unique within a build because the scan enforces strictly increasing keys.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Literal

from .errors import ConfigError

__all__ = ["EXTERNAL_ID_MODES", "ExternalIdMode", "external_id_for", "external_ids_for"]

ExternalIdMode = Literal["uri", "key"]
EXTERNAL_ID_MODES: tuple[str, ...] = ("uri", "key")

_NS = uuid.NAMESPACE_URL.bytes


# Variant bits: the top two bits of byte 8 become 10, i.e. its first hex digit d -> 8 + (d & 3).
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def _uuid5(name: str) -> str:
    # Same text as str(uuid.uuid5(NAMESPACE_URL, name)), without building UUID objects:
    # the build computes one per entry, and the object route is ~2x slower.
    h = hashlib.sha1(_NS + name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def _check_mode(mode: str) -> None:
    if mode not in EXTERNAL_ID_MODES:
        raise ConfigError(f"--external-id: unknown mode {mode!r}", hint="use --external-id uri or --external-id key")


def external_id_for(uri: str, key: str, mode: ExternalIdMode = "uri") -> str:
    """The external id of one object.

    >>> external_id_for("s3://photos/cats/a.jpg", "cats/a.jpg", "uri") == str(
    ...     uuid.uuid5(uuid.NAMESPACE_URL, "s3://photos/cats/a.jpg"))
    True
    >>> external_id_for("s3://photos/cats/a.jpg", "cats/a.jpg", "key")
    'cats/a.jpg'
    """
    if mode == "uri":
        return _uuid5(uri)
    if mode == "key":
        return key
    _check_mode(mode)
    raise AssertionError("unreachable")


def external_ids_for(uris: Sequence[str], keys: Sequence[str], mode: ExternalIdMode = "uri") -> list[str]:
    """Batch form of :func:`external_id_for`."""
    if mode == "uri":
        # _uuid5 inlined, hashing the namespace once and copying that state per name.
        ns = hashlib.sha1(_NS)
        copy, variant = ns.copy, _VARIANT
        out: list[str] = []
        append = out.append
        for uri in uris:
            state = copy()
            state.update(uri.encode("utf-8", "surrogatepass"))
            h = state.hexdigest()
            append(f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}")
        return out
    if mode == "key":
        return list(keys)
    _check_mode(mode)
    raise AssertionError("unreachable")
