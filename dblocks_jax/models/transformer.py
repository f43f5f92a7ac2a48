"""Transformer: the network of one masked-diffusion language-model block (paper Table 3).

A bidirectional transformer over token ids (MD4's denoiser, Shi et al. 2024): the input is a
partly masked sequence z_t (the mask is one extra token id, `vocab_size`), the output the logits
of the clean token at every position. The layers are DiT's adaLN-Zero layers conditioned on the
masking time t, applied as one scanned `LayerStack`; every block of a DiffusionBlocks model owns
all of this (embeddings, time embedding, layers, head), so a block is a whole network that only
has to be good on its own band of t.

Positions are a learned table (`positions="learned"`) or rotary embeddings inside every attention
(`positions="rope"`, Su et al. 2021), which carry no parameters and no fixed length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.models.layers import NOISE_FEATURES, LayerStack, dropout, modulate, noise_conditioning

_zeros = nnx.initializers.zeros_init()
_normal = nnx.initializers.normal(0.02)

# t in [0, 1] enters the sinusoidal features as c = 4 t: `timestep_embedding` stretches its input
# by 250, so t spans 0..1000, the integer timesteps DiT's frequencies were chosen for.
TIME_SCALE = 4.0


class Transformer(nnx.Module):
    """Parameters: `embed` ((vocab + 1) x width: the last row is the mask token), `pos_embed`
    (learned positions only), `time_mlp1/2`, `layers` (stacked), `final_norm`, `head_ada`, `head`."""

    def __init__(self, *, vocab_size: int, seq_len: int, width: int, depth: int, num_heads: int, mlp_ratio: float,
                 positions: str = "learned", dropout: float = 0.0, dtype=jnp.float32, remat: bool = False,
                 scan_layers: bool = True, attention: str = "auto", rngs: nnx.Rngs):
        if positions not in ("learned", "rope"):
            raise ValueError(f"positions={positions!r}; allowed: learned, rope")
        self.vocab_size, self.dropout_rate, self.dtype = vocab_size, dropout, dtype
        self.embed = nnx.Embed(vocab_size + 1, width, embedding_init=_normal, rngs=rngs)
        if positions == "learned":
            self.pos_embed = nnx.Param(_normal(rngs.params(), (seq_len, width), jnp.float32))
        self.time_mlp1 = nnx.Linear(NOISE_FEATURES, width, kernel_init=_normal, rngs=rngs)
        self.time_mlp2 = nnx.Linear(width, width, kernel_init=_normal, rngs=rngs)
        self.layers = LayerStack(depth, width, num_heads, mlp_ratio, dtype, remat=remat, scan=scan_layers,
                                 dropout=dropout, rope=positions == "rope", attention=attention, rngs=rngs)
        self.final_norm = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.head_ada = nnx.Linear(width, 2 * width, kernel_init=_zeros, dtype=dtype, rngs=rngs)
        # The head computes in float32 whatever the model's dtype: it is small (width x vocab), and
        # the cross-entropy and the likelihood are read from its logits.
        self.head = nnx.Linear(width, vocab_size, kernel_init=_normal, dtype=jnp.float32, rngs=rngs)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def __call__(self, tokens_BL: jax.Array, t_B: jax.Array, depth: jax.Array | None = None,
                 keys_B: jax.Array | None = None) -> jax.Array:
        """Logits (B, L, vocab) in float32 of the clean tokens, given z_t (ids, the mask included)
        and t. `depth` runs only the first layers (uneven splits); `keys_B` switches dropout on."""
        x_BLD = self.embed(tokens_BL).astype(self.dtype)
        if hasattr(self, "pos_embed"):
            x_BLD = x_BLD + self.pos_embed[...][:tokens_BL.shape[1]].astype(self.dtype)
        if keys_B is not None and self.dropout_rate:
            x_BLD = dropout(x_BLD, self.dropout_rate, keys_B, 0)
        cond_BD = noise_conditioning(self.time_mlp1, self.time_mlp2, TIME_SCALE * t_B)
        x_BLD = self.layers(x_BLD, cond_BD, depth, keys_B)
        shift_BD, scale_BD = jnp.split(self.head_ada(nnx.silu(cond_BD)), 2, axis=-1)
        return self.head(modulate(self.final_norm(x_BLD), shift_BD, scale_BD).astype(jnp.float32))
