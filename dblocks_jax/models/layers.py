"""Layers shared by the network families of dblocks-jax (the DiT denoiser, the ViT classifier
and the transformer language model).

The transformer layer is DiT's adaLN-Zero block (Peebles & Xie, "Scalable Diffusion Models with
Transformers", ICCV 2023, arXiv 2212.09748): the conditioning vector regresses a shift, scale and
gate for each of the two residual branches, through a linear layer initialised at zero, so that a
fresh layer is the identity and a fresh network starts from the skip connection.

`LayerStack` keeps the parameters of its `depth` layers stacked along a leading axis and applies
them with one `jax.lax.scan`: XLA sees a single copy of the layer, so the size of the compiled
program, and its compile time, do not grow with depth. Shapes are named in variable suffixes:
B batch, L tokens, D width, H heads, K head size, F MLP hidden width, C conditioning width.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_zeros = nnx.initializers.zeros_init()
_xavier = nnx.initializers.xavier_uniform()

NOISE_FEATURES = 256  # width of the sinusoidal noise-level features, as in DiT


def timestep_embedding(c_noise: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal features (B, dim) of the noise level c_noise (B,) = ln(sigma)/4 (EDM).

    For sigma in [0.002, 80], c_noise lies in [0.25 ln 0.002, 0.25 ln 80] = [-1.55, 1.10]. The
    factor 250 stretches it to about [-388, 274], a span of ~660 comparable to the 0..999 integer
    timesteps for which DiT's frequencies (periods 2*pi .. 2*pi*max_period) were chosen; without it
    the whole range would sit inside one period of even the fastest frequency.
    """
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half).astype(np.float32)
    args_BF = (250.0 * c_noise.astype(jnp.float32))[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args_BF), jnp.sin(args_BF)], axis=-1)


def noise_conditioning(mlp1: nnx.Linear, mlp2: nnx.Linear, c_noise_B: jax.Array) -> jax.Array:
    """The conditioning vector (B, C) of a noise level: sinusoidal features through two linear
    layers with a SiLU between them (DiT's timestep embedder)."""
    return mlp2(nnx.silu(mlp1(timestep_embedding(c_noise_B, NOISE_FEATURES))))


def sincos_pos_embedding(grid: int, width: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding (grid*grid, width), as in DiT/MAE: half the
    channels encode the row, half the column; zero-padded when width is not a multiple of 4."""
    quarter = width // 4
    omega = 1.0 / 10_000 ** (np.arange(quarter) / quarter)
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def embed(pos):
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed(ys), embed(xs)], axis=1)
    return np.pad(emb, ((0, 0), (0, width - emb.shape[1]))).astype(np.float32)


def patchify(x_BHWC: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/p * W/p, p*p*C): non-overlapping p x p patches in row-major order."""
    b, h, w, c = x_BHWC.shape
    return x_BHWC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)


def modulate(x_BLD: jax.Array, shift_BD: jax.Array, scale_BD: jax.Array) -> jax.Array:
    """adaLN modulation x * (1 + scale) + shift, with per-example shift and scale."""
    return x_BLD * (1 + scale_BD[:, None, :]) + shift_BD[:, None, :]


def rotary(x_BLHK: jax.Array, positions_L: jax.Array, base: float = 10_000.0) -> jax.Array:
    """Rotary position embedding (Su et al., RoFormer, arXiv 2104.09864, eq. 34): channel pairs
    (i, i + K/2) of each head are rotated by the angle position * base^(-2i/K), so that the
    product of a query at m and a key at n depends on m - n only."""
    half = x_BLHK.shape[-1] // 2
    freqs_F = base ** (-np.arange(half, dtype=np.float32) / half)
    angles_LF = positions_L.astype(jnp.float32)[:, None] * freqs_F[None, :]
    cos_L1F, sin_L1F = jnp.cos(angles_LF)[:, None, :], jnp.sin(angles_LF)[:, None, :]
    x1, x2 = x_BLHK[..., :half].astype(jnp.float32), x_BLHK[..., half:2 * half].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos_L1F - x2 * sin_L1F, x2 * cos_L1F + x1 * sin_L1F, x_BLHK[..., 2 * half:]], -1)
    return out.astype(x_BLHK.dtype)


def dropout(x_B: jax.Array, rate: float, keys_B: jax.Array, salt: int) -> jax.Array:
    """Inverted dropout with one key per example (`fold_in(key, salt)` tells the call sites
    apart), so that a data-parallel step that takes its slice of the batch also takes its slice
    of the randomness."""
    keep = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, salt), 1.0 - rate, x_B.shape[1:]))(keys_B)
    return jnp.where(keep, x_B / (1.0 - rate), 0.0).astype(x_B.dtype)


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def attend(q_BTHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array, mask: jax.Array | None,
           implementation: str = "auto") -> jax.Array:
    """Softmax attention through `jax.nn.dot_product_attention` (its softmax is float32 whatever
    the inputs). `implementation`: `xla`, `cudnn` (cuDNN flash attention: GPU, bfloat16 or float16,
    head size a multiple of 8; an error otherwise), or `auto`, which is cuDNN where it accepts the
    call, forward and backward, and XLA elsewhere. JAX's own default (None) is XLA everywhere,
    which leaves the fused kernel unused on a GPU. Which one a step holds is read from its lowered
    text by `engine.hardware.attention_kernel`, so a bench record states what ran."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}; allowed: "
                         f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")
    call = lambda impl: jax.nn.dot_product_attention(q_BTHK, k_BSHK, v_BSHK, mask=mask, implementation=impl)
    if implementation == "auto":
        mask_shape = None if mask is None else tuple(mask.shape)
        implementation = "cudnn" if _cudnn_accepts(q_BTHK.shape, k_BSHK.shape, jnp.dtype(q_BTHK.dtype).name,
                                                   mask_shape) else "xla"
    return call(implementation)


@functools.lru_cache(maxsize=None)
def _cudnn_accepts(q_shape: tuple, k_shape: tuple, dtype: str, mask_shape: tuple | None) -> bool:
    """Whether cuDNN takes this attention, forward and backward. Its checks run while tracing, and
    the training-only ones (an even sequence length with a mask, ...) only when the call is
    differentiated, which inside a scanned or rematerialised layer happens after the layer's own
    trace: so the gradient of the call is traced here, on abstract inputs, once per shape. (cuDNN
    can still refuse a graph when XLA compiles it; that error is not caught.)"""
    if jax.default_backend() != "gpu" or dtype not in ("bfloat16", "float16"):
        return False
    spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))

    def loss(q, k, v):
        mask = None if mask_shape is None else jnp.ones(mask_shape, bool)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
        return out.astype(jnp.float32).sum()

    try:
        jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), spec(q_shape), spec(k_shape), spec(k_shape))
    except (NotImplementedError, ValueError, RuntimeError, TypeError):
        return False
    return True


class AdaLNZeroLayer(nnx.Module):
    """Pre-norm transformer layer (self-attention + GELU(tanh) MLP) with adaLN-Zero conditioning
    (DiT, Peebles & Xie 2023): shift/scale/gate of both branches come from silu(cond) through a
    zero-initialised linear, so a fresh layer is the identity."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dtype=jnp.float32, *, dropout: float = 0.0,
                 rope: bool = False, attention: str = "auto", rngs: nnx.Rngs):
        self.num_heads, self.dropout_rate, self.rope, self.attention = num_heads, dropout, rope, attention
        hidden = int(width * mlp_ratio)
        linear = lambda i, o, init=_xavier: nnx.Linear(i, o, kernel_init=init, dtype=dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.qkv = linear(width, 3 * width)
        self.proj = linear(width, width)
        self.norm2 = nnx.LayerNorm(width, epsilon=1e-6, use_bias=False, use_scale=False, rngs=rngs)
        self.fc1 = linear(width, hidden)
        self.fc2 = linear(hidden, width)
        self.ada = linear(width, 6 * width, init=_zeros)

    def __call__(self, x_BLD: jax.Array, cond_BC: jax.Array, keys_B: jax.Array | None = None) -> jax.Array:
        """With `keys_B` (one key per example) and `dropout` > 0, each residual branch's output is
        dropped out (ViT's hidden dropout); without keys the layer is deterministic."""
        return self.forward(x_BLD, cond_BC, keys_B)[0]

    def forward(self, x_BTD: jax.Array, cond_BC: jax.Array, keys_B: jax.Array | None = None, *,
                positions_T: jax.Array | None = None, context: tuple | None = None,
                mask_TS: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """The layer on T tokens that may also attend `context`, the keys and values (k_BSHK, v_BSHK)
        of S other tokens (a causal model's cache, or the clean stream a noisy token reads), placed
        before their own. `mask_TS` (T, S + T) says which keys each token sees (None: all);
        `positions_T` are the tokens' positions for RoPE (default 0..T-1; context keys are already
        rotated). Returns (x', (k_BTHK, v_BTHK)): the output and the tokens' own keys and values."""
        drop1, drop2 = (lambda h: h, lambda h: h) if keys_B is None or not self.dropout_rate else (
            lambda h: dropout(h, self.dropout_rate, keys_B, 1), lambda h: dropout(h, self.dropout_rate, keys_B, 2))
        (q_BTHK, k_BTHK, v_BTHK), (gate1_BD, shift2_BD, scale2_BD, gate2_BD) = self._attention_inputs(
            x_BTD, cond_BC, positions_T)
        b, length, d = x_BTD.shape
        keys_BSHK, values_BSHK = (k_BTHK, v_BTHK) if context is None else (
            jnp.concatenate([context[0].astype(k_BTHK.dtype), k_BTHK], 1),
            jnp.concatenate([context[1].astype(v_BTHK.dtype), v_BTHK], 1))
        mask = None if mask_TS is None else mask_TS[None, None]
        attn_BTD = attend(q_BTHK, keys_BSHK, values_BSHK, mask, self.attention).reshape(b, length, d)
        x_BTD = x_BTD + gate1_BD[:, None, :] * drop1(self.proj(attn_BTD))
        h_BTD = modulate(self.norm2(x_BTD), shift2_BD, scale2_BD)
        h_BTF = nnx.gelu(self.fc1(h_BTD), approximate=True)
        return x_BTD + gate2_BD[:, None, :] * drop2(self.fc2(h_BTF)), (k_BTHK, v_BTHK)

    def kv(self, x_BTD: jax.Array, cond_BC: jax.Array, positions_T: jax.Array | None = None) -> tuple:
        """Only the keys and values `forward` would return: what a cache needs of a layer whose
        output nobody reads (a causal stream's last layer, when only other tokens attend it)."""
        return self._attention_inputs(x_BTD, cond_BC, positions_T)[0][1:]

    def _attention_inputs(self, x_BTD, cond_BC, positions_T):
        """((q, k, v) with RoPE applied, (gate1, shift2, scale2, gate2)) of the attention branch."""
        shift1_BD, scale1_BD, gate1_BD, shift2_BD, scale2_BD, gate2_BD = jnp.split(
            self.ada(nnx.silu(cond_BC)), 6, axis=-1)
        h_BTD = modulate(self.norm1(x_BTD), shift1_BD, scale1_BD)
        b, length, d = h_BTD.shape
        qkv_BT3HK = self.qkv(h_BTD).reshape(b, length, 3 * self.num_heads, d // self.num_heads)
        q_BTHK, k_BTHK, v_BTHK = jnp.split(qkv_BT3HK, 3, axis=2)
        if self.rope:
            positions_T = jnp.arange(length) if positions_T is None else positions_T
            q_BTHK, k_BTHK = rotary(q_BTHK, positions_T), rotary(k_BTHK, positions_T)
        return (q_BTHK, k_BTHK, v_BTHK), (gate1_BD, shift2_BD, scale2_BD, gate2_BD)


class LayerStack(nnx.Module):
    """`depth` AdaLNZeroLayers with their parameters stacked along a leading axis of size `depth`
    (`self.layers` is one AdaLNZeroLayer whose every leaf has that extra axis), applied with one
    `jax.lax.scan`, so the compiled program holds a single copy of the layer whatever the depth.

    `remat=True` wraps the per-layer body in `jax.checkpoint`: the backward pass keeps only each
    layer's input and recomputes the layer's activations. `scan=False` applies the same stacked
    layers in a Python loop instead (XLA then sees `depth` copies): the parameters are the same, so
    checkpoints work either way. The scan keeps compile time flat in depth, but its residuals for
    the backward pass are loop outputs that XLA cannot fuse away, which costs memory (about +13 % at
    12 layers of DiT-S on the CPU, see README); XLA's cost analysis also counts a loop body once,
    so FLOPs are read from the unrolled program (the bench does).
    """

    def __init__(self, depth: int, width: int, num_heads: int, mlp_ratio: float, dtype=jnp.float32, *,
                 remat: bool = False, scan: bool = True, dropout: float = 0.0, rope: bool = False,
                 attention: str = "auto", rngs: nnx.Rngs):
        self.num_layers, self.remat, self.scan = depth, remat, scan
        keys = jax.random.split(rngs.params(), depth)  # one independent key per layer
        make = lambda key: AdaLNZeroLayer(width, num_heads, mlp_ratio, dtype, dropout=dropout, rope=rope,
                                          attention=attention, rngs=nnx.Rngs(key))
        self.layers = nnx.vmap(make, in_axes=0, out_axes=0)(keys)

    def __call__(self, x_BLD: jax.Array, cond_BC: jax.Array, depth: jax.Array | None = None,
                 keys_B: jax.Array | None = None) -> jax.Array:
        """Apply the layers in order. With `depth` (an int32 scalar, may be traced) layer i runs
        only if i < depth; the others are the identity, with zero gradient for their parameters
        (how blocks of an uneven layer split share one parameter structure). `keys_B` (one key
        per example) switches dropout on; layer i folds i into them."""
        return self.forward(x_BLD, cond_BC, depth, keys_B)

    def forward(self, x_BTD: jax.Array, cond_BC: jax.Array, depth: jax.Array | None = None,
                keys_B: jax.Array | None = None, *, positions_T: jax.Array | None = None,
                context: tuple | None = None, mask_TS: jax.Array | None = None, with_kv: bool = False,
                last_kv_only: bool = False):
        """`__call__` with `AdaLNZeroLayer.forward`'s attention options; `context` holds every
        layer's keys and values stacked on a leading layer axis, (k_NBSHK, v_NBSHK). With `with_kv`
        returns (x', (k_NBTHK, v_NBTHK)), every layer's keys and values of these tokens (a cache).
        `last_kv_only` (with `with_kv`) computes only the last layer's keys and values, not its
        attention and MLP, and returns (None, kv): for a stream whose output nobody reads."""
        graphdef, state = nnx.split(self.layers)

        # A pure function of one layer's (sliced) state: merging inside the scan body builds the
        # layer in the body's own trace, so it can also sit in a lax.cond branch and under
        # jax.checkpoint without NNX seeing variables touched from another trace.
        def run(layer_state, h_BTD, index, layer_context):
            keys = None if keys_B is None else jax.vmap(lambda k: jax.random.fold_in(k, index))(keys_B)
            out, kv = nnx.merge(graphdef, layer_state).forward(h_BTD, cond_BC, keys, positions_T=positions_T,
                                                              context=layer_context, mask_TS=mask_TS)
            return (out, kv) if with_kv else out

        if self.remat:
            run = jax.checkpoint(run)

        def body(h_BTD, inputs):
            layer_state, index, layer_context = inputs
            if depth is None:
                out = run(layer_state, h_BTD, index, layer_context)
            elif with_kv:  # a skipped layer's keys are never read: its noisy twin is skipped too
                out = run(layer_state, h_BTD, index, layer_context)
                out = (jnp.where(index < depth, out[0], h_BTD), out[1])
            else:
                skip = lambda _, h, i, c: h
                out = jax.lax.cond(index < depth, run, skip, layer_state, h_BTD, index, layer_context)
            return (out[0], out[1]) if with_kv else (out, None)

        full = self.num_layers - 1 if last_kv_only else self.num_layers  # layers run whole
        indices = jnp.arange(self.num_layers, dtype=jnp.int32)
        layer = lambda tree, i: None if tree is None else jax.tree.map(lambda a: a[i], tree)
        if not self.scan:
            kvs = []
            for i in range(full):
                x_BTD, kv = body(x_BTD, (layer(state, i), indices[i], layer(context, i)))
                kvs.append(kv)
            kv = jax.tree.map(lambda *a: jnp.stack(a), *kvs) if kvs else None
        else:
            head = lambda tree: None if tree is None else jax.tree.map(lambda a: a[:full], tree)
            x_BTD, kv = jax.lax.scan(body, x_BTD, (head(state), indices[:full], head(context)), length=full)
        if not with_kv:
            return x_BTD
        if last_kv_only:
            last_kv = nnx.merge(graphdef, layer(state, full)).kv(x_BTD, cond_BC, positions_T)
            last_kv = jax.tree.map(lambda a: a[None], last_kv)
            return None, last_kv if full == 0 else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), kv, last_kv)
        return x_BTD, kv


PER_TOKEN_LINEARS = ("qkv", "proj", "fc1", "fc2")


def per_token_parameters(params) -> int:
    """Parameters of the layer stacks that multiply every token: the attention and MLP matmuls
    (not the adaLN modulation, which runs once per example). They are the P of the rule of thumb
    "a train step costs 6·P·T FLOPs for T tokens" (2 forward, 4 backward per weight and token)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = {str(getattr(k, "key", getattr(k, "name", k))) for k in path}
        if names & set(PER_TOKEN_LINEARS) and "layers" in names:
            total += int(np.prod(leaf.shape))
    return total
