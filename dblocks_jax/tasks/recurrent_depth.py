"""The math the recurrent-depth task and its evaluation share: Huginn's law of training
iterations and the mixture predictive over starting noises."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def poisson_lognormal_steps(key: jax.Array, mean: float, sigma: float) -> jax.Array:
    """K = 1 + Poisson(exp(tau)), tau ~ N(ln(mean - 1) - sigma^2/2, sigma^2): E[K] = mean (Huginn's
    law of training iterations, Geiping et al. 2025 sec. 3)."""
    k_tau, k_poisson = jax.random.split(key)
    tau = math.log(mean - 1) - 0.5 * sigma ** 2 + sigma * jax.random.normal(k_tau)
    return 1 + jax.random.poisson(k_poisson, jnp.exp(tau)).astype(jnp.int32)


def mixture(logp_MNT: jax.Array) -> jax.Array:
    """log of the mean over the leading axis of probabilities given as logs: log (1/M) sum_m p_m."""
    return jax.nn.logsumexp(logp_MNT, 0) - jnp.log(logp_MNT.shape[0])
