"""Multi-process plumbing: joining a run, agreeing on errors, sharing small JSON values.

Every decision that could leave a process waiting in a collective (a failed save, a non-finite
loss, which checkpoint to resume from) is voted on, so all processes stop or go on together.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import numpy as np


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Join a multi-process run (`jax.distributed.initialize`) when a coordinator is given by
    argument or by JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES and JAX_PROCESS_ID, or what
    JAX detects on SLURM, GKE, ...). Returns whether it did; must run before JAX touches devices."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise ValueError("--num-processes/--process-id need --coordinator (or JAX_COORDINATOR_ADDRESS)")
        return False
    num_processes = num_processes if num_processes is not None else _int_env("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env("JAX_PROCESS_ID")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices of several processes
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer") from None


def all_processes(ok: bool) -> bool:
    """Whether `ok` holds on every process."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def raise_everywhere(error: BaseException | None, fallback: Callable[[], BaseException]) -> None:
    """Raise `error` here, or `fallback()` if another process failed and this one did not."""
    if not all_processes(error is None):
        raise error or fallback()


def on_process_zero(fn: Callable[[], Any]) -> None:
    """Run `fn` on process 0 (shared files); if it fails, every process stops."""
    error = None
    if jax.process_index() == 0:
        try:
            fn()
        except Exception as err:
            error = err
    raise_everywhere(error, lambda: ValueError("process 0 could not prepare the run directory (see its log)"))


def sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_json(values: dict[int, Any]) -> dict[int, Any]:
    """Merge {int: JSON-able value} dicts from every process."""
    from jax.experimental import multihost_utils

    payload = np.frombuffer(json.dumps({str(k): v for k, v in values.items()}).encode(), np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.asarray([payload.size]))))
    padded = np.zeros(size, np.uint8)
    padded[:payload.size] = payload
    merged: dict[int, Any] = {}
    for row in np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, size):
        merged.update({int(k): v for k, v in json.loads(bytes(row).rstrip(b"\0").decode()).items()})
    return merged
