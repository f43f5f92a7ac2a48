"""Recurrent-depth LM (paper Table 5): Huginn's iteration law and truncated backpropagation, the
DiffusionBlocks denoiser and its chain, causality of every stack, the FLOP count, generation, the
CLI and the errors, on tiny models over Python's pydoc text."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dblocks_jax import cli, make_task
from dblocks_jax.engine import bench
from dblocks_jax.engine.trainer import BlockTrainer, spec_of
from dblocks_jax.evaluation.text_metrics import held_out
from dblocks_jax.presets import get_config
from dblocks_jax.tasks import recurrent_lm_eval
from dblocks_jax.tasks.recurrent_lm import poisson_lognormal_steps

TINY = {"text.seq_len": 16, "model.width": 16, "model.num_heads": 2, "model.num_layers": 3, "recurrent.prelude": 1,
        "recurrent.core": 1, "recurrent.coda": 1, "recurrent.steps": 3, "recurrent.mc_draws": 2,
        "data.batch_size": 8, "optim.warmup_steps": 1, "run.log_every": 10, "text.eval_sequences": 8,
        "sampling.num_samples": 2, "generation.prompt_len": 4, "generation.gen_len": 4}
HUGINN = {"recurrent.method": "huginn", "recurrent.mean_steps": 4.0, "recurrent.backprop_steps": 2}


def tiny(**overrides):
    return get_config("pydoc_recurrent", {**TINY, **overrides})


def randomized(task, scale=0.3):
    """Parameters with noise added (fresh adaLN gates are zero: every layer would be the identity)."""
    params = task.init_params(jax.random.key(0))
    return jax.tree.map(lambda x: x + scale * jax.random.normal(jax.random.key(7), x.shape), params)


@pytest.fixture(scope="module")
def db():
    task = make_task(tiny())
    return task, randomized(task)


@pytest.fixture(scope="module")
def huginn():
    task = make_task(tiny(**HUGINN))
    return task, randomized(task)


def test_config_errors_name_the_field():
    for overrides, field in (({"model.num_blocks": 3, "model.num_layers": 3}, "model.num_blocks"),
                             ({"model.num_layers": 4}, "model.num_layers"),
                             ({"model.positions": "learned"}, "model.positions"),
                             ({"generation.gen_len": 13}, "generation.gen_len"),
                             ({"recurrent.method": "bptt"}, "recurrent.method"),
                             ({**HUGINN, "recurrent.mean_steps": 1.5}, "recurrent.mean_steps"),
                             ({"recurrent.target": "state"}, "recurrent.target"),
                             ({"recurrent.weighting": "snr"}, "recurrent.weighting"),
                             ({"ar.bridge": "hard"}, "ar.bridge"),
                             # A field only the other method reads is refused, not ignored.
                             ({"recurrent.backprop_steps": 4}, "recurrent.backprop_steps"),
                             ({**HUGINN, "recurrent.target": "prelude"}, "recurrent.target"),
                             ({**HUGINN, "sampling.grid": "karras"}, "sampling.grid")):
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            tiny(**overrides)


def test_training_iterations_follow_a_poisson_log_normal_law_with_the_configured_mean():
    keys = jax.random.split(jax.random.key(0), 20_000)
    k = np.asarray(jax.vmap(lambda key: poisson_lognormal_steps(key, 32.0, 0.5))(keys))
    assert k.min() >= 1 and abs(k.mean() - 32) < 0.5
    # Var K = E[rate] + Var[rate] = 31 + 31^2 (e^0.25 - 1): over-dispersed against a Poisson of the same mean.
    assert k.var() == pytest.approx(31 + 31 ** 2 * (np.exp(0.25) - 1), rel=0.1)
    config = get_config("pydoc_recurrent", {"recurrent.method": "huginn"})
    free = recurrent_lm_eval.expected_free_iterations(config)
    assert abs(free - np.mean(k - np.minimum(k, 8))) < 0.5


def _batch_and_draw(task, steps):
    tokens = jnp.asarray(held_out(task)[:2])
    draw = task.draw(jax.random.key(1), 0, spec_of({"tokens": tokens}))
    return {"tokens": tokens}, {**draw, "steps": jnp.full((2,), steps, jnp.int32)}


def test_huginn_backpropagates_through_the_last_iterations_only(huginn):
    task, params = huginn
    bp = task.config.recurrent.backprop_steps
    for steps, reaches_start in ((bp + 1, False), (bp, True), (1, True)):
        batch, draw = _batch_and_draw(task, steps)
        grad = jax.grad(lambda s0: task.loss(params, batch, {**draw, "s0": s0}, 0).sum())(draw["s0"])
        assert bool(jnp.any(grad != 0)) == reaches_start, steps


def test_huginn_training_forward_is_k_iterations_from_the_starting_state(huginn):
    task, params = huginn
    net = task.network(params)
    for steps in (1, 2, 5):  # fewer, as many and more iterations than backprop_steps = 2
        batch, draw = _batch_and_draw(task, steps)
        tokens = batch["tokens"]
        e = net.encode(tokens[:, :-1])
        s = draw["s0"]
        for _ in range(steps):
            s = net.iterate(s, e)
        ce = optax.softmax_cross_entropy_with_integer_labels(net.logits(s), tokens[:, 1:]).mean(-1)
        np.testing.assert_allclose(task.loss(params, batch, draw, 0), ce, rtol=1e-5)


def test_diffusion_loss_is_cross_entropy_of_the_coda_reading_d_times_the_edm_weight(db):
    task, params = db
    net = task.network(params)
    batch, draw = _batch_and_draw(task, 0)
    tokens = batch["tokens"]
    e = net.encode(tokens)
    y = task.clean_state(net, e, tokens[:, 1:])
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), 0.5 * np.sqrt(16), rtol=1e-5)  # RMS sigma_data
    z = y + draw["sigma"][:, None, None] * draw["eps"]
    d = net.denoise(z, draw["sigma"], e[:, :-1], task.edm.scalings)
    ce = optax.softmax_cross_entropy_with_integer_labels(net.logits(d), tokens[:, 1:]).mean(-1)
    np.testing.assert_allclose(task.loss(params, batch, draw, 0), ce * task.edm.loss_weight(draw["sigma"]), rtol=1e-5)


def test_the_preconditioning_is_edms_and_weighting_none_drops_lambda(db):
    task, params = db
    net = task.network(params)
    tokens = jnp.asarray(held_out(task)[:2, :-1])
    e = net.encode(tokens)
    z = jax.random.normal(jax.random.key(2), e.shape)
    # D = c_skip z + c_out F with F the core's layer-normalised output (RMS 1 at every position) and
    # Karras et al.'s eq. 7 constants, written out here: (D - c_skip z) / c_out has RMS 1.
    for sigma in (task.edm.sigma_min, 1.0, 30.0):
        c_skip, c_out = 0.25 / (sigma ** 2 + 0.25), sigma * 0.5 / np.sqrt(sigma ** 2 + 0.25)
        d = net.denoise(z, jnp.full((2,), sigma), e, task.edm.scalings)
        rms = jnp.sqrt(jnp.mean(((d - c_skip * z) / c_out) ** 2, -1))
        np.testing.assert_allclose(rms, 1.0, rtol=2e-3)
    unweighted = make_task(tiny(**{"recurrent.weighting": "none"}))
    batch, draw = _batch_and_draw(task, 0)
    np.testing.assert_allclose(unweighted.loss(params, batch, draw, 0) * task.edm.loss_weight(draw["sigma"]),
                               task.loss(params, batch, draw, 0), rtol=1e-5)


def test_the_prelude_target_is_the_next_positions_encoding_without_gradient():
    task = make_task(tiny(**{"recurrent.target": "prelude"}))
    params = randomized(task)
    tokens = jnp.asarray(held_out(task)[:2])
    net = task.network(params)
    e = net.encode(tokens)
    y = task.clean_state(net, e, tokens[:, 1:])
    np.testing.assert_allclose(y / jnp.linalg.norm(y, axis=-1, keepdims=True),
                               e[:, 1:] / jnp.linalg.norm(e[:, 1:], axis=-1, keepdims=True), atol=1e-5)
    grad = jax.grad(lambda p: task.clean_state(task.network(p), task.network(p).encode(tokens), tokens[:, 1:]).sum())
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grad(params)))


def test_the_chain_is_one_denoiser_call_at_sigma_max_then_euler_steps(db):
    task, params = db
    net = task.network(params)
    tokens = jnp.asarray(held_out(task)[:2, :-1])
    key = jax.random.key(3)
    e = net.encode(tokens)
    z = task.edm.sigma_max * jax.random.normal(key, e.shape)
    sigma = lambda t: jnp.full((2,), t, jnp.float32)
    d = net.denoise(z, sigma(task.edm.sigma_max), e, task.edm.scalings)
    np.testing.assert_allclose(task.predictor(1)(params, tokens, key), net.logits(d), rtol=2e-4, atol=2e-4)
    t0, t1 = task.grid(2)
    assert (t0, t1) == pytest.approx((task.edm.sigma_max, task.edm.sigma_min))
    z1 = z + (t1 - t0) * (z - d) / t0
    d1 = net.denoise(z1, sigma(t1), e, task.edm.scalings)
    np.testing.assert_allclose(task.predictor(2)(params, tokens, key), net.logits(d1), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("method", ["db", "huginn"])
def test_every_stack_is_causal(method, request):
    task, params = request.getfixturevalue(method)
    tokens = jnp.asarray(held_out(task)[:2, :-1])
    changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % task.vocab_size)
    run = task.predictor(3)
    before, after = run(params, tokens, jax.random.key(0)), run(params, changed, jax.random.key(0))
    np.testing.assert_allclose(before[:, :9], after[:, :9], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(before[:, 9:] - after[:, 9:]).max()) > 1e-3


def test_the_predictive_of_several_draws_is_a_mixture_of_probabilities(db):
    task, params = db
    windows = held_out(task)[:2]
    key = jax.random.key(5)
    mixed = task.log_predictive(params, windows, 3, key, draws=2)
    inputs, targets = jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:])
    singles = [jnp.take_along_axis(jax.nn.log_softmax(task.predictor(3)(params, inputs, k)), targets[..., None], -1)
               for k in jax.random.split(key, 2)]
    np.testing.assert_allclose(mixed, jnp.log((jnp.exp(singles[0]) + jnp.exp(singles[1])) / 2)[..., 0], rtol=1e-4,
                               atol=1e-5)
    assert float(jnp.abs(singles[0] - singles[1]).max()) > 1e-2  # the draws differ: the mixture is tested


def test_training_flops_count_the_iterations_without_gradient_apart():
    def counted(task):
        trainer = BlockTrainer(task)
        return bench.step_flops(bench.compile_step(trainer)[0])

    huginn = tiny(**HUGINN, **{"model.scan_layers": False})
    one = recurrent_lm_eval.training_flops(huginn)  # "counted": the step compiled without its free iterations
    # XLA counts the while loop's body once: the free iterations must be counted apart.
    assert counted(make_task(huginn)) - one["counted"] == pytest.approx(one["iteration"], rel=0.02)
    assert one["step"] == pytest.approx(one["counted"] + one["free_iterations"] * one["iteration"])


@pytest.mark.parametrize("method", ["db", "huginn"])
def test_greedy_generation_is_the_argmax_of_the_k_step_model_symbol_by_symbol(method, request):
    task, params = request.getfixturevalue(method)
    greedy = make_task(task.config.replace(**{"generation.temperature": 0.0}))
    prompts = held_out(task)[:2, :4]
    tokens, _ = recurrent_lm_eval.generate(greedy, params, prompts, 3, steps=2)
    assert tokens.shape == (2, 3)
    key = jax.random.fold_in(jax.random.key(0), recurrent_lm_eval.GENERATE_SALT)
    window = np.zeros((2, 16), np.int32)
    window[:, :4] = prompts
    for i in range(3):
        noise_key = jax.random.split(jax.random.fold_in(key, i))[0]
        logits = greedy.predictor(2)(params, jnp.asarray(window[:, :-1]), noise_key)
        window[:, 4 + i] = np.argmax(logits[:, 3 + i], -1)
    np.testing.assert_array_equal(tokens, window[:, 4:7])
    with pytest.raises(ValueError, match="text.seq_len=16"):
        recurrent_lm_eval.generate(task, params, prompts, 13, steps=2)


def test_cli_trains_samples_and_scores_against_depth(tmp_path, capsys):
    args = [a for path, value in TINY.items() for a in ("--set", f"{path}={value}")]
    workdir = str(tmp_path / "db")
    assert cli.main(["train", "--config", "pydoc_recurrent", "--steps", "120", "--workdir", workdir, "--no-progress",
                     *args, "--set", "optim.learning_rate=3e-3"]) == 0
    out = capsys.readouterr().out
    assert "K=1:" in out and "K=3:" in out and "diffusion: one core pass per training step" in out
    with open(os.path.join(workdir, "bpc.json")) as f:
        trained = json.load(f)["bpc_by_steps"]
    assert cli.main(["evaluate", "--workdir", workdir, "--steps", "1,3", "--seeds", "0", "--untrained"]) == 0
    with open(os.path.join(workdir, "evaluation_untrained.json")) as f:
        untrained = json.load(f)
    assert trained["1"]["bpc"]["mean"] < untrained["bpc_by_steps"]["1"]["bpc"]["mean"] - 0.2  # it learned
    assert untrained["bpc_by_steps"]["3"]["draws"] == 2
    flops = untrained["training_flops"]  # DiffusionBlocks: one pass, nothing counted apart
    assert flops["free_iterations"] == 0 and flops["step"] == flops["counted"] > 0
    out_txt = str(tmp_path / "c.txt")
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", workdir, "--out", out_txt, "--prompt", "The ", "--steps", "2"]) == 0
    assert "K = 2 core iterations per symbol" in capsys.readouterr().out
    with open(out_txt) as f:
        lines = f.read().splitlines()
    assert len(lines) == 2 and all(line.startswith("the |") and len(line) == len("the |") + 4 for line in lines)
    assert cli.main(["evaluate", "--workdir", workdir, "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_train_says_what_a_huginn_step_costs_before_it_starts():
    from dblocks_jax.tasks.recurrent_lm import RecurrentLM

    huginn = get_config("pydoc_recurrent", {"recurrent.method": "huginn"})
    assert "32 on average (the last min(K, 8) with gradient): about 32 core passes per step" in \
        RecurrentLM.work_estimate(huginn)
    assert RecurrentLM.work_estimate(get_config("pydoc_recurrent")) == "diffusion: one core pass per training step"
