"""Orbax checkpoints, one manager per block: <workdir>/checkpoints/block_XXX/<step>/.

Blocks are independent models, so each has its own directory and history: a block can be saved,
restored, or trained on another machine without touching the others.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def block_dir(workdir: str, block: int) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints", f"block_{block:03d}")


def _manager(workdir: str, block: int, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(block_dir(workdir, block), options=options)


def save_block(workdir: str, block: int, step: int, state: Any) -> None:
    """Save one block's state (parameters and optimizer state) at its own step count."""
    with _manager(workdir, block) as manager:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()


def latest_step(workdir: str, block: int) -> int | None:
    path = block_dir(workdir, block)
    if not os.path.isdir(path):
        return None
    with _manager(workdir, block) as manager:
        return manager.latest_step()


def restore_block(workdir: str, block: int, abstract_state: Any, step: int | None = None) -> Any:
    """Restore block `block` (newest step unless `step` is given) into the structure of
    `abstract_state`; errors name the checkpoint directory."""
    path = block_dir(workdir, block)
    step = latest_step(workdir, block) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint for block {block} in {path}")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
        with _manager(workdir, block) as manager:
            return manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as err:  # orbax raises many types; the user needs the path
        raise ValueError(f"cannot restore block {block} from {os.path.join(path, str(step))}: {err}") from err
