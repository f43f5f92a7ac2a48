"""Networks of dblocks-jax, built from layers shared by their families.

`layers` holds the building blocks (embeddings, the adaLN-Zero transformer layer and `LayerStack`,
a depth-`L` stack of such layers applied with one `lax.scan`, so that compile time does not grow
with depth); `dit` holds the DiT denoiser F of one DiffusionBlocks block.
"""

from dblocks_jax.models.dit import DiT
from dblocks_jax.models.layers import (AdaLNZeroLayer, LayerStack, modulate, sincos_pos_embedding,
                                       timestep_embedding)

__all__ = ["AdaLNZeroLayer", "DiT", "LayerStack", "modulate", "sincos_pos_embedding", "timestep_embedding"]
