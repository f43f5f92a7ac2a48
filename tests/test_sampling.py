import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dblocks_jax import EDM, BlockPartition
from dblocks_jax.analytic import solver_error
from dblocks_jax.sampling import evaluations_per_sample, karras_grid, make_sampler, sigma_grid


@pytest.mark.parametrize("kind", ["equiprobable", "karras"])
def test_grids_descend_from_sigma_max_to_sigma_min(kind):
    t = sigma_grid(kind, 17, EDM())
    assert len(t) == 18 and t[0] == 80.0 and t[-1] == 0.002 and np.all(np.diff(t) < 0)


def test_karras_grid_formula():
    t = karras_grid(10, EDM(), rho=7.0)
    i = np.arange(11)
    expected = (80 ** (1 / 7) + i / 10 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(t, expected, rtol=1e-12)


@pytest.mark.parametrize("num_blocks", [2, 3, 4, 6, 8, 12])
def test_equiprobable_grid_gives_each_block_exactly_k_over_b_steps(num_blocks):
    part = BlockPartition.equiprobable(num_blocks)
    for k in (num_blocks, 2 * num_blocks, 5 * num_blocks, 50 // num_blocks * num_blocks):
        owners = part.block_of(sigma_grid("equiprobable", k, part.edm)[:-1])
        np.testing.assert_array_equal(np.bincount(owners, minlength=num_blocks), k // num_blocks)


def constant_blocks(num_blocks):
    """Block b's 'parameters' are the constant it returns as D: lets a test see which block ran."""
    values = jnp.asarray(np.linspace(-0.9, 0.9, num_blocks), jnp.float32)
    return values, lambda params, z, sigma, labels, block: jnp.full_like(z, params)


def reference_trajectory(part, t, values, z, solver):
    """Numpy replay of the ODE with the owner of each sigma found from the bands, not block_of."""
    def owner(sigma):
        hits = [b for b in range(part.num_blocks) if part.band(b)[0] < sigma <= part.band(b)[1]]
        return hits[0] if hits else part.num_blocks - 1  # sigma_min belongs to the lowest band

    used = []
    for t_i, t_next in zip(t[:-1], t[1:]):
        b = owner(t_i)
        used.append(b)
        d = (z - values[b]) / t_i
        if solver == "euler":
            z = z + (t_next - t_i) * d
        else:
            z_e = z + (t_next - t_i) * d
            d2 = (z_e - values[owner(t_next)]) / t_next
            z = z + (t_next - t_i) * 0.5 * (d + d2)
    return np.full_like(z, values[owner(t[-1])]), used


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampler_runs_the_block_that_owns_each_sigma(solver):
    part = BlockPartition.equiprobable(4, overlap=0.1)  # overlap must not change ownership
    values, denoise = constant_blocks(4)
    sampler = make_sampler(denoise, part, num_steps=12, solver=solver)
    noise = jax.random.normal(jax.random.key(0), (2, 3, 3, 1))
    # The final output is the constant of the lowest block; the trajectory is checked through a
    # sampler whose final denoise is the identity of its input.
    out = np.asarray(sampler(values, noise))
    t = sigma_grid("equiprobable", 12, part.edm)
    expected, used = reference_trajectory(part, t, np.asarray(values, np.float64), 80.0 * np.asarray(noise), solver)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert sorted(set(used)) == [0, 1, 2, 3] and used == sorted(used)  # network order, every block

    # Now observe z_K itself: make each block's D depend on z so the trajectory matters.
    tracking = lambda params, z, sigma, labels, block: params * z
    sampler = make_sampler(tracking, part, num_steps=12, solver=solver)
    scales = jnp.asarray([0.1, 0.3, 0.6, 0.9], jnp.float32)
    got = np.asarray(sampler(scales, noise), np.float64)
    z = 80.0 * np.asarray(noise, np.float64)
    owners = part.block_of(t)
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

    def counting(params, z, sigma, labels, block):
        traces.append(1)
        return denoise(params, z, sigma, labels, block)

    noise = jnp.ones((2, 2, 2, 1))
    counts = []
    for steps in (3, 30):
        traces.clear()
        sampler = make_sampler(counting, part, num_steps=steps)
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
    from conftest import tiny_config

    from dblocks_jax import BlockModel, generate
    from dblocks_jax.sampling import _model_sampler

    model = BlockModel.from_config(tiny_config())
    params = [model.init(jax.random.key(b)) for b in range(2)]
    first = generate(model, params, num_samples=3, num_steps=2, guidance=2.0, seed=0)
    second = generate(model, params, num_samples=3, num_steps=2, guidance=2.0, seed=1)
    assert not np.array_equal(first, second)
    sampler = _model_sampler(model, 2.0, 2, "euler", "equiprobable")
    assert sampler._cache_size() == 1  # both seeds ran through one compilation
