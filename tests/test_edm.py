import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax import EDM

SIGMAS = np.array([0.002, 0.01, 0.3, 0.5, 1.0, 7.5, 80.0])


def test_scalings_match_formulas():
    edm = EDM(sigma_data=0.5)
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in edm.scalings(jnp.asarray(SIGMAS)))
    sd = 0.5
    np.testing.assert_allclose(c_skip, sd**2 / (SIGMAS**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, SIGMAS * sd / np.sqrt(SIGMAS**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(SIGMAS**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(SIGMAS) / 4, rtol=1e-6)


def test_loss_weight_matches_formula_and_cancels_c_out():
    edm = EDM(sigma_data=0.7)
    lam = np.asarray(edm.loss_weight(jnp.asarray(SIGMAS)), np.float64)
    np.testing.assert_allclose(lam, (SIGMAS**2 + 0.49) / (SIGMAS * 0.7) ** 2, rtol=1e-6)
    c_out = np.asarray(edm.scalings(jnp.asarray(SIGMAS))[1], np.float64)
    np.testing.assert_allclose(lam * c_out**2, 1.0, rtol=1e-5)


def test_f_space_loss_equals_lambda_weighted_loss():
    edm = EDM()
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    y = jax.random.uniform(k1, (7, 4, 4, 3), minval=-1, maxval=1)
    sigma = jnp.asarray(SIGMAS, jnp.float32)
    z = y + sigma[:, None, None, None] * jax.random.normal(k2, y.shape)
    weights = jax.random.normal(k3, y.shape)
    network = lambda x, c_noise: jnp.tanh(x * weights) + c_noise[:, None, None, None]
    denoised = edm.denoise(network, z, sigma)
    c_in, c_noise = edm.scalings(sigma)[2:]
    f = network(c_in[:, None, None, None] * z, c_noise)
    f_space = jnp.mean((f - edm.f_target(y, z, sigma)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(f_space, edm.weighted_loss(denoised, y, sigma), rtol=2e-4)


def test_zero_network_denoises_to_c_skip_z():
    edm = EDM()
    z = jnp.ones((3, 2, 2, 1))
    sigma = jnp.array([0.1, 1.0, 10.0])
    out = edm.denoise(lambda x, c: jnp.zeros_like(x), z, sigma)
    np.testing.assert_allclose(out[:, 0, 0, 0], edm.scalings(sigma)[0], rtol=1e-6)
