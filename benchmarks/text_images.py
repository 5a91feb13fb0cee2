"""Synthetic text images in PP-OCR's input formats, for calibration and evaluation.

No dataset ships with the models, and none may be downloaded: these are drawn with PIL —
lines of random words in varying size, colour, position and background, with noise — and
preprocessed the way PaddleOCR feeds each model. Different seeds give disjoint sets, so
calibration and evaluation never share an image.
"""

from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["text_images", "KINDS"]

# model kind -> (height, width, per-channel mean, per-channel std) applied to RGB / 255
KINDS = {
    "det": (320, 320, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "rec": (48, 320, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cls": (48, 192, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
_ALPHABET = string.ascii_letters + string.digits + "  .,:-/%"


def _words(rng: np.random.Generator, characters: int) -> str:
    return "".join(rng.choice(list(_ALPHABET), size=characters)).strip() or "text"


def _draw(rng: np.random.Generator, kind: str, height: int, width: int) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(170, 256, size=3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    lines = int(rng.integers(3, 9)) if kind == "det" else 1
    for _ in range(lines):
        size = int(rng.integers(14, 34)) if kind == "det" else int(rng.integers(26, 38))
        font = ImageFont.load_default(size=size)
        colour = tuple(int(v) for v in rng.integers(0, 90, size=3))
        text = _words(rng, int(rng.integers(4, 18)))
        x = int(rng.integers(0, max(1, width // 3)))
        y = int(rng.integers(0, max(1, height - size))) if kind == "det" else int(rng.integers(0, max(1, height - size - 4)))
        draw.text((x, y), text, fill=colour, font=font)
    if kind == "cls" and rng.random() < 0.5:
        image = image.rotate(180)  # the direction classifier's other class
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.2, 1.0))))
    return image


def text_images(kind: str, count: int, seed: int) -> np.ndarray:
    """`(count, 1, 3, H, W)` float32: `count` samples of one image each, normalised for `kind`."""
    height, width, mean, std = KINDS[kind]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        pixels = np.asarray(_draw(rng, kind, height, width), dtype=np.float32) / 255.0
        pixels = pixels + rng.normal(0.0, 0.02, pixels.shape).astype(np.float32)  # sensor noise
        normalised = (np.clip(pixels, 0.0, 1.0) - np.array(mean, np.float32)) / np.array(std, np.float32)
        samples.append(normalised.transpose(2, 0, 1)[None])
    return np.stack(samples).astype(np.float32)
