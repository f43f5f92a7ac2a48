"""The inference chain: one `lax.scan` over a descending level grid, each step run by the block
that owns its level.

Block parameters are stacked on a leading axis; a step gathers only the owning block's slice, so
it costs one block's layers, not the network's. The grid and each step's owner are computed on
the host (the grid is static). Each step gets its own key, `fold_in(key, i)`, so stochastic
chains (EDM's stochastic sampler, masked-diffusion unmasking) run in the same scan, and an
opaque conditioning pytree (a class, a prompt, whatever the task conditions on) is passed
through untouched.

A chain is made of two task-supplied functions:
- `step(params_at, z, cond, t, t_next, b, b_next, key) -> z'` advances the state from level t
  (owned by block b) to t_next (owned by b_next); `params_at(b)` is block b's parameters;
- `read_out(params_at, z, cond, t_K, b_K)` turns the final state into the output.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.engine.levels import LevelLaw
from dblocks_jax.engine.partition import BlockPartition

GRIDS = ("equiprobable", "karras", "cosine")


def per_example_normal(seed: int, start: int, count: int, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal draws of `shape` for examples start..start+count-1, each from its own key
    fold_in(fold_in(key(seed), 0), i): a chain started from them gives each example the same output
    whatever batch it is drawn in."""
    stream = jax.random.fold_in(jax.random.key(seed), 0)
    keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(jnp.arange(start, start + count))
    return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


def equiprobable_grid(num_steps: int, law: LevelLaw) -> np.ndarray:
    """t_0 = level_max > ... > t_K = level_min, equally spaced in the training law's CDF, so that
    each block of an equi-probability partition gets about K/B steps."""
    q_min, q_max = law.cdf([law.level_min, law.level_max])
    # The same expression as the partition's boundaries (q_min + k/B dq), so that when K is a multiple
    # of B the grid hits every boundary bit for bit and each block gets exactly K/B steps.
    grid = law.quantile(q_min + np.arange(num_steps, -1, -1) / num_steps * (q_max - q_min))
    grid[0], grid[-1] = law.level_max, law.level_min
    return grid


def karras_grid(num_steps: int, law: LevelLaw, rho: float = 7.0) -> np.ndarray:
    """EDM's grid (Karras et al. 2022, eq. 5): t_i = (t_max^(1/rho) + i/K (t_min^(1/rho) - t_max^(1/rho)))^rho."""
    ramp = np.arange(num_steps + 1) / num_steps
    lo, hi = law.level_min ** (1 / rho), law.level_max ** (1 / rho)
    grid = (hi + ramp * (lo - hi)) ** rho
    grid[0], grid[-1] = law.level_max, law.level_min
    return grid


def cosine_grid(num_steps: int, law: LevelLaw) -> np.ndarray:
    """q_i = q_min + (q_max - q_min) cos(pi/2 i/K) in the law's CDF, t_i = quantile(q_i): short steps
    at the top of the range, long ones at the bottom. Over masking time (whose CDF is the identity)
    this is MD4's cosine grid, t_i = cos(pi/2 i/K): for the linear schedule a step reveals a share
    of the symbols proportional to its length in t, so the chain reveals few symbols while it has
    little context to go on and more as the context fills in."""
    q_min, q_max = law.cdf([law.level_min, law.level_max])
    grid = law.quantile(q_min + (q_max - q_min) * np.cos(0.5 * np.pi * np.arange(num_steps + 1) / num_steps))
    grid[0], grid[-1] = law.level_max, law.level_min
    return grid


def level_grid(kind: str, num_steps: int, law: LevelLaw) -> np.ndarray:
    if kind not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; allowed: {', '.join(GRIDS)}")
    if num_steps < 1:
        raise ValueError(f"sample steps={num_steps}; allowed: an integer >= 1")
    return {"equiprobable": equiprobable_grid, "karras": karras_grid, "cosine": cosine_grid}[kind](num_steps, law)


def block_slice(stacked_params: Any, b) -> Any:
    """Block b's parameters from the stacked tree (b may be traced)."""
    return jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, b, keepdims=False), stacked_params)


def make_chain(step: Callable, read_out: Callable, partition: BlockPartition, grid: np.ndarray,
               keep_path: bool = False) -> Callable:
    """A jitted `run(stacked_params, z0, cond, key) -> output` over the descending `grid`; with
    `keep_path`, `-> (output, path)` where path[i] is the state after step i (K states). A grid of
    one level is the read-out alone, at that level (a one-call chain)."""
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or len(grid) < 1 or not np.all(np.diff(grid) < 0):
        raise ValueError("the chain's grid must descend and hold at least one level")
    owner = partition.block_of(grid)
    xs = (jnp.arange(len(grid) - 1, dtype=jnp.int32), jnp.asarray(grid[:-1], jnp.float32),
          jnp.asarray(grid[1:], jnp.float32), jnp.asarray(owner[:-1]), jnp.asarray(owner[1:]))

    def run(stacked_params, z0, cond, key):
        params_at = lambda b: block_slice(stacked_params, b)

        def body(z, x):
            i, t, t_next, b, b_next = x
            z_next = step(params_at, z, cond, t, t_next, b, b_next, jax.random.fold_in(key, i))
            return z_next, (z_next if keep_path else None)

        z, path = jax.lax.scan(body, z0, xs)
        out = read_out(params_at, z, cond, jnp.float32(grid[-1]), jnp.int32(owner[-1]))
        return (out, path) if keep_path else out

    return jax.jit(run)


def stack_blocks(block_params: list) -> Any:
    """Stack per-block parameter trees (identical structure) along a new leading block axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *block_params)
