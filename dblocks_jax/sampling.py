"""Probability-flow ODE samplers that chain the blocks (DESIGN.md section 2, "Sampling").

The whole trajectory is one compiled function: a `lax.scan` over the sigma grid whose per-step
inputs are the step's sigmas and the index of the block that owns each of them (computed on the
host, since the grid is static). Block parameters are stacked on a leading axis and each step
gathers only the owning block's slice, so a step costs one block's layers, not the network's.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.edm import EDM
from dblocks_jax.partition import BlockPartition

# denoise(block_params, z, sigma_per_example, labels, block) -> D(z, sigma); `block` is the traced index of
# the block whose parameters these are (a model with an uneven layer split needs it).
DenoiseFn = Callable[[Any, jax.Array, jax.Array, Any, jax.Array], jax.Array]

GRIDS = ("equiprobable", "karras")
SOLVERS = ("euler", "heun")


def equiprobable_grid(num_steps: int, edm: EDM) -> np.ndarray:
    """t_0 = sigma_max > ... > t_K = sigma_min, equally spaced in the training log-normal's CDF, so
    that each block of an equi-probability partition gets about K/B steps."""
    q_min, q_max = edm.sigma_cdf([edm.sigma_min, edm.sigma_max])
    # The same expression as the partition's boundaries (q_min + k/B dq), so that when K is a multiple
    # of B the grid hits every boundary bit for bit and each block gets exactly K/B steps.
    grid = edm.sigma_quantile(q_min + np.arange(num_steps, -1, -1) / num_steps * (q_max - q_min))
    grid[0], grid[-1] = edm.sigma_max, edm.sigma_min
    return grid


def karras_grid(num_steps: int, edm: EDM, rho: float = 7.0) -> np.ndarray:
    """EDM's grid (Karras et al. 2022, eq. 5): t_i = (s_max^(1/rho) + i/K (s_min^(1/rho) - s_max^(1/rho)))^rho."""
    ramp = np.arange(num_steps + 1) / num_steps
    lo, hi = edm.sigma_min ** (1 / rho), edm.sigma_max ** (1 / rho)
    grid = (hi + ramp * (lo - hi)) ** rho
    grid[0], grid[-1] = edm.sigma_max, edm.sigma_min
    return grid


def sigma_grid(kind: str, num_steps: int, edm: EDM) -> np.ndarray:
    if kind not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; allowed: {', '.join(GRIDS)}")
    if num_steps < 1:
        raise ValueError(f"sample steps={num_steps}; allowed: an integer >= 1")
    return {"equiprobable": equiprobable_grid, "karras": karras_grid}[kind](num_steps, edm)


def ode_derivative(z, denoised, t):
    """dz/dt of the probability-flow ODE for z = y + t eps: (z - D(z, t)) / t."""
    return (z - denoised) / t


def euler_step(denoise_at: Callable, z, t, t_next, b, b_next):
    """z <- z + (t_next - t) d, d = (z - D(z, t)) / t (DESIGN.md: the paper prints the opposite sign)."""
    del b_next
    return z + (t_next - t) * ode_derivative(z, denoise_at(b, z, t), t)


def heun_step(denoise_at: Callable, z, t, t_next, b, b_next):
    """EDM's second-order step: Euler predictor, then the trapezoid with D re-evaluated at t_next by
    the block that owns t_next."""
    d = ode_derivative(z, denoise_at(b, z, t), t)
    z_euler = z + (t_next - t) * d
    d_next = ode_derivative(z_euler, denoise_at(b_next, z_euler, t_next), t_next)
    return z + (t_next - t) * 0.5 * (d + d_next)


_STEPS = {"euler": euler_step, "heun": heun_step}


def evaluations_per_sample(solver: str, num_steps: int) -> int:
    """Calls of D per sample: one per Euler step (two per Heun step) plus the final denoise."""
    return {"euler": 1, "heun": 2}[solver] * num_steps + 1


def make_sampler(denoise: DenoiseFn, partition: BlockPartition, *, num_steps: int, solver: str = "euler",
                 grid: str = "equiprobable") -> Callable:
    """A jitted `sample(stacked_params, noise, labels) -> images`.

    `noise` is standard normal of the output shape; the start is z = sigma_max * noise. Each step
    runs only the block that owns its sigma (`partition.block_of`); the result is the final
    denoise D(z_K, t_K) at t_K = sigma_min.
    """
    if solver not in _STEPS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    t = sigma_grid(grid, num_steps, partition.edm)
    owner = partition.block_of(t)
    xs = (jnp.asarray(t[:-1], jnp.float32), jnp.asarray(t[1:], jnp.float32),
          jnp.asarray(owner[:-1]), jnp.asarray(owner[1:]))
    step = _STEPS[solver]

    def sample(stacked_params, noise, labels=None):
        def denoise_at(b, z, sigma):
            block_params = jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, b, keepdims=False),
                                        stacked_params)
            return denoise(block_params, z, jnp.full((z.shape[0],), sigma, jnp.float32), labels, b)

        def body(z, x):
            t_i, t_next, b, b_next = x
            return step(denoise_at, z, t_i, t_next, b, b_next), None

        z0 = jnp.float32(t[0]) * noise.astype(jnp.float32)
        z_final, _ = jax.lax.scan(body, z0, xs)
        return denoise_at(jnp.int32(owner[-1]), z_final, jnp.float32(t[-1]))

    return jax.jit(sample)


@functools.lru_cache(maxsize=16)
def _model_sampler(model, guidance: float, num_steps: int, solver: str, grid: str) -> Callable:
    """One compiled sampler per (model, settings): repeated `generate` calls (seeds, evaluation)
    reuse it instead of tracing and compiling again. Models hash by identity."""
    denoise = lambda params, z, sigma, y, b: model.guided_denoise(params, z, sigma, y, guidance, b)
    return make_sampler(denoise, model.partition, num_steps=num_steps, solver=solver, grid=grid)


def stack_blocks(block_params: list) -> Any:
    """Stack per-block parameter trees (identical structure) along a new leading block axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *block_params)


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Class labels in contiguous, equal-sized groups (a grid reads class by class)."""
    return (np.arange(num_samples) * max(num_classes, 1) // num_samples).astype(np.int32)


def generate(model, block_params: list, *, num_samples: int, num_steps: int, solver: str = "euler",
             grid: str = "equiprobable", guidance: float = 1.0, seed: int = 0, labels=None) -> jax.Array:
    """Samples from a trained DiffusionBlocks model (`model` a `BlockModel`, one parameter tree per
    block). Class-conditional models get balanced labels unless `labels` is given."""
    sampler, args = sampler_and_inputs(model, block_params, num_samples=num_samples, num_steps=num_steps,
                                       solver=solver, grid=grid, guidance=guidance, seed=seed, labels=labels)
    return sampler(*args)


def sampler_and_inputs(model, block_params: list, *, num_samples: int, num_steps: int, solver: str = "euler",
                       grid: str = "equiprobable", guidance: float = 1.0, seed: int = 0,
                       labels=None) -> tuple[Callable, tuple]:
    """What `generate` runs, unrun: the compiled sampler and its arguments (stacked parameters,
    seeded noise, labels), so that callers can lower, compile and time it separately."""
    if len(block_params) != model.partition.num_blocks:
        raise ValueError(f"got parameters for {len(block_params)} blocks; the partition has "
                         f"{model.partition.num_blocks}")
    config = model.config
    if model.num_classes and labels is None:
        labels = balanced_labels(num_samples, model.num_classes)
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    sampler = _model_sampler(model, float(guidance), num_steps, solver, grid)
    shape = (num_samples, config.image_size, config.image_size, config.dataset_info.channels)
    noise = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    return sampler, (stack_blocks(block_params), noise, labels)
