"""The image-generation task: its denoiser, its blocks, classifier-free guidance and label dropout."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_task

from dblocks_jax import data
from dblocks_jax.engine.chain import stack_blocks
from dblocks_jax.engine.trainer import spec_of


def perturbed(params, key, scale=0.05):
    """Parameters moved away from the zero initialisation, so outputs depend on every input."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def task():
    return tiny_task()


def test_fresh_block_denoises_to_c_skip_z(task):
    params = task.init_params(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    sigma = jnp.array([0.01, 1.0, 50.0])
    out = task.denoise(params, z, sigma, jnp.array([0, 1, 2]))
    chex.assert_shape(out, z.shape)
    c_skip = task.edm.scalings(sigma)[0]
    np.testing.assert_allclose(out, c_skip[:, None, None, None] * z, rtol=1e-6, atol=1e-7)


def test_blocks_are_self_contained_and_stack(task):
    a, b = task.init_params(jax.random.key(1)), task.init_params(jax.random.key(2))
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b, task.abstract_params)
    assert all(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if x.std() > 0)
    stacked = stack_blocks([a, b])
    chex.assert_trees_all_equal_structs(stacked, a)
    assert all(x.shape[0] == 2 for x in jax.tree.leaves(stacked))
    # L / B layers per block: the parameter count of a block falls with B at fixed L.
    n = lambda t: sum(x.size for x in jax.tree.leaves(t.abstract_params))
    assert n(tiny_task(num_blocks=1)) > n(tiny_task(num_blocks=2)) > n(tiny_task(num_blocks=4))


def test_guidance_interpolates_between_null_and_conditional_predictions(task):
    params = perturbed(task.init_params(jax.random.key(0)), jax.random.key(3))
    z = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    sigma = jnp.array([0.5, 1.0, 2.0])
    labels = jnp.array([0, 1, 2])
    cond = task.denoise(params, z, sigma, labels)
    null = task.denoise(params, z, sigma, jnp.full((3,), task.null_label))
    assert float(jnp.abs(cond - null).max()) > 1e-3  # labels matter
    np.testing.assert_allclose(task.guided_denoise(params, z, sigma, labels, 0.0), null, atol=1e-5)
    np.testing.assert_allclose(task.guided_denoise(params, z, sigma, labels, 1.0), cond, atol=1e-5)
    np.testing.assert_allclose(task.guided_denoise(params, z, sigma, labels, 2.0), 2 * cond - null, atol=1e-4)


def test_unconditional_block_ignores_labels():
    task = tiny_task(class_conditional=False)
    assert task.num_classes == 0
    params = perturbed(task.init_params(jax.random.key(0)), jax.random.key(3))
    z = jnp.ones((2, 8, 8, 1))
    out = task.guided_denoise(params, z, jnp.array([1.0, 1.0]), jnp.array([0, 1]), 2.0)
    np.testing.assert_allclose(out, task.denoise(params, z, jnp.array([1.0, 1.0])), atol=1e-6)


def test_label_dropout_replaces_about_ten_percent_of_labels_by_the_null_class(task):
    """The draw drops ~10 % of labels, and the loss then feeds exactly the null class to the network:
    the loss of a batch under a draw equals the loss with those labels set to the null label by hand
    and no dropout."""
    assert task.config.model.label_dropout == 0.1
    spec = {"image": jax.ShapeDtypeStruct((20_000, 8, 8, 1), jnp.float32),
            "label": jax.ShapeDtypeStruct((20_000,), jnp.int32)}
    drop = np.asarray(task.draw(jax.random.key(0), 0, spec)["drop"])
    assert abs(drop.mean() - 0.1) < 0.01, drop.mean()  # 20k Bernoulli(0.1): std 0.002

    params = perturbed(task.init_params(jax.random.key(0)), jax.random.key(3))
    images, labels = data.load_split("shapes", "test", 8)
    batch = {"image": images[:64], "label": labels[:64]}
    draw = task.draw(jax.random.key(5), 1, spec_of(batch))
    dropped = np.asarray(draw["drop"])
    assert 0 < dropped.sum() < len(dropped)
    by_hand = {"image": batch["image"], "label": np.where(dropped, task.null_label, batch["label"])}
    kept = dict(draw, drop=jnp.zeros_like(draw["drop"]))
    np.testing.assert_allclose(task.loss(params, batch, draw, 1), task.loss(params, by_hand, kept, 1), rtol=1e-6)
    no_drop = task.loss(params, batch, kept, 1)
    assert not np.allclose(np.asarray(task.loss(params, batch, draw, 1))[dropped], np.asarray(no_drop)[dropped])


def test_guided_sampling_uses_the_null_class(task, monkeypatch):
    """The sampler's unconditional half is the null class the training dropout taught."""
    seen = []
    original = task.denoise

    def spy(params, z, sigma, labels=None, block=None):
        seen.append(labels)
        return original(params, z, sigma, labels, block)

    monkeypatch.setattr(task, "denoise", spy)
    params = [task.init_params(jax.random.key(b)) for b in range(task.num_blocks)]
    task._samplers.clear()
    task.generate(params, num_samples=3, sampling=task.config.sampling)
    traced = [s for s in seen if s is not None]
    assert traced and all(s.shape == (6,) for s in traced)  # conditional and null halves in one pass
    monkeypatch.setattr(task, "denoise", original)
    task._samplers.clear()
    z = jnp.ones((3, 8, 8, 1))
    sigma = jnp.ones((3,))
    labels = jnp.array([0, 1, 2])
    null = task.denoise(params[0], z, sigma, jnp.full((3,), task.null_label), 0)
    np.testing.assert_allclose(task.guided_denoise(params[0], z, sigma, labels, 0.0, 0), null, atol=1e-6)


def test_uneven_layer_split_needs_the_block_index():
    task = tiny_task(num_layers=3, num_blocks=2, layer_split="1,2")
    assert task.config.model.block_depths == (1, 2) and task.layers_per_block == 2
    params = task.init_params(jax.random.key(0))
    z, sigma, labels = jnp.ones((2, 8, 8, 1)), jnp.array([0.5, 2.0]), jnp.array([0, 1])
    with pytest.raises(ValueError, match="uneven: pass the block index"):
        task.denoise(params, z, sigma, labels)
    assert task.denoise(params, z, sigma, labels, block=0).shape == z.shape


def test_layer_split_is_validated():
    from conftest import tiny_config

    with pytest.raises(ValueError, match=r"model.layer_split='3,6'; allowed: 3 comma-separated integers >= 1 that"):
        tiny_config(num_layers=12, num_blocks=3, layer_split="3,6")
    with pytest.raises(ValueError, match="layer_split"):
        tiny_config(num_layers=12, num_blocks=3, layer_split="3,6,4")
    assert tiny_config(num_layers=12, num_blocks=3, layer_split="6,4,2").model.block_depths == (6, 4, 2)
    assert not tiny_config(num_layers=12, num_blocks=3, layer_split="4,4,4").model.uneven
