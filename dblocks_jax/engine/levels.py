"""Level laws: the distribution of training levels that the blocks' bands partition.

DiffusionBlocks gives every block a band of *levels* (noise scales sigma for Gaussian diffusion,
masking times t for masked diffusion) and trains it only there. Everything the partition, the
training draws and the sampler grid need from the noise process is one distribution over levels:

- `cdf(level)` / `quantile(q)`: host-side, float64, for band boundaries (equal-probability bands are
  quantiles at k/B of the mass between `level_min` and `level_max`) and sampler grids;
- `sample_band(key, lo, hi, shape)`: levels drawn from the law truncated to [lo, hi], traceable in
  lo and hi so one compiled train step serves every block;
- `widen(lo, hi, overlap)`: a band widened by the overlap gamma in the law's natural geometry
  (log space for sigma, which spans decades);
- `log_spaced`: whether "uniform" bands are uniform in log level (sigma) or in level (t).

Higher levels are noisier. Block 0, the first block of the network, owns the highest band.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax
import numpy as np


@runtime_checkable
class LevelLaw(Protocol):
    level_min: float
    level_max: float
    log_spaced: bool

    def cdf(self, level) -> np.ndarray:
        """P(level' <= level) of the untruncated law, float64 on the host."""

    def quantile(self, q) -> np.ndarray:
        """Inverse of `cdf`, float64 on the host."""

    def sample_band(self, key: jax.Array, lo, hi, shape: tuple[int, ...]) -> jax.Array:
        """Levels from the law truncated to [lo, hi] (jit-able; lo and hi may be traced)."""

    def widen(self, lo: float, hi: float, overlap: float) -> tuple[float, float]:
        """[lo, hi] widened by `overlap`, clamped to [level_min, level_max]."""
