"""The Task protocol: everything the engine needs to know about a problem, and nothing more.

DiffusionBlocks is one method for many problems (image generation, classification, language
models, recurrent depth): "denoise a target y given a context x with a residual network cut into
blocks". A task supplies what differs (docs/architecture.md walks through one):

- the level law of its corruption (`make_law`; the partition into bands is the engine's);
- the network of one block (`make_block`, an NNX module; blocks are self-contained and share a
  structure, so their parameters stack);
- data: each block's resumable training stream (`train_batches`), the batch's shapes
  (`batch_spec`), `check_data` (the I/O that validation may not do, run before compiling) and
  `data_fingerprint` (what a resume must find unchanged);
- training: `draw(key, block, batch_spec)`, the step's randomness for the whole batch (levels from
  the block's band, noise, ...), and `loss(params, batch, draw, block)`, per example;
- the chain and evaluation: `write_artifacts` after training, and whatever sampling and scoring
  the task's commands call.

The engine calls only these; it never sees an image, a label or a token.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.engine import precision
from dblocks_jax.engine.levels import LevelLaw
from dblocks_jax.engine.partition import BlockPartition


class Task(abc.ABC):
    name: ClassVar[str]
    # Config fields this task never reads: a value other than the default is refused (naming the
    # field) instead of being silently ignored.
    unused_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config):
        self.config = config = precision.resolved(config)  # the dtype that runs is the one recorded
        self.law = self.make_law()
        self.partition = BlockPartition.make(config.partition.strategy, self.num_blocks, config.partition.overlap,
                                             self.law)
        # eval_shape: the block's structure and parameter shapes, nothing allocated.
        abstract = nnx.eval_shape(lambda: self.make_block(nnx.Rngs(0)))
        self.graphdef, self.abstract_params = nnx.split(abstract, nnx.Param)

    # -- validation -------------------------------------------------------------------------------

    @classmethod
    def validate(cls, config) -> None:
        """Cross-field checks this task needs, without I/O (raise ValueError naming the field)."""

    def check_data(self) -> None:
        """Check that the data exists and fits the config (may read metadata); before compiling."""

    def data_fingerprint(self) -> dict:
        """What identifies the training data beyond the config (JSON values; e.g. a text file's
        hash): recorded in run.json, and a resume on a different fingerprint is refused."""
        return {}

    def memory_floor(self) -> list[tuple[int, str, str]]:
        """Lower bounds of the memory a run needs, as (bytes, "device" or "host", what needs it,
        naming the config fields): the engine refuses a config that cannot fit before compiling.
        Lower bounds only, so that no config that would fit is refused."""
        return []

    # -- what the engine reads ----------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.config.model.num_blocks

    @property
    def num_layers(self) -> int:
        return self.config.model.num_layers

    @property
    def layers_per_block(self) -> int:
        return self.config.model.layers_per_block

    def init_params(self, key: jax.Array) -> Any:
        """Fresh parameters of one block (jit-able; every block gets its own key)."""
        return nnx.split(self.make_block(nnx.Rngs(key)), nnx.Param)[1]

    def network(self, params) -> nnx.Module:
        """The block module with `params` (inside a trace: a pure function of params)."""
        return nnx.merge(self.graphdef, params)

    def block_depth(self, block) -> jax.Array | None:
        """Layers block `block` runs: None (all it has) unless the layer split is uneven."""
        model = self.config.model
        if not model.uneven:
            return None
        if block is None:
            raise ValueError(f"model.layer_split={model.layer_split} is uneven: pass the block index")
        return jnp.asarray(model.block_depths)[block]

    @abc.abstractmethod
    def make_law(self) -> LevelLaw:
        """The level law the blocks' bands partition."""

    @abc.abstractmethod
    def make_block(self, rngs: nnx.Rngs) -> nnx.Module:
        """The network of one block, built with the deepest block's structure."""

    @abc.abstractmethod
    def train_batches(self, block: int) -> Iterator[Any]:
        """Block `block`'s endless training stream, resumable (`state()/restore()` or
        `get_state()/set_state()`), seeded by (run.seed, block)."""

    @abc.abstractmethod
    def batch_spec(self, batch_size: int) -> Any:
        """The pytree of `jax.ShapeDtypeStruct` of one training batch."""

    @abc.abstractmethod
    def draw(self, key: jax.Array, block, batch_spec: Any) -> Any:
        """The random part of one training step of `block`, every leaf with a leading example axis."""

    @abc.abstractmethod
    def loss(self, params, batch, draw, block) -> jax.Array:
        """The block's loss on `batch` under `draw`, one value per example (the engine averages)."""

    def write_artifacts(self, workdir: str, block_params: list) -> None:
        """What a finished run leaves beside its checkpoints (e.g. a sample grid)."""
