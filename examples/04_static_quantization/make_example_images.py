"""Draws stand-in photos (blobs, stripes, gradients) into a folder; use your own images instead.

    python make_example_images.py FOLDER COUNT SEED
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def draw(rng: np.random.Generator, size: int = 96) -> Image.Image:
    base = rng.integers(0, 256, size=3)
    gradient = np.linspace(0, 1, size)[None, :, None] * rng.integers(-120, 120, size=3)
    image = Image.fromarray(np.clip(base + gradient + np.zeros((size, size, 3)), 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        box = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = [box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4]
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(shape, fill=colour)
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))


if __name__ == "__main__":
    folder, count, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        draw(rng).save(folder / f"image_{index:03d}.png")
