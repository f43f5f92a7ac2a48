"""Networks of dblocks-jax, built from layers shared by their families.

`layers` holds the building blocks (embeddings, the adaLN-Zero transformer layer and `LayerStack`,
a depth-`L` stack of such layers applied with one `lax.scan`, so that compile time does not grow
with depth); `dit` holds the DiT denoiser F of one image-generation block, `vit` the ViT of one
classification block, `transformer` the bidirectional transformer of one masked-diffusion LM block.
"""

from dblocks_jax.models.dit import DiT
from dblocks_jax.models.layers import (AdaLNZeroLayer, LayerStack, modulate, patchify, sincos_pos_embedding,
                                       timestep_embedding)
from dblocks_jax.models.transformer import Transformer
from dblocks_jax.models.vit import ViT

__all__ = ["AdaLNZeroLayer", "DiT", "LayerStack", "Transformer", "ViT", "modulate", "patchify", "sincos_pos_embedding",
           "timestep_embedding"]
