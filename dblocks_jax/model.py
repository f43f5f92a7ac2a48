"""One DiffusionBlocks block: a self-contained DiT-style denoiser (DESIGN.md section 3).

`DiT` is the network F in Flax NNX. `BlockModel` is the functional face of a block that the
trainer, the sampler and the benchmark share: `init(key) -> params`, `network`, `denoise` (the
EDM-preconditioned D) and `loss`. Every block of a run has the same shapes, so their parameter
trees stack along a leading block axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dblocks_jax.edm import EDM, add_noise
from dblocks_jax.partition import BlockPartition

Params = Any  # an nnx.State of the block's nnx.Param leaves

_zeros = nnx.initializers.zeros_init()
_xavier = nnx.initializers.xavier_uniform()


def timestep_embedding(c_noise: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal features of c_noise = ln(sigma)/4. The factor 250 puts the training range
    (about -2.6..1.1 for sigma in [0.002, 80]) on the 0..1000 scale that DiT's frequencies assume."""
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half).astype(np.float32)
    args = (250.0 * c_noise.astype(jnp.float32))[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_pos_embedding(grid: int, width: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding (grid*grid, width), as in DiT/MAE."""
    quarter = width // 4
    omega = 1.0 / 10_000 ** (np.arange(quarter) / quarter)
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def embed(pos):
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed(ys), embed(xs)], axis=1)
    return np.pad(emb, ((0, 0), (0, width - emb.shape[1]))).astype(np.float32)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTLayer(nnx.Module):
    """Transformer layer with adaLN-Zero: shift/scale/gate from the conditioning, zero-initialised
    so that a fresh layer is the identity."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dtype, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        hidden = int(width * mlp_ratio)
        linear = lambda i, o, init=_xavier: nnx.Linear(i, o, kernel_init=init, dtype=dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.qkv = linear(width, 3 * width)
        self.proj = linear(width, width)
        self.norm2 = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.fc1 = linear(width, hidden)
        self.fc2 = linear(hidden, width)
        self.ada = linear(width, 6 * width, init=_zeros)

    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.ada(nnx.silu(cond)), 6, axis=-1)
        h = modulate(self.norm1(x), shift1, scale1)
        n, t, w = h.shape
        q, k, v = jnp.split(self.qkv(h).reshape(n, t, 3 * self.num_heads, w // self.num_heads), 3, axis=2)
        attn = jax.nn.dot_product_attention(q, k, v).reshape(n, t, w)
        x = x + gate1[:, None, :] * self.proj(attn)
        h = modulate(self.norm2(x), shift2, scale2)
        return x + gate2[:, None, :] * self.fc2(nnx.gelu(self.fc1(h), approximate=True))


class DiT(nnx.Module):
    """The network F of one block: patchify + position embedding, noise (and class) embedding,
    `depth` adaLN-Zero layers, final adaLN + linear + unpatchify. The final linear and every
    modulation start at zero, so a fresh block outputs F = 0, i.e. D = c_skip z."""

    def __init__(self, *, image_size: int, channels: int, patch_size: int, width: int, depth: int,
                 num_heads: int, mlp_ratio: float, num_classes: int, dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        self.patch_size, self.width, self.num_classes, self.remat = patch_size, width, num_classes, remat
        self.grid = image_size // patch_size
        patch_dim = patch_size * patch_size * channels
        self.patch_embed = nnx.Linear(patch_dim, width, kernel_init=_xavier, dtype=dtype, rngs=rngs)
        self.noise_mlp1 = nnx.Linear(256, width, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.noise_mlp2 = nnx.Linear(width, width, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        if num_classes:  # one extra row: the null class used for label dropout / guidance
            self.class_embed = nnx.Embed(num_classes + 1, width, embedding_init=nnx.initializers.normal(0.02),
                                         rngs=rngs)
        self.layers = nnx.List([DiTLayer(width, num_heads, mlp_ratio, dtype, rngs=rngs) for _ in range(depth)])
        self.final_norm = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.final_ada = nnx.Linear(width, 2 * width, kernel_init=_zeros, dtype=dtype, rngs=rngs)
        self.final_linear = nnx.Linear(width, patch_dim, kernel_init=_zeros, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, c_noise: jax.Array, labels: jax.Array | None = None,
                 depth: jax.Array | None = None) -> jax.Array:
        """F(x, c_noise[, labels]); `depth` (may be traced) runs only the first `depth` layers, the
        rest being the identity: how blocks of an uneven layer split share one structure."""
        n, h, w, c = x.shape
        p, g = self.patch_size, self.grid
        tokens = x.reshape(n, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, p * p * c)
        tokens = self.patch_embed(tokens) + sincos_pos_embedding(g, self.width)  # fixed, not trained
        cond = self.noise_mlp2(nnx.silu(self.noise_mlp1(timestep_embedding(c_noise, 256))))
        if self.num_classes:
            if labels is None:
                raise ValueError("this block is class-conditional: pass labels (num_classes = null class)")
            cond = cond + self.class_embed(labels)
        for i, layer in enumerate(self.layers):
            if depth is None:
                tokens = nnx.remat(DiTLayer.__call__)(layer, tokens, cond) if self.remat else layer(tokens, cond)
                continue
            # Pure function of the layer's state, so that it can sit in a lax.cond branch (and under
            # jax.checkpoint) without NNX seeing its parameters touched from another trace.
            graphdef, state = nnx.split(layer)
            run = lambda st, t, graphdef=graphdef: nnx.merge(graphdef, st)(t, cond)
            run = jax.checkpoint(run) if self.remat else run
            tokens = jax.lax.cond(i < depth, run, lambda st, t: t, state, tokens)
        shift, scale = jnp.split(self.final_ada(nnx.silu(cond)), 2, axis=-1)
        out = self.final_linear(modulate(self.final_norm(tokens), shift, scale))
        return out.reshape(n, g, g, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


class NoiseDraw(NamedTuple):
    sigma: jax.Array  # (N,)
    eps: jax.Array  # (N, H, W, C), standard normal
    drop: jax.Array  # (N,) bool: this label is replaced by the null class


@dataclasses.dataclass(frozen=True, eq=False)
class BlockModel:
    """Pure functions of one block's parameters. `graphdef` is the static structure shared by all
    blocks of a run (they differ only in parameter values)."""

    config: Any
    graphdef: Any
    abstract_params: Params
    edm: EDM
    partition: BlockPartition

    @classmethod
    def from_config(cls, config) -> "BlockModel":
        abstract = nnx.eval_shape(lambda: _make_dit(config, nnx.Rngs(0)))
        graphdef, abstract_params = nnx.split(abstract, nnx.Param)
        return cls(config, graphdef, abstract_params, EDM.from_config(config), BlockPartition.from_config(config))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def init(self, key: jax.Array) -> Params:
        """Fresh parameters of one block (jit-able; every block gets its own key)."""
        return nnx.split(_make_dit(self.config, nnx.Rngs(key)), nnx.Param)[1]

    def depth(self, block) -> jax.Array | None:
        """Layers block `block` runs: None (all) unless the layer split is uneven."""
        if not self.config.uneven:
            return None
        if block is None:
            raise ValueError(f"layer_split={self.config.layer_split} is uneven: pass the block index")
        return jnp.asarray(self.config.block_depths)[block]

    def network(self, params: Params, x, c_noise, labels=None, block=None) -> jax.Array:
        """F(x, c_noise[, labels]) of block `block` (needed only for an uneven layer split)."""
        return nnx.merge(self.graphdef, params)(x, c_noise, labels, self.depth(block))

    def denoise(self, params: Params, z, sigma, labels=None, block=None) -> jax.Array:
        """The preconditioned denoiser D(z, sigma) of DESIGN.md section 2 (float32 output)."""
        return self.edm.denoise(lambda x, c_noise: self.network(params, x, c_noise, labels, block), z, sigma)

    def guided_denoise(self, params: Params, z, sigma, labels, guidance: float, block=None) -> jax.Array:
        """Classifier-free guidance D = D_null + s (D_cond - D_null); one batched pass for both."""
        if not self.num_classes or guidance == 1.0:
            return self.denoise(params, z, sigma, labels if self.num_classes else None, block)
        null = jnp.full_like(labels, self.null_label)
        both = self.denoise(params, jnp.concatenate([z, z]), jnp.concatenate([sigma, sigma]),
                            jnp.concatenate([labels, null]), block)
        d_cond, d_null = jnp.split(both, 2)
        return d_null + guidance * (d_cond - d_null)

    def noise_draw(self, key: jax.Array, block, batch_shape: tuple[int, ...]) -> NoiseDraw:
        """The random part of one training step of `block`: sigmas from its own (widened) band, the
        Gaussian noise and the label-dropout mask, for a batch of `batch_shape` (N, H, W, C).
        Drawn for the whole batch from one key, so a data-parallel step can take its slice and
        match a single-device step."""
        k_sigma, k_eps, k_drop = jax.random.split(key, 3)
        n = batch_shape[0]
        sigma = self.partition.sample_sigma(k_sigma, block, (n,))
        eps = jax.random.normal(k_eps, batch_shape, jnp.float32)
        drop = jax.random.bernoulli(k_drop, self.config.label_dropout, (n,))
        return NoiseDraw(sigma, eps, drop)

    def loss(self, params: Params, key: jax.Array, block, images, labels) -> jax.Array:
        """EDM-weighted denoising loss of one block (DESIGN.md section 2) on a fresh noise draw."""
        return self.loss_on(params, images, labels, self.noise_draw(key, block, images.shape), block)

    def loss_on(self, params: Params, images, labels, draw: NoiseDraw, block=None) -> jax.Array:
        """The loss for a given noise draw, in the numerically kinder F-space form
        mean ||F - (y - c_skip z)/c_out||^2."""
        y = images.astype(jnp.float32)
        sigma = draw.sigma
        z = add_noise(y, sigma, draw.eps)
        labels = jnp.where(draw.drop, self.null_label, labels) if self.num_classes else None
        c_skip, c_out, c_in, c_noise = self.edm.scalings(sigma)
        f = self.network(params, c_in[:, None, None, None] * z, c_noise, labels, block).astype(jnp.float32)
        return jnp.mean((f - self.edm.f_target(y, z, sigma)) ** 2)


def _make_dit(config, rngs: nnx.Rngs) -> DiT:
    info = config.dataset_info
    return DiT(image_size=config.image_size, channels=info.channels, patch_size=config.patch_size,
               width=config.width, depth=config.layers_per_block, num_heads=config.num_heads,
               mlp_ratio=config.mlp_ratio, num_classes=config.num_classes,
               dtype=jnp.dtype(config.dtype), remat=config.remat, rngs=rngs)
