"""dblocks-jax: DiffusionBlocks (Shing et al., arXiv 2506.14202) in JAX and Flax NNX.

A residual network cut into B blocks, each trained alone as a denoiser for its own band of noise
levels, chained at inference. `engine` holds the method (task-free), `tasks` the problems it is
applied to, `models`, `data` and `evaluation` what the tasks are built from.

The names below are loaded on first use, so that importing `dblocks_jax.engine` (or any other
subpackage) does not pull in the task layer.
"""

import importlib

_EXPORTS = {
    "PRESETS": "dblocks_jax.presets", "Config": "dblocks_jax.config", "get_config": "dblocks_jax.presets",
    "config_class": "dblocks_jax.config", "make_config": "dblocks_jax.config", "evaluate": "dblocks_jax.runs",
    "task_class": "dblocks_jax.tasks", "task_names": "dblocks_jax.tasks",
    "EDM": "dblocks_jax.engine.edm", "LinearMasking": "dblocks_jax.engine.masking",
    "NonFiniteLossError": "dblocks_jax.engine.logger",
    "TrainResult": "dblocks_jax.engine.loop", "BlockPartition": "dblocks_jax.engine.partition",
    "load_run": "dblocks_jax.runs", "read_run_config": "dblocks_jax.runs", "train": "dblocks_jax.runs",
    "make_task": "dblocks_jax.tasks",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.3.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dblocks_jax' has no attribute {name!r}")
