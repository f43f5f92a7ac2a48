"""Datasets: one batch format for every source (images NHWC float32 in [-1, 1], int32 labels).

`shapes` is generated procedurally, so the default job needs no download and no file: anti-aliased
circles, squares and triangles of random size, position and brightness on a black background,
labelled by shape. The same seed always gives the same images.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    num_classes: int
    image_size: int | None  # None: generated at any requested size
    class_names: tuple[str, ...] = ()


SHAPES = DatasetInfo("shapes", channels=1, num_classes=3, image_size=None,
                     class_names=("circle", "square", "triangle"))
_BUNDLED = {SHAPES.name: SHAPES}
# Shapes of the TFDS image datasets presets refer to, known without touching TFDS.
_TFDS = {
    "mnist": DatasetInfo("tfds:mnist", channels=1, num_classes=10, image_size=28),
    "fashion_mnist": DatasetInfo("tfds:fashion_mnist", channels=1, num_classes=10, image_size=28),
    "cifar10": DatasetInfo("tfds:cifar10", channels=3, num_classes=10, image_size=32),
}
SPLIT_SIZES = {"train": 8192, "test": 1024}
_SPLIT_SEEDS = {"train": 0, "test": 1}


def dataset_names() -> tuple[str, ...]:
    return tuple(_BUNDLED)


def dataset_info(name: str) -> DatasetInfo:
    if name in _BUNDLED:
        return _BUNDLED[name]
    if name.startswith("tfds:") and name[5:] in _TFDS:
        return _TFDS[name[5:]]
    allowed = list(_BUNDLED) + [f"tfds:{n}" for n in _TFDS]
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(allowed)}")


def make_shapes(num: int, image_size: int, seed: int, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """`num` shape images of `image_size`^2 pixels, rendered at `supersample`x and box-filtered."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, SHAPES.num_classes, size=num).astype(np.int32)
    radius = rng.uniform(0.18, 0.42, size=num)
    cx = rng.uniform(radius, 1.0 - radius)
    cy = rng.uniform(radius, 1.0 - radius)
    brightness = rng.uniform(0.35, 1.0, size=num)

    s = image_size * supersample
    coords = (np.arange(s) + 0.5) / s
    images = np.empty((num, image_size, image_size, 1), np.float32)
    for start in range(0, num, 512):
        sl = slice(start, min(start + 512, num))
        r, x0, y0 = radius[sl, None, None], cx[sl, None, None], cy[sl, None, None]
        x, y = coords[None, None, :] - x0, coords[None, :, None] - y0
        circle = x**2 + y**2 <= r**2
        square = np.maximum(np.abs(x), np.abs(y)) <= 0.85 * r
        # Upright triangle: apex at -r, base at +0.75r, half-width growing linearly to r at the base.
        depth = (y + r) / (1.75 * r)
        triangle = (depth >= 0) & (depth <= 1) & (np.abs(x) <= depth * r)
        label = labels[sl, None, None]
        mask = np.where(label == 0, circle, np.where(label == 1, square, triangle))
        fine = mask * brightness[sl, None, None]
        coarse = fine.reshape(-1, image_size, supersample, image_size, supersample).mean(axis=(2, 4))
        images[sl, ..., 0] = coarse * 2.0 - 1.0
    return images, labels


def load_split(name: str, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of one split of a dataset, as numpy arrays in the batch format."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLIT_SIZES)}")
    info = dataset_info(name)
    if info.name == SHAPES.name:
        return make_shapes(SPLIT_SIZES[split], image_size, seed=_SPLIT_SEEDS[split])
    raise ValueError(
        f"dataset {name!r} is a TFDS dataset; loading TFDS data is not implemented yet (tracked in the "
        f"data issue). Use one of the bundled datasets: {', '.join(dataset_names())}")


class Batches:
    """Endless shuffled batches from in-memory arrays, deterministic per seed and resumable.

    Each epoch is a fresh permutation drawn from (seed, epoch), so the stream depends only on the
    seed and the position, which `state()` / `restore()` capture for resuming a run.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int | tuple[int, ...]):
        if batch_size > len(images):
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(images)} examples)")
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([*np.atleast_1d(self.seed).tolist(), self.epoch]).permutation(len(self.images))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position + self.batch_size > len(self.images):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return {"image": self.images[idx], "label": self.labels[idx]}

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
