"""Masked diffusion (MD4: Shi et al., "Simplified and Generalized Masked Diffusion for Discrete
Data", NeurIPS 2024) as a level law: the level is the masking time t in [0, 1].

Each symbol is kept with probability alpha_t and masked otherwise. MD4's linear schedule is
alpha_t = (1 - 2 eps)(1 - t) + eps (eps = 1e-4 keeps alpha away from 0 and 1). Its
continuous-time ELBO weighs the cross-entropy of the masked symbols at time t by
w(t) = -alpha'_t / (1 - alpha_t) (MD4 eq. 5); for the linear schedule that is about 1/t.

Training times are uniform on [0, 1], so the law is the uniform distribution: equal-probability
bands are t_b = b/B, and a band is widened in t itself (not in log t) by the overlap gamma. The
most masked band (t near 1) is the highest level, owned by block 0, as the noisiest sigma band is
for Gaussian diffusion. Implements `LevelLaw`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LinearMasking:
    """MD4's linear masking schedule over t in [0, 1]."""

    eps: float = 1e-4

    level_min = 0.0
    level_max = 1.0
    log_spaced = False  # "uniform" bands are uniform in t

    def cdf(self, t) -> np.ndarray:
        return np.clip(np.asarray(t, np.float64), 0.0, 1.0)

    def quantile(self, q) -> np.ndarray:
        return np.clip(np.asarray(q, np.float64), 0.0, 1.0)

    def sample_band(self, key: jax.Array, lo, hi, shape: tuple[int, ...]) -> jax.Array:
        """t uniform on [lo, hi], stratified along the first axis (one draw per 1/N of the band):
        the same distribution with a lower-variance batch estimate of the ELBO (MD4 sec. 4)."""
        n = shape[0] if shape else 1
        u = jax.random.uniform(key, shape, jnp.float32)
        offsets = jnp.arange(n, dtype=jnp.float32).reshape((n,) + (1,) * (len(shape) - 1)) if shape else 0.0
        return lo + (hi - lo) * (offsets + u) / n

    def widen(self, lo: float, hi: float, overlap: float) -> tuple[float, float]:
        """[lo - gamma w, hi + gamma w] with w = hi - lo, clamped to [0, 1]."""
        width = hi - lo
        return max(lo - overlap * width, self.level_min), min(hi + overlap * width, self.level_max)

    def alpha(self, t):
        """alpha_t: the probability that a symbol is still unmasked at time t."""
        return (1.0 - 2.0 * self.eps) * (1.0 - t) + self.eps

    def elbo_weight(self, t):
        """w(t) = -alpha'_t / (1 - alpha_t): the weight of the masked symbols' cross-entropy in the
        continuous-time ELBO (MD4 eq. 5)."""
        return (1.0 - 2.0 * self.eps) / (1.0 - self.alpha(t))
