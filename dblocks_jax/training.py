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
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from dblocks_jax import checkpoint, data
from dblocks_jax.config import Config
from dblocks_jax.model import BlockModel, Params
from dblocks_jax.parallel import gather_json
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


def block_plan(config: Config, blocks: Sequence[int] | None = None) -> np.ndarray:
    """The block trained at each step: every block exactly `steps` times (compute parity with an
    end-to-end run of `steps` steps). Interleaved: a seeded random order, so that each step's block
    is uniformly distributed as in the paper, without the paper's i.i.d. draws leaving some blocks
    with more steps than others. Sequential: block 0's steps, then block 1's, ... `blocks` keeps
    only those blocks' steps, in the same order (a run that trains part of the model)."""
    plan = np.repeat(np.arange(config.num_blocks), config.steps)
    if config.schedule == "interleaved":
        plan = np.random.default_rng([config.seed, 0x5EED]).permutation(plan)
    return plan if blocks is None else plan[np.isin(plan, list(blocks))]


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
        self.init_state = jax.jit(self.init_block)
        self.train_step = jax.jit(self._train_step, donate_argnums=0)

    def init_block(self, block) -> BlockState:
        """Fresh state of block `block`, from its own key (traceable in `block`)."""
        return self._init(jax.random.fold_in(self._init_key, block))

    def _init(self, key) -> BlockState:
        params = self.model.init(key)
        return BlockState(params, self.optimizer.init(params), jax.tree.map(jnp.copy, params))

    def step_key(self, block, block_step) -> jax.Array:
        """The noise key of one block step: a function of (seed, block, block step) only, so a
        block's trajectory is the same under every schedule and after a resume."""
        return jax.random.fold_in(jax.random.fold_in(self._step_key, block), block_step)

    def _train_step(self, state: BlockState, images, labels, block, block_step):
        loss, grads = jax.value_and_grad(self.model.loss)(state.params, self.step_key(block, block_step), block,
                                                          images, labels)
        return self.apply_gradients(state, loss, grads, block_step)

    def apply_gradients(self, state: BlockState, loss, grads, block_step):
        """The optimizer and EMA update of one block. A non-finite loss or gradient leaves the
        state untouched; the host notices the loss at its next check and stops with the block and
        step. Returns the new state and (loss, gradient norm)."""
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


def train(config: Config, workdir: str | None = None, *, overwrite: bool = False, resume: bool = False,
          blocks: Sequence[int] | None = None, batches: Callable[[int], Iterator[dict]] | None = None,
          on_step: Callable[[int, int, dict], None] | None = None, progress: bool = True,
          write_samples: bool = True) -> TrainResult:
    """Train the blocks of `config` (all, or just `blocks`) under its schedule.

    With a `workdir`, writes config.json, run.json, metrics.jsonl, checkpoints/block_XXX (every
    `checkpoint_every` steps and when a block finishes) and samples.png. `resume` continues the run
    in `workdir` from its newest intact checkpoint (or starts it, if there is none).
    `batches(block)` overrides the data stream of a block; `on_step(step, block, resident_states)`
    is called after every step (tests use it to watch memory; block is None for parallel steps).
    """
    blocks = _blocks_to_train(config, blocks)
    if jax.process_count() > 1 and config.schedule != "parallel":
        raise ValueError(f"schedule={config.schedule!r} trains on one process; a multi-process run needs "
                         f"schedule='parallel'")
    trainer = BlockTrainer(config)
    parallel = _parallel_trainer(config, trainer, blocks) if config.schedule == "parallel" else None
    run = _Run(config, blocks, parallel)
    restored: dict[int, tuple[BlockState, dict]] = {}
    position = 0
    if workdir:
        if resume and os.path.exists(os.path.join(workdir, "config.json")):
            _check_resumable(workdir, config, blocks)
            position, restored = _resume_point(workdir, trainer, run)
        else:  # a new run (--resume on an empty directory starts one)
            _on_process_zero(lambda: prepare_workdir(workdir, config, overwrite))
        _on_process_zero(lambda: _write_run_record(workdir, config, blocks))
        _sync_processes("dblocks_workdir_ready")
        store = checkpoint.BlockCheckpoints(workdir, config.keep_checkpoints)
    else:
        store = None
    batches = batches or (lambda b: data.train_batches(config, b))
    streams = {b: batches(b) for b in run.local_blocks}
    block_steps = run.block_steps_at(position)
    for b, (_, record) in restored.items():
        if 0 < block_steps[b] < config.steps:
            _restore_stream(streams[b], record.get("data"), b)
    logger = _Logger(config, workdir, total=len(blocks) * config.steps, progress=progress, position=position,
                     initial=sum(block_steps.values()))
    host_params: dict[int, Params] = {b: jax.device_get(state.ema) for b, (state, _) in restored.items()
                                      if block_steps[b] == config.steps}

    def save(b: int, host_state: BlockState, pos: int, stream_state: Any = None) -> None:
        if store is not None and b in run.owned_blocks and block_steps[b] > 0:
            stream_state = _stream_state(streams[b]) if stream_state is None else stream_state
            store.save(b, block_steps[b], host_state, {"run_step": pos, "seed": config.seed, "data": stream_state})

    try:
        if parallel is None:
            _train_single_device(config, trainer, run, position, restored, streams, block_steps, logger, save,
                                 host_params, on_step)
        else:
            _train_parallel(config, parallel, run, position, restored, streams, block_steps, logger, save,
                            host_params, on_step)
        if store is not None:  # the last saves are still being written
            error = None
            try:
                store.wait()
            except checkpoint.CheckpointSaveError as err:
                error = err
            if not _all_processes(error is None):
                raise error or checkpoint.CheckpointSaveError("process 0 could not save a checkpoint (see its log)")
    finally:
        logger.close()
        if store is not None:
            store.close()

    params = [host_params.get(b) for b in range(config.num_blocks)]
    complete = all(p is not None for p in params)
    if workdir and write_samples and complete:
        write_sample_grid(config, trainer.model, params, os.path.join(workdir, "samples.png"))
    return TrainResult(config, workdir, params, [block_steps.get(b, 0) for b in range(config.num_blocks)],
                       [logger.last_loss.get(b, float("nan")) for b in range(config.num_blocks)])


class _Run:
    """Which block trains at each position of the run, and where its blocks live. A position is
    one step of the plan: one block step for the single-device schedules, one step of every block
    for the parallel one."""

    def __init__(self, config: Config, blocks: list[int], parallel):
        self.config, self.blocks = config, blocks
        if parallel is None:
            self.plan = block_plan(config, blocks)
            self.length = len(self.plan)
            self.local_blocks = self.owned_blocks = list(blocks)
        else:
            self.plan = None
            self.length = config.steps
            self.local_blocks = [blocks[i] for i in parallel.local_positions]
            # One process writes every checkpoint of a multi-process run (see checkpoint.py).
            self.owned_blocks = list(blocks) if jax.process_index() == 0 else []

    def block_steps_at(self, position: int) -> dict[int, int]:
        """Steps each block has taken once `position` steps of the run are done."""
        if self.plan is None:
            return {b: position for b in self.blocks}
        counts = np.bincount(self.plan[:position], minlength=self.config.num_blocks)
        return {b: int(counts[b]) for b in self.blocks}


def _train_single_device(config, trainer, run, position, restored, streams, block_steps, logger, save, host_params,
                         on_step) -> None:
    """The interleaved and sequential schedules: one block step per position."""
    last_step = {int(b): int(t) for t, b in enumerate(run.plan)}
    resident: dict[int, BlockState] = {b: jax.device_put(state) for b, (state, _) in restored.items()
                                       if block_steps[b] < config.steps}
    if config.schedule == "interleaved":  # the paper's schedule keeps every block resident
        resident.update({b: trainer.init_state(b) for b in run.blocks
                         if b not in resident and block_steps[b] < config.steps})

    def to_host(b: int, pos: int, drop: bool) -> None:
        state = resident.pop(b) if drop else resident[b]
        host_state = jax.device_get(state)
        if drop:  # the block is done: free its device memory, keep what sampling needs
            jax.tree.map(lambda x: x.delete(), state)
            host_params[b] = host_state.ema
        save(b, host_state, pos)

    for t in range(position, run.length):
        b = int(run.plan[t])
        if b not in resident:
            resident[b] = trainer.init_state(b)
            logger.set_block(b)
        batch = next(streams[b])
        resident[b], metrics = trainer.train_step(resident[b], batch["image"], batch["label"], b, block_steps[b])
        logger.record(t, [b], [block_steps[b]], metrics)
        block_steps[b] += 1
        if on_step is not None:
            on_step(t, b, resident)
        pos = t + 1
        finished = last_step[b] == t
        checkpoint_now = bool(config.checkpoint_every) and pos % config.checkpoint_every == 0
        if pos % config.log_every == 0 or finished or checkpoint_now:
            logger.flush()  # never save past a non-finite loss
        if finished:
            to_host(b, pos, drop=True)
        if checkpoint_now:
            for other in list(resident):
                to_host(other, pos, drop=False)


def _train_parallel(config, parallel, run, position, restored, streams, block_steps, logger, save, host_params,
                    on_step) -> None:
    """The parallel schedule: every block takes one step per position, on its own devices."""
    blocks = run.blocks
    if position:
        states = parallel.stack_states({i: restored[blocks[i]][0] for i in parallel.local_positions},
                                       parallel.trainer.abstract_state)
    else:
        states = parallel.init_states(parallel.block_ids)
    local = run.local_blocks
    for t in range(position, run.length):
        images, labels = parallel.global_batch({b: next(streams[b]) for b in local})
        states, metrics = parallel.train_step(states, images, labels, t)
        logger.record(t, local, [t] * len(local), metrics, fetch=parallel.local_rows, count=len(blocks))
        for b in blocks:
            block_steps[b] = t + 1
        if on_step is not None:
            on_step(t, None, {})
        pos = t + 1
        checkpoint_now = (bool(config.checkpoint_every) and pos % config.checkpoint_every == 0) or pos == run.length
        if pos % config.log_every == 0 or checkpoint_now:
            _flush_everywhere(logger)
        if checkpoint_now:
            if jax.process_count() == 1:
                rows, stream_states = parallel.local_rows(states), {}
            else:  # every block to process 0, which writes them (checkpoint.py says why)
                rows = parallel.gather_rows(states)
                stream_states = gather_json({b: _stream_state(streams[b]) for b in local})
            error = None
            try:
                for i, host_state in rows.items():
                    save(blocks[i], host_state, pos, stream_states.get(blocks[i]))
                    if pos == run.length and blocks[i] in local:
                        host_params[blocks[i]] = host_state.ema
            except checkpoint.CheckpointSaveError as err:
                error = err
            if not _all_processes(error is None):
                raise error or checkpoint.CheckpointSaveError("process 0 could not save a checkpoint (see its log)")


def _blocks_to_train(config: Config, blocks: Sequence[int] | None) -> list[int]:
    if blocks is None:
        return list(range(config.num_blocks))
    chosen = sorted(set(int(b) for b in blocks))
    if not chosen or chosen[0] < 0 or chosen[-1] >= config.num_blocks:
        raise ValueError(f"blocks={list(blocks)}; allowed: a non-empty subset of 0..{config.num_blocks - 1}")
    return chosen


def _parallel_trainer(config: Config, trainer: BlockTrainer, blocks: list[int]):
    """The mesh and compiled parallel step; the device count is checked before anything compiles."""
    from dblocks_jax import parallel

    shape = parallel.mesh_shape(len(blocks), config.block_shards, config.data_shards, jax.device_count())
    if jax.process_count() > 1 and shape[0] * shape[1] != jax.device_count():
        raise ValueError(f"a multi-process run must use every device: block_shards x data_shards = {shape[0]} x "
                         f"{shape[1]} = {shape[0] * shape[1]}, but there are {jax.device_count()} devices over "
                         f"{jax.process_count()} processes; set block_shards and data_shards to fill them")
    return parallel.ParallelTrainer(trainer, blocks, parallel.make_block_mesh(shape))


def _check_resumable(workdir: str, config: Config, blocks: list[int]) -> None:
    """Refuse to resume a run with a different config (the differing fields are listed) or with
    another set of blocks."""
    from dblocks_jax.config import config_differences

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return  # nothing to resume: a fresh run
    differences = config_differences(read_run_config(workdir), config)
    if differences:
        raise ValueError(f"cannot resume {workdir} with a different config; differing fields (saved -> now): "
                         + "; ".join(differences))
    record = _read_run_record(workdir)
    if record and record["blocks"] != blocks:
        raise ValueError(f"cannot resume {workdir}: it trains blocks {record['blocks']}, not {blocks}")


def _resume_point(workdir: str, trainer: BlockTrainer, run: _Run) -> tuple[int, dict[int, tuple[BlockState, dict]]]:
    """The newest run step at which every block has an intact checkpoint, and those checkpoints
    (for the blocks this process holds). Candidates are the run steps recorded with the
    checkpoints, so a changed `checkpoint_every` does not matter. A checkpoint that fails to
    restore is reported and skipped; checkpoints past the chosen step (corrupted, unreadable, or
    from blocks saved ahead of the others) are moved to checkpoints/discarded/, never deleted."""
    available = {b: set(checkpoint.all_steps(workdir, b)) for b in run.blocks}
    recorded = {record["run_step"] for b in run.blocks for n in available[b]
                if (record := checkpoint.read_record(workdir, b, n)) and "run_step" in record}
    candidates = sorted((p for p in recorded if 0 < p <= run.length), reverse=True)
    if jax.process_count() > 1:  # process 0's view decides, so every process tries the same steps
        candidates = gather_json({0: candidates} if jax.process_index() == 0 else {})[0]
    bad: set[tuple[int, int]] = set()
    for position in candidates + [0]:
        needed = {b: n for b, n in run.block_steps_at(position).items() if n > 0}
        restored, ok = {}, True
        for b, n in needed.items():
            if b not in run.local_blocks:
                continue
            if n not in available[b] or (b, n) in bad:
                ok = False
                break
            try:
                restored[b] = checkpoint.restore_block(workdir, b, trainer.abstract_state, n)
            except checkpoint.CorruptCheckpointError as err:
                print(f"resume: {err}; falling back to an earlier checkpoint", flush=True)
                bad.add((b, n))
                ok = False
                break
        if not _all_processes(ok):
            continue
        steps_at = run.block_steps_at(position)
        stale = {b: sorted(n for n in available[b] if n > steps_at[b]) for b in run.blocks}
        _on_process_zero(lambda stale=stale: _discard(workdir, stale))
        if position:
            print(f"resume: continuing {workdir} after step {position} of {run.length}", flush=True)
        elif any(available.values()):
            print(f"resume: no step at which every block has an intact checkpoint in {workdir}; "
                  f"starting from step 0", flush=True)
        return position, restored
    raise AssertionError("unreachable: position 0 needs no checkpoint")


def _discard(workdir: str, stale: dict[int, list[int]]) -> None:
    for b, steps in stale.items():
        for path in checkpoint.discard_steps(workdir, b, steps):
            print(f"resume: moved {path}: it lies past the resume point and will be rewritten", flush=True)


def _stream_state(stream) -> Any:
    """The position of a data stream, JSON-serialisable: `Batches.state()` or Grain's `get_state()`."""
    if hasattr(stream, "state"):
        return stream.state()
    if hasattr(stream, "get_state"):
        return stream.get_state()
    return None


def _restore_stream(stream, state: Any, block: int) -> None:
    if state is None:
        raise ValueError(f"cannot resume block {block}: its checkpoint holds no data-stream position")
    if hasattr(stream, "restore"):
        stream.restore(state)
    elif hasattr(stream, "set_state"):
        stream.set_state(state)
    else:
        raise ValueError(f"cannot resume block {block}: its data stream ({type(stream).__name__}) has neither "
                         f"restore() nor set_state()")


def _write_run_record(workdir: str, config: Config, blocks: list[int]) -> None:
    """run.json: what this run trains and where (config.json holds the rest); the partition's band
    edges are written out so that a reader needs no code to see which block owns which sigmas."""
    from dblocks_jax.partition import BlockPartition

    record = {"blocks": blocks, "process_count": jax.process_count(), "device_count": jax.device_count(),
              "partition_boundaries": BlockPartition.from_config(config).boundaries.tolist()}
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump(record, f, indent=1)


def _read_run_record(workdir: str) -> dict | None:
    path = os.path.join(workdir, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _on_process_zero(fn: Callable[[], Any]) -> None:
    """Shared files (config.json, run.json) are written by process 0 only; if that fails, every
    process stops (none is left waiting for it)."""
    error = None
    if jax.process_index() == 0:
        try:
            fn()
        except Exception as err:
            error = err
    if not _all_processes(error is None):
        raise error or ValueError("process 0 could not prepare the run directory (see its log)")


def _flush_everywhere(logger: "_Logger") -> None:
    """Check the pending losses; in a multi-process run every process learns whether any stopped,
    so that none waits forever in the next collective."""
    error = None
    try:
        logger.flush()
    except Exception as err:  # NonFiniteLossError, or a failed metrics write
        error = err
    if not _all_processes(error is None):
        raise error or NonFiniteLossError("another process stopped (non-finite loss or error; see its log)")


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _all_processes(ok: bool) -> bool:
    """Whether `ok` holds on every process (a resume must pick the same position everywhere)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def read_run_config(workdir: str, **overrides: Any) -> Config:
    """The config a run directory was trained with (config.json), with `overrides` applied."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be a run directory written by `train`")
    with open(path) as f:
        return Config.from_dict(json.load(f)).replace(**overrides)


# What must agree for blocks of separate runs to form one model: the architecture, the data it
# models and the noise partition. (Seeds, schedules and step counts may differ.)
MODEL_FIELDS = ("dataset", "image_size", "num_layers", "num_blocks", "layer_split", "width", "num_heads", "patch_size",
                "mlp_ratio", "class_conditional")
PARTITION_FIELDS = ("sigma_min", "sigma_max", "sigma_data", "p_mean", "p_std", "partition", "overlap")


def read_runs_config(workdirs: Sequence[str], **overrides: Any) -> Config:
    """The config of one or several run directories whose blocks are to be used together: the first
    one's, after checking that every other agrees on the model and the partition."""
    configs = [read_run_config(w) for w in workdirs]
    for workdir, other in zip(workdirs[1:], configs[1:]):
        differing = [f"{k}: {getattr(configs[0], k)!r} in {workdirs[0]} vs {getattr(other, k)!r} in {workdir}"
                     for k in MODEL_FIELDS + PARTITION_FIELDS if getattr(configs[0], k) != getattr(other, k)]
        if differing:
            what = " and ".join(name for name, fields in (("model configs", MODEL_FIELDS),
                                                          ("partitions", PARTITION_FIELDS))
                                if any(getattr(configs[0], k) != getattr(other, k) for k in fields))
            raise ValueError(f"these runs cannot be assembled into one sampler: their {what} disagree: "
                             + "; ".join(differing))
    return configs[0].replace(**overrides)


def find_blocks(workdirs: Sequence[str], num_blocks: int) -> dict[int, str]:
    """{block: the run directory holding its checkpoints}; every block exactly once."""
    found: dict[int, list[str]] = {b: [w for w in workdirs if checkpoint.latest_step(w, b) is not None]
                                   for b in range(num_blocks)}
    missing = [b for b, ws in found.items() if not ws]
    if missing:
        raise FileNotFoundError(f"no checkpoint for block(s) {missing} in {', '.join(workdirs)}: train them "
                                f"(`dblocks train --blocks ...`) or add the run that has them")
    twice = {b: ws for b, ws in found.items() if len(ws) > 1}
    if twice:
        raise ValueError("block(s) found in more than one run, which to use is ambiguous: "
                         + "; ".join(f"block {b} in {', '.join(ws)}" for b, ws in twice.items()))
    return {b: ws[0] for b, ws in found.items()}


def restore_run(workdirs: str | Sequence[str], trainer: BlockTrainer) -> tuple[list[Params], list[int]]:
    """Every block's EMA parameters (what sampling uses) from the newest checkpoints, and their
    steps. The blocks may come from several runs (trained separately): each must be in exactly one."""
    workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
    sources = find_blocks(workdirs, trainer.config.num_blocks)
    params, steps = [], []
    for b, workdir in sources.items():
        state, record = checkpoint.restore_block(workdir, b, trainer.abstract_state)
        params.append(state.ema)
        steps.append(int(record["block_step"]))
    return params, steps


def assemble(workdirs: Sequence[str], out: str, overwrite: bool = False) -> dict[int, str]:
    """Gather the blocks of separately trained runs into one run directory `out` (config.json and
    each block's newest checkpoint), which `sample` and `evaluate` then use like any run."""
    config = read_runs_config(workdirs)
    sources = find_blocks(workdirs, config.num_blocks)
    prepare_workdir(out, config, overwrite)
    for b, workdir in sources.items():
        step = checkpoint.latest_step(workdir, b)
        shutil.copytree(checkpoint.step_dir(workdir, b, step), checkpoint.step_dir(out, b, step))
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"blocks": list(sources), "assembled_from": {str(b): os.path.abspath(w) for b, w in sources.items()}},
                  f, indent=1)
    return sources


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


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line torn by a crash counts as past any resume point."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class _Logger:
    """Keeps per-step losses on the device and fetches them only every `log_every` steps, so the
    host never waits for the device in between; checks them for NaN/Inf, writes metrics.jsonl and
    drives the progress bar."""

    def __init__(self, config: Config, workdir: str | None, total: int, progress: bool, position: int = 0,
                 initial: int = 0):
        self.config, self.schedule, self.start = config, lr_schedule(config), time.perf_counter()
        name = "metrics.jsonl" if jax.process_count() == 1 else f"metrics.process{jax.process_index()}.jsonl"
        self.path = os.path.join(workdir, name) if workdir else None
        if self.path and os.path.exists(self.path):  # a resumed run: drop what was logged after its checkpoint
            with open(self.path) as f:
                kept = [line for line in f if _logged_step(line) <= position]
            with open(self.path, "w") as f:
                f.writelines(kept)
        self.pending: list[tuple[int, list[int], list[int], Any, Callable | None, int]] = []
        self.last_loss: dict[int, float] = {}
        self.bar = tqdm(total=total, initial=initial, unit="step", disable=not progress, dynamic_ncols=True,
                        mininterval=0.5, desc=f"{config.num_blocks} block(s), {config.schedule}")

    def set_block(self, b: int) -> None:
        if self.config.schedule == "sequential":
            self.bar.set_description(f"block {b + 1}/{self.config.num_blocks}")

    def record(self, step: int, blocks: list[int], block_steps: list[int], metrics: Any,
               fetch: Callable | None = None, count: int | None = None) -> None:
        """Keep (loss, gradient norm) of one step of `blocks`, still on the device. `fetch` turns
        the metrics into {position: (loss, grad_norm)} on the host (default: device_get of one
        block's scalars); `count` is the number of block steps for the progress bar."""
        self.pending.append((step, blocks, block_steps, metrics, fetch, count or len(blocks)))

    def _host_values(self) -> list[tuple[int, int, int, float, float]]:
        """(step, block, block step, loss, grad norm) of every pending block step, fetched from the
        device in one transfer (or, for parallel steps, one call of their `fetch`)."""
        plain = jax.device_get([e[3] for e in self.pending if e[4] is None])
        stacked = [e for e in self.pending if e[4] is not None]
        fetched = stacked[0][4]([e[3] for e in stacked]) if stacked else {}  # {position: [per entry]}
        out, k, j = [], 0, 0
        for step, blocks, block_steps, _, fetch, _ in self.pending:
            if fetch is None:
                rows = [plain[k]]
                k += 1
            else:
                rows = [fetched[i][j] for i in sorted(fetched)]
                j += 1
            out.extend((step, b, n, *row) for b, n, row in zip(blocks, block_steps, rows))
        return out

    def flush(self) -> None:
        if not self.pending:
            return
        entries = self._host_values()
        for step, block, block_step, loss, grad_norm in entries:
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                what = f"loss ({loss})" if not np.isfinite(loss) else f"gradient norm ({grad_norm}, loss {loss})"
                raise NonFiniteLossError(
                    f"non-finite {what} in block {block} at its step {block_step + 1} (global step {step + 1}); "
                    f"training stopped, that update was not applied and nothing was saved after it")
        per_block: dict[int, list] = {}
        for step, block, block_step, loss, grad_norm in entries:
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
        self.bar.update(sum(e[5] for e in self.pending))
        self.bar.set_postfix_str(" ".join(f"b{b}={v:.3f}" for b, v in sorted(self.last_loss.items())))
        self.pending.clear()

    def close(self) -> None:
        self.bar.close()
