"""Closed-form references for checking samplers: Gaussian data, where everything is exact.

For y ~ N(mu, s^2) in every coordinate, the ideal denoiser is D(z, t) = mu + s^2 / (s^2 + t^2) (z - mu) and
the probability-flow ODE keeps (z - mu) / sqrt(s^2 + t^2) constant, so the sampler's output can be
compared with the exact end point of the ODE.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.engine.edm import EDM
from dblocks_jax.engine.partition import BlockPartition
from dblocks_jax.engine.solvers import make_ode_sampler


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianData:
    mu: np.ndarray  # (1, *shape)
    s: np.ndarray  # (1, *shape), standard deviation of each coordinate

    @classmethod
    def random(cls, shape=(4, 4, 1), seed: int = 0) -> "GaussianData":
        rng = np.random.default_rng(seed)
        return cls(rng.uniform(-0.5, 0.5, (1, *shape)), rng.uniform(0.05, 0.6, (1, *shape)))

    def denoise(self, params, z, t, cond=None, block=None):
        """The exact D(z, t), with the signature the sampler expects (params and conditioning unused)."""
        s2 = self.s**2
        t = jnp.reshape(t, (-1,) + (1,) * (z.ndim - 1))
        return (self.mu + s2 / (s2 + t**2) * (z - self.mu)).astype(jnp.float32)

    def exact_sample(self, noise, edm: EDM) -> np.ndarray:
        """D(z(sigma_min), sigma_min) for the exact ODE solution started at z = sigma_max * noise."""
        s2, z0 = self.s**2, edm.sigma_max * np.asarray(noise, np.float64)
        z_end = self.mu + (z0 - self.mu) * np.sqrt(s2 + edm.sigma_min**2) / np.sqrt(s2 + edm.sigma_max**2)
        return self.mu + s2 / (s2 + edm.sigma_min**2) * (z_end - self.mu)


def solver_error(solver: str, num_steps: int, grid: str, num_blocks: int = 4, num_samples: int = 64,
                 seed: int = 1) -> float:
    """RMS distance between the sampler's output and the exact PF-ODE end point on Gaussian data."""
    data = GaussianData.random()
    part = BlockPartition.equiprobable(num_blocks)
    noise = jax.random.normal(jax.random.key(seed), (num_samples, *data.mu.shape[1:]))
    sampler = make_ode_sampler(data.denoise, part, num_steps=num_steps, solver=solver, grid=grid)
    out = np.asarray(sampler(jnp.zeros((num_blocks,)), noise), np.float64)
    return float(np.sqrt(np.mean((out - data.exact_sample(noise, part.law)) ** 2)))
