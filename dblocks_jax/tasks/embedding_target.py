"""What the tasks whose clean state is a row of a learned, L2-normalised table share (image
classification: the label's embedding; the autoregressive LM: the next token's): every block's
table starts from the same draw, the chain's number of network calls and its grid, and the Euler
step towards the D a bridge makes of a block's logits (DiffusionBlocks paper sec. 4.2)."""

from __future__ import annotations

from typing import ClassVar

import jax
import numpy as np

from dblocks_jax.engine.chain import level_grid
from dblocks_jax.engine.settings import require
from dblocks_jax.engine.solvers import euler_step

TABLE_SALT = 0x7AB1E  # folded into the run seed's key: the table every block starts from


class EmbeddingTarget:
    """Mixin for a `Task` with `plain` (no diffusion: one block, no table) and a table parameter."""

    table_param: ClassVar[str]

    @staticmethod
    def least_calls(num_blocks: int) -> int:
        """The fewest network calls of a chain: one per block (fewer would skip blocks) and at least
        2 (a start at sigma_max and a read-out at sigma_min: B = 1 takes two calls)."""
        return max(num_blocks, 2)

    @classmethod
    def require_chain_steps(cls, config, field: str, steps: int, objective: str) -> None:
        """The configured network calls per chain (0: one per block) reach every block."""
        least = cls.least_calls(config.model.num_blocks)
        require(steps == 0 or steps >= least or objective != "diffusion", field, steps,
                f"0 (one call per block) or an integer >= {least} (model.num_blocks={config.model.num_blocks}: "
                f"the chain calls each block at least once)")

    @classmethod
    def check_inference(cls, config, steps: int) -> None:
        """The bench's chain reaches every block (a plain model makes one call, whatever K)."""
        least = cls.least_calls(config.model.num_blocks)
        if not cls.plain_config(config) and steps < least:
            raise ValueError(f"--sample-steps {steps}: task {cls.name} with model.num_blocks="
                             f"{config.model.num_blocks} needs at least {least} network calls per chain")

    @staticmethod
    def plain_config(config) -> bool:
        """Whether `config` trains the plain (non-diffusion) model."""
        raise NotImplementedError

    def configured_steps(self) -> int:
        """The config's network calls per chain (0: one per block)."""
        raise NotImplementedError

    def init_params(self, key: jax.Array):
        """Every block starts from the same table (drawn from the run seed, not the block's key): the
        chain hands the state from block to block, so they must agree on its space, at least at
        the start."""
        params = super().init_params(key)
        if not self.plain:
            table_key = jax.random.fold_in(jax.random.key(self.config.run.seed), TABLE_SALT)
            shape = params[self.table_param].value.shape
            params[self.table_param].value = 0.02 * jax.random.normal(table_key, shape)
        return params

    def inference_steps(self, steps: int | None = None) -> int:
        """Network calls of the chain: `steps`, else the config's, else `least_calls`."""
        least = self.least_calls(self.num_blocks)
        if steps is None:
            steps = self.configured_steps() or least
        if steps < least:
            raise ValueError(f"inference steps={steps}; allowed: an integer >= {least} (the chain starts at "
                             f"sigma_max, reads out at sigma_min and calls each of the {self.num_blocks} block(s) "
                             f"at least once)")
        return steps

    def grid(self, steps: int | None = None) -> np.ndarray:
        """The chain's levels, sigma_max ... sigma_min: `inference_steps` points of `sampling.grid`."""
        return level_grid(self.config.sampling.grid, self.inference_steps(steps) - 1, self.law)

    euler_step = staticmethod(euler_step)
