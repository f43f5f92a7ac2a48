"""Training: one block at a time, every block with its own parameters and its own Optax state.

Both schedules run the same loop over a *block plan*, the sequence of block indices, one per step
(DESIGN.md section 4):

- `interleaved` (the paper's): each step trains one uniformly drawn block; all blocks stay resident.
- `sequential`: block 0 for `steps` steps, then block 1, ...; a block's state is created on the
  device at its first step and saved, copied to the host and deleted from the device after its
  last, so only one block is ever resident.

End-to-end training is num_blocks = 1 of the same code. A single compiled step serves every block:
the block index and the block's own step count are traced arguments, and the noise key is derived
from (seed, block, block step), so a block's trajectory does not depend on the schedule.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from dblocks_jax import checkpoint, data
from dblocks_jax.config import Config
from dblocks_jax.model import BlockModel, Params
from dblocks_jax.plotting import save_image_grid
from dblocks_jax.sampling import balanced_labels, generate


class BlockState(NamedTuple):
    params: Params
    opt_state: optax.OptState
    ema: Params  # exponential moving average of params, what sampling uses; equals params if ema_decay = 0


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or Inf; the message names the block and the step."""


@dataclasses.dataclass
class TrainResult:
    config: Config
    workdir: str | None
    params: list[Params]  # per block, on the host: the EMA parameters (the raw ones if ema_decay = 0)
    block_steps: list[int]  # optimizer steps each block took
    final_loss: list[float]  # per block, mean loss over its last logging interval


def lr_schedule(config: Config) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine decay to zero over the block's own steps."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=max(config.steps, config.warmup_steps + 1), end_value=0.0)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """AdamW on `lr_schedule` after global-norm clipping. Each block owns one instance of its state,
    so idle blocks are never decayed or moved."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(lr_schedule(config), b1=config.adam_b1, b2=config.adam_b2, weight_decay=config.weight_decay),
    )


def ema_decay_at(decay: float, step):
    """EMA decay with the usual warm-up, min(decay, (1 + t) / (10 + t)), so that the average
    forgets the random initialisation within the first steps of short runs."""
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def block_plan(config: Config) -> np.ndarray:
    """The block trained at each step: every block exactly `steps` times (compute parity with an
    end-to-end run of `steps` steps). Interleaved: a seeded random order, so that each step's block
    is uniformly distributed as in the paper, without the paper's i.i.d. draws leaving some blocks
    with more steps than others. Sequential: block 0's steps, then block 1's, ..."""
    plan = np.repeat(np.arange(config.num_blocks), config.steps)
    if config.schedule == "sequential":
        return plan
    return np.random.default_rng([config.seed, 0x5EED]).permutation(plan)


class BlockTrainer:
    """Compiled pieces shared by every schedule: state initialisation and the train step."""

    def __init__(self, config: Config):
        self.config = config
        self.model = BlockModel.from_config(config)
        self.optimizer = make_optimizer(config)
        root = jax.random.key(config.seed)
        self._init_key, self._step_key = jax.random.split(root)
        # eval_shape before jit: the abstract state is known without allocating anything.
        self.abstract_state = jax.eval_shape(self._init, jax.random.key(0))
        self.init_state = jax.jit(lambda b: self._init(jax.random.fold_in(self._init_key, b)))
        self.train_step = jax.jit(self._train_step, donate_argnums=0)

    def _init(self, key) -> BlockState:
        params = self.model.init(key)
        return BlockState(params, self.optimizer.init(params), jax.tree.map(jnp.copy, params))

    def _train_step(self, state: BlockState, images, labels, block, block_step):
        """One optimizer step of block `block`. A non-finite loss or gradient leaves the state
        untouched; the host notices the loss at its next check and stops with the block and step."""
        key = jax.random.fold_in(jax.random.fold_in(self._step_key, block), block_step)
        loss, grads = jax.value_and_grad(self.model.loss)(state.params, key, block, images, labels)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(self.config.ema_decay, block_step)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, params)
        new_state = BlockState(params, opt_state, ema)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state), (loss, grad_norm)

    @property
    def state_bytes(self) -> int:
        """Bytes of one block's parameters and optimizer state."""
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.abstract_state))


def default_workdir(config: Config) -> str:
    return os.path.join("runs", f"{config.dataset.replace(':', '_')}_B{config.num_blocks}_{config.schedule}"
                                f"_seed{config.seed}")


def prepare_workdir(workdir: str, config: Config, overwrite: bool = False) -> None:
    """Create the run directory; refuse to mix a new run into an old one unless asked to overwrite."""
    existing = [n for n in ("checkpoints", "metrics.jsonl") if os.path.exists(os.path.join(workdir, n))]
    if existing and not overwrite:
        raise FileExistsError(f"{workdir} already holds a run ({', '.join(existing)}); choose another "
                              f"--workdir or pass --overwrite to replace it")
    for name in existing:
        path = os.path.join(workdir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json())


def train(config: Config, workdir: str | None = None, *, overwrite: bool = False,
          batches: Callable[[int], Iterator[dict]] | None = None,
          on_step: Callable[[int, int, dict], None] | None = None, progress: bool = True,
          write_samples: bool = True) -> TrainResult:
    """Train every block of `config` under its schedule; return the per-block parameters.

    With a `workdir`, writes config.json, metrics.jsonl, checkpoints/block_XXX and samples.png.
    `batches(block)` overrides the data stream of a block; `on_step(step, block, resident_states)`
    is called after every step (tests use it to watch what is resident).
    """
    trainer = BlockTrainer(config)
    if workdir:
        prepare_workdir(workdir, config, overwrite)
    batches = batches or (lambda b: data.train_batches(config, b))
    plan = block_plan(config)
    last_step = {int(b): int(t) for t, b in enumerate(plan)}
    streams = {b: batches(b) for b in range(config.num_blocks)}
    resident: dict[int, BlockState] = {}
    host_params: dict[int, Params] = {}
    block_steps = [0] * config.num_blocks
    logger = _Logger(config, workdir, total=len(plan), progress=progress)

    def finish_block(b: int) -> None:
        """Check the block's last losses, save it, keep a host copy and free its device memory."""
        logger.flush()
        state = resident.pop(b)
        host_state = jax.device_get(state)
        jax.tree.map(lambda x: x.delete(), state)
        if workdir:
            checkpoint.save_block(workdir, b, block_steps[b], host_state)
        host_params[b] = host_state.ema

    try:
        if config.schedule == "interleaved":  # the paper's schedule keeps every block resident
            resident.update({b: trainer.init_state(b) for b in range(config.num_blocks)})
        for t, b in enumerate(plan.tolist()):
            if b not in resident:
                resident[b] = trainer.init_state(b)
                logger.set_block(b)
            batch = next(streams[b])
            resident[b], metrics = trainer.train_step(resident[b], batch["image"], batch["label"], b, block_steps[b])
            logger.record(t, b, block_steps[b], metrics)
            block_steps[b] += 1
            if on_step is not None:
                on_step(t, b, resident)
            if (t + 1) % config.log_every == 0:
                logger.flush()
            if last_step[b] == t:
                finish_block(b)
    finally:
        logger.close()

    params = [host_params[b] for b in range(config.num_blocks)]
    if workdir and write_samples:
        write_sample_grid(config, trainer.model, params, os.path.join(workdir, "samples.png"))
    return TrainResult(config, workdir, params, block_steps, [logger.last_loss.get(b, float("nan"))
                                                              for b in range(config.num_blocks)])


def read_run_config(workdir: str, **overrides: Any) -> Config:
    """The config a run directory was trained with (config.json), with `overrides` applied."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be a run directory written by `train`")
    with open(path) as f:
        return Config.from_dict(json.load(f)).replace(**overrides)


def restore_run(workdir: str, trainer: BlockTrainer) -> tuple[list[Params], list[int]]:
    """Every block's EMA parameters (what sampling uses) from the newest checkpoints, and their steps."""
    blocks = range(trainer.config.num_blocks)
    params = [checkpoint.restore_block(workdir, b, trainer.abstract_state).ema for b in blocks]
    return params, [checkpoint.latest_step(workdir, b) for b in blocks]


def sample_from_config(config: Config, model: BlockModel, params: list,
                       labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples with the config's sampler settings; class-conditional models get balanced labels
    unless `labels` is given."""
    if labels is None and config.num_classes:
        labels = balanced_labels(config.num_samples, config.num_classes)
    images = generate(model, params, num_samples=config.num_samples, num_steps=config.sample_steps,
                      solver=config.solver, grid=config.grid, guidance=config.guidance, seed=config.seed,
                      labels=labels)
    return np.asarray(images), labels


def write_sample_grid(config: Config, model: BlockModel, params: list, path: str) -> np.ndarray:
    samples, _ = sample_from_config(config, model, params)
    save_image_grid(path, samples, num_cols=int(np.ceil(np.sqrt(len(samples)))))
    return samples


class _Logger:
    """Keeps per-step losses on the device and fetches them only every `log_every` steps, so the
    host never waits for the device in between; checks them for NaN/Inf, writes metrics.jsonl and
    drives the progress bar."""

    def __init__(self, config: Config, workdir: str | None, total: int, progress: bool):
        self.config, self.schedule, self.start = config, lr_schedule(config), time.perf_counter()
        self.path = os.path.join(workdir, "metrics.jsonl") if workdir else None
        self.pending: list[tuple[int, int, int, tuple[jax.Array, jax.Array]]] = []
        self.last_loss: dict[int, float] = {}
        self.bar = tqdm(total=total, unit="step", disable=not progress, dynamic_ncols=True, mininterval=0.5,
                        desc=f"{config.num_blocks} block(s), {config.schedule}")

    def set_block(self, b: int) -> None:
        if self.config.schedule == "sequential":
            self.bar.set_description(f"block {b + 1}/{self.config.num_blocks}")

    def record(self, step: int, block: int, block_step: int, metrics: tuple[jax.Array, jax.Array]) -> None:
        """Keep (loss, gradient norm) of one step, still on the device."""
        self.pending.append((step, block, block_step, metrics))

    def flush(self) -> None:
        if not self.pending:
            return
        values = jax.device_get([entry[3] for entry in self.pending])
        for (step, block, block_step, _), (loss, grad_norm) in zip(self.pending, values):
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                what = f"loss ({loss})" if not np.isfinite(loss) else f"gradient norm ({grad_norm}, loss {loss})"
                raise NonFiniteLossError(
                    f"non-finite {what} in block {block} at its step {block_step + 1} (global step {step + 1}); "
                    f"training stopped, that update was not applied and nothing was saved after it")
        per_block: dict[int, list] = {}
        for (step, block, block_step, _), (loss, grad_norm) in zip(self.pending, values):
            per_block.setdefault(block, []).append((step, block_step, float(loss), float(grad_norm)))
        records = []
        for block, entries in sorted(per_block.items()):
            self.last_loss[block] = float(np.mean([e[2] for e in entries]))
            step, block_step = entries[-1][:2]
            records.append({"step": step + 1, "block": block, "block_step": block_step + 1,
                            "loss": self.last_loss[block], "grad_norm": float(np.mean([e[3] for e in entries])),
                            "lr": float(self.schedule(block_step)),
                            "elapsed_s": round(time.perf_counter() - self.start, 3)})
        if self.path:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        self.bar.update(len(self.pending))
        self.bar.set_postfix_str(" ".join(f"b{b}={v:.3f}" for b, v in sorted(self.last_loss.items())))
        self.pending.clear()

    def close(self) -> None:
        self.bar.close()
