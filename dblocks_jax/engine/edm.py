"""EDM (Karras et al. 2022), variance exploding: z = y + sigma * eps, as a level law.

One small function per formula: the truncated log-normal training law over sigma (EDM sec. 5,
ln sigma ~ N(P_mean, P_std^2)) that the partition cuts into bands, and the preconditioning
(EDM Table 1) that makes each block a well-scaled denoiser of its band. Sigma-dependent scalars
are computed in float32 (or wider) whatever the compute dtype of the network.
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri


@dataclasses.dataclass(frozen=True)
class EDM:
    """The constants of the noise model; training sigma is log-normal, ln sigma ~ N(p_mean, p_std^2),
    truncated to [sigma_min, sigma_max]. Implements `LevelLaw` with levels = sigma."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2

    log_spaced = True  # sigma spans decades: uniform bands and overlaps are taken in ln sigma

    @property
    def level_min(self) -> float:
        return self.sigma_min

    @property
    def level_max(self) -> float:
        return self.sigma_max

    # -- the level law ----------------------------------------------------------------------------

    def cdf(self, sigma) -> np.ndarray:
        """P(sigma' <= sigma) under the *untruncated* log-normal, in float64 on the host."""
        logs = np.log(np.asarray(sigma, np.float64))
        return np.vectorize(NormalDist(self.p_mean, self.p_std).cdf, otypes=[np.float64])(logs)

    def quantile(self, q) -> np.ndarray:
        """Inverse of `cdf`: sigma = exp(P_mean + P_std * Phi^-1(q)), float64 on the host."""
        inv = np.vectorize(NormalDist(self.p_mean, self.p_std).inv_cdf, otypes=[np.float64])
        return np.exp(inv(np.asarray(q, np.float64)))

    def sample_band(self, key: jax.Array, lo, hi, shape: tuple[int, ...]) -> jax.Array:
        return sample_truncated_lognormal(key, lo, hi, shape, self.p_mean, self.p_std)

    def widen(self, lo: float, hi: float, overlap: float) -> tuple[float, float]:
        """[lo r^-gamma, hi r^gamma] with r = hi / lo (the paper's overlap, in log space)."""
        r_gamma = (hi / lo) ** overlap
        return max(lo / r_gamma, self.sigma_min), min(hi * r_gamma, self.sigma_max)

    # -- preconditioning ----------------------------------------------------------------------------

    def scalings(self, sigma):
        """(c_skip, c_out, c_in, c_noise) of the EDM preconditioning (EDM Table 1)."""
        sigma = jnp.asarray(sigma, jnp.promote_types(jnp.result_type(sigma), jnp.float32))
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / jnp.sqrt(sigma**2 + sd2)
        c_in = 1.0 / jnp.sqrt(sigma**2 + sd2)
        c_noise = 0.25 * jnp.log(sigma)
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma):
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, so that lambda * c_out^2 = 1."""
        sigma = jnp.asarray(sigma, jnp.promote_types(jnp.result_type(sigma), jnp.float32))
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def denoise(self, network: Callable, z, sigma):
        """D(z, sigma) = c_skip z + c_out F(c_in z, c_noise); `network(x, c_noise)` is F.

        `sigma` has one value per example; the result is float32.
        """
        c_skip, c_out, c_in, c_noise = (per_example(c, z) for c in self.scalings(sigma))
        f = network(c_in * z, c_noise.reshape(-1)).astype(jnp.float32)
        return c_skip * z + c_out * f

    def f_target(self, y, z, sigma):
        """The target of F for which mean||F - target||^2 equals the lambda-weighted loss of D."""
        c_skip, c_out, _, _ = (per_example(c, z) for c in self.scalings(sigma))
        return (y - c_skip * z) / c_out

    def weighted_loss(self, denoised, y, sigma):
        """lambda(sigma) * mean ||D - y||^2 per example (the textbook form; training uses F-space)."""
        per_ex = jnp.mean((denoised - y) ** 2, axis=tuple(range(1, y.ndim)))
        return self.loss_weight(sigma) * per_ex


def per_example(c, like):
    """Broadcast a per-example scalar against a batch whose first axis is the example."""
    return jnp.reshape(c, (-1,) + (1,) * (like.ndim - 1))


def add_noise(y, sigma, eps):
    """z = y + sigma * eps."""
    return y + per_example(sigma, y) * eps


def sample_truncated_lognormal(key, lo, hi, shape, p_mean: float, p_std: float) -> jax.Array:
    """ln sigma ~ N(p_mean, p_std^2) truncated to [lo, hi], by inverse CDF: u ~ U(Phi(a), Phi(b)),
    sigma = exp(p_mean + p_std Phi^-1(u)). Bands in the upper tail are sampled in the mirrored
    tail, where float32 CDF values keep their precision."""
    a = (jnp.log(lo) - p_mean) / p_std
    b = (jnp.log(hi) - p_mean) / p_std
    flip = a + b > 0
    a_, b_ = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    u = jax.random.uniform(key, shape, jnp.float32, ndtr(a_), ndtr(b_))
    x = jnp.clip(ndtri(u), a_, b_)
    x = jnp.where(flip, -x, x)
    return jnp.exp(p_mean + p_std * x)
