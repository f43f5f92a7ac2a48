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

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dblocks_jax.engine.chain import make_chain, per_example_normal, stack_blocks
from dblocks_jax.engine.settings import ASSEMBLY, IDENTITY, SAMPLING, Section, require, setting
from dblocks_jax.evaluation.stats import describe
from dblocks_jax.models.vit import ViT
from dblocks_jax.tasks.base import CHURN_FIELDS, Inference
from dblocks_jax.tasks.embedding_target import EmbeddingTarget
from dblocks_jax.tasks.image_task import ImageTask
from dblocks_jax.tasks.plugin import Flag, Preset, Request, int_list

OBJECTIVES = ("diffusion", "plain")


@dataclasses.dataclass(frozen=True)
class ClassifyConfig(Section):
    """`objective`: "diffusion" trains each block to denoise the label's normalised embedding
    (DiffusionBlocks; B = 1 is its end-to-end twin), "plain" is an ordinary ViT trained with
    cross-entropy (B = 1 only). The two `official_*` switches reproduce the released code's defects
    (see the module docstring), so that their cost can be measured."""

    _path = "classify"
    objective: str = setting("diffusion", ASSEMBLY, ", ".join(OBJECTIVES))
    num_classes: int = setting(0, ASSEMBLY, "0: the dataset's; otherwise checked against it")
    steps: int = setting(0, SAMPLING, "network calls of the inference chain (0: one per block, at least 2)")
    official_weight: bool = setting(False, IDENTITY, "released-code defect 1: the EDM weight as one per-batch "
                                                     "scalar, (ce * w[:, None]).mean()")
    official_table: bool = setting(False, SAMPLING, "released-code defect 2: inference mixes the un-normalised "
                                                    "label table")

    def check(self):
        require(self.objective in OBJECTIVES, self.field("objective"), self.objective, ", ".join(OBJECTIVES))
        require(self.num_classes == 0 or self.num_classes >= 2, self.field("num_classes"), self.num_classes,
                "0 (the dataset's) or an integer >= 2")
        require(self.steps == 0 or self.steps >= 2, self.field("steps"), self.steps,
                "0 (one call per block) or an integer >= 2")


# The presets' shared part: a small ViT for the bundled sets, and the paper's recipe (12 layers,
# patch 4, width 128, 4 heads, MLP 3072, dropout 0.1, B = 3, gamma 0.05, AdamW 5e-4, wd 0.01, clip
# 1, batch 128, cosine with 10 warm-up epochs, 500 epochs of 50k images: 390 steps per epoch; every
# block takes that many steps, as the end-to-end run would).
_VIT = {"model.num_layers": 6, "model.num_blocks": 3, "model.width": 64, "model.num_heads": 4, "model.mlp_ratio": 2.0,
        "data.batch_size": 64, "optim.learning_rate": 1e-3, "optim.weight_decay": 0.01, "optim.warmup_steps": 100,
        "optim.steps": 2500, "optim.ema_decay": 0.0, "run.log_every": 50}
_PAPER_VIT = {"data.image_size": 32, "data.augment": "crop_flip", "data.batch_size": 128, "model.num_layers": 12,
              "model.num_blocks": 3, "model.width": 128, "model.num_heads": 4, "model.patch_size": 4,
              "model.mlp_ratio": 24.0, "model.dropout": 0.1, "partition.overlap": 0.05, "optim.learning_rate": 5e-4,
              "optim.weight_decay": 0.01, "optim.grad_clip": 1.0, "optim.warmup_steps": 3_900,
              "optim.steps": 195_000, "optim.ema_decay": 0.0, "run.log_every": 100, "run.checkpoint_every": 3_900}
PRESETS = (
    Preset("digits_vit", "ViT classifier, B = 3, on the bundled 8x8 digits (at 16x16): a 2-core CPU, minutes",
           {**_VIT, "data.dataset": "digits", "data.image_size": 16, "data.augment": "crop", "model.patch_size": 4}),
    Preset("patterns_vit", "ViT classifier, B = 3, on the bundled photo/texture patterns (8 classes, 32x32)",
           {**_VIT, "data.dataset": "patterns", "data.image_size": 32, "data.augment": "crop_flip",
            "model.patch_size": 8, "optim.steps": 1500}),
    Preset("cifar10_vit", "the paper's CIFAR ViT recipe (12 layers, width 128, B = 3) on tfds:cifar10, for GPU/TPU",
           {**_PAPER_VIT, "data.dataset": "tfds:cifar10"}),
    Preset("cifar100_vit", "the paper's Table 1 recipe: ViT 12 layers, width 128, patch 4, B = 3, 500 epochs on "
                           "tfds:cifar100, for GPU/TPU", {**_PAPER_VIT, "data.dataset": "tfds:cifar100"}),
)
FLAGS = (Flag("--steps", ("evaluate",), "network calls of the chain, comma-separated to compare several, e.g. "
                                        "3,6,12 (default: classify.steps)"),)


class ImageClassification(EmbeddingTarget, ImageTask):
    name = "image_classification"
    family = "vit"
    description = "image classification (ViT; paper Table 1): accuracy, ECE, NLL against inference steps"
    sections = (ClassifyConfig,)
    presets = PRESETS
    flags = FLAGS
    # Unconditional blocks of a chain over labels: no class input, no ODE sampler, no sample count.
    unused_fields = ImageTask.unused_fields + ("model.class_conditional", "model.label_dropout", "sampling.steps",
                                               "sampling.solver", "sampling.guidance", "sampling.num_samples",
                                               *CHURN_FIELDS)
    table_param = "label_embed"
    extra_tokens = 1  # the CLS token

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        c = config.classify
        cls.require_end_to_end(config, "classify.objective", c.objective)
        cls.require_chain_steps(config, "classify.steps", c.steps, c.objective)

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
        return self.plain_config(self.config)

    @staticmethod
    def plain_config(config) -> bool:
        return config.classify.objective == "plain"

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
        return {"sigma": self.partition.sample_level(k_sigma, block, (n,)),
                "eps": jax.random.normal(k_eps, (n, self.config.model.width), jnp.float32),
                **self.dropout_draw(k_drop, n)}

    def loss(self, params, batch, draw, block) -> jax.Array:
        """CE(logits, label) lambda(sigma) per example (plain: CE of the ViT's logits)."""
        net, labels, keys = self.network(params), batch["label"], self.dropout_keys(draw)
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
        from dblocks_jax.tasks.image_classification_eval import score

        result = score(self, block_params, steps=None, seeds=(self.config.run.seed,))
        with open(os.path.join(workdir, "accuracy.json"), "w") as f:
            json.dump(result, f, indent=1)

    def inference(self, block_params: list, *, batch: int, steps: int) -> Inference:
        """Predictions for `batch` images from a chain of `steps` network calls (plain: one call)."""
        images = jnp.zeros((batch, *self.image_shape), jnp.float32)
        if self.plain:
            return Inference(self._forward, (block_params[0], images), batch, "predictions", 1)
        args = (stack_blocks(block_params), self.start_state(0, 0, batch), images, jax.random.key(0))
        return Inference(self.chain(self.inference_steps(steps)), args, batch, "predictions", steps)

    # -- the shell's hooks ----------------------------------------------------------------------------

    @classmethod
    def train_summary(cls, workdir: str) -> list[str]:
        path = os.path.join(workdir, "accuracy.json")
        with open(path) as f:
            r = json.load(f)
        return [f"held-out accuracy {r['accuracy']['mean']:.4f}, ECE {r['ece']['mean']:.4f} ({r['steps']} network "
                f"call(s), {r['num_examples']} images) -> {path}"]

    @classmethod
    def evaluation_outputs(cls, json_path: str) -> tuple[str, ...]:
        return (os.path.splitext(json_path)[0] + "_reliability.png",)

    @classmethod
    def evaluate(cls, request: Request) -> dict:
        """Scores for each --steps entry; the reliability diagram beside the JSON."""
        from dblocks_jax.tasks.image_classification_eval import evaluate_run

        steps = request.option("steps")
        diagram = cls.evaluation_outputs(request.output)[0] if request.output else None
        return evaluate_run(request, steps=int_list("--steps", steps) if steps else (None,),
                            reliability_png=diagram, progress=request.progress)

    @classmethod
    def report(cls, result: dict) -> list[str]:
        fmt = describe
        lines = []
        for r in result["by_steps"]:
            top5 = f", top-5 {fmt(r['top5'])}" if r["top5"] else ""
            lines.append(f"{r['steps']:>3} network call(s): accuracy {fmt(r['accuracy'])}{top5}, ECE "
                         f"{fmt(r['ece'])}, NLL {fmt(r['nll'])} ({r['num_examples']} held-out images, "
                         f"{len(result['seeds'])} seed(s))")
        if result.get("reliability_png"):
            lines.append(f"reliability diagram: {result['reliability_png']}")
        return lines
