import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dblocks_jax import EDM, BlockPartition
from dblocks_jax.engine.chain import karras_grid, level_grid, make_chain
from dblocks_jax.engine.masking import LinearMasking
from dblocks_jax.engine.reference import solver_error
from dblocks_jax.engine.solvers import evaluations_per_sample, make_ode_sampler


@pytest.mark.parametrize("kind", ["equiprobable", "karras", "cosine"])
def test_grids_descend_from_sigma_max_to_sigma_min(kind):
    t = level_grid(kind, 17, EDM())
    assert len(t) == 18 and t[0] == 80.0 and t[-1] == 0.002 and np.all(np.diff(t) < 0)


def test_cosine_grid_over_masking_time_is_md4s_and_reveals_little_at_first():
    t = level_grid("cosine", 8, LinearMasking())
    np.testing.assert_allclose(t, np.cos(np.pi / 2 * np.arange(9) / 8), atol=1e-12)  # MD4's t_i = cos(pi/2 i/K)
    assert np.all(np.diff(-np.diff(t)) > 0)  # every step longer than the one before
    np.testing.assert_allclose(level_grid("equiprobable", 4, LinearMasking()), [1, 0.75, 0.5, 0.25, 0])


def test_karras_grid_matches_edm_reference_values():
    # EDM (Karras et al. 2022) eq. 5 with sigma_min 0.002, sigma_max 80, rho 7 and N = 18 steps, the
    # schedule of its CIFAR-10 sampler: these values were computed once from the paper's formula in
    # float64 (t_1, t_9, t_17), not with the implementation under test.
    t = karras_grid(18, EDM(), rho=7.0)
    assert t[0] == 80.0 and t[-1] == 0.002
    np.testing.assert_allclose([t[1], t[9], t[17]], [58.67148, 2.515219, 0.007037284], rtol=1e-6)


@pytest.mark.parametrize("num_blocks", [2, 3, 4, 6, 8, 12])
def test_equiprobable_grid_gives_each_block_exactly_k_over_b_steps(num_blocks):
    part = BlockPartition.equiprobable(num_blocks)
    for k in (num_blocks, 2 * num_blocks, 5 * num_blocks, 50 // num_blocks * num_blocks):
        owners = part.block_of(level_grid("equiprobable", k, part.law)[:-1])
        np.testing.assert_array_equal(np.bincount(owners, minlength=num_blocks), k // num_blocks)


def constant_blocks(num_blocks):
    """Block b's 'parameters' are the constant it returns as D: lets a test see which block ran."""
    values = jnp.asarray(np.linspace(-0.9, 0.9, num_blocks), jnp.float32)
    return values, lambda params, z, sigma, cond, block: jnp.full_like(z, params)


def band_owner(part, sigma):
    """The block owning sigma, found from the bands (half-open (lo, hi]), not with block_of."""
    hits = [b for b in range(part.num_blocks) if part.band(b)[0] < sigma <= part.band(b)[1]]
    return hits[0] if hits else part.num_blocks - 1  # sigma_min belongs to the lowest band


def test_chain_routes_every_step_to_the_block_that_owns_its_level():
    """A chain whose state records, at each step, the parameters it was handed for the step's
    block: they must be those of the block whose band holds the step's level, in network order."""
    part = BlockPartition.equiprobable(4, overlap=0.1)  # overlap must not change ownership
    values = jnp.asarray([10.0, 11.0, 12.0, 13.0])
    t = level_grid("equiprobable", 12, part.law)

    def step(params_at, state, cond, t_i, t_next, b, b_next, key):
        visits, pos = state
        return visits.at[pos].set(params_at(b)), pos + 1

    read_out = lambda params_at, state, cond, t_last, b_last: (state[0], params_at(b_last))
    visits, last = make_chain(step, read_out, part, t)(values, (jnp.zeros(12), jnp.int32(0)), None, jax.random.key(0))
    expected = [10.0 + band_owner(part, s) for s in t[:-1]]
    np.testing.assert_array_equal(np.asarray(visits), expected)
    assert float(last) == 10.0 + band_owner(part, t[-1]) == 13.0
    assert sorted(set(expected)) == [10.0, 11.0, 12.0, 13.0] and expected == sorted(expected)  # every block, in order
    # keep_path: the state after every step, the last of which is the state the read-out gets.
    (visits_again, _), path = make_chain(step, read_out, part, t, keep_path=True)(
        values, (jnp.zeros(12), jnp.int32(0)), None, jax.random.key(0))
    np.testing.assert_array_equal(visits_again, visits)
    assert path[0].shape == (12, 12) and np.asarray(path[1]).tolist() == list(range(1, 13))
    np.testing.assert_array_equal(path[0][-1], visits)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampler_trajectory_matches_float64_replay(solver):
    part = BlockPartition.equiprobable(4, overlap=0.1)
    noise = jax.random.normal(jax.random.key(0), (2, 3, 3, 1))
    # Each block's D depends on z, so the trajectory (and which block ran each step) matters.
    tracking = lambda params, z, sigma, cond, block: params * z
    sampler = make_ode_sampler(tracking, part, num_steps=12, solver=solver)
    scales = jnp.asarray([0.1, 0.3, 0.6, 0.9], jnp.float32)
    got = np.asarray(sampler(scales, noise), np.float64)
    t = level_grid("equiprobable", 12, part.law)
    z = 80.0 * np.asarray(noise, np.float64)
    owners = [band_owner(part, s) for s in t]
    for i in range(12):
        b, b2 = owners[i], owners[i + 1]
        d = (z - scales[b] * z) / t[i]
        if solver == "euler":
            z = z + (t[i + 1] - t[i]) * d
        else:
            z_e = z + (t[i + 1] - t[i]) * d
            z = z + (t[i + 1] - t[i]) * 0.5 * (d + (z_e - scales[b2] * z_e) / t[i + 1])
    np.testing.assert_allclose(got, float(scales[owners[-1]]) * z, rtol=1e-4)


def test_sampler_compiles_once_for_all_steps():
    part = BlockPartition.equiprobable(3)
    values, denoise = constant_blocks(3)
    traces = []

    def counting(params, z, sigma, cond, block):
        traces.append(1)
        return denoise(params, z, sigma, cond, block)

    noise = jnp.ones((2, 2, 2, 1))
    counts = []
    for steps in (3, 30):
        traces.clear()
        sampler = make_ode_sampler(counting, part, num_steps=steps)
        sampler(values, noise)
        sampler(values, noise + 1)
        counts.append(len(traces))
        assert sampler._cache_size() == 1
    assert counts[0] == counts[1] == 2  # the scan body and the final denoise, whatever K


def test_heun_beats_euler_at_equal_evaluations_on_the_karras_grid():
    assert evaluations_per_sample("heun", 32) == evaluations_per_sample("euler", 64)
    heun, euler = solver_error("heun", 32, "karras"), solver_error("euler", 64, "karras")
    assert heun < 0.01, heun
    assert heun < euler / 2, (heun, euler)
    assert solver_error("heun", 128, "karras") < heun / 8  # second order: error ~ K^-2


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_both_solvers_converge_to_the_exact_solution_on_the_equiprobable_grid(solver):
    # Heun's trapezoid is poor on this grid's huge first step (80 -> ~1.2 at K = 8): the derivative
    # at the far end is ~50x larger. It still converges as K grows; see README, "Solvers".
    errors = [solver_error(solver, k, "equiprobable") for k in (32, 128, 512)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.005, errors


def test_generate_reuses_one_compiled_sampler_across_seeds():
    from conftest import tiny_task

    task = tiny_task()
    params = [task.init_params(jax.random.key(b)) for b in range(2)]
    first = task.generate(params, num_samples=3, seed=0)
    second = task.generate(params, num_samples=3, seed=1)
    assert not np.array_equal(first, second)
    assert task.sampler(task.config.sampling)._cache_size() == 1  # both seeds ran through one compilation


def stochastic_reference(part, t, scales, z, keys, s_churn, s_tmin, s_tmax, s_noise):
    """NVlabs/edm's `edm_sampler` (EDM Algorithm 2) replayed in float64 numpy on blocks whose D is
    `scale_b * z`, with block ownership found from the bands (not block_of) and the same noise: its
    num_steps levels t (ours: K + 1) with 0 appended, gamma = min(S_churn / num_steps, sqrt 2 - 1)
    at every level in [S_tmin, S_tmax] (the last one included), the second-order correction on all
    but the last step, which goes to 0."""
    def owner(sigma):  # a churned level above sigma_max belongs to block 0
        return 0 if sigma > part.band(0)[1] else band_owner(part, sigma)

    levels = list(t) + [0.0]
    num_steps = len(t)
    for i, (t_cur, t_next) in enumerate(zip(levels[:-1], levels[1:])):
        gamma = min(s_churn / num_steps, np.sqrt(2) - 1) if s_tmin <= t_cur <= s_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        eps = s_noise * np.asarray(jax.random.normal(keys[i], z.shape, jnp.float32), np.float64)
        x_hat = z + np.sqrt(t_hat**2 - t_cur**2) * eps
        d_cur = (x_hat - scales[owner(t_hat)] * x_hat) / t_hat
        z = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_prime = (z - scales[owner(t_next)] * z) / t_next
            z = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return z


def test_edm_stochastic_sampler_matches_float64_reference_with_per_step_keys():
    part = BlockPartition.equiprobable(4)
    scales = np.array([0.1, 0.3, 0.6, 0.9])
    tracking = lambda params, z, sigma, cond, block: params * z
    noise = jax.random.normal(jax.random.key(0), (2, 3, 3, 1))
    key = jax.random.key(7)
    options = dict(s_churn=20.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
    sampler = make_ode_sampler(tracking, part, num_steps=12, solver="edm_stochastic", **options)
    got = np.asarray(sampler(jnp.asarray(scales, jnp.float32), noise, None, key), np.float64)
    t = level_grid("equiprobable", 12, part.law)
    keys = [jax.random.fold_in(key, i) for i in range(13)]  # the 13th churns at sigma_min before the read-out
    expected = stochastic_reference(part, t, scales, 80.0 * np.asarray(noise, np.float64), keys, **options)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # The churn is real (another key gives another sample) and S_churn = 0 is Heun exactly.
    other = np.asarray(sampler(jnp.asarray(scales, jnp.float32), noise, None, jax.random.key(8)))
    assert np.abs(other - got).max() > 1e-3
    plain = make_ode_sampler(tracking, part, num_steps=12, solver="edm_stochastic")
    heun = make_ode_sampler(tracking, part, num_steps=12, solver="heun")
    np.testing.assert_allclose(plain(jnp.asarray(scales, jnp.float32), noise, None, key),
                               heun(jnp.asarray(scales, jnp.float32), noise), rtol=1e-5)  # float32 op order
    assert evaluations_per_sample("edm_stochastic", 12) == 25


def test_churn_at_and_past_the_last_level_is_edms():
    """S_tmin = 0 churns at sigma_min too (EDM does); S_churn is spread over the K + 1 levels."""
    part = BlockPartition.equiprobable(2)
    scales = np.array([0.4, 0.8])
    tracking = lambda params, z, sigma, cond, block: params * z
    noise, key = jax.random.normal(jax.random.key(3), (4, 2)), jax.random.key(5)
    t = level_grid("karras", 17, part.law)
    keys = [jax.random.fold_in(key, i) for i in range(18)]
    for options in (dict(s_churn=5.0, s_tmin=0.0, s_tmax=1e30, s_noise=1.0),  # below the sqrt 2 - 1 cap
                    dict(s_churn=40.0, s_tmin=0.0, s_tmax=0.01, s_noise=1.0)):  # the last levels only
        sampler = make_ode_sampler(tracking, part, num_steps=17, solver="edm_stochastic", grid="karras", **options)
        got = np.asarray(sampler(jnp.asarray(scales, jnp.float32), noise, None, key), np.float64)
        expected = stochastic_reference(part, t, scales, 80.0 * np.asarray(noise, np.float64), keys, **options)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


SOLVERS_UNDER_DEFAULT_FLAGS = """
import jax, jax.numpy as jnp, numpy as np
from dblocks_jax import BlockPartition
from dblocks_jax.engine.reference import GaussianData
from dblocks_jax.engine.solvers import make_ode_sampler
data = GaussianData.random()
n = 1024
noise = jax.random.normal(jax.random.key(0), (n, *data.mu.shape[1:]))
for blocks in (1, 4):
    part = BlockPartition.equiprobable(blocks)
    for solver, options in (("euler", {}), ("heun", {}),
                            ("edm_stochastic", dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)),
                            ("edm_stochastic", dict(s_churn=40.0, s_tmin=0.05)),
                            ("edm_stochastic", dict(s_churn=40.0, s_tmax=50.0))):
        sampler = make_ode_sampler(data.denoise, part, num_steps=17, solver=solver, grid="karras", **options)
        out = np.asarray(sampler(jnp.zeros((blocks,)), noise, None, jax.random.key(1)), np.float64)
        where = (blocks, solver, options)
        assert np.isfinite(out).all(), (where, float(np.isnan(out).mean()))
        if solver == "edm_stochastic":  # another sample of the data, not the ODE's: its law is the data's
            # (to the accuracy of 17 steps: Heun's samples have 1.03-1.12 x the data's std here, these 1.10-1.21)
            assert np.abs(out.mean(0) - data.mu[0]).max() < 5 * data.s.max() / n**0.5, where
            assert 0.8 < (out.std(0) / data.s[0]).min() and (out.std(0) / data.s[0]).max() < 1.35, where
        else:  # the ODE's end point (RMS 0.060 Euler, 0.022 Heun at 17 steps)
            error = float(np.sqrt(np.mean((out - data.exact_sample(noise, part.law)) ** 2)))
            assert error < 0.1, (where, error)
print("ok")
"""


def test_every_solver_runs_under_jaxs_default_compiler_flags():
    """The suite compiles at XLA's lowest optimisation level (conftest.py); users do not. With the
    default flags, EDM's churn limited to a range once gave NaN (t_hat**2 - t**2 compiled to a small
    negative number where gamma = 0): each solver runs once in a child process with JAX's defaults."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", SOLVERS_UNDER_DEFAULT_FLAGS], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
