"""dblocks-jax: DiffusionBlocks (Shing et al., arXiv 2506.14202) in JAX and Flax NNX.

A residual network cut into B blocks, each trained alone as a denoiser for its own band of noise
levels, chained at inference. `engine` holds the method (task-free), `tasks` the problems it is
applied to, `models`, `data` and `evaluation` what the tasks are built from.
"""

from dblocks_jax.config import PRESETS, Config, get_config
from dblocks_jax.engine.edm import EDM
from dblocks_jax.engine.logger import NonFiniteLossError
from dblocks_jax.engine.loop import TrainResult
from dblocks_jax.engine.partition import BlockPartition
from dblocks_jax.runs import load_run, read_run_config, train
from dblocks_jax.tasks import make_task

__all__ = ["BlockPartition", "Config", "EDM", "NonFiniteLossError", "PRESETS", "TrainResult", "get_config",
           "load_run", "make_task", "read_run_config", "train"]
__version__ = "0.2.0"
