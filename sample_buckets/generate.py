"""Regenerate the sample buckets: small, real, decodable images laid out like buckets.

Deterministic: the same Pillow version writes byte-identical files on every run
(fixed seeds, no timestamps or EXIF). Run from anywhere::

    python sample_buckets/generate.py            # rewrites sample_buckets/photos and /splits
    python sample_buckets/generate.py --check    # exit 1 if the files on disk differ

``photos/`` exercises awkward keys (nested prefixes, spaces, unicode, '+', '%',
'#', non-images, a zero-byte file); ``splits/`` is laid out train/valid/test.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

Painter = Callable[[ImageDraw.ImageDraw, int, int, random.Random], None]


def _stripes(d: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> None:
    step = rng.randint(4, 12)
    for x in range(0, w, step * 2):
        d.rectangle([x, 0, x + step - 1, h], fill=_color(rng))


def _circles(d: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> None:
    for _ in range(rng.randint(3, 8)):
        r = rng.randint(4, max(5, min(w, h) // 3))
        x, y = rng.randint(0, w), rng.randint(0, h)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_color(rng), outline=_color(rng))


def _gradient(d: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> None:
    a, b = _color(rng), _color(rng)
    for y in range(h):
        t = y / max(1, h - 1)
        d.line([0, y, w, y], fill=tuple(int(a[i] + (b[i] - a[i]) * t) for i in range(3)))


def _checker(d: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> None:
    s = rng.randint(6, 16)
    c1, c2 = _color(rng), _color(rng)
    for y in range(0, h, s):
        for x in range(0, w, s):
            d.rectangle([x, y, x + s - 1, y + s - 1], fill=c1 if (x // s + y // s) % 2 else c2)


def _polygons(d: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> None:
    for _ in range(rng.randint(2, 5)):
        pts = [(rng.randint(0, w), rng.randint(0, h)) for _ in range(rng.randint(3, 6))]
        d.polygon(pts, fill=_color(rng))


PAINTERS: tuple[Painter, ...] = (_stripes, _circles, _gradient, _checker, _polygons)


def _color(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))


def render(key: str) -> bytes:
    """Encode one image whose size, content and format derive from ``key`` alone."""
    # Seed from the key's bytes (not hash(), which is salted per process).
    rng = random.Random(key.encode("utf-8"))
    w, h = rng.randint(48, 160), rng.randint(32, 120)
    img = Image.new("RGB", (w, h), _color(rng))
    d = ImageDraw.Draw(img)
    for painter in rng.sample(PAINTERS, 2):
        painter(d, w, h, rng)
    d.text((2, 2), Path(key).stem[:10].encode("ascii", "replace").decode(), fill=(255, 255, 255))
    ext = key.rsplit(".", 1)[-1].lower()
    out = io.BytesIO()
    if ext in ("jpg", "jpeg"):
        img.save(out, "JPEG", quality=80)
    elif ext == "png":
        img.save(out, "PNG", optimize=False)
    elif ext == "webp":
        img.save(out, "WEBP", quality=75, method=4)
    else:
        raise ValueError(f"no image format for {key}")
    return out.getvalue()


PHOTOS_IMAGES: tuple[str, ...] = (
    "animals/cats/tabby.jpg",
    "animals/cats/black cat.jpg",
    "animals/cats/kitten-01.png",
    "animals/cats/kitten-02.webp",
    "animals/dogs/beagle.jpg",
    "animals/dogs/golden retriever.png",
    "animals/dogs/puppy+ball.jpg",
    "animals/dogs/corgi~1.webp",
    "animals/birds/ñandú.jpg",
    "animals/birds/robin (2).png",
    "street/2024/05/001.jpg",
    "street/2024/05/002.jpg",
    "street/2024/05/003.webp",
    "street/2024/06/night 100%.jpg",
    "street/2024/06/a+b=c.png",
    "street/2025/01/snow#1.jpg",
    "café/ñandú.jpg",
    "café/crème brûlée.webp",
    "日本/猫.png",
    "日本/東京 夜.jpg",
    "Ελληνικά/γάτα.jpg",
    "emoji/🐱 cat.png",
    "misc/UPPER.JPG",
    "misc/dots.in.name.jpeg",
    "misc/semi;colon&amp.png",
    "misc/quote's.jpg",
    "misc/tilde~and-dash_underscore.webp",
    "misc/deep/er/and/deeper/leaf.jpg",
    "top-level.jpg",
    "top level 2.png",
)

PHOTOS_OTHER: dict[str, bytes] = {
    "notes.txt": b"Sample bucket for manifester tests. Not an image.\n",
    "labels.csv": (
        "key,label\n"
        "animals/cats/tabby.jpg,cat\n"
        "animals/dogs/beagle.jpg,dog\n"
        '"animals/dogs/golden retriever.png",dog\n'
        "日本/猫.png,cat\n"
    ).encode(),
    "animals/README.md": b"# animals\n\nCats, dogs and birds.\n",
    "empty.jpg": b"",
}

SPLITS_IMAGES: tuple[str, ...] = (
    *(f"train/{i:03d}.jpg" for i in range(1, 7)),
    *(f"train/cats/{i:03d}.png" for i in range(1, 4)),
    *(f"train/dogs/{i:03d}.webp" for i in range(1, 4)),
    *(f"valid/{i:03d}.jpg" for i in range(1, 3)),
    "valid/cats/001.png",
    "valid/dogs/001.webp",
    *(f"test/{i:03d}.jpg" for i in range(1, 3)),
    "test/cats/001.png",
    "test/dogs/ñ 001.webp",
)


def build() -> dict[str, bytes]:
    """Every file of both buckets, keyed by its path relative to sample_buckets/."""
    files: dict[str, bytes] = {}
    for key in PHOTOS_IMAGES:
        files[f"photos/{key}"] = render(key)
    for key, data in PHOTOS_OTHER.items():
        files[f"photos/{key}"] = data
    for key in SPLITS_IMAGES:
        files[f"splits/{key}"] = render("splits/" + key)
    return files


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the sample buckets."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify instead of writing")
    args = ap.parse_args(argv)
    files = build()
    if args.check:
        bad = [p for p, data in files.items() if not (HERE / p).is_file() or (HERE / p).read_bytes() != data]
        for p in bad:
            print(f"differs: {p}", file=sys.stderr)
        return 1 if bad else 0
    for bucket in ("photos", "splits"):
        shutil.rmtree(HERE / bucket, ignore_errors=True)
    for rel, data in files.items():
        path = HERE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} files, {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
