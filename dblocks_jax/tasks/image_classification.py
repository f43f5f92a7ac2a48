"""Image classification with DiffusionBlocks (paper sec. 4.2, Table 1): each block a ViT that
denoises the label's embedding for its band of sigma, given the image.

- Target y: the L2-normalised row of a learned label table E (init std 0.02) for the example's
  label. The block sees c_in z, z = y + sigma eps, in place of the CLS token, followed by the
  image's patches; at the CLS position it reads h, forms D = c_out h + c_skip z (EDM's
  preconditioning, Karras et al. 2022 eq. 7) and maps D to logits through a final adaLN and a
  linear head. Loss per example: CE(logits, label) lambda(sigma).
- Chain: N points equally spaced in the training law's CDF from sigma_max to sigma_min (N = B by
  default: one call per block, the compute of one end-to-end forward pass). At each of the first
  N - 1 points the block owning it gives logits, D = softmax(logits) @ E-hat, and an Euler step
  moves z; the call at sigma_min gives the prediction. The image is the chain's conditioning.
- `classify.objective = "plain"`: an ordinary ViT (learned CLS token, cross-entropy, B = 1), the
  baseline users compare with.
- `classify.official_weight` / `official_table` reproduce the released code's two defects: the EDM
  weight broadcast into one per-batch scalar, mean(ce) mean(lambda), and inference that mixes the
  un-normalised table while training targets are normalised.

Every block owns its label table, but all blocks start from the *same* table (drawn from the run
seed, not the block's key): the chain hands the state z from one block to the next, so the blocks
must agree on the space it lives in at least at the start; `table_agreement` measures how far the
trained tables drifted apart.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dblocks_jax.engine.chain import make_chain, stack_blocks
from dblocks_jax.models.vit import ViT
from dblocks_jax.tasks.embedding_target import EmbeddingTarget
from dblocks_jax.tasks.image_task import ImageTask, per_example_normal


class ImageClassification(EmbeddingTarget, ImageTask):
    name = "image_classification"
    table_param = "label_embed"
    extra_tokens = 1  # the CLS token

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        cls.require_one_block_when_plain(config, "classify.objective", config.classify.objective)

    def __init__(self, config):
        super().__init__(config)
        self._forward = jax.jit(self._plain_logits)
        self._chains: dict[tuple[int, bool], object] = {}

    def check_info(self) -> None:
        """Refuse a dataset without labels, or one whose classes differ from classify.num_classes."""
        info, wanted = self.info, self.config.classify.num_classes
        if info.num_classes < 2:
            raise ValueError(f"data.dataset={info.name} has {info.num_classes} class(es): classification needs "
                             f"labelled data with at least 2 classes")
        if wanted and wanted != info.num_classes:
            raise ValueError(f"invalid config: classify.num_classes={wanted}, but data.dataset={info.name} has "
                             f"{info.num_classes} classes; allowed: 0 (the dataset's) or {info.num_classes}")

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def plain(self) -> bool:
        return self.config.classify.objective == "plain"

    # -- the pieces the engine asks for -------------------------------------------------------------

    def make_block(self, rngs: nnx.Rngs) -> ViT:
        m, d = self.config.model, self.config.data
        return ViT(image_size=d.image_size, channels=self.info.channels, patch_size=m.patch_size, width=m.width,
                   depth=m.layers_per_block, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                   num_classes=self.num_classes, plain=self.plain, dropout=m.dropout,
                   **m.stack_options, rngs=rngs)

    def draw(self, key, block, batch_spec) -> dict:
        """Sigmas from the block's (widened) band, the noise on the label embedding and, with
        dropout, one dropout key per example (raw key data, so the draw slices like an array)."""
        k_sigma, k_eps, k_drop = jax.random.split(key, 3)
        n = batch_spec["label"].shape[0]
        out = {"sigma": self.partition.sample_level(k_sigma, block, (n,)),
               "eps": jax.random.normal(k_eps, (n, self.config.model.width), jnp.float32)}
        if self.config.model.dropout:
            out["dropout"] = jax.random.key_data(jax.random.split(k_drop, n))
        return out

    def loss(self, params, batch, draw, block) -> jax.Array:
        """CE(logits, label) lambda(sigma) per example (plain: CE of the ViT's logits)."""
        net, labels = self.network(params), batch["label"]
        keys = jax.random.wrap_key_data(draw["dropout"]) if "dropout" in draw else None
        depth = self.block_depth(block)
        if self.plain:
            logits = self._plain_logits(params, batch["image"], depth, keys)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sigma = draw["sigma"]
        z_BD = net.table()[labels] + sigma[:, None] * draw["eps"]
        logits = self.denoised_logits(net, batch["image"], z_BD, sigma, depth, keys)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        weight = self.edm.loss_weight(sigma)
        # The released code's (ce * w[:, None]).mean() is mean(ce) * mean(w): one scalar per batch
        # (under the parallel schedule's data shards, per shard).
        return ce * (jnp.mean(weight) if self.config.classify.official_weight else weight)

    # -- the network as a denoiser and the chain ----------------------------------------------------

    def denoised_logits(self, net: ViT, images, z_BD, sigma_B, depth=None, keys=None) -> jax.Array:
        """Logits of D(z, sigma) = c_skip z + c_out h(c_in z, c_noise; image) (float32)."""
        c_skip, c_out, c_in, c_noise = (c[:, None] for c in self.edm.scalings(sigma_B))
        h_BD, cond_BD = net.features(images, c_in * z_BD, c_noise[:, 0], depth, keys)
        return net.logits(c_out * h_BD + c_skip * z_BD, cond_BD)

    def _plain_logits(self, params, images, depth=None, keys=None) -> jax.Array:
        net = self.network(params)
        h_BD, cond_BD = net.features(images, None, jnp.zeros(images.shape[:1], jnp.float32), depth, keys)
        return net.logits(h_BD, cond_BD)

    def configured_steps(self) -> int:
        return self.config.classify.steps

    def chain(self, steps: int, official_table: bool = False):
        """The jitted chain `run(stacked_params, z0, images, key) -> logits` for `steps` calls
        (compiled once per (steps, official_table))."""
        if (steps, official_table) in self._chains:
            return self._chains[steps, official_table]

        def logits_at(net, z, images, t, b):
            sigma = jnp.full(z.shape[:1], t, jnp.float32)
            return self.denoised_logits(net, images, z, sigma, self.block_depth(b))

        def step(params_at, z, images, t, t_next, b, b_next, key):
            # D in the table of the block that reads the state next: blocks learn their tables
            # apart, and the class probabilities, not block b's private embedding, are what it passes on.
            reader = self.network(params_at(b_next))
            table = reader.label_embed[...].astype(jnp.float32) if official_table else reader.table()
            d = jax.nn.softmax(logits_at(self.network(params_at(b)), z, images, t, b)) @ table
            return self.euler_step(z, d, t, t_next)

        def read_out(params_at, z, images, t, b):
            return logits_at(self.network(params_at(b)), z, images, t, b)

        run = self._chains[steps, official_table] = make_chain(step, read_out, self.partition, self.grid(steps))
        return run

    def start_state(self, seed: int, start: int, count: int) -> jax.Array:
        """z_0 = sigma_max eps for examples start..start+count-1, each from its own key, so that a
        prediction does not depend on the batch it is made in."""
        return self.law.level_max * per_example_normal(seed, start, count, (self.config.model.width,))

    def predict_logits(self, block_params: list, images: np.ndarray, *, steps: int | None = None, seed: int = 0,
                       official_table: bool | None = None, batch_size: int = 500) -> np.ndarray:
        """Logits (N, classes) of a trained model for `images` (the chain's seed: `seed`)."""
        if len(block_params) != self.num_blocks:
            raise ValueError(f"got parameters for {len(block_params)} blocks; the partition has {self.num_blocks}")
        official = self.config.classify.official_table if official_table is None else official_table
        out = []
        if self.plain:
            for start in range(0, len(images), batch_size):
                out.append(np.asarray(self._forward(block_params[0], jnp.asarray(images[start:start + batch_size]))))
            return np.concatenate(out)
        run, stacked = self.chain(self.inference_steps(steps), bool(official)), stack_blocks(block_params)
        key = jax.random.fold_in(jax.random.key(seed), 1)
        for start in range(0, len(images), batch_size):
            part = jnp.asarray(images[start:start + batch_size])
            out.append(np.asarray(run(stacked, self.start_state(seed, start, len(part)), part, key)))
        return np.concatenate(out)

    def write_artifacts(self, workdir: str, block_params: list) -> None:
        """accuracy.json: the held-out scores at the default inference steps (run.seed's chain)."""
        import json

        from dblocks_jax.tasks.image_classification_eval import score

        result = score(self, block_params, steps=None, seeds=(self.config.run.seed,))
        with open(os.path.join(workdir, "accuracy.json"), "w") as f:
            json.dump(result, f, indent=1)
