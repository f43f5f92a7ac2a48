"""The DiT of dblocks_jax.models and its scanned LayerStack.

To stay fast on a CPU, the parameters are initialised once (a 4-layer DiT); shallower models take
the first layers of that stack, and every computation runs under one jit.
"""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dblocks_jax.models import AdaLNZeroLayer, DiT, LayerStack

WIDTH, HEADS, MLP_RATIO, MAX_DEPTH = 16, 2, 2.0, 4


def tiny_dit(depth=MAX_DEPTH, num_classes=3, remat=False, seed=0):
    return DiT(image_size=8, channels=1, patch_size=2, width=WIDTH, depth=depth, num_heads=HEADS,
               mlp_ratio=MLP_RATIO, num_classes=num_classes, remat=remat, rngs=nnx.Rngs(seed))


@functools.cache
def fresh_params():
    """Freshly initialised parameters of a class-conditional MAX_DEPTH-layer DiT."""
    return jax.jit(lambda: nnx.split(tiny_dit(), nnx.Param)[1])()


@jax.jit
def perturbed(params, key, scale=0.05):
    """Parameters moved away from the zero initialisation (zero-init gates would make every layer
    the identity), so outputs depend on every parameter."""
    leaves, tree = jax.tree.flatten(params)
    noise = scale * jax.random.normal(key, (sum(x.size for x in leaves),))  # one draw: quick to compile
    chunks = jnp.split(noise, np.cumsum([x.size for x in leaves])[:-1])
    return jax.tree.unflatten(tree, [x + n.reshape(x.shape) for x, n in zip(leaves, chunks)])


def first_layers(params, depth, num_classes=3):
    """The parameters of a `depth`-layer DiT: the first `depth` entries of the layer stack."""
    out = jax.tree.map(lambda x: x, params)  # a copy
    out["layers"] = jax.tree.map(lambda x: x[:depth], params["layers"])
    if not num_classes:
        del out["class_embed"]
    return out


def dit_fn(depth=MAX_DEPTH, num_classes=3, remat=False):
    """f(params, x, c_noise, labels, depth) = DiT(...)(x, c_noise, labels, depth), pure."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: tiny_dit(depth, num_classes, remat)), nnx.Param)
    return lambda params, *args: nnx.merge(graphdef, params)(*args)


def inputs(batch=2):
    x = jax.random.normal(jax.random.key(10), (batch, 8, 8, 1))
    c_noise = 0.25 * jnp.log(jnp.linspace(0.5, 5.0, batch))
    return x, c_noise, jnp.arange(batch) % 3


def test_fresh_dit_outputs_exact_zeros_of_the_input_shape():
    x, c_noise, labels = inputs(3)
    cond, uncond = dit_fn(), dit_fn(num_classes=0)
    params = fresh_params()
    outs = jax.jit(lambda p: (cond(p, x, c_noise, labels), cond(p, x, c_noise, labels, jnp.int32(1)),
                              uncond(first_layers(p, MAX_DEPTH, 0), x, c_noise)))(params)
    for out in outs:
        chex.assert_shape(out, x.shape)
        np.testing.assert_array_equal(out, np.zeros(x.shape, np.float32))
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        jax.eval_shape(lambda p: cond(p, x, c_noise), params)


def test_stacked_parameters_have_a_leading_layer_axis():
    params = fresh_params()
    assert params["layers"]["layers"]["qkv"]["kernel"].shape == (MAX_DEPTH, WIDTH, 3 * WIDTH)
    assert all(x.shape[0] == MAX_DEPTH for x in jax.tree.leaves(params["layers"]))
    kernels = params["layers"]["layers"]["fc1"]["kernel"]
    assert not np.array_equal(kernels[0], kernels[1])  # each layer has its own initialisation
    np.testing.assert_array_equal(params["layers"]["layers"]["ada"]["kernel"], 0)  # adaLN-Zero


def test_scanned_stack_equals_the_layers_applied_one_by_one():
    depth = 3
    stack_params = first_layers(perturbed(fresh_params(), jax.random.key(1)), depth)["layers"]
    stack = lambda remat: nnx.split(nnx.eval_shape(
        lambda: LayerStack(depth, WIDTH, HEADS, MLP_RATIO, remat=remat, rngs=nnx.Rngs(0))), nnx.Param)[0]
    plain, remat = stack(False), stack(True)
    layer, _ = nnx.split(nnx.eval_shape(lambda: AdaLNZeroLayer(WIDTH, HEADS, MLP_RATIO, rngs=nnx.Rngs(0))),
                         nnx.Param)
    x_BLD = jax.random.normal(jax.random.key(2), (2, 5, WIDTH))
    cond_BD = jax.random.normal(jax.random.key(3), (2, WIDTH))

    @jax.jit
    def outputs(p):
        looped = x_BLD
        for i in range(depth):  # unstack the parameters and apply each layer in turn
            looped = nnx.merge(layer, jax.tree.map(lambda a, i=i: a[i], p["layers"]))(looped, cond_BD)
        scanned = [nnx.merge(graphdef, p)(x_BLD, cond_BD, d) for graphdef in (plain, remat)
                   for d in (None, jnp.int32(depth))]
        return looped, scanned

    looped, scanned = outputs(stack_params)
    assert float(jnp.abs(looped - x_BLD).max()) > 1e-2  # the layers did something
    for out in scanned:
        np.testing.assert_allclose(out, looped, atol=1e-5)


def loss_fn(depth, remat):
    """loss(params, run_depth) = mean F^2 of a `depth`-layer DiT that runs `run_depth` layers."""
    f = dit_fn(depth, remat=remat)
    x, c_noise, labels = inputs(4)
    return lambda params, run_depth: jnp.mean(f(params, x, c_noise, labels, run_depth) ** 2)


@functools.cache
def grad_fn(depth, remat):
    """Jitted gradient of `loss_fn`, shared by the tests (one compilation per traced-depth or None)."""
    return jax.jit(jax.grad(loss_fn(depth, remat)))


def test_uneven_depth_skips_the_later_layers_with_zero_gradient():
    params = first_layers(perturbed(fresh_params(), jax.random.key(1)), 2)
    other = perturbed(params, jax.random.key(2))
    second_changed = jax.tree.map(lambda x: x, params)
    second_changed["layers"] = jax.tree.map(lambda p, o: p.at[1].set(o[1]), params["layers"], other["layers"])
    x, c_noise, labels = inputs()
    one, two = jnp.int32(1), jnp.int32(2)
    f = dit_fn(depth=2)
    run = jax.jit(lambda p, depth: f(p, x, c_noise, labels, depth))
    np.testing.assert_array_equal(run(params, one), run(second_changed, one))  # layer 2 skipped
    assert not np.allclose(run(params, two), run(second_changed, two), atol=1e-4)  # layer 2 runs

    shallow = grad_fn(2, False)(params, one)
    for g in jax.tree.leaves(shallow["layers"]):
        assert float(jnp.abs(g[1]).max()) == 0  # exactly zero for the skipped layer
        assert float(jnp.abs(g[0]).max()) > 0
    chex.assert_trees_all_close(grad_fn(2, True)(params, one), shallow, atol=1e-6)  # remat skips it too
    assert all(float(jnp.abs(g[1]).max()) > 0 for g in jax.tree.leaves(grad_fn(2, False)(params, two)["layers"]))


@pytest.mark.parametrize("run_depth", [None, 1])
def test_remat_keeps_gradients_and_saves_fewer_residuals(run_depth):
    params = first_layers(perturbed(fresh_params(), jax.random.key(1)), 2)
    run_depth = None if run_depth is None else jnp.int32(run_depth)
    param_bytes = sum(a.nbytes for a in jax.tree.leaves(params))

    def residual_bytes(remat):  # what the backward pass keeps, beyond the parameters
        vjp_fn = jax.eval_shape(lambda p: jax.vjp(lambda q: loss_fn(2, remat)(q, run_depth), p)[1], params)
        return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(vjp_fn)) - param_bytes

    saved_plain, saved_remat = residual_bytes(False), residual_bytes(True)
    assert 0 < saved_remat < 0.5 * saved_plain, (saved_plain, saved_remat)
    chex.assert_trees_all_close(grad_fn(2, True)(params, run_depth), grad_fn(2, False)(params, run_depth),
                                atol=1e-6)


def count_dot_generals(depth, with_grad):
    f = dit_fn(depth)
    _, abstract_params = nnx.split(nnx.eval_shape(lambda: tiny_dit(depth)), nnx.Param)
    x, c_noise, labels = inputs()
    fn = lambda p, d: jnp.mean(f(p, x, c_noise, labels, d) ** 2)
    fn = jax.value_and_grad(fn) if with_grad else fn
    return len(re.findall(r"\bdot_general\b", str(jax.make_jaxpr(fn)(abstract_params, jnp.int32(depth)))))


@pytest.mark.parametrize("with_grad", [False, True])
def test_program_holds_one_layer_copy_whatever_the_depth(with_grad):
    # The deterministic proxy of "compile time does not grow with depth": the traced program of a
    # 2-layer and an 8-layer DiT have the same number of matrix products.
    shallow, deep = count_dot_generals(2, with_grad), count_dot_generals(8, with_grad)
    assert shallow == deep > 6, (shallow, deep)


def test_unrolled_stack_is_the_same_function_with_the_same_parameters():
    """`scan_layers=False` (a Python loop over the same stacked parameters) computes what the scan
    does, skipped layers included, so checkpoints and results do not depend on the switch."""
    def make(scan):
        module = nnx.eval_shape(lambda: DiT(image_size=8, channels=1, patch_size=2, width=WIDTH, depth=MAX_DEPTH,
                                            num_heads=HEADS, mlp_ratio=MLP_RATIO, num_classes=3,
                                            scan_layers=scan, rngs=nnx.Rngs(0)))
        graphdef, abstract = nnx.split(module, nnx.Param)
        return graphdef, abstract

    (scanned, abstract), (unrolled, abstract_unrolled) = make(True), make(False)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, abstract_unrolled)
    params = perturbed(fresh_params(), jax.random.key(3))
    x, c_noise, labels = inputs()
    for depth in (None, jnp.int32(2)):
        a = nnx.merge(scanned, params)(x, c_noise, labels, depth)
        b = nnx.merge(unrolled, params)(x, c_noise, labels, depth)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_rotary_attention_scores_depend_on_relative_position_only():
    from dblocks_jax.models.layers import rotary

    q = jax.random.normal(jax.random.key(0), (1, 1, 2, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 2, 8))
    score = lambda m, n: jnp.sum(rotary(q, jnp.array([m])) * rotary(k, jnp.array([n])), -1)
    np.testing.assert_allclose(score(3, 1), score(12, 10), rtol=1e-5)
    assert not np.allclose(score(3, 1), score(3, 2), rtol=1e-3)
    np.testing.assert_allclose(jnp.linalg.norm(rotary(q, jnp.array([5])), axis=-1), jnp.linalg.norm(q, axis=-1),
                               rtol=1e-6)  # a rotation


def test_transformer_with_rope_has_no_position_table_and_sees_order():
    from dblocks_jax.models.transformer import Transformer

    make = lambda positions: Transformer(vocab_size=5, seq_len=6, width=16, depth=1, num_heads=2, mlp_ratio=2.0,
                                         positions=positions, rngs=nnx.Rngs(0))
    learned, rope = make("learned"), make("rope")
    assert hasattr(learned, "pos_embed") and not hasattr(rope, "pos_embed")
    params = nnx.state(rope, nnx.Param)
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), params)
    nnx.update(rope, params)
    tokens = jnp.array([[1, 2, 5, 3, 4, 5]])
    logits = rope(tokens, jnp.array([0.5]))
    assert logits.shape == (1, 6, 5) and logits.dtype == jnp.float32
    # The two mask tokens (id 5) see the same symbols in another order: their predictions differ.
    assert not np.allclose(logits[0, 2], logits[0, 5], atol=1e-4)
