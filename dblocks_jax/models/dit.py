"""DiT: the denoiser network F of one DiffusionBlocks block.

A Diffusion Transformer (Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023,
arXiv 2212.09748): the image is cut into patches with a fixed sine-cosine position embedding, the
noise level (and optionally the class) is embedded into one conditioning vector, `depth` adaLN-Zero
transformer layers process the tokens, and a final adaLN + linear layer maps them back to patches.

The final linear and every modulation start at zero, so a fresh DiT outputs F = 0; under the EDM
preconditioning the block then denoises to D = c_skip z, a sensible starting point. The layers form
a `LayerStack` (scanned), so compile time does not grow with depth, and a traced `depth` lets the
blocks of an uneven layer split share one parameter structure.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.models.layers import (NOISE_FEATURES, LayerStack, modulate, patchify, sincos_pos_embedding,
                                       noise_conditioning)

_zeros = nnx.initializers.zeros_init()
_xavier = nnx.initializers.xavier_uniform()
_normal = nnx.initializers.normal(0.02)



class DiT(nnx.Module):
    """The network F of one block: patchify + position embedding, noise (and class) embedding,
    `depth` adaLN-Zero layers, final adaLN + linear + unpatchify.

    Parameters live at `patch_embed`, `noise_mlp1`, `noise_mlp2`, `class_embed` (if `num_classes`),
    `layers` (a LayerStack; its leaves have a leading axis of size `depth`), `final_norm`,
    `final_ada` and `final_linear`.
    """

    def __init__(self, *, image_size: int, channels: int, patch_size: int, width: int, depth: int,
                 num_heads: int, mlp_ratio: float, num_classes: int, dtype=jnp.float32, remat: bool = False,
                 scan_layers: bool = True, attention: str = "auto", rngs: nnx.Rngs):
        self.patch_size, self.width, self.num_classes = patch_size, width, num_classes
        self.grid = image_size // patch_size
        patch_dim = patch_size * patch_size * channels
        self.patch_embed = nnx.Linear(patch_dim, width, kernel_init=_xavier, dtype=dtype, rngs=rngs)
        self.noise_mlp1 = nnx.Linear(NOISE_FEATURES, width, kernel_init=_normal, rngs=rngs)
        self.noise_mlp2 = nnx.Linear(width, width, kernel_init=_normal, rngs=rngs)
        if num_classes:  # one extra row: the null class used for label dropout / guidance
            self.class_embed = nnx.Embed(num_classes + 1, width, embedding_init=_normal, rngs=rngs)
        self.layers = LayerStack(depth, width, num_heads, mlp_ratio, dtype, remat=remat, scan=scan_layers,
                                 attention=attention, rngs=rngs)
        self.final_norm = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.final_ada = nnx.Linear(width, 2 * width, kernel_init=_zeros, dtype=dtype, rngs=rngs)
        self.final_linear = nnx.Linear(width, patch_dim, kernel_init=_zeros, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, c_noise: jax.Array, labels: jax.Array | None = None,
                 depth: jax.Array | None = None) -> jax.Array:
        """F(x, c_noise[, labels]) for images x (B, H, W, C) and noise levels c_noise (B,);
        `depth` (may be traced) runs only the first `depth` layers, the rest being the identity."""
        b, h, w, c = x.shape
        p, g = self.patch_size, self.grid
        tokens_BLD = self.patch_embed(patchify(x, p)) + sincos_pos_embedding(g, self.width)  # fixed, not trained
        cond_BD = noise_conditioning(self.noise_mlp1, self.noise_mlp2, c_noise)
        if self.num_classes:
            if labels is None:
                raise ValueError("this block is class-conditional: pass labels (num_classes = null class)")
            cond_BD = cond_BD + self.class_embed(labels)
        tokens_BLD = self.layers(tokens_BLD, cond_BD, depth)
        shift_BD, scale_BD = jnp.split(self.final_ada(nnx.silu(cond_BD)), 2, axis=-1)
        out_BLP = self.final_linear(modulate(self.final_norm(tokens_BLD), shift_BD, scale_BD))
        return out_BLP.reshape(b, g, g, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
