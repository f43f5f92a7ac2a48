"""Partition of the noise range [sigma_min, sigma_max] into one band per block (DESIGN.md section 2).

Boundaries are computed once, in float64 on the host. Block 0 (the first block of the network)
owns the *highest* band, block B-1 the lowest, so that inference runs the blocks in network order
while the sampler walks from high noise to low noise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

from dblocks_jax.edm import EDM

STRATEGIES = ("equiprobable", "uniform_log")


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPartition:
    boundaries: np.ndarray  # ascending float64, length B + 1, boundaries[0] = sigma_min, [-1] = sigma_max
    overlap: float
    edm: EDM
    strategy: str

    @classmethod
    def equiprobable(cls, num_blocks: int, overlap: float = 0.05, edm: EDM = EDM()) -> "BlockPartition":
        """Every band holds 1/B of the truncated log-normal training mass:
        sigma_k = exp(P_mean + P_std * Phi^-1(q_min + k/B (q_max - q_min)))."""
        _check(num_blocks, overlap)
        q_min, q_max = edm.sigma_cdf([edm.sigma_min, edm.sigma_max])
        boundaries = edm.sigma_quantile(q_min + np.arange(num_blocks + 1) / num_blocks * (q_max - q_min))
        return cls(_pin_ends(boundaries, edm), float(overlap), edm, "equiprobable")

    @classmethod
    def uniform_log(cls, num_blocks: int, overlap: float = 0.05, edm: EDM = EDM()) -> "BlockPartition":
        """Bands of equal width in ln sigma (the ablation baseline)."""
        _check(num_blocks, overlap)
        boundaries = np.exp(np.linspace(np.log(edm.sigma_min), np.log(edm.sigma_max), num_blocks + 1))
        return cls(_pin_ends(boundaries, edm), float(overlap), edm, "uniform_log")

    @classmethod
    def from_config(cls, config) -> "BlockPartition":
        make = {"equiprobable": cls.equiprobable, "uniform_log": cls.uniform_log}[config.partition]
        return make(config.num_blocks, config.overlap, EDM.from_config(config))

    @property
    def num_blocks(self) -> int:
        return len(self.boundaries) - 1

    def band(self, b: int) -> tuple[float, float]:
        """(lo, hi) of block b's own band, without overlap."""
        j = self._ascending_index(b)
        return float(self.boundaries[j]), float(self.boundaries[j + 1])

    def training_band(self, b: int) -> tuple[float, float]:
        """Block b's band widened in log space by the overlap: [lo r^-gamma, hi r^gamma], r = hi/lo,
        clamped to [sigma_min, sigma_max]."""
        lo, hi = self.band(b)
        r_gamma = (hi / lo) ** self.overlap
        return max(lo / r_gamma, self.edm.sigma_min), min(hi * r_gamma, self.edm.sigma_max)

    @property
    def training_bands(self) -> np.ndarray:
        """(B, 2) float64 array of every block's training band."""
        return np.array([self.training_band(b) for b in range(self.num_blocks)])

    def block_of(self, sigma):
        """The block whose band contains sigma. Bands are half-open (lo, hi], so a boundary belongs to
        the lower-noise block; the lowest band also holds sigma_min. Works on numpy and traced arrays."""
        xp = jnp if isinstance(sigma, jax.Array) else np
        interior = xp.asarray(self.boundaries[1:-1], dtype=xp.asarray(sigma).dtype)
        ascending = xp.searchsorted(interior, sigma, side="left")
        return (self.num_blocks - 1 - ascending).astype(np.int32)

    def sample_sigma(self, key: jax.Array, b, shape: tuple[int, ...]) -> jax.Array:
        """Sigmas from the log-normal truncated to block b's training band, by inverse CDF.
        `b` may be a traced integer, so one compiled train step serves every block."""
        bands = jnp.asarray(self.training_bands, jnp.float32)
        lo, hi = bands[b, 0], bands[b, 1]
        return sample_truncated_lognormal(key, lo, hi, shape, self.edm.p_mean, self.edm.p_std)

    def _ascending_index(self, b: int) -> int:
        if not 0 <= b < self.num_blocks:
            raise ValueError(f"block index {b} out of range; allowed: 0..{self.num_blocks - 1}")
        return self.num_blocks - 1 - b


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


def _check(num_blocks: int, overlap: float) -> None:
    if not (isinstance(num_blocks, (int, np.integer)) and num_blocks >= 1):
        raise ValueError(f"num_blocks={num_blocks!r}; allowed: an integer >= 1")
    if not 0.0 <= overlap < 0.5:
        raise ValueError(f"overlap={overlap!r}; allowed: a number in [0, 0.5)")


def _pin_ends(boundaries: np.ndarray, edm: EDM) -> np.ndarray:
    """Make the ends exactly sigma_min and sigma_max (the quantile round trip is off by ~1 ulp)."""
    boundaries = np.array(boundaries, np.float64)
    boundaries[0], boundaries[-1] = edm.sigma_min, edm.sigma_max
    return boundaries
