import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dblocks_jax import EDM, BlockPartition


def truncated_mass(edm, lo, hi):
    """Share of the truncated log-normal between lo and hi, computed independently with scipy."""
    cdf = lambda s: stats.norm.cdf((np.log(s) - edm.p_mean) / edm.p_std)
    return (cdf(hi) - cdf(lo)) / (cdf(edm.sigma_max) - cdf(edm.sigma_min))


@pytest.mark.parametrize("num_blocks", [1, 2, 3, 4, 8, 16])
def test_equiprobable_bands_hold_equal_mass(num_blocks):
    edm = EDM()
    part = BlockPartition.equiprobable(num_blocks, law=edm)
    assert part.boundaries.dtype == np.float64 and len(part.boundaries) == num_blocks + 1
    assert part.boundaries[0] == edm.sigma_min and part.boundaries[-1] == edm.sigma_max
    assert np.all(np.diff(part.boundaries) > 0)
    masses = [truncated_mass(edm, *part.band(b)) for b in range(num_blocks)]
    np.testing.assert_allclose(masses, 1.0 / num_blocks, atol=1e-6)


def test_uniform_log_bands_have_equal_log_width_and_differ_from_equiprobable():
    part = BlockPartition.uniform_log(4)
    widths = [np.log(hi / lo) for hi, lo in [part.band(b)[::-1] for b in range(4)]]
    np.testing.assert_allclose(widths, np.log(80 / 0.002) / 4, rtol=1e-12)
    assert not np.allclose(part.boundaries, BlockPartition.equiprobable(4).boundaries)


def test_block_zero_owns_the_highest_band():
    part = BlockPartition.equiprobable(3)
    assert part.band(0)[1] == part.law.sigma_max
    assert part.band(2)[0] == part.law.sigma_min
    assert part.band(0)[0] == part.band(1)[1]


@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.2])
def test_overlap_widens_bands_in_log_space_and_clamps(gamma):
    part = BlockPartition.equiprobable(4, overlap=gamma)
    for b in range(4):
        lo, hi = part.band(b)
        tlo, thi = part.training_band(b)
        r = hi / lo
        np.testing.assert_allclose(tlo, max(lo * r ** -gamma, 0.002), rtol=1e-12)
        np.testing.assert_allclose(thi, min(hi * r ** gamma, 80.0), rtol=1e-12)
        assert tlo <= lo and thi >= hi
    if gamma > 0:
        lo, hi = part.band(1)
        assert part.training_band(1)[0] < lo and part.training_band(1)[1] > hi
    assert part.training_band(0)[1] == 80.0 and part.training_band(3)[0] == 0.002


def test_block_of_is_consistent_with_band():
    part = BlockPartition.equiprobable(5)
    rng = np.random.default_rng(0)
    sigmas = np.concatenate([np.exp(rng.uniform(np.log(0.002), np.log(80), 500)), part.boundaries])
    owners = part.block_of(sigmas)
    owners_jit = np.asarray(jax.jit(part.block_of)(jnp.asarray(sigmas, jnp.float32)))
    for sigma, b in zip(sigmas, owners):
        lo, hi = part.band(int(b))
        assert lo < sigma <= hi or (sigma == lo == part.law.sigma_min), (sigma, b, lo, hi)
    np.testing.assert_array_equal(owners, owners_jit)
    # A boundary belongs to the lower-noise block, i.e. the one with the larger index.
    assert part.block_of(np.array([part.boundaries[2]]))[0] == 5 - 2


@pytest.mark.parametrize("b", [0, 2, 3])
def test_sample_level_follows_truncated_lognormal_inside_jit(b):
    part = BlockPartition.equiprobable(4, overlap=0.1)
    sigmas = np.asarray(jax.jit(part.sample_level, static_argnums=2)(jax.random.key(b), b, (20_000,)),
                        np.float64)
    lo, hi = part.training_band(b)
    assert sigmas.min() >= lo * (1 - 1e-6) and sigmas.max() <= hi * (1 + 1e-6)
    edm = part.law
    a, c = [(np.log(x) - edm.p_mean) / edm.p_std for x in (lo, hi)]
    ks = stats.kstest((np.log(sigmas) - edm.p_mean) / edm.p_std, stats.truncnorm(a, c).cdf)
    assert ks.statistic < 0.015


def test_sample_sigma_accepts_a_traced_block_index():
    part = BlockPartition.equiprobable(3, overlap=0.0)
    draw = jax.jit(lambda key, b: part.sample_level(key, b, (4000,)))
    for b in range(3):
        s = np.asarray(draw(jax.random.key(0), b))
        lo, hi = part.band(b)
        assert lo * 0.9999 <= s.min() and s.max() <= hi * 1.0001


@pytest.mark.parametrize("kwargs", [dict(num_blocks=0), dict(num_blocks=2, overlap=-0.1),
                                    dict(num_blocks=2, overlap=0.5)])
def test_bad_partitions_are_refused(kwargs):
    with pytest.raises(ValueError, match="allowed"):
        BlockPartition.equiprobable(**kwargs)
