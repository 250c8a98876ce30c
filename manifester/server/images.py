"""Downloading, decoding and storing images for the local Theos-compatible server.

Downloads stream with a byte cap, per-read timeouts and an overall deadline, and
check a stop flag between chunks so that ``upload/stop/`` takes effect quickly.
Errors come back as :class:`FetchError` / :class:`ImageError` with a short message
that never repeats the URL (presigned URLs carry signatures).

Media files live under ``<data>/media/<2 hex>/<32 hex>[_t].<ext>``; their names are
random, so a URL cannot be guessed and a name can never escape the data directory.

    data = fetch(client, "http://127.0.0.1:9000/cat.jpg", max_bytes=50_000_000)
    image = process_image(data)          # width, height, ext, thumbnail bytes
"""

from __future__ import annotations

import io
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "THUMBNAIL_SIDE",
    "FetchError",
    "ImageError",
    "MediaStore",
    "ProcessedImage",
    "fetch",
    "process_image",
]

THUMBNAIL_SIDE = 256
MAX_IMAGE_BYTES = 50_000_000
# Pillow's own decompression-bomb threshold; checked before decoding, from the header.
MAX_IMAGE_PIXELS = 89_478_485

_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
_NAME = re.compile(r"^([0-9a-f]{32})(_t)?\.([a-z0-9]{2,5})$")
_DIGITS = re.compile(r"[0-9]{1,20}")  # str.isdigit() also accepts '²', which int() refuses


class FetchError(Exception):
    """A download failed; the message is safe to show (no URL in it)."""


class ImageError(Exception):
    """The bytes are not an image Pillow can decode."""


def fetch(
    client: httpx.Client,
    url: str,
    *,
    max_bytes: int,
    deadline_seconds: float = 300.0,
    should_stop: Callable[[], bool] = lambda: False,
    what: str = "file",
) -> bytes:
    """Download ``url`` into memory, refusing more than ``max_bytes``.

    >>> fetch(httpx.Client(), "http://127.0.0.1:8000/a.png", max_bytes=10**6)  # doctest: +SKIP
    b'\\x89PNG...'
    """
    started = time.monotonic()
    try:
        with client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise FetchError(f"HTTP {response.status_code} {response.reason_phrase}".strip())
            declared = response.headers.get("content-length", "")
            if _DIGITS.fullmatch(declared) and int(declared) > max_bytes:
                raise FetchError(f"{what} is {int(declared):,} bytes, over the {max_bytes:,}-byte limit")
            chunks: list[bytes] = []
            size = 0
            # No chunk_size: with one, httpx buffers until it has that many bytes, so a
            # server dripping a byte at a time (each read inside the read timeout) would
            # never reach the deadline and stop checks below. Every network read counts.
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{what} is over the {max_bytes:,}-byte limit")
                if should_stop():
                    raise FetchError("stopped")
                if time.monotonic() - started > deadline_seconds:
                    raise FetchError(f"download took longer than {deadline_seconds:g} s")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException as exc:
        raise FetchError(f"timed out ({type(exc).__name__})") from exc
    except httpx.UnsupportedProtocol as exc:
        raise FetchError("redirected to a URL that is not http(s)") from exc
    except httpx.TooManyRedirects as exc:
        raise FetchError("too many redirects") from exc
    except httpx.HTTPError as exc:
        # httpx messages of transport errors name the cause (refused, reset), not the URL.
        raise FetchError(f"download failed: {type(exc).__name__}: {exc}") from exc
    except (httpx.InvalidURL, ValueError) as exc:
        # The schema's URL pattern admits some URLs httpx cannot request (bad port, bad
        # IDNA host): a per-image failure, not a crash of the whole upload. Not
        # str(exc): httpx quotes the URL, and presigned URLs carry signatures.
        raise FetchError("not a requestable URL (bad host name or port)") from exc


@dataclass(frozen=True)
class ProcessedImage:
    """A decoded image: its size, the file extension of its format and a JPEG thumbnail."""

    width: int
    height: int
    ext: str
    thumbnail: bytes


def process_image(data: bytes, *, thumbnail_side: int = THUMBNAIL_SIDE) -> ProcessedImage:
    """Decode ``data`` fully and make a thumbnail whose longer side is at most ``thumbnail_side``.

    >>> process_image(png_bytes).width  # doctest: +SKIP
    640
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            fmt = img.format or ""
            if width <= 0 or height <= 0:
                raise ImageError("image has no pixels")
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(f"image is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel limit")
            # draft() lets JPEG decode at a reduced scale: the whole stream is still read.
            img.draft("RGB", (thumbnail_side, thumbnail_side))
            img.load()
            thumb = img.convert("RGBA") if img.mode in ("RGBA", "LA", "P", "PA") else img.convert("RGB")
            thumb.thumbnail((thumbnail_side, thumbnail_side))
            if thumb.mode == "RGBA":
                background = Image.new("RGB", thumb.size, (255, 255, 255))
                background.paste(thumb, mask=thumb.getchannel("A"))
                thumb = background
            out = io.BytesIO()
            thumb.save(out, "JPEG", quality=85)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("not a decodable image (unrecognised format)") from exc
    except Exception as exc:  # Pillow raises many types for bad data; all mean "not an image we can use"
        raise ImageError(f"not a decodable image ({type(exc).__name__}: {exc})") from exc
    return ProcessedImage(width=width, height=height, ext=_extension(fmt), thumbnail=out.getvalue())


def _extension(fmt: str) -> str:
    """A short file extension for a Pillow format name (always matching the media-name pattern)."""
    known = _EXTENSIONS.get(fmt)
    if known:
        return known
    cleaned = re.sub(r"[^a-z0-9]", "", fmt.lower())[:5]
    return cleaned if len(cleaned) >= 2 else "bin"


class MediaStore:
    """Image and thumbnail files under ``<data>/media``.

    >>> media = MediaStore(Path("data"))                 # doctest: +SKIP
    >>> image, thumb = media.save(data, processed)       # doctest: +SKIP
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "media"
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, name: str) -> Path | None:
        """The file of a media name, or ``None`` for any name this store could not have made."""
        match = _NAME.match(name)
        if not match:
            return None
        return self.root / match.group(1)[:2] / name

    def save(self, data: bytes, image: ProcessedImage) -> tuple[str, str]:
        """Write the original bytes and the thumbnail; return their names."""
        stem = secrets.token_hex(16)
        names = (f"{stem}.{image.ext}", f"{stem}_t.jpg")
        for name, payload in zip(names, (data, image.thumbnail), strict=True):
            path = self.path_for(name)
            assert path is not None
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(payload)
            os.replace(tmp, path)  # readers never see half a file
        return names

    def delete(self, names: list[str]) -> None:
        for name in names:
            path = self.path_for(name)
            if path is not None:
                path.unlink(missing_ok=True)
