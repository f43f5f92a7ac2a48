"""Training-time augmentation of image batches: random crop after padding, horizontal flip.

The standard CIFAR recipe (pad 4 on 32 x 32, crop back, flip half), applied per batch with a numpy
generator that the stream derives from (seed, position), so an augmented stream is as deterministic
and resumable as a plain one. Bundled and TFDS (Grain) streams call the same function. RandAugment
(the paper's CIFAR-100 recipe adds it) is not implemented.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

AUGMENTS = ("none", "crop", "flip", "crop_flip")


def padding(image_size: int) -> int:
    """Crop padding: 4 pixels at 32 x 32 (the CIFAR recipe), in proportion at other sizes."""
    return max(1, image_size // 8)


def random_crop(images: np.ndarray, rng: np.random.Generator, pad: int, fill: float = -1.0) -> np.ndarray:
    """Each image padded by `pad` pixels of `fill` (black in the [-1, 1] range) on every side, then
    cropped back to its size at a random offset."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half of the images (chosen by `rng`) mirrored left to right."""
    flip = rng.random(len(images)) < 0.5
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def make_augment(kind: str, image_size: int) -> Callable[[np.ndarray, np.random.Generator], np.ndarray] | None:
    """`augment(images, rng) -> images` for a `data.augment` value (None for "none")."""
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTS)}")
    if kind == "none":
        return None
    pad = padding(image_size)

    def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if "crop" in kind:
            images = random_crop(images, rng, pad)
        if "flip" in kind:
            images = random_flip(images, rng)
        return np.ascontiguousarray(images, np.float32)

    return augment
