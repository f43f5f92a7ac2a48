"""The common sections of a run's config that are not the engine's: the data, the network cut into
blocks, and EDM's noise constants. Every task's config has them (`dblocks_jax.config`); which of
their fields a task reads is the task's to say (`Task.unused_fields`, `Task.validate`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dblocks_jax.data.augment import AUGMENTS
from dblocks_jax.engine.precision import DTYPES
from dblocks_jax.engine.settings import ASSEMBLY, FREE, IDENTITY, Section, require, setting

POSITIONS = ("learned", "rope")
ATTENTIONS = ("auto", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """What the task reads; which names `dataset` takes is the task's to say (`Task.validate`)."""

    _path = "data"
    dataset: str = setting("", ASSEMBLY, "what the task reads (the task says which names it takes; its presets "
                                          "set one)")
    image_size: int = setting(16, ASSEMBLY, "every image dataset is delivered at this size")
    batch_size: int = setting(64, IDENTITY, "examples per block step")
    augment: str = setting("none", IDENTITY, "training augmentation: " + ", ".join(AUGMENTS))

    def check(self):
        require(self.image_size >= 1, self.field("image_size"), self.image_size, "an integer >= 1")
        require(self.batch_size >= 1, self.field("batch_size"), self.batch_size, "an integer >= 1")
        require(self.augment in AUGMENTS, self.field("augment"), self.augment, ", ".join(AUGMENTS))


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The network cut into blocks: `num_layers` in all, `num_layers / num_blocks` per block, or
    `layer_split` (e.g. "3,6,3", the paper's uneven splits). B = 1 is the end-to-end baseline. The
    network family is the task's (`Task.family`)."""

    _path = "model"
    num_layers: int = setting(8, ASSEMBLY)
    num_blocks: int = setting(4, ASSEMBLY, "B (1: end-to-end)")
    layer_split: str = setting("", ASSEMBLY, "layers per block, e.g. 3,6,3; empty: equal blocks")
    width: int = setting(96, ASSEMBLY)
    num_heads: int = setting(4, ASSEMBLY)
    patch_size: int = setting(2, ASSEMBLY)
    mlp_ratio: float = setting(4.0, ASSEMBLY)
    class_conditional: bool = setting(True, ASSEMBLY, "condition on the class (with a null class for guidance)")
    label_dropout: float = setting(0.1, IDENTITY, "share of training labels replaced by the null class")
    dropout: float = setting(0.0, IDENTITY, "dropout on the embeddings and residual branches (vit, transformer)")
    positions: str = setting("learned", ASSEMBLY, "token positions of the transformer: learned (a table) or rope "
                                                  "(rotary, in every attention)")
    dtype: str = setting("auto", IDENTITY, "compute dtype of matmuls and activations (parameters, optimizer state, "
                                           "loss and softmax stay float32); auto: bfloat16 on GPU/TPU, float32 on "
                                           "CPU, resolved when the task is built")
    attention: str = setting("auto", FREE, "jax.nn.dot_product_attention implementation: auto (cuDNN flash "
                                           "attention where the GPU and shapes allow, XLA elsewhere), xla, cudnn")
    remat: bool = setting(False, IDENTITY, "jax.checkpoint around every layer")
    scan_layers: bool = setting(True, FREE, "apply the layers with lax.scan (compile time flat in depth); "
                                            "false: unrolled (less memory, compile time grows with depth)")

    def check(self):
        require(self.positions in POSITIONS, self.field("positions"), self.positions, ", ".join(POSITIONS))
        require(self.num_blocks >= 1, self.field("num_blocks"), self.num_blocks, "an integer >= 1")
        require(self.num_layers >= 1, self.field("num_layers"), self.num_layers, "an integer >= 1")
        if self.layer_split:
            try:
                depths = [int(v) for v in self.layer_split.split(",")]
            except ValueError:
                depths = []
            require(len(depths) == self.num_blocks and min(depths, default=0) >= 1
                    and sum(depths) == self.num_layers, self.field("layer_split"), self.layer_split,
                    f"{self.num_blocks} comma-separated integers >= 1 that sum to num_layers={self.num_layers}, "
                    f"e.g. 3,6,3 (or empty: equal blocks)")
        else:
            require(self.num_layers % self.num_blocks == 0, self.field("num_layers"), self.num_layers,
                    f"a multiple of model.num_blocks={self.num_blocks} (every block gets num_layers / num_blocks "
                    f"layers), or set model.layer_split")
        require(self.width >= 1 and self.num_heads >= 1 and self.width % self.num_heads == 0, self.field("width"),
                self.width, f"a positive multiple of model.num_heads={self.num_heads}")
        require(self.patch_size >= 1, self.field("patch_size"), self.patch_size, "an integer >= 1")
        require(self.mlp_ratio > 0, self.field("mlp_ratio"), self.mlp_ratio, "a number > 0")
        require(0.0 <= self.label_dropout < 1.0, self.field("label_dropout"), self.label_dropout, "a number in [0, 1)")
        require(0.0 <= self.dropout < 1.0, self.field("dropout"), self.dropout, "a number in [0, 1)")
        require(self.dtype in DTYPES, self.field("dtype"), self.dtype, ", ".join(DTYPES))
        require(self.attention in ATTENTIONS, self.field("attention"), self.attention, ", ".join(ATTENTIONS))

    @property
    def block_depths(self) -> tuple[int, ...]:
        """Layers of each block: `layer_split`, or num_layers / num_blocks each."""
        if self.layer_split:
            return tuple(int(v) for v in self.layer_split.split(","))
        return (self.num_layers // self.num_blocks,) * self.num_blocks

    @property
    def stack_options(self) -> dict:
        """What every network family passes to its layer stack: compute dtype, remat, scan and the
        attention implementation (`dtype` must be resolved: a task resolves `auto` when built)."""
        return {"dtype": jnp.dtype(self.dtype), "remat": self.remat, "scan_layers": self.scan_layers,
                "attention": self.attention}

    @property
    def layers_per_block(self) -> int:
        """Layers a block is built with: the deepest block's (shallower blocks skip the rest)."""
        return max(self.block_depths)

    @property
    def uneven(self) -> bool:
        return len(set(self.block_depths)) > 1


@dataclasses.dataclass(frozen=True)
class NoiseConfig(Section):
    """EDM's constants (Karras et al. 2022): training levels ln sigma ~ N(p_mean, p_std^2) truncated
    to [sigma_min, sigma_max]; sigma_data scales the preconditioning."""

    _path = "noise"
    sigma_min: float = setting(0.002, ASSEMBLY)
    sigma_max: float = setting(80.0, ASSEMBLY)
    sigma_data: float = setting(0.5, ASSEMBLY)
    p_mean: float = setting(-1.2, ASSEMBLY)
    p_std: float = setting(1.2, ASSEMBLY)

    def check(self):
        require(0 < self.sigma_min < self.sigma_max, self.field("sigma_min"), self.sigma_min,
                f"a number in (0, noise.sigma_max={self.sigma_max}), i.e. sigma_min < sigma_max")
        require(self.sigma_data > 0, self.field("sigma_data"), self.sigma_data, "a number > 0")
        require(self.p_std > 0, self.field("p_std"), self.p_std, "a number > 0")
