"""The training loop: one block at a time, every block with its own parameters and Optax state.

Every schedule runs the same compiled block step over a *plan* (the paper's schedules):

- `interleaved`: each step trains one uniformly drawn block; all blocks stay resident.
- `sequential`: block 0 for `steps` steps, then block 1, ...; a block's state is created at its
  first step and saved, copied to the host and deleted from the device after its last, so only
  one block is ever resident: the full B-fold memory saving.
- `parallel`: every block takes one step per position, on its own devices (`engine.parallel`).

End-to-end training is B = 1 of the same code. Nothing here knows what the task's data is: the
task gives each block's data stream and the block's loss; the loop moves states, batches,
checkpoints and metrics.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from dblocks_jax.engine import checkpoint, distributed, rundir
from dblocks_jax.engine.lock import RunLock
from dblocks_jax.engine.logger import MetricsLogger
from dblocks_jax.engine.prefetch import DevicePrefetch
from dblocks_jax.engine.trainer import BlockState, BlockTrainer, Params, block_plan


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: where it stopped. The checkpoints already committed are intact."""

    def __init__(self, position: int, length: int, workdir: str | None):
        super().__init__(f"interrupted after step {position} of {length}")
        self.position, self.length, self.workdir = position, length, workdir


def check_memory(task) -> None:
    """Refuse, before compiling, a config whose lower bound of memory (`task.memory_floor()`) does
    not fit in what the device (or, for data, the host) has."""
    for needed, where, what in task.memory_floor():
        available = available_bytes(where)
        if available is not None and needed > available:
            raise ValueError(f"{what} needs at least {needed / 2**30:,.1f} GiB of {where} memory; "
                             f"{available / 2**30:,.1f} GiB available")


def available_bytes(where: str) -> int | None:
    """Memory the device can hold (its allocator's limit, or the host's free memory for a CPU
    device), or the host's free memory."""
    if where == "device":
        stats = jax.local_devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        return int(info["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError):
        return None


@dataclasses.dataclass
class TrainResult:
    config: Any
    workdir: str | None
    params: list[Params]  # per block, on the host: the EMA parameters (the raw ones if ema_decay = 0)
    block_steps: list[int]  # optimizer steps each block took
    final_loss: list[float]  # per block, mean loss over its last logging interval


def train(task, workdir: str | None = None, *, overwrite: bool = False, resume: bool = False,
          blocks: Sequence[int] | None = None, batches: Callable[[int], Iterator[Any]] | None = None,
          on_step: Callable[[int, int, dict], None] | None = None, progress: bool = True,
          write_artifacts: bool = True) -> TrainResult:
    """Train the blocks of `task` (all, or just `blocks`) under its config's schedule.

    With a `workdir`: config.json, run.json, metrics.jsonl, checkpoints/block_XXX (every
    `run.checkpoint_every` steps and when a block finishes) and, once every block is trained, the
    task's artifacts (`task.write_artifacts`, e.g. a sample grid). `resume` continues the run in
    `workdir` from its newest intact checkpoint (or starts it). `batches(block)` overrides a
    block's data stream; `on_step(step, block, resident_states)` runs after every step.
    """
    config = task.config
    blocks = _blocks_to_train(task.num_blocks, blocks)
    if jax.process_count() > 1 and config.schedule.name != "parallel":
        raise ValueError(f"schedule.name={config.schedule.name!r} trains on one process; a multi-process run "
                         f"needs schedule.name='parallel'")
    task.check_data()  # the data exists (I/O), before anything compiles
    check_memory(task)
    lock = RunLock(workdir) if workdir and jax.process_index() == 0 else None
    if lock is not None:  # before anything is written: a second writer is refused, an unwritable path named
        lock.acquire()
    try:
        return _train_locked(task, workdir, overwrite, resume, blocks, batches, on_step, progress, write_artifacts)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(task, workdir, overwrite, resume, blocks, batches, on_step, progress, write_artifacts):
    config = task.config
    trainer = BlockTrainer(task)
    parallel = _parallel_trainer(trainer, blocks) if config.schedule.name == "parallel" else None
    run = _Run(config, task.num_blocks, blocks, parallel)
    position, restored, store = 0, {}, None
    if workdir:
        fingerprint = task.data_fingerprint()
        if resume and os.path.exists(rundir.config_path(workdir)):
            rundir.check_resumable(workdir, config, blocks, fingerprint)
            position, restored = rundir.resume_point(workdir, trainer, run)
            # Only sampling and bookkeeping fields may differ: the directory records what is in effect.
            distributed.on_process_zero(lambda: rundir.write_config(workdir, config))
        else:  # a new run (--resume on an empty directory starts one)
            distributed.on_process_zero(lambda: rundir.prepare(workdir, config, overwrite))
        distributed.on_process_zero(lambda: rundir.write_run_record(workdir, blocks, task.partition, fingerprint))
        distributed.sync_processes("dblocks_workdir_ready")
        store = checkpoint.BlockCheckpoints(workdir, config.run.keep_checkpoints)
    batches = batches or task.train_batches
    streams = {b: batches(b) for b in run.local_blocks}
    if parallel is None and config.run.prefetch:  # the parallel step assembles its global batch itself
        streams = {b: DevicePrefetch(s, config.run.prefetch, block=b) for b, s in streams.items()}
    session = _Session(config, trainer, run, store, streams=streams,
                       block_steps=run.block_steps_at(position), on_step=on_step, position=position)
    for b, (_, record) in restored.items():
        if 0 < session.block_steps[b] < config.optim.steps:
            rundir.restore_stream(session.streams[b], record.get("data"), b)
    session.logger = MetricsLogger(config, task.num_blocks, workdir, total=len(blocks) * config.optim.steps,
                                   progress=progress, position=position, initial=sum(session.block_steps.values()),
                                   block_steps=session.block_steps)
    session.host_params = {b: jax.device_get(state.ema) for b, (state, _) in restored.items()
                           if session.block_steps[b] == config.optim.steps}
    try:
        try:
            if parallel is None:
                session.train_single_device(position, restored)
            else:
                session.train_parallel(parallel, position, restored)
        except KeyboardInterrupt:
            raise TrainingInterrupted(session.position, run.length, workdir) from None
        if store is not None:  # the last saves are still being written
            error = None
            try:
                store.wait()
            except checkpoint.CheckpointSaveError as err:
                error = err
            distributed.raise_everywhere(error, lambda: checkpoint.CheckpointSaveError(
                "process 0 could not save a checkpoint (see its log)"))
    finally:
        session.logger.close()
        if store is not None:
            store.close()

    params = [session.host_params.get(b) for b in range(task.num_blocks)]
    if workdir and write_artifacts and all(p is not None for p in params) and jax.process_index() == 0:
        task.write_artifacts(workdir, params)
    return TrainResult(config, workdir, params, [session.block_steps.get(b, 0) for b in range(task.num_blocks)],
                       [session.logger.last_loss.get(b, float("nan")) for b in range(task.num_blocks)])


class _Run:
    """Which block trains at each position of the run, and where its blocks live. A position is
    one step of the plan: one block step for the single-device schedules, one step of every block
    for the parallel one."""

    def __init__(self, config, num_blocks: int, blocks: list[int], parallel):
        self.num_blocks, self.blocks = num_blocks, blocks
        if parallel is None:
            self.plan = block_plan(num_blocks, config.optim.steps, config.schedule.name, config.run.seed, blocks)
            self.length = len(self.plan)
            self.local_blocks = self.owned_blocks = list(blocks)
        else:
            self.plan = None
            self.length = config.optim.steps
            self.local_blocks = [blocks[i] for i in parallel.local_positions]
            # One process writes every checkpoint of a multi-process run (see checkpoint.py).
            self.owned_blocks = list(blocks) if jax.process_index() == 0 else []

    def block_steps_at(self, position: int) -> dict[int, int]:
        """Steps each block has taken once `position` steps of the run are done."""
        if self.plan is None:
            return {b: position for b in self.blocks}
        counts = np.bincount(self.plan[:position], minlength=self.num_blocks)
        return {b: int(counts[b]) for b in self.blocks}


@dataclasses.dataclass
class _Session:
    """The moving parts of one call of `train`, shared by the schedule executors."""

    config: Any
    trainer: BlockTrainer
    run: _Run
    store: checkpoint.BlockCheckpoints | None
    streams: dict[int, Iterator]
    block_steps: dict[int, int]
    on_step: Callable | None
    position: int  # run steps completed, for a message if training is interrupted
    logger: MetricsLogger | None = None
    host_params: dict[int, Params] = dataclasses.field(default_factory=dict)

    def save(self, b: int, host_state: BlockState, pos: int, stream_state: Any = None) -> None:
        if self.store is not None and b in self.run.owned_blocks and self.block_steps[b] > 0:
            stream_state = rundir.stream_state(self.streams[b]) if stream_state is None else stream_state
            self.store.save(b, self.block_steps[b], host_state,
                            {"run_step": pos, "seed": self.config.run.seed, "data": stream_state})

    def checkpoint_due(self, pos: int) -> bool:
        every = self.config.run.checkpoint_every
        return bool(every) and pos % every == 0

    def train_single_device(self, position: int, restored: dict) -> None:
        """interleaved and sequential: one block step per position."""
        config, trainer, run, steps = self.config, self.trainer, self.run, self.config.optim.steps
        last_step = {int(b): int(t) for t, b in enumerate(run.plan)}
        resident: dict[int, BlockState] = {b: jax.device_put(state) for b, (state, _) in restored.items()
                                           if self.block_steps[b] < steps}
        if config.schedule.name == "interleaved":  # the paper's schedule keeps every block resident
            resident.update({b: trainer.init_state(b) for b in run.blocks
                             if b not in resident and self.block_steps[b] < steps})

        def to_host(b: int, pos: int, drop: bool) -> None:
            state = resident.pop(b) if drop else resident[b]
            host_state = jax.device_get(state)
            if drop:  # the block is done: free its device memory, keep what sampling needs
                jax.tree.map(lambda x: x.delete(), state)
                self.host_params[b] = host_state.ema
            self.save(b, host_state, pos)
            if drop and isinstance(self.streams[b], DevicePrefetch):  # and the batches read ahead for it
                self.streams[b].close()

        for t in range(position, run.length):
            b = int(run.plan[t])
            if b not in resident:
                resident[b] = trainer.init_state(b)
                self.logger.set_block(b)
            resident[b], metrics = trainer.train_step(resident[b], next(self.streams[b]), b, self.block_steps[b])
            self.logger.record(t, [b], [self.block_steps[b]], metrics)
            self.block_steps[b] += 1
            self.position = pos = t + 1
            if self.on_step is not None:
                self.on_step(t, b, resident)
            finished, checkpoint_now = last_step[b] == t, self.checkpoint_due(pos)
            if pos % config.run.log_every == 0 or finished or checkpoint_now:
                self.logger.flush()  # never save past a non-finite loss
            if finished:
                to_host(b, pos, drop=True)
            if checkpoint_now:
                for other in [r for r in resident if self.block_steps[r] > 0]:  # untrained: nothing to save
                    to_host(other, pos, drop=False)

    def train_parallel(self, parallel, position: int, restored: dict) -> None:
        """parallel: every block takes one step per position, on its own devices."""
        run, blocks, local = self.run, self.run.blocks, self.run.local_blocks
        if position:
            states = parallel.stack_states({i: restored[blocks[i]][0] for i in parallel.local_positions},
                                           self.trainer.abstract_state)
        else:
            states = parallel.init_states(parallel.block_ids)
        for t in range(position, run.length):
            batch = parallel.global_batch({b: next(self.streams[b]) for b in local})
            states, metrics = parallel.train_step(states, batch, t)
            self.logger.record(t, local, [t] * len(local), metrics, fetch=parallel.local_rows, count=len(blocks))
            for b in blocks:
                self.block_steps[b] = t + 1
            self.position = pos = t + 1
            if self.on_step is not None:
                self.on_step(t, None, {})
            checkpoint_now = self.checkpoint_due(pos) or pos == run.length
            if pos % self.config.run.log_every == 0 or checkpoint_now:
                self.logger.flush_everywhere()
            if checkpoint_now:
                self._save_parallel(parallel, states, pos)

    def _save_parallel(self, parallel, states, pos: int) -> None:
        blocks, local = self.run.blocks, self.run.local_blocks
        if jax.process_count() == 1:
            rows, stream_states = parallel.local_rows(states), {}
        else:  # every block to process 0, which writes them (checkpoint.py says why)
            rows = parallel.gather_rows(states)
            stream_states = distributed.gather_json({b: rundir.stream_state(self.streams[b]) for b in local})
        error = None
        try:
            for i, host_state in rows.items():
                self.save(blocks[i], host_state, pos, stream_states.get(blocks[i]))
                if pos == self.run.length and blocks[i] in local:
                    self.host_params[blocks[i]] = host_state.ema
        except checkpoint.CheckpointSaveError as err:
            error = err
        distributed.raise_everywhere(error, lambda: checkpoint.CheckpointSaveError(
            "process 0 could not save a checkpoint (see its log)"))


def _blocks_to_train(num_blocks: int, blocks: Sequence[int] | None) -> list[int]:
    if blocks is None:
        return list(range(num_blocks))
    chosen = sorted(set(int(b) for b in blocks))
    if not chosen or chosen[0] < 0 or chosen[-1] >= num_blocks:
        raise ValueError(f"blocks={list(blocks)}; allowed: a non-empty subset of 0..{num_blocks - 1}")
    return chosen


def _parallel_trainer(trainer: BlockTrainer, blocks: list[int]):
    """The mesh and compiled parallel step; the device count is checked before anything compiles."""
    from dblocks_jax.engine import parallel

    schedule = trainer.config.schedule
    shape = parallel.mesh_shape(len(blocks), schedule.block_shards, schedule.data_shards, jax.device_count())
    if jax.process_count() > 1 and shape[0] * shape[1] != jax.device_count():
        raise ValueError(f"a multi-process run must use every device: block_shards x data_shards = {shape[0]} x "
                         f"{shape[1]} = {shape[0] * shape[1]}, but there are {jax.device_count()} devices over "
                         f"{jax.process_count()} processes; set block_shards and data_shards to fill them")
    return parallel.ParallelTrainer(trainer, blocks, parallel.make_block_mesh(shape))
