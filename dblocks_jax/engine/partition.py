"""Partition of a level law's range into one band per block.

Boundaries are computed once, in float64 on the host. Block 0 (the first block of the network)
owns the *highest* band, block B-1 the lowest, so that inference runs the blocks in network order
while the chain walks from high noise to low noise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.engine.edm import EDM
from dblocks_jax.engine.levels import LevelLaw

STRATEGIES = ("equiprobable", "uniform_log")


@dataclasses.dataclass(frozen=True, eq=False)
class BlockPartition:
    boundaries: np.ndarray  # ascending float64, length B + 1, [0] = level_min, [-1] = level_max
    overlap: float
    law: LevelLaw
    strategy: str

    @classmethod
    def equiprobable(cls, num_blocks: int, overlap: float = 0.05, law: LevelLaw = EDM()) -> "BlockPartition":
        """Every band holds 1/B of the truncated law's mass (the paper's equi-probability partition):
        level_k = quantile(q_min + k/B (q_max - q_min))."""
        _check(num_blocks, overlap)
        q_min, q_max = law.cdf([law.level_min, law.level_max])
        boundaries = law.quantile(q_min + np.arange(num_blocks + 1) / num_blocks * (q_max - q_min))
        return cls(_pin_ends(boundaries, law), float(overlap), law, "equiprobable")

    @classmethod
    def uniform_log(cls, num_blocks: int, overlap: float = 0.05, law: LevelLaw = EDM()) -> "BlockPartition":
        """Bands of equal width in log level (in level, for a law that is not log-spaced): the
        ablation baseline."""
        _check(num_blocks, overlap)
        lo, hi = law.level_min, law.level_max
        if law.log_spaced:
            boundaries = np.exp(np.linspace(np.log(lo), np.log(hi), num_blocks + 1))
        else:
            boundaries = np.linspace(lo, hi, num_blocks + 1)
        return cls(_pin_ends(boundaries, law), float(overlap), law, "uniform_log")

    @classmethod
    def make(cls, strategy: str, num_blocks: int, overlap: float, law: LevelLaw) -> "BlockPartition":
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown partition strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
        return {"equiprobable": cls.equiprobable, "uniform_log": cls.uniform_log}[strategy](num_blocks, overlap, law)

    @property
    def num_blocks(self) -> int:
        return len(self.boundaries) - 1

    def band(self, b: int) -> tuple[float, float]:
        """(lo, hi) of block b's own band, without overlap."""
        j = self._ascending_index(b)
        return float(self.boundaries[j]), float(self.boundaries[j + 1])

    def training_band(self, b: int) -> tuple[float, float]:
        """Block b's band widened by the overlap gamma (the law says how), clamped to the range."""
        return self.law.widen(*self.band(b), self.overlap)

    @property
    def training_bands(self) -> np.ndarray:
        """(B, 2) float64 array of every block's training band."""
        return np.array([self.training_band(b) for b in range(self.num_blocks)])

    def block_of(self, level):
        """The block whose band contains `level`. Bands are half-open (lo, hi], so a boundary belongs
        to the lower-noise block; the lowest band also holds level_min. Numpy or traced arrays."""
        xp = jnp if isinstance(level, jax.Array) else np
        interior = xp.asarray(self.boundaries[1:-1], dtype=xp.asarray(level).dtype)
        ascending = xp.searchsorted(interior, level, side="left")
        return (self.num_blocks - 1 - ascending).astype(np.int32)

    def sample_level(self, key: jax.Array, b, shape: tuple[int, ...]) -> jax.Array:
        """Levels from the law truncated to block b's training band. `b` may be a traced integer,
        so one compiled train step serves every block."""
        bands = jnp.asarray(self.training_bands, jnp.float32)
        return self.law.sample_band(key, bands[b, 0], bands[b, 1], shape)

    def _ascending_index(self, b: int) -> int:
        if not 0 <= b < self.num_blocks:
            raise ValueError(f"block index {b} out of range; allowed: 0..{self.num_blocks - 1}")
        return self.num_blocks - 1 - b


def _check(num_blocks: int, overlap: float) -> None:
    if not (isinstance(num_blocks, (int, np.integer)) and num_blocks >= 1):
        raise ValueError(f"num_blocks={num_blocks!r}; allowed: an integer >= 1")
    if not 0.0 <= overlap < 0.5:
        raise ValueError(f"overlap={overlap!r}; allowed: a number in [0, 0.5)")


def _pin_ends(boundaries: np.ndarray, law: LevelLaw) -> np.ndarray:
    """Make the ends exactly level_min and level_max (the quantile round trip is off by ~1 ulp)."""
    boundaries = np.array(boundaries, np.float64)
    boundaries[0], boundaries[-1] = law.level_min, law.level_max
    return boundaries
