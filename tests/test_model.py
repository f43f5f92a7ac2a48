import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from dblocks_jax.model import BlockModel
from dblocks_jax.sampling import stack_blocks


def perturbed(params, key, scale=0.05):
    """Parameters moved away from the zero initialisation, so outputs depend on every input."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_fresh_block_denoises_to_c_skip_z():
    model = BlockModel.from_config(tiny_config())
    params = model.init(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    sigma = jnp.array([0.01, 1.0, 50.0])
    out = model.denoise(params, z, sigma, jnp.array([0, 1, 2]))
    chex.assert_shape(out, z.shape)
    c_skip = model.edm.scalings(sigma)[0]
    np.testing.assert_allclose(out, c_skip[:, None, None, None] * z, rtol=1e-6, atol=1e-7)


def test_blocks_are_self_contained_and_stack():
    config = tiny_config(num_blocks=2, num_layers=4)
    model = BlockModel.from_config(config)
    a, b = model.init(jax.random.key(1)), model.init(jax.random.key(2))
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b, model.abstract_params)
    assert all(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if x.std() > 0)
    stacked = stack_blocks([a, b])
    chex.assert_trees_all_equal_structs(stacked, a)
    assert all(x.shape[0] == 2 for x in jax.tree.leaves(stacked))
    # L / B layers per block: the parameter count of a block scales with layers_per_block.
    n = lambda cfg: sum(x.size for x in jax.tree.leaves(BlockModel.from_config(cfg).abstract_params))
    assert n(tiny_config(num_blocks=1)) > n(tiny_config(num_blocks=2)) > n(tiny_config(num_blocks=4))


def test_guidance_interpolates_between_null_and_conditional_predictions():
    model = BlockModel.from_config(tiny_config())
    params = perturbed(model.init(jax.random.key(0)), jax.random.key(3))
    z = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    sigma = jnp.array([0.5, 1.0, 2.0])
    labels = jnp.array([0, 1, 2])
    cond = model.denoise(params, z, sigma, labels)
    null = model.denoise(params, z, sigma, jnp.full((3,), model.null_label))
    assert float(jnp.abs(cond - null).max()) > 1e-3  # labels matter
    np.testing.assert_allclose(model.guided_denoise(params, z, sigma, labels, 0.0), null, atol=1e-5)
    np.testing.assert_allclose(model.guided_denoise(params, z, sigma, labels, 1.0), cond, atol=1e-5)
    np.testing.assert_allclose(model.guided_denoise(params, z, sigma, labels, 2.0), 2 * cond - null, atol=1e-4)


def test_unconditional_block_ignores_labels():
    model = BlockModel.from_config(tiny_config(class_conditional=False))
    assert model.num_classes == 0
    params = perturbed(model.init(jax.random.key(0)), jax.random.key(3))
    z = jnp.ones((2, 8, 8, 1))
    out = model.guided_denoise(params, z, jnp.array([1.0, 1.0]), jnp.array([0, 1]), 2.0)
    np.testing.assert_allclose(out, model.denoise(params, z, jnp.array([1.0, 1.0])), atol=1e-6)


def test_remat_saves_fewer_residuals_and_keeps_gradients():
    config = tiny_config(num_layers=4, num_blocks=1)
    plain, remat = BlockModel.from_config(config), BlockModel.from_config(config.replace(remat=True))
    params = perturbed(plain.init(jax.random.key(0)), jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (4, 8, 8, 1), minval=-1, maxval=1)
    labels = jnp.array([0, 1, 2, 0])

    def loss_and_residual_bytes(model):
        loss, vjp_fn = jax.vjp(lambda p: model.loss(p, jax.random.key(5), 0, images, labels), params)
        residuals = sum(x.nbytes for x in jax.tree.leaves(vjp_fn))  # what the backward pass keeps
        return vjp_fn(jnp.ones_like(loss))[0], residuals

    grad_plain, saved_plain = loss_and_residual_bytes(plain)
    grad_remat, saved_remat = loss_and_residual_bytes(remat)
    chex.assert_trees_all_close(grad_plain, grad_remat, atol=1e-6)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    assert saved_remat - param_bytes < 0.5 * (saved_plain - param_bytes), (saved_plain, saved_remat, param_bytes)


def test_uneven_layer_split_runs_each_blocks_own_depth():
    config = tiny_config(num_layers=3, num_blocks=2, layer_split="1,2")
    assert config.block_depths == (1, 2) and config.layers_per_block == 2 and config.uneven
    model = BlockModel.from_config(config)
    params = perturbed(model.init(jax.random.key(0)), jax.random.key(1))
    other = perturbed(params, jax.random.key(2))  # differs from `params` in every leaf...
    second_layer_only = jax.tree.map(lambda p, o: p, params, other)
    second_layer_only["layers"][1] = other["layers"][1]  # ...here only in the second layer
    z = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    sigma, labels = jnp.array([0.5, 2.0]), jnp.array([0, 1])
    shallow = lambda p: model.denoise(p, z, sigma, labels, block=0)
    deep = lambda p: model.denoise(p, z, sigma, labels, block=1)
    np.testing.assert_array_equal(shallow(params), shallow(second_layer_only))  # block 0 skips layer 2
    with pytest.raises(ValueError, match="uneven: pass the block index"):
        model.denoise(params, z, sigma, labels)
    assert not np.allclose(deep(params), deep(second_layer_only))  # block 1 runs it
    grads = jax.grad(lambda p: model.loss(p, jax.random.key(4), 0, z, labels))(params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["layers"][1]))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["layers"][0]))
    # With activation checkpointing the skipped layer stays skipped and the gradients are the same.
    remat = BlockModel.from_config(config.replace(remat=True))
    remat_grads = jax.grad(lambda p: remat.loss(p, jax.random.key(4), 0, z, labels))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads, grads)


def test_layer_split_is_validated():
    with pytest.raises(ValueError, match=r"layer_split='3,6'; allowed: 3 comma-separated integers >= 1 that sum to"):
        tiny_config(num_layers=12, num_blocks=3, layer_split="3,6")
    with pytest.raises(ValueError, match="layer_split"):
        tiny_config(num_layers=12, num_blocks=3, layer_split="3,6,4")
    assert tiny_config(num_layers=12, num_blocks=3, layer_split="6,4,2").block_depths == (6, 4, 2)
    assert not tiny_config(num_layers=12, num_blocks=3, layer_split="4,4,4").uneven
