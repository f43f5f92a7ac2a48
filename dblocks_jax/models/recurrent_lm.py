"""RecurrentLM: a recurrent-depth causal language model (Huginn, Geiping et al. 2025, arXiv
2502.05171), the network of DiffusionBlocks' recurrent-depth experiment (paper Table 5).

    tokens -> prelude (P layers) -> e
    s_0 ~ noise;  s_{k+1} = core(adapter([s_k ; e]))   (R layers, the same weights every iteration)
    s_K -> coda (C layers) -> final norm -> head -> next-token logits

Every stack is causal over positions: at iteration k the core at position i reads the states
s_k of positions <= i. The number of iterations K is chosen at test time: more iterations, more
depth, the same parameters.

The two training methods (`tasks.recurrent_lm`) use the same parameters differently:
- Huginn's: `iterate` (the core without noise conditioning; its adaLN sees a constant) K times
  from noise, the coda reads s_K;
- DiffusionBlocks': the core is a denoiser of a noisy state z at level sigma, `denoise` gives
  D(z, sigma) = c_skip z + c_out norm(core(adapter([c_in z ; e]), sigma)) (EDM's preconditioning,
  Karras et al. 2022 eq. 7), and the coda reads D. Inference runs K Euler steps of the same core.

The layers are DiT's adaLN-Zero layers (`models.layers`), so a fresh core is the identity on the
adapter's output; `target_embed` (vocab x width) holds the DiffusionBlocks target table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.models.causal_lm import causal_mask
from dblocks_jax.models.layers import NOISE_FEATURES, LayerStack, noise_conditioning
from dblocks_jax.models.vit import normalized_rows

_normal = nnx.initializers.normal(0.02)


class RecurrentLM(nnx.Module):
    """Parameters: `embed`, `prelude`, `adapter` (2 width -> width), `core`, `coda` (stacked layers),
    `final_norm`, `head`; with `diffusion`, `time_mlp1/2` (the core's noise conditioning) and, with
    `target_table` too, `target_embed`."""

    def __init__(self, *, vocab_size: int, width: int, num_heads: int, mlp_ratio: float, prelude: int, core: int,
                 coda: int, diffusion: bool, target_table: bool = True, dtype=jnp.float32, remat: bool = False,
                 scan_layers: bool = True, attention: str = "auto", rngs: nnx.Rngs):
        self.dtype, self.width = dtype, width
        stack = lambda depth: LayerStack(depth, width, num_heads, mlp_ratio, dtype, remat=remat, scan=scan_layers,
                                         rope=True, attention=attention, rngs=rngs)
        self.embed = nnx.Embed(vocab_size, width, embedding_init=_normal, rngs=rngs)
        self.prelude = stack(prelude)
        self.adapter = nnx.Linear(2 * width, width, kernel_init=nnx.initializers.xavier_uniform(), dtype=dtype,
                                  rngs=rngs)
        self.core = stack(core)
        self.coda = stack(coda)
        # One parameter-free norm for every place a stream is read (the core's output, the coda's).
        self.final_norm = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.head = nnx.Linear(width, vocab_size, kernel_init=_normal, dtype=jnp.float32, rngs=rngs)
        if diffusion:
            self.time_mlp1 = nnx.Linear(NOISE_FEATURES, width, kernel_init=_normal, rngs=rngs)
            self.time_mlp2 = nnx.Linear(width, width, kernel_init=_normal, rngs=rngs)
        if diffusion and target_table:
            self.target_embed = nnx.Param(_normal(rngs.params(), (vocab_size, width), jnp.float32))

    def _causal(self, stack: LayerStack, x_BTD: jax.Array, cond_BD: jax.Array | None = None) -> jax.Array:
        b, t, _ = x_BTD.shape
        cond_BD = jnp.zeros((b, self.width), jnp.float32) if cond_BD is None else cond_BD
        return stack.forward(x_BTD.astype(self.dtype), cond_BD, positions_T=jnp.arange(t),
                             mask_TS=causal_mask(t, 0, t))

    def encode(self, tokens_BT: jax.Array) -> jax.Array:
        """e: the prelude's output, what every core iteration reads beside the state."""
        return self._causal(self.prelude, self.embed(tokens_BT))

    def _core(self, s_BTD: jax.Array, e_BTD: jax.Array, cond_BD: jax.Array | None) -> jax.Array:
        x_BTD = self.adapter(jnp.concatenate([s_BTD.astype(self.dtype), e_BTD.astype(self.dtype)], -1))
        return self.final_norm(self._causal(self.core, x_BTD, cond_BD)).astype(jnp.float32)

    def iterate(self, s_BTD: jax.Array, e_BTD: jax.Array) -> jax.Array:
        """One Huginn iteration s -> s' (normalised: the state keeps its scale over any K)."""
        return self._core(s_BTD, e_BTD, None)

    def denoise(self, z_BTD: jax.Array, sigma_B: jax.Array, e_BTD: jax.Array, scalings) -> jax.Array:
        """D(z, sigma) (float32): one core pass on the noisy state with EDM's preconditioning;
        `scalings(sigma)` is the law's (c_skip, c_out, c_in, c_noise)."""
        c_skip, c_out, c_in, c_noise = (c[:, None, None] for c in scalings(sigma_B))
        cond_BD = noise_conditioning(self.time_mlp1, self.time_mlp2, c_noise[:, 0, 0])
        return c_skip * z_BTD + c_out * self._core(c_in * z_BTD, e_BTD, cond_BD)

    def logits(self, s_BTD: jax.Array) -> jax.Array:
        """Next-token logits (float32) the coda reads from a state."""
        return self.head(self.final_norm(self._causal(self.coda, s_BTD)).astype(jnp.float32))

    def table(self) -> jax.Array:
        """The L2-normalised target rows (vocab, width)."""
        return normalized_rows(self.target_embed[...])
