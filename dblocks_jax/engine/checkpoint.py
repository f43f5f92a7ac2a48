"""Orbax checkpoints, one manager per block: <workdir>/checkpoints/block_XXX/<block step>/.

Blocks are independent models, so each has its own directory and history: a block can be saved,
restored, or trained on another machine without touching the others. A checkpoint holds the
block's state (parameters, optimizer state, EMA) and a JSON record: the block step, the run step
it was taken at, the data stream's state and a CRC32 of every array, so that a silently corrupted
file is caught on restore, not trained on.

Saves are asynchronous (orbax writes host copies in the background and commits each step by an
atomic rename), so a crash or a full disk during a save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (full disk, permissions...); earlier ones are intact."""


class CorruptCheckpointError(ValueError):
    """A checkpoint exists but cannot be read back as written; the message names its directory."""


class IncompatibleCheckpointError(ValueError):
    """A checkpoint reads back intact but does not fit the model of this config (another
    architecture): not corruption, so a resume must not fall back past it."""


def block_dir(workdir: str, block: int) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints", f"block_{block:03d}")


def step_dir(workdir: str, block: int, step: int) -> str:
    return os.path.join(block_dir(workdir, block), str(step))


def checksum(tree: Any) -> str:
    """CRC32 over the bytes of every leaf, in tree order (cheap: ~GB/s)."""
    crc = 0
    for leaf in jax.tree.leaves(tree):
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes(), crc)
    return f"{crc:08x}"


def _manager(workdir: str, block: int, max_to_keep: int | None = None, writer: bool = True) -> ocp.CheckpointManager:
    """A manager for one block. In a multi-process run, checkpoints are gathered to process 0,
    which writes them all (orbax 0.12 writes host arrays from process 0 only), so a writing manager
    involves process 0 alone; a reading one (`writer=False`) involves only the calling process."""
    path = block_dir(workdir, block)
    os.makedirs(path, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False, enable_async_checkpointing=True)
    if jax.process_count() > 1:
        owner = 0 if writer else jax.process_index()
        options = dataclasses.replace(options, multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=owner, active_processes={owner}, barrier_sync_key_prefix=f"dblocks_b{block}_p{owner}"))
    return ocp.CheckpointManager(path, options=options)


class BlockCheckpoints:
    """The run's per-block managers, opened on first use and kept for the whole run so that saves
    overlap with training. A failed background save surfaces at the block's next save or at
    `wait`, as a CheckpointSaveError naming the directory."""

    def __init__(self, workdir: str, keep: int):
        self.workdir, self.keep = workdir, keep
        self._managers: dict[int, ocp.CheckpointManager] = {}
        self._pending: dict[int, int] = {}

    def _get(self, block: int) -> ocp.CheckpointManager:
        if block not in self._managers:
            self._managers[block] = _manager(self.workdir, block, self.keep)
        return self._managers[block]

    def _finish(self, block: int) -> None:
        manager = self._get(block)
        try:
            manager.wait_until_finished()
        except Exception as err:
            step = self._pending.get(block)
            raise CheckpointSaveError(
                f"saving block {block} at step {step} to {step_dir(self.workdir, block, step)} failed: {err}; "
                f"the earlier checkpoints in {block_dir(self.workdir, block)} are intact") from err
        self._pending.pop(block, None)

    def save(self, block: int, step: int, host_state: Any, record: dict) -> None:
        """Start writing block `block` at its step `step` (host arrays; they must not change)."""
        self._finish(block)
        manager = self._get(block)
        if step in manager.all_steps():
            return
        record = {**record, "block": block, "block_step": step, "checksum": checksum(host_state)}
        self._pending[block] = step
        try:
            saved = manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                                               record=ocp.args.JsonSave(record)))
            if not saved:  # orbax declines steps at or below its newest one
                raise RuntimeError(f"orbax declined step {step}; newest is {manager.latest_step()}")
        except Exception as err:
            raise CheckpointSaveError(
                f"saving block {block} at step {step} to {step_dir(self.workdir, block, step)} failed: {err}; "
                f"the earlier checkpoints in {block_dir(self.workdir, block)} are intact") from err

    def wait(self) -> None:
        for block in list(self._managers):
            self._finish(block)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            for manager in self._managers.values():
                manager.close()
            self._managers.clear()


def all_steps(workdir: str, block: int) -> list[int]:
    """Committed checkpoint steps of a block, ascending (a save cut short is not listed)."""
    path = block_dir(workdir, block)
    if not os.path.isdir(path):
        return []
    with _manager(workdir, block, writer=False) as manager:
        return sorted(manager.all_steps())


def read_record(workdir: str, block: int, step: int) -> dict | None:
    """The JSON record of one checkpoint, read directly (None if missing or unreadable)."""
    try:
        with open(os.path.join(step_dir(workdir, block, step), "record", "metadata")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def discard_steps(workdir: str, block: int, steps) -> list[str]:
    """Move checkpoints of a block out of its history, to checkpoints/discarded/block_XXX/<step>
    (a resumed run rewrites those steps; nothing is deleted, in case one only failed to read)."""
    moved = []
    for step in steps:
        target = os.path.join(os.path.abspath(workdir), "checkpoints", "discarded", f"block_{block:03d}", str(step))
        if os.path.exists(target):
            target += f".{len(os.listdir(os.path.dirname(target)))}"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(step_dir(workdir, block, step), target)
        moved.append(target)
    return moved


def leaf_path(path) -> str:
    """`params/patch_embed/kernel` for a tree path (attribute, key and index entries)."""
    parts = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path]
    return "/".join(p for p in parts if p != "value")


def first_shape_mismatch(tree: Any, abstract: Any) -> str | None:
    """The first leaf whose shape differs between a restored tree and the one the model expects
    (orbax restores what was saved, whatever the target's shape)."""
    got, _ = jax.tree_util.tree_flatten_with_path(tree)
    want = jax.tree.leaves(abstract)
    if len(got) != len(want):
        return f"{len(got)} arrays in the checkpoint, {len(want)} in this config"
    for (path, leaf), expected in zip(got, want):
        if tuple(np.shape(leaf)) != tuple(expected.shape):
            return (f"{leaf_path(path)} has shape {tuple(np.shape(leaf))} in the checkpoint, "
                    f"{tuple(expected.shape)} in this config")
    return None


def latest_step(workdir: str, block: int) -> int | None:
    steps = all_steps(workdir, block)
    return steps[-1] if steps else None


def restore_block(workdir: str, block: int, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restore block `block` (newest step unless `step` is given) into the structure of
    `abstract_state`, verified against its checksum. Returns (state, record)."""
    step = latest_step(workdir, block) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint for block {block} in {block_dir(workdir, block)}")
    path = step_dir(workdir, block, step)
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract_state)  # restored as host arrays
    try:
        with _manager(workdir, block, writer=False) as manager:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                     record=ocp.args.JsonRestore()))
    except Exception as err:  # orbax raises many types; the user needs the path
        raise CorruptCheckpointError(f"cannot restore block {block} from {path} (truncated or corrupted?): "
                                     f"{type(err).__name__}: {err}") from err
    state, record = restored["state"], dict(restored["record"])
    mismatch = first_shape_mismatch(state, abstract_state)
    if mismatch:
        raise IncompatibleCheckpointError(f"checkpoint {path} does not fit this config: {mismatch} (was it written with "
                                     f"another model config? compare config.json with the run that saved it)")
    if record.get("checksum") != checksum(state):
        raise CorruptCheckpointError(f"checkpoint {path} is corrupted: its arrays do not match the checksum "
                                     f"written with them")
    return state, record
