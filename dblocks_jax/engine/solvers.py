"""Solvers of the probability-flow ODE for Gaussian (EDM-style) chains, as chain steps.

Each is one small function of a denoiser D(z, t), named after the paper that defines it:
Euler (what DiffusionBlocks uses), Heun (EDM Algorithm 1) and EDM's stochastic sampler (EDM
Algorithm 2). `denoise(block_params, z, t_per_example, cond, block) -> D` is the task's
preconditioned denoiser; the block index lets a model with an uneven layer split run the right
depth. D at a level is always evaluated by the block that owns that level.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dblocks_jax.engine.chain import level_grid, make_chain
from dblocks_jax.engine.partition import BlockPartition

SOLVERS = ("euler", "heun", "edm_stochastic")

# denoise(block_params, z, t_per_example, cond, block) -> D(z, t)
DenoiseFn = Callable


def ode_derivative(z, denoised, t):
    """dz/dt of the probability-flow ODE for z = y + t eps: (z - D(z, t)) / t."""
    return (z - denoised) / t


def euler_step(z, denoised, t, t_next):
    """One Euler step of the probability-flow ODE from level t to t_next towards the denoised D."""
    return z + (t_next - t) * ode_derivative(z, denoised, t)


def _at(denoise, params_at, cond):
    """D(z, t) run by block b, with t a scalar broadcast to the batch."""
    return lambda b, z, t: denoise(params_at(b), z, jnp.full((z.shape[0],), t, jnp.float32), cond, b)


def euler(denoise: DenoiseFn) -> Callable:
    """z <- z + (t_next - t) d, d = (z - D(z, t)) / t (the paper prints the opposite sign)."""

    def step(params_at, z, cond, t, t_next, b, b_next, key):
        d_at = _at(denoise, params_at, cond)
        return z + (t_next - t) * ode_derivative(z, d_at(b, z, t), t)

    return step


def heun(denoise: DenoiseFn) -> Callable:
    """EDM's second-order step (Algorithm 1): Euler predictor, then the trapezoid with D
    re-evaluated at t_next by the block that owns t_next."""

    def step(params_at, z, cond, t, t_next, b, b_next, key):
        d_at = _at(denoise, params_at, cond)
        d = ode_derivative(z, d_at(b, z, t), t)
        z_euler = z + (t_next - t) * d
        d_next = ode_derivative(z_euler, d_at(b_next, z_euler, t_next), t_next)
        return z + (t_next - t) * 0.5 * (d + d_next)

    return step


def churn(z, t, gamma, s_noise: float, key):
    """EDM Algorithm 2's noise injection: the level rises from t to t_hat = t (1 + gamma) by adding
    N(0, t_hat^2 - t^2) noise, written t sqrt(gamma (2 + gamma)) so that gamma = 0 adds exactly 0
    (t_hat**2 - t**2 may round to a small negative number, whose square root is NaN)."""
    eps = s_noise * jax.random.normal(key, z.shape, jnp.float32)
    return z + t * jnp.sqrt(gamma * (2 + gamma)) * eps, t * (1 + gamma)


def edm_stochastic(denoise: DenoiseFn, partition: BlockPartition, num_steps: int, s_churn: float = 0.0,
                   s_tmin: float = 0.0, s_tmax: float = float("inf"),
                   s_noise: float = 1.0) -> tuple[Callable, Callable]:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), as NVlabs/edm's `edm_sampler`
    runs it: at each of its N = K + 1 levels t_0 > ... > t_K = sigma_min that lies in
    [S_tmin, S_tmax], noise raises the level to t_hat = t_i (1 + gamma), gamma = min(S_churn / N,
    sqrt 2 - 1); a Heun step then runs from t_hat to t_{i+1}, and from the last level an Euler step
    to 0, which is D(z_hat, t_hat) itself (the read-out). D(., t_hat) is run by the block owning
    t_hat (above the band of t_i when the churn crosses a boundary); each step's noise comes from
    its own key, the read-out's from fold_in(key, K). (step, read_out)."""
    gamma_max = min(s_churn / (num_steps + 1), 2**0.5 - 1)
    gamma_at = lambda t: jnp.where((t >= s_tmin) & (t <= s_tmax), gamma_max, 0.0)

    def step(params_at, z, cond, t, t_next, b, b_next, key):
        d_at = _at(denoise, params_at, cond)
        z_hat, t_hat = churn(z, t, gamma_at(t), s_noise, key)
        d = ode_derivative(z_hat, d_at(partition.block_of(t_hat), z_hat, t_hat), t_hat)
        z_next = z_hat + (t_next - t_hat) * d
        d_next = ode_derivative(z_next, d_at(b_next, z_next, t_next), t_next)
        return z_hat + (t_next - t_hat) * 0.5 * (d + d_next)

    def read_out(params_at, z, cond, t_last, b_last, key):
        z_hat, t_hat = churn(z, t_last, gamma_at(t_last), s_noise, key)
        return _at(denoise, params_at, cond)(partition.block_of(t_hat), z_hat, t_hat)

    return step, read_out


def evaluations_per_sample(solver: str, num_steps: int) -> int:
    """Calls of D per sample: one per Euler step (two per Heun or stochastic step) plus the final denoise."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    return {"euler": 1, "heun": 2, "edm_stochastic": 2}[solver] * num_steps + 1


def make_ode_sampler(denoise: DenoiseFn, partition: BlockPartition, *, num_steps: int, solver: str = "euler",
                     grid: str = "equiprobable", s_churn: float = 0.0, s_tmin: float = 0.0,
                     s_tmax: float = float("inf"), s_noise: float = 1.0) -> Callable:
    """A jitted `sample(stacked_params, noise, cond=None, key=None) -> D(z_K, t_K)`.

    `noise` is standard normal of the output's shape; the chain starts at z = t_0 noise = level_max
    noise and ends with the denoise at t_K = level_min by the block that owns it (the stochastic
    sampler first churns there too, as EDM does). The chain's conditioning carries the read-out's
    key beside `cond`.
    """
    def read_out(params_at, z, cond, t_last, b_last, key):
        return _at(denoise, params_at, cond)(b_last, z, t_last)

    if solver == "euler":
        step = euler(denoise)
    elif solver == "heun":
        step = heun(denoise)
    elif solver == "edm_stochastic":
        step, read_out = edm_stochastic(denoise, partition, num_steps, s_churn, s_tmin, s_tmax, s_noise)
    else:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    t = level_grid(grid, num_steps, partition.law)
    run = make_chain(lambda params_at, z, c, *rest: step(params_at, z, c[0], *rest),
                     lambda params_at, z, c, t_last, b_last: read_out(params_at, z, c[0], t_last, b_last, c[1]),
                     partition, t)

    @jax.jit
    def sample(stacked_params, noise, cond=None, key=None):
        key = jax.random.key(0) if key is None else key
        last = jax.random.fold_in(key, len(t) - 1)  # the steps use fold_in(key, i), i < K
        return run(stacked_params, jnp.float32(t[0]) * noise.astype(jnp.float32), (cond, last), key)

    return sample
