"""CausalLM: the network of one autoregressive DiffusionBlocks block (paper sec. 4.4, Table 4),
and of the plain autoregressive transformer it is compared with.

A block reads two streams that share positions (Block Diffusion's layout with block size 1):

- the *clean* stream, tokens x_0..x_{T-1}, causal among themselves. It never attends a noisy
  token and does not depend on the noise level (its adaLN conditioning is a constant), so its
  keys and values are a cache: computed once per window for scoring and once per token when
  generating, whatever the number of chain steps;
- the *noisy* stream: at position i, c_in z_i with z_i = e_i + sigma eps, e_i the L2-normalised
  target embedding of token x_i; token i sees itself and the clean tokens j < i. Its output h_i
  gives D_i = c_out h_i + c_skip z_i (EDM's preconditioning, Karras et al. 2022 eq. 7) and D_i's
  logits through an adaLN head conditioned on sigma.

Computing the clean stream first and letting the noisy tokens attend its per-layer keys and
values is the same computation as one pass over the 2L-token sequence with Block Diffusion's mask
(Arriola et al. 2025): the clean half's rows of that mask never reach the noisy half.

`plain_logits` reads the clean stream with the same head (a constant conditioning): that is the
ordinary next-token transformer, the baseline, from the same code. The parameters are those of
`Transformer` (the masked LM's network; its mask-token row stays unused) plus, for the diffusion
objective, `target_embed`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.models.layers import dropout, modulate, noise_conditioning
from dblocks_jax.models.transformer import Transformer
from dblocks_jax.models.vit import normalized_rows

_normal = nnx.initializers.normal(0.02)


def causal_mask(queries: int, past: int | jax.Array, size: int) -> jax.Array:
    """(queries, size) bool: query q (at position past + q) sees keys 0..past + q."""
    return jnp.arange(size)[None, :] <= past + jnp.arange(queries)[:, None]


def noisy_mask(context_TS: jax.Array) -> jax.Array:
    """(T, S + T): each noisy token sees the clean keys `context_TS` allows, and itself."""
    t = context_TS.shape[0]
    return jnp.concatenate([context_TS, jnp.eye(t, dtype=bool)], axis=1)


class CausalLM(Transformer):
    """`Transformer`'s parameters plus `target_embed` (vocab x width, diffusion only)."""

    def __init__(self, *, diffusion: bool, **kwargs):
        super().__init__(**kwargs)
        rngs, width = kwargs["rngs"], self.embed.embedding.shape[1]
        if diffusion:
            self.target_embed = nnx.Param(_normal(rngs.params(), (self.vocab_size, width), jnp.float32))

    def table(self) -> jax.Array:
        """E-hat (vocab, width): the L2-normalised target embeddings, the diffusion's clean states."""
        return normalized_rows(self.target_embed[...])

    def _place(self, x_BTD: jax.Array, positions_T: jax.Array, keys_B) -> jax.Array:
        x_BTD = x_BTD.astype(self.dtype)
        if hasattr(self, "pos_embed"):
            x_BTD = x_BTD + self.pos_embed[...][positions_T].astype(self.dtype)
        if keys_B is not None and self.dropout_rate:
            x_BTD = dropout(x_BTD, self.dropout_rate, keys_B, 0)
        return x_BTD

    def _constant_cond(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.time_mlp2.out_features), jnp.float32)

    def clean(self, tokens_BT: jax.Array, positions_T: jax.Array, depth=None, keys_B=None, *,
              context: tuple | None = None, mask_TS: jax.Array | None = None,
              output: bool = True) -> tuple[jax.Array | None, tuple]:
        """The clean stream: (h_BTD, (k, v) of every layer). Without `context` the T tokens attend
        causally among themselves; with a cache `context` (layer-stacked keys and values of S
        earlier slots) `mask_TS` (T, S + T) says which slots are filled. `output=False` (the
        diffusion objective: only the noisy stream reads the clean one) skips the last layer's
        attention and MLP, whose output nobody reads, and returns (None, kv)."""
        t = tokens_BT.shape[1]
        x_BTD = self._place(self.embed(tokens_BT), positions_T, keys_B)
        mask = causal_mask(t, 0, t) if context is None else mask_TS
        return self.layers.forward(x_BTD, self._constant_cond(x_BTD.shape[0]), depth, keys_B,
                                   positions_T=positions_T, context=context, mask_TS=mask, with_kv=True,
                                   last_kv_only=not output)

    def _head(self, h_BTD: jax.Array, cond_BD: jax.Array) -> jax.Array:
        shift_BD, scale_BD = jnp.split(self.head_ada(nnx.silu(cond_BD)), 2, axis=-1)
        return self.head(modulate(self.final_norm(h_BTD), shift_BD, scale_BD).astype(jnp.float32))

    def plain_logits(self, h_BTD: jax.Array) -> jax.Array:
        """Next-token logits (float32) read from the clean stream: the plain autoregressive model."""
        return self._head(h_BTD, self._constant_cond(h_BTD.shape[0]))

    def denoised_logits(self, z_BTD: jax.Array, sigma_B: jax.Array, scalings, positions_T: jax.Array,
                        context: tuple, context_TS: jax.Array, depth=None, keys_B=None) -> jax.Array:
        """Logits (float32) of D(z, sigma) for T noisy tokens that attend the clean keys and values
        `context` where `context_TS` allows, and themselves. `scalings(sigma)` is the law's
        (c_skip, c_out, c_in, c_noise)."""
        c_skip, c_out, c_in, c_noise = (c[:, None, None] for c in scalings(sigma_B))
        x_BTD = self._place(c_in * z_BTD, positions_T, keys_B)
        cond_BD = noise_conditioning(self.time_mlp1, self.time_mlp2, c_noise[:, 0, 0])
        h_BTD = self.layers.forward(x_BTD, cond_BD, depth, keys_B, positions_T=positions_T, context=context,
                                    mask_TS=noisy_mask(context_TS))
        d_BTD = c_out * self.final_norm(h_BTD).astype(jnp.float32) + c_skip * z_BTD
        return self._head(d_BTD, cond_BD)
