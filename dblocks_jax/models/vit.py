"""ViT: the network of one DiffusionBlocks classification block (paper Table 1).

A Vision Transformer (Dosovitskiy et al., ICLR 2021) whose CLS token is the diffusion state: in
the diffusion objective the block receives c_in z, with z = y + sigma eps a noisy copy of the
L2-normalised label embedding y, *in place of* the CLS token (plus its position embedding),
followed by the image's patch tokens. The layers are DiT's adaLN-Zero layers conditioned on the
noise level, applied as one scanned `LayerStack`. The read-out splits in two so that the task can
put the EDM preconditioning between them:

- `features(images, cls_BD, c_noise_B)` -> (h_BD, cond_BD): the CLS position after the final norm;
- `logits(d_BD, cond_BD)`: the denoised embedding D = c_out h + c_skip z through a final adaLN and
  a linear head.

With `plain=True` the same network is an ordinary ViT classifier: a learned CLS token, a constant
conditioning (c_noise = 0), logits = head(h). That is the end-to-end baseline users compare with
(Table 1's 60.25 %), built from the same layers.

Every block owns its patch embedding, position embedding, label table, noise embedding, layers and
head (the released code shares the embeddings and the head across blocks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.models.layers import NOISE_FEATURES, LayerStack, dropout, modulate, patchify, noise_conditioning

_zeros = nnx.initializers.zeros_init()
_xavier = nnx.initializers.xavier_uniform()
_normal = nnx.initializers.normal(0.02)



def normalized_rows(table_CD: jax.Array) -> jax.Array:
    """Each row scaled to unit L2 norm (the diffusion targets, paper sec. 4.2), in float32."""
    table_CD = table_CD.astype(jnp.float32)
    return table_CD / jnp.maximum(jnp.linalg.norm(table_CD, axis=-1, keepdims=True), 1e-12)


class ViT(nnx.Module):
    """Parameters: `patch_embed`, `pos_embed` (learned, CLS + patches), `noise_mlp1/2`,
    `label_embed` (num_classes x width; diffusion) or `cls_token` (plain), `layers` (stacked),
    `final_norm`, `head_ada` and `head`."""

    def __init__(self, *, image_size: int, channels: int, patch_size: int, width: int, depth: int, num_heads: int,
                 mlp_ratio: float, num_classes: int, plain: bool = False, dropout: float = 0.0,
                 dtype=jnp.float32, remat: bool = False, scan_layers: bool = True, attention: str = "auto",
                 rngs: nnx.Rngs):
        self.patch_size, self.plain, self.dropout_rate = patch_size, plain, dropout
        tokens = (image_size // patch_size) ** 2 + 1
        self.patch_embed = nnx.Linear(patch_size * patch_size * channels, width, kernel_init=_xavier, dtype=dtype,
                                      rngs=rngs)
        self.pos_embed = nnx.Param(_normal(rngs.params(), (tokens, width), jnp.float32))
        self.noise_mlp1 = nnx.Linear(NOISE_FEATURES, width, kernel_init=_normal, rngs=rngs)
        self.noise_mlp2 = nnx.Linear(width, width, kernel_init=_normal, rngs=rngs)
        if plain:
            self.cls_token = nnx.Param(_normal(rngs.params(), (width,), jnp.float32))
        else:
            self.label_embed = nnx.Param(_normal(rngs.params(), (num_classes, width), jnp.float32))
        self.layers = LayerStack(depth, width, num_heads, mlp_ratio, dtype, remat=remat, scan=scan_layers,
                                 dropout=dropout, attention=attention, rngs=rngs)
        self.final_norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.head_norm = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.head_ada = nnx.Linear(width, 2 * width, kernel_init=_zeros, dtype=dtype, rngs=rngs)
        # Not zero (unlike a DiT's output layer): with zero gates in every layer, a zero head would
        # leave the gates and the head waiting on each other (a saddle that slows the start).
        self.head = nnx.Linear(width, num_classes, kernel_init=_xavier, dtype=dtype, rngs=rngs)

    def table(self) -> jax.Array:
        """The L2-normalised label table E-hat (num_classes, width): the targets of the diffusion."""
        return normalized_rows(self.label_embed[...])

    def features(self, images_BHWC: jax.Array, cls_BD: jax.Array | None, c_noise_B: jax.Array,
                 depth: jax.Array | None = None, keys_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(h_BD, cond_BD): the CLS position after the final norm, and the noise conditioning.
        `cls_BD` is the diffusion input c_in z (None for a plain ViT: its learned CLS token);
        `keys_B` (one key per example) switches dropout on."""
        patches_BLD = self.patch_embed(patchify(images_BHWC, self.patch_size))
        b = patches_BLD.shape[0]
        if cls_BD is None:
            cls_BD = jnp.broadcast_to(self.cls_token[...], (b, patches_BLD.shape[-1]))
        tokens_BLD = jnp.concatenate([cls_BD[:, None, :].astype(patches_BLD.dtype), patches_BLD], axis=1)
        tokens_BLD = tokens_BLD + self.pos_embed[...].astype(tokens_BLD.dtype)
        if keys_B is not None and self.dropout_rate:
            tokens_BLD = dropout(tokens_BLD, self.dropout_rate, keys_B, 0)
        cond_BD = noise_conditioning(self.noise_mlp1, self.noise_mlp2, c_noise_B)
        tokens_BLD = self.layers(tokens_BLD, cond_BD, depth, keys_B)
        return self.final_norm(tokens_BLD[:, 0]).astype(jnp.float32), cond_BD

    def logits(self, d_BD: jax.Array, cond_BD: jax.Array) -> jax.Array:
        """Logits (float32) of the denoised embedding D through the final adaLN and the head."""
        shift_BD, scale_BD = jnp.split(self.head_ada(nnx.silu(cond_BD)), 2, axis=-1)
        h_BD = modulate(self.head_norm(d_BD)[:, None, :], shift_BD, scale_BD)[:, 0]
        return self.head(h_BD).astype(jnp.float32)
