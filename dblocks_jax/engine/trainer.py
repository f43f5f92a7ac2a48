"""One block's training state and the compiled step that serves every block.

Each block owns its parameters, its Optax state (AdamW on warm-up + cosine, global-norm
clipping) and an EMA of its parameters: a single optimizer over all blocks, with zero gradients
for the idle ones, would still decay and move them. One compiled step serves every block: the
block index and the block's own step count are traced arguments, and the step's key is derived
from (seed, block, block step) only, so a block's trajectory is the same under every schedule
and after a resume.

The task supplies the mathematics of a block: `init_params(key)`, `draw(key, block, batch_spec)`
(the step's randomness: levels, noise, ..., drawn for the whole batch so a data-parallel step can
take its slice) and `loss(params, batch, draw, block)` per example.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any


class BlockState(NamedTuple):
    params: Params
    opt_state: optax.OptState
    ema: Params  # exponential moving average of params, what sampling uses; equals params if ema_decay = 0


def lr_schedule(optim) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine decay to zero over the block's own steps."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.learning_rate, warmup_steps=optim.warmup_steps,
        decay_steps=max(optim.steps, optim.warmup_steps + 1), end_value=0.0)


def make_optimizer(optim) -> optax.GradientTransformation:
    """AdamW on `lr_schedule` after global-norm clipping; each block owns one instance of its state."""
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        optax.adamw(lr_schedule(optim), b1=optim.adam_b1, b2=optim.adam_b2, weight_decay=optim.weight_decay),
    )


def ema_decay_at(decay: float, step):
    """EMA decay with the usual warm-up, min(decay, (1 + t) / (10 + t)), so that the average
    forgets the random initialisation within the first steps of short runs."""
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def block_plan(num_blocks: int, steps: int, schedule: str, seed: int,
               blocks: Sequence[int] | None = None) -> np.ndarray:
    """The block trained at each step: every block exactly `steps` times (compute parity with an
    end-to-end run of `steps` steps). Interleaved: a seeded random order, so that each step's block
    is uniformly distributed as in the paper, without i.i.d. draws leaving some blocks with more
    steps than others. Sequential: block 0's steps, then block 1's, ... `blocks` keeps only those
    blocks' steps, in the same order (a run that trains part of the model)."""
    plan = np.repeat(np.arange(num_blocks), steps)
    if schedule == "interleaved":
        plan = np.random.default_rng([seed, 0x5EED]).permutation(plan)
    return plan if blocks is None else plan[np.isin(plan, list(blocks))]


def spec_of(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


class BlockTrainer:
    """Compiled pieces shared by every schedule: state initialisation and the train step."""

    def __init__(self, task):
        self.task, self.config = task, task.config
        self.optimizer = make_optimizer(self.config.optim)
        # eval_shape before jit: the abstract state is known without allocating anything.
        self.abstract_state = jax.eval_shape(self._init, jax.random.key(0))
        self.init_state = jax.jit(self.init_block)
        self.train_step = jax.jit(self._train_step, donate_argnums=0)

    def init_block(self, block) -> BlockState:
        """Fresh state of block `block`, from its own key (traceable in `block`)."""
        return self._init(jax.random.fold_in(self._root_keys()[0], block))

    def _init(self, key) -> BlockState:
        params = self.task.init_params(key)
        return BlockState(params, self.optimizer.init(params), jax.tree.map(jnp.copy, params))

    def step_key(self, block, block_step) -> jax.Array:
        """The key of one block step: a function of (seed, block, block step) only."""
        return jax.random.fold_in(jax.random.fold_in(self._root_keys()[1], block), block_step)

    def _root_keys(self):
        """(init key, step key) of the run's seed, made inside whatever traces them: a key kept as a
        device array would be captured as a constant, a device-to-host read at every compile (and
        refused under `jax.transfer_guard_device_to_host("disallow")` on an accelerator)."""
        return jax.random.split(jax.random.key(self.config.run.seed))

    def loss_and_grad(self, params, batch, draw, block):
        """Mean of the task's per-example loss, and its gradient."""
        return jax.value_and_grad(lambda p: jnp.mean(self.task.loss(p, batch, draw, block)))(params)

    def _train_step(self, state: BlockState, batch, block, block_step):
        draw = self.task.draw(self.step_key(block, block_step), block, spec_of(batch))
        loss, grads = self.loss_and_grad(state.params, batch, draw, block)
        return self.apply_gradients(state, loss, grads, block_step)

    def apply_gradients(self, state: BlockState, loss, grads, block_step):
        """The optimizer and EMA update of one block. A non-finite loss or gradient leaves the
        state untouched; the host notices at its next check and stops with the block and step.
        Returns the new state and (loss, gradient norm)."""
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(self.config.optim.ema_decay, block_step)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, params)
        new_state = BlockState(params, opt_state, ema)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state), (loss, grad_norm)

    @property
    def state_bytes(self) -> int:
        """Bytes of one block's parameters, optimizer state and EMA."""
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.abstract_state))
