"""Image datasets: one batch format for every source (images NHWC float32 in [-1, 1], int32 labels),
delivered at the run's `image_size` (resized where the source differs), so any preset can swap
datasets with `--set dataset=...`.

Bundled datasets need no download and are deterministic:
- `shapes`: generated procedurally: anti-aliased circles, squares and triangles of random size,
  position and brightness on a black background, labelled by shape (the easy task).
- `digits`: scikit-learn's 1797 real 8x8 handwritten digits, 10 classes.
- `patterns`: 32x32 crops of real photos and textures bundled with scikit-image, labelled by source
  image (the harder task). Training and held-out crops come from alternating vertical stripes of
  each source, so the splits share no pixel but cover the same content.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterator

import numpy as np

from dblocks_jax.data.augment import make_augment


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    num_classes: int
    image_size: int  # native size, what presets use; every dataset is delivered at any requested size
    class_names: tuple[str, ...] = ()


SHAPES = DatasetInfo("shapes", channels=1, num_classes=3, image_size=16,
                     class_names=("circle", "square", "triangle"))
DIGITS = DatasetInfo("digits", channels=1, num_classes=10, image_size=16,
                     class_names=tuple(str(d) for d in range(10)))
PATTERN_SOURCES = ("brick", "grass", "gravel", "moon", "coffee", "chelsea", "astronaut", "immunohistochemistry")
PATTERNS = DatasetInfo("patterns", channels=3, num_classes=len(PATTERN_SOURCES), image_size=32,
                       class_names=PATTERN_SOURCES)
_BUNDLED = {d.name: d for d in (SHAPES, DIGITS, PATTERNS)}
# Shapes of the TFDS image datasets presets refer to, known without touching TFDS.
_TFDS = {
    "mnist": DatasetInfo("tfds:mnist", channels=1, num_classes=10, image_size=28),
    "fashion_mnist": DatasetInfo("tfds:fashion_mnist", channels=1, num_classes=10, image_size=28),
    "cifar10": DatasetInfo("tfds:cifar10", channels=3, num_classes=10, image_size=32),
    "cifar100": DatasetInfo("tfds:cifar100", channels=3, num_classes=100, image_size=32),
}
SPLIT_SIZES = {"train": 8192, "test": 1024}
_SPLIT_SEEDS = {"train": 0, "test": 1}


def dataset_names() -> tuple[str, ...]:
    return tuple(_BUNDLED)


def dataset_info(name: str) -> DatasetInfo:
    if name in _BUNDLED:
        return _BUNDLED[name]
    if name.startswith("tfds:"):
        return _tfds_info(name[5:])
    allowed = list(_BUNDLED) + ["tfds:<name> (e.g. tfds:mnist, tfds:cifar10)"]
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(allowed)}")


@functools.lru_cache(maxsize=None)
def _tfds_info(name: str) -> DatasetInfo:
    """Image shape and classes of a TFDS dataset, read from its builder's metadata (no download)."""
    if name in _TFDS:
        return _TFDS[name]
    import tensorflow_datasets as tfds

    try:
        features = tfds.builder(name, try_gcs=False).info.features
        image, label = features["image"], features["label"]
    except Exception as err:
        raise ValueError(f"unknown dataset 'tfds:{name}': not a TFDS image classification dataset with "
                         f"'image' and 'label' features ({err})") from err
    return DatasetInfo(f"tfds:{name}", channels=image.shape[-1], num_classes=label.num_classes,
                       image_size=image.shape[0])


def split_size(name: str, split: str) -> int:
    """Examples in a bundled dataset's split."""
    if name == DIGITS.name:
        return 1500 if split == "train" else 297
    return SPLIT_SIZES[split]


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
    info = dataset_info(name)  # tfds splits are named like ours: train, test
    if info.name == SHAPES.name:
        return make_shapes(SPLIT_SIZES[split], image_size, seed=_SPLIT_SEEDS[split])
    if info.name == DIGITS.name:
        return _digits(split, image_size)
    if info.name == PATTERNS.name:
        return _patterns(split, image_size)
    source = tfds_source(name, split)
    records = [source[i] for i in range(len(source))]
    images = np.stack([_to_model_range(r["image"]) for r in records])
    return resize(images, image_size), np.array([r["label"] for r in records], np.int32)


def tfds_source(name: str, split: str):
    """Random-access TFDS data (array_record files, no TensorFlow needed). Never downloads: a dataset
    that is not prepared fails at once with the way to prepare it."""
    import tensorflow_datasets as tfds

    tfds_name, data_dir = name[5:], os.environ.get("TFDS_DATA_DIR")
    try:
        return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as err:
        builder = tfds.builder(tfds_name, data_dir=data_dir, try_gcs=False)
        if builder.is_prepared():
            raise ValueError(f"cannot read TFDS dataset {tfds_name!r} split {split!r} from {builder.data_dir}: "
                             f"{err}. It must be prepared with file_format=array_record") from err
        raise ValueError(
            f"TFDS dataset {tfds_name!r} is not prepared in {builder.data_dir} (set TFDS_DATA_DIR to use "
            f"another directory). Prepare it on a machine with network access: `tfds build {tfds_name} "
            f"--file_format=array_record` (or tfds.builder({tfds_name!r}, file_format='array_record')"
            f".download_and_prepare()), then copy the directory here.") from None


def tfds_batches(name: str, image_size: int, batch_size: int, seed,
                 augment: str = "none") -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled training batches of a TFDS dataset through Grain: deterministic per seed,
    a new order every epoch, prefetched on threads; get_state()/set_state() make it resumable.
    Every block has its own stream, and in a multi-process run only the processes that train a
    block read its stream (the 'data' axis then takes each process's part of the batch), so the
    stream itself is not split by process: a block sees the same batches on 1 or N processes.
    `augment` (a `data.augment` value) runs in the pipeline, seeded per batch by Grain."""
    import grain

    source = tfds_source(name, "train")
    dataset = grain.MapDataset.source(source)
    seed = int(np.random.SeedSequence(np.atleast_1d(seed).tolist()).generate_state(1)[0])
    dataset = (dataset.seed(seed).shuffle().map(lambda r: (_to_model_range(r["image"]), r["label"]))
               .repeat(None).batch(batch_size, drop_remainder=True)
               .map(lambda b: {"image": resize(b[0], image_size), "label": np.asarray(b[1], np.int32)}))
    transform = make_augment(augment, image_size)
    if transform is not None:
        dataset = dataset.random_map(lambda b, rng: {"image": transform(b["image"], rng), "label": b["label"]})
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)))


def train_batches(name: str, image_size: int, batch_size: int, seed,
                  augment: str = "none") -> Iterator[dict[str, np.ndarray]]:
    """An endless, resumable training stream of a dataset, shuffled by `seed` (a block's stream
    is seeded by (run seed, block)), augmented by `augment` (see `data.augment`)."""
    if name.startswith("tfds:"):
        return tfds_batches(name, image_size, batch_size, seed, augment)
    images, labels = _cached_split(name, image_size)
    return Batches(images, labels, batch_size, seed=seed, augment=make_augment(augment, image_size))


@functools.lru_cache(maxsize=4)
def _cached_split(name: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    return load_split(name, "train", image_size)


def _to_model_range(image) -> np.ndarray:
    return np.asarray(image, np.float32) / 127.5 - 1.0


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize NHWC float images to size x size (anti-aliased when shrinking)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images.astype(np.float32)
    from skimage.transform import resize as sk_resize

    out = sk_resize(images, (len(images), size, size, images.shape[-1]), order=1, anti_aliasing=True,
                    preserve_range=True)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _digits(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (ink 0..16) as white-on-black in [-1, 1]; a fixed 1500 / 297 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    idx = order[:split_size("digits", "train")] if split == "train" else order[split_size("digits", "train"):]
    return resize(images[idx], image_size), bunch.target[idx].astype(np.int32)


def _patterns(split: str, image_size: int, crop: int = 32, source_size: int = 128,
              stripe: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Random crops of the scikit-image sources, each source downscaled so its short side is
    `source_size` pixels (so that a crop shows structure, not just grain). Each source is cut into
    vertical stripes `stripe` pixels wide; training crops lie inside even stripes and held-out crops
    inside odd ones, so the splits share no pixel yet cover every region of every source."""
    import skimage.data
    from skimage.transform import rescale

    rng = np.random.default_rng(_SPLIT_SEEDS[split])
    per_class = SPLIT_SIZES[split] // len(PATTERN_SOURCES)
    images, labels = [], []
    for label, source in enumerate(PATTERN_SOURCES):
        image = getattr(skimage.data, source)().astype(np.float32) / 255.0
        image = image[..., None].repeat(3, axis=-1) if image.ndim == 2 else image[..., :3]
        image = rescale(image, source_size / min(image.shape[:2]), channel_axis=-1, anti_aliasing=True)
        stripes = np.arange(0 if split == "train" else 1, image.shape[1] // stripe, 2)
        xs = rng.choice(stripes, per_class) * stripe + rng.integers(0, stripe - crop + 1, per_class)
        ys = rng.integers(0, image.shape[0] - crop + 1, per_class)
        images.append(np.stack([image[y:y + crop, x:x + crop] for y, x in zip(ys, xs)]))
        labels.append(np.full(per_class, label, np.int32))
    images = np.concatenate(images) * 2.0 - 1.0
    order = rng.permutation(len(images))
    return resize(images[order], image_size), np.concatenate(labels)[order]


class Batches:
    """Endless shuffled batches from in-memory arrays, deterministic per seed and resumable.

    Each epoch is a fresh permutation drawn from (seed, epoch), so the stream depends only on the
    seed and the position, which `state()` / `restore()` capture for resuming a run. An `augment`
    function gets a generator seeded by (seed, epoch, position), so augmentation resumes too.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int | tuple[int, ...],
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None):
        if batch_size > len(images):
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(images)} examples)")
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
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
        images = self.images[idx]
        if self.augment is not None:
            rng = np.random.default_rng([*np.atleast_1d(self.seed).tolist(), self.epoch, self.position, 0xA06])
            images = self.augment(images, rng)
        self.position += self.batch_size
        return {"image": images, "label": self.labels[idx]}

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
