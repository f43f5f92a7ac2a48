"""MD4's linear masking schedule as a level law: bands, overlap, stratified draws, the ELBO weight."""

import jax
import numpy as np
import pytest

from dblocks_jax.engine.chain import level_grid
from dblocks_jax.engine.levels import LevelLaw
from dblocks_jax.engine.masking import LinearMasking
from dblocks_jax.engine.partition import BlockPartition


def test_equal_probability_bands_are_thirds_and_the_most_masked_band_is_block_zero():
    law = LinearMasking()
    assert isinstance(law, LevelLaw)
    partition = BlockPartition.equiprobable(3, overlap=0.05, law=law)
    np.testing.assert_allclose(partition.boundaries, [0, 1 / 3, 2 / 3, 1], atol=1e-15)
    assert partition.block_of(np.array([0.95, 0.5, 0.05, 0.0])).tolist() == [0, 1, 2, 2]
    lo, hi = partition.training_band(1)  # widened by 5 % of its width on each side, in t itself
    assert lo == pytest.approx(1 / 3 - 0.05 / 3) and hi == pytest.approx(2 / 3 + 0.05 / 3)
    assert partition.training_band(0)[1] == 1.0 and partition.training_band(2)[0] == 0.0  # clamped
    grid = level_grid("equiprobable", 6, law)
    np.testing.assert_allclose(grid, np.linspace(1, 0, 7), atol=1e-15)
    assert partition.block_of(grid[:-1]).tolist() == [0, 0, 1, 1, 2, 2]


def test_draws_are_stratified_uniform_on_the_band():
    law = LinearMasking()
    t = np.asarray(jax.jit(lambda k: law.sample_band(k, 0.2, 0.5, (1000,)))(jax.random.key(0)))
    assert t.min() >= 0.2 and t.max() <= 0.5
    strata = np.floor((t - 0.2) / 0.3 * 1000).astype(int)
    assert sorted(strata.tolist()) == list(range(1000))  # exactly one draw in each 1/N of the band
    other = np.asarray(law.sample_band(jax.random.key(1), 0.2, 0.5, (1000,)))
    assert not np.allclose(t, other) and abs(other.mean() - 0.35) < 0.002


def test_alpha_and_the_elbo_weight_of_the_linear_schedule():
    law = LinearMasking(eps=1e-4)
    assert law.alpha(0.0) == pytest.approx(1 - 1e-4) and law.alpha(1.0) == pytest.approx(1e-4)
    t = np.linspace(0.01, 1.0, 50)
    # -alpha'(t) = w(t) (1 - alpha(t)) = 1 - 2 eps: the masked mass gains weight at a constant rate
    np.testing.assert_allclose(law.elbo_weight(t) * (1 - law.alpha(t)), 1 - 2e-4, rtol=1e-12)
    np.testing.assert_allclose(law.elbo_weight(t[t >= 0.1]), 1 / t[t >= 0.1], rtol=2e-3)  # about 1/t away from 0
