"""dblocks-jax: DiffusionBlocks (Shing et al., arXiv 2506.14202) in JAX and Flax NNX.

A residual network cut into B blocks, each trained alone as a denoiser for its own band of noise
levels, chained at inference by a probability-flow ODE sampler.
"""

from dblocks_jax.config import PRESETS, Config, get_config
from dblocks_jax.edm import EDM
from dblocks_jax.model import BlockModel, DiT
from dblocks_jax.partition import BlockPartition
from dblocks_jax.sampling import generate, make_sampler
from dblocks_jax.training import NonFiniteLossError, TrainResult, train

__all__ = ["BlockModel", "BlockPartition", "Config", "DiT", "EDM", "NonFiniteLossError", "PRESETS",
           "TrainResult", "generate", "get_config", "make_sampler", "train"]
__version__ = "0.1.0"
