"""What the image tasks share: EDM's law over sigma (`EDMTask`), the dataset (bundled or TFDS),
its checks, its training stream and the memory a run needs at the least. `ImageGeneration` and
`ImageClassification` build on it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dblocks_jax import data
from dblocks_jax.engine.settings import require
from dblocks_jax.tasks.edm_task import EDMTask


class ImageTask(EDMTask):
    """A task whose batches are {"image": (N, H, W, C) float32 in [-1, 1], "label": (N,) int32}."""

    extra_tokens = 0  # tokens a block adds to the image's patches (a CLS token, for instance)
    unused_fields = ("model.positions",)

    @classmethod
    def validate(cls, config) -> None:
        dataset = config.data.dataset
        require(dataset in data.dataset_names() or dataset.startswith("tfds:"), "data.dataset", dataset,
                f"an image dataset for task {config.task}: {', '.join(data.dataset_names())} or tfds:<name>")
        require(config.data.image_size % config.model.patch_size == 0, "model.patch_size", config.model.patch_size,
                f"a positive divisor of data.image_size={config.data.image_size}")

    def __init__(self, config):
        self.config = config
        self.info = data.dataset_info(config.data.dataset)  # reads TFDS metadata for tfds:<name> (no download)
        self.check_info()
        super().__init__(config)

    def check_info(self) -> None:
        """Checks of the dataset's shape and classes against the config (before anything is built)."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.config.data.image_size
        return size, size, self.info.channels

    @property
    def tokens(self) -> int:
        """Tokens one block attends over."""
        return (self.config.data.image_size // self.config.model.patch_size) ** 2 + self.extra_tokens

    def check_data(self) -> None:
        if self.config.data.dataset.startswith("tfds:"):
            data.tfds_source(self.config.data.dataset, "train")  # prepared? (never downloads)

    def memory_floor(self) -> list[tuple[int, str, str]]:
        """The bundled training split in host memory, and one layer's attention logits of one batch
        on the device (B x heads x tokens^2 floats): both are held at once, whatever else the step
        needs, so they bound its memory from below."""
        d, m, s = self.config.data, self.config.model, self.config.schedule
        tokens = self.tokens
        per_device = d.batch_size // (s.data_shards if s.name == "parallel" else 1)  # 'data' splits the batch
        floors = [(4 * per_device * m.num_heads * tokens**2, "device",
                   f"attention over {tokens:,} tokens (data.image_size={d.image_size}, model.patch_size="
                   f"{m.patch_size}, {per_device} examples per device, model.num_heads={m.num_heads})")]
        if not d.dataset.startswith("tfds:"):
            n = data.split_size(d.dataset, "train")
            floors.append((4 * n * d.image_size**2 * self.info.channels, "host",
                           f"the {d.dataset} training split at data.image_size={d.image_size}"))
        return floors

    def train_batches(self, block: int):
        d = self.config.data
        return data.train_batches(d.dataset, d.image_size, d.batch_size, seed=(self.config.run.seed, block),
                                  augment=d.augment)

    def batch_spec(self, batch_size: int) -> dict:
        return {"image": jax.ShapeDtypeStruct((batch_size, *self.image_shape), jnp.float32),
                "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
