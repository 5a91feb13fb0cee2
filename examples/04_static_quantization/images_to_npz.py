"""Turn a folder of images into the `.npz` graphopt takes for --calibration and --inputs.

    python images_to_npz.py IMAGE_FOLDER OUTPUT.npz --input image --size 32 [--mean 0.5 --std 0.5]

Each image is resized to SIZE×SIZE, scaled to [0, 1], normalised with mean/std per channel
(use your model's own preprocessing here: the calibration data must look like what the model
sees in production), laid out as CHW, and stacked as `(N, 1, 3, SIZE, SIZE)`: N samples of a
batch-1 input named INPUT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def load_images(folder: Path, size: int, mean: float, std: float) -> np.ndarray:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not paths:
        raise SystemExit(f"no images in {folder}")
    samples = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        samples.append(((pixels - mean) / std).transpose(2, 0, 1)[None])
    return np.stack(samples).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--input", default="image", help="the model input's name")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--mean", type=float, default=0.5)
    parser.add_argument("--std", type=float, default=0.5)
    args = parser.parse_args()
    array = load_images(args.folder, args.size, args.mean, args.std)
    np.savez(args.output, **{args.input: array})
    print(f"{args.output}: {args.input} {array.shape} {array.dtype}")


if __name__ == "__main__":
    main()
