"""Autoregressive DiffusionBlocks LM (paper Table 4): the two-stream mask, the KV cache against
full passes, the bridges, nucleus sampling, the Monte-Carlo likelihood, the plain baseline, the
CLI and the errors, on tiny models over Python's pydoc text."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dblocks_jax import cli, make_task
from dblocks_jax.engine.chain import stack_blocks
from dblocks_jax.engine.trainer import spec_of
from dblocks_jax.evaluation.text_metrics import distinct_n, held_out
from dblocks_jax.models.causal_lm import causal_mask
from dblocks_jax.presets import get_config
from dblocks_jax.tasks import autoregressive_lm_eval
from dblocks_jax.tasks.autoregressive_lm_eval import likelihood
from dblocks_jax.tasks.autoregressive_lm_sampling import pick, prompt_ids

TINY = {"text.seq_len": 16, "model.width": 32, "model.num_heads": 2, "model.num_layers": 4, "model.num_blocks": 2,
        "data.batch_size": 16, "optim.warmup_steps": 1, "run.log_every": 10, "text.eval_sequences": 32,
        "sampling.num_samples": 4, "ar.mc_draws": 4, "generation.prompt_len": 4, "generation.gen_len": 6}
PLAIN = {"ar.objective": "plain", "model.num_blocks": 1}


def tiny(**overrides):
    return get_config("pydoc_ar", {**TINY, **overrides})


def randomized(task, scale=0.3):
    """Blocks with noise added to every parameter (fresh adaLN gates are zero: every layer would be
    the identity and nothing would depend on the context)."""
    return [jax.tree.map(lambda x, b=b: x + scale * jax.random.normal(jax.random.fold_in(jax.random.key(7), b),
                                                                      x.shape), task.init_params(jax.random.key(b)))
            for b in range(task.num_blocks)]


@pytest.fixture(scope="module")
def db():
    task = make_task(tiny())
    return task, randomized(task)


@pytest.fixture(scope="module")
def plain():
    task = make_task(tiny(**PLAIN))
    return task, randomized(task)


def test_noisy_tokens_see_only_earlier_clean_tokens_and_themselves(db):
    task, params = db
    net, t, width = task.network(params[0]), 10, task.config.model.width
    tokens = jnp.asarray(held_out(task)[:2, :t])
    z = jax.random.normal(jax.random.key(0), (2, t, width))
    sigma = jnp.array([0.5, 2.0])

    def logits(tokens, z):
        _, context = net.clean(tokens, jnp.arange(t))
        return net.denoised_logits(z, sigma, task.edm.scalings, jnp.arange(1, t + 1), context, causal_mask(t, 0, t))

    base = logits(tokens, z)
    k = 6
    later = logits(tokens.at[:, k].set((tokens[:, k] + 1) % task.vocab_size), z)
    np.testing.assert_allclose(later[:, :k], base[:, :k], atol=1e-6)  # queries 0..k-1 see clean 0..k-1 only
    assert np.abs(later[:, k] - base[:, k]).max() > 1e-3  # query k (token k + 1) sees clean token k
    bump = jax.random.normal(jax.random.key(9), (width,))  # not a constant shift, which the norms remove
    other = logits(tokens, z.at[:, k].add(bump))  # a noisy token is seen by itself alone
    changed = np.abs(np.asarray(other - base)).max(-1).max(0) > 1e-4
    assert changed.tolist() == [i == k for i in range(t)]


def test_the_kv_cache_reproduces_the_full_pass_token_by_token(db):
    """Clean tokens fed one at a time through the cache give the full causal pass's keys, values
    and outputs, and a noisy query read against the cache gives the full pass's logits."""
    task, params = db
    net, t, width = task.network(params[1]), 9, task.config.model.width
    tokens = jnp.asarray(held_out(task)[:3, :t])
    h_full, kv_full = net.clean(tokens, jnp.arange(t))
    skipped, kv_only = net.clean(tokens, jnp.arange(t), output=False)  # the last layer's keys and values only
    assert skipped is None
    for full, only in zip(kv_full, kv_only):
        np.testing.assert_allclose(only, full, atol=1e-6)
    size = t + 2  # a cache longer than what is filled
    cache = jax.tree.map(lambda a: jnp.zeros(a.shape[:2] + (size,) + a.shape[3:], a.dtype), kv_full)
    for n in range(t):
        mask = jnp.concatenate([jnp.arange(size) < n, jnp.ones((1,), bool)])[None]
        h, kv = net.clean(tokens[:, n:n + 1], jnp.array([n]), context=cache, mask_TS=mask)
        cache = jax.tree.map(lambda c, x: c.at[:, :, n:n + 1].set(x), cache, kv)
        np.testing.assert_allclose(h[:, 0], h_full[:, n], atol=2e-5)
    for full, cached in zip(kv_full, cache):
        np.testing.assert_allclose(cached[:, :, :t], full, atol=2e-5)
    z = jax.random.normal(jax.random.key(1), (3, t - 1, width))
    sigma = jnp.full((3,), 0.7)
    full = net.denoised_logits(z, sigma, task.edm.scalings, jnp.arange(1, t), kv_full, causal_mask(t - 1, 0, t)[:, :t])
    for n in (1, 4, t - 1):  # query for token n sees clean 0..n-1
        one = net.denoised_logits(z[:, n - 1:n], sigma, task.edm.scalings, jnp.array([n]), cache,
                                  (jnp.arange(size) < n)[None])
        np.testing.assert_allclose(one[:, 0], full[:, n - 1], atol=2e-5)


def test_plain_greedy_generation_is_the_argmax_of_full_passes(plain):
    task, params = plain
    prompts = held_out(task)[:3, :4]
    net = task.network(params[0])
    tokens, _ = make_task(task.config.replace(**{"generation.temperature": 0.0})).sampler.generate(params, prompts, 6)
    assert tokens.shape == (3, 6)
    seq = np.concatenate([prompts, tokens], 1)
    h, _ = net.clean(jnp.asarray(seq[:, :-1]), jnp.arange(seq.shape[1] - 1))
    expected = np.argmax(np.asarray(net.plain_logits(h)), -1)[:, 3:]
    np.testing.assert_array_equal(tokens, expected)


def test_db_greedy_generation_through_the_cache_is_the_teacher_forced_chain(db, monkeypatch):
    """With the chain's starting noise set to zero (deterministic chains), the logits generation
    draws each token from (one position at a time, every block's cache filled token by token) are
    those of the chain run on the finished sequence in one teacher-forced pass."""
    task, params = db
    task = make_task(task.config.replace(**{"generation.temperature": 0.0}))
    monkeypatch.setattr(type(task.sampler), "start_noise", lambda self, keys_N, shape: jnp.zeros(
        (len(keys_N), *shape)))
    prompts = held_out(task)[:3, :4]
    tokens, _, generated = task.sampler.generate(params, prompts, 6, return_logits=True)
    seq = jnp.asarray(np.concatenate([prompts, tokens], 1))
    stacked, t = stack_blocks(params), seq.shape[1] - 1
    _, kv = task.sampler.contexts(stacked, seq[:, :-1], jnp.arange(t))
    cond = {"kv": kv, "mask": causal_mask(t, 0, t), "positions": jnp.arange(1, t + 1)}  # token i at position i
    logits = task.sampler.chain()(stacked, jnp.zeros((3, t, task.config.model.width)), cond, jax.random.key(0))
    np.testing.assert_allclose(generated, np.asarray(logits)[:, 3:], atol=2e-4)
    np.testing.assert_array_equal(np.argmax(generated, -1), tokens)  # greedy
    assert np.abs(np.diff(generated, axis=1)).max() > 1e-3  # the logits move with the context


def test_the_plain_likelihood_is_the_training_cross_entropy(plain):
    task, params = plain
    windows = held_out(task)[:8]
    nll = likelihood(task, params, windows, seed=0)["nll"]
    loss = task.loss(params[0], {"tokens": jnp.asarray(windows)}, {}, 0)  # independent path: the training loss
    assert nll == pytest.approx(float(loss.mean()), rel=1e-5)


def test_loss_is_cross_entropy_times_the_edm_weight(db):
    task, params = db
    batch = {"tokens": jnp.asarray(held_out(task)[:4])}
    draw = task.draw(jax.random.key(3), 1, spec_of(batch))
    lo, hi = task.partition.training_band(1)
    assert np.all((np.asarray(draw["sigma"]) >= lo * (1 - 1e-6)) & (np.asarray(draw["sigma"]) <= hi * (1 + 1e-6)))
    net, t = task.network(params[1]), 15
    _, context = net.clean(batch["tokens"][:, :-1], jnp.arange(t))
    sigma = draw["sigma"]
    z = net.table()[batch["tokens"][:, 1:]] + sigma[:, None, None] * draw["eps"]
    logits = net.denoised_logits(z, sigma, task.edm.scalings, jnp.arange(1, t + 1), context, causal_mask(t, 0, t))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:]).mean(-1)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(task.loss(params[1], batch, draw, 1), ce * weight, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(net.table(), axis=-1), 1.0, rtol=1e-5)


def test_bridges_soft_shrinks_normalised_keeps_unit_norm_hard_picks_a_row(db):
    task, _ = db
    table = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(32, 27)))[0].T)  # orthonormal rows
    spread = jnp.zeros((1, 1, 27)).at[..., :3].set(2.0)
    soft, norm, hard = (task.bridge(spread, table, k)[0, 0] for k in ("soft", "normalised", "hard"))
    assert float(jnp.linalg.norm(soft)) < 0.8  # the soft bridge's collapse
    assert float(jnp.linalg.norm(norm)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(np.asarray(norm), np.asarray(soft) / float(jnp.linalg.norm(soft)), rtol=1e-5)
    assert int(jnp.argmax(table @ hard)) in (0, 1, 2) and float(jnp.max(table @ hard)) == pytest.approx(1.0, 1e-5)


def test_pick_is_greedy_at_zero_temperature_and_nucleus_keeps_the_top_mass():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.split(jax.random.key(0), 4000)
    assert set(np.asarray(pick(logits, keys, 0.0, 1.0)).tolist()) == {0}
    full = np.bincount(np.asarray(pick(logits, keys, 1.0, 1.0)), minlength=4) / 4000
    np.testing.assert_allclose(full, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    top = np.bincount(np.asarray(pick(logits, keys, 1.0, 0.7)), minlength=4) / 4000  # {0, 1} hold 0.8 >= 0.7
    assert top[2:].sum() == 0 and top[0] == pytest.approx(0.5 / 0.8, abs=0.03)
    half = np.asarray(pick(logits, keys, 1.0, 0.5))  # token 0 alone holds 0.5: the nucleus is {0}
    assert set(half.tolist()) == {0}


def test_the_monte_carlo_likelihood_averages_probabilities_not_log_probabilities(db):
    task, params = db
    windows = held_out(task)[:8]
    out = likelihood(task, params, windows, seed=0, draws=16)
    # log of a mean beats the mean of logs (Jensen) unless every draw agrees: the estimator averages p.
    assert out["nll"] < out["nll_one_draw"] - 1e-3 and 0 < out["nll_se"] < out["nll"]
    again = likelihood(task, params, windows, seed=0, draws=16)
    assert again["nll"] == out["nll"]  # per-example keys: the same seed gives the same estimate
    other = likelihood(task, params, windows, seed=1, draws=16)
    assert other["nll"] != out["nll"] and abs(other["nll"] - out["nll"]) < 6 * max(out["nll_se"], other["nll_se"])
    assert out["ce_at_sigma_max"] > 0
    # The split-half error matches the spread of the estimate over seeds (within sampling error).
    spread = np.std([likelihood(task, params, windows, seed=s, draws=16)["nll"] for s in range(2, 8)], ddof=1)
    assert 0.4 < spread / out["nll_se"] < 2.5, (spread, out["nll_se"])
    # One draw has no second half to compare with: no error estimate, said in words, never "+/- nan".
    one = autoregressive_lm_eval.score(task, params, windows_NL=windows, draws=1)
    assert one["bpc_mc_se"] is None
    assert autoregressive_lm_eval.mc_error(one) == "one draw: no Monte-Carlo error estimate"
    json.dumps(one, allow_nan=False)


def test_prompt_and_length_errors(db):
    task, params = db
    ids, note = prompt_ids(task.config, "Hello, World")
    assert task.decode(ids) == "hello world" and "mapped" in note
    assert prompt_ids(task.config, "hello")[1] == ""
    with pytest.raises(ValueError, match="empty"):
        prompt_ids(task.config, "")
    ids, note = prompt_ids(task.config, "!!!")  # text8: every other character becomes one space, and says so
    assert task.decode(ids) == " " and "'!!!' -> ' '" in note
    with pytest.raises(ValueError, match="exceeds the trained context text.seq_len=16"):
        task.sampler.generate(params, np.zeros((1, 12), np.int32), 5)
    with pytest.raises(ValueError, match="ar.objective"):
        tiny(**{"ar.objective": "plain"})
    with pytest.raises(ValueError, match="generation.gen_len"):
        tiny(**{"generation.gen_len": 13})  # 4 + 13 > text.seq_len=16: refused before training, not after
    with pytest.raises(ValueError, match="new tokens=0"):
        task.sampler.generate(params, np.zeros((1, 4), np.int32), 0)
    with pytest.raises(ValueError, match="prompt ids"):
        task.sampler.generate(params, np.full((1, 4), 27, np.int32), 2)
    with pytest.raises(ValueError, match="text.mask_eps"):
        tiny(**{"text.mask_eps": 0.01})


def test_distinct_n_counts_word_ngrams():
    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)
    assert distinct_n(["one two three"], 3) == 1.0


def test_cli_trains_both_models_evaluates_against_the_reference_and_continues_a_prompt(tmp_path, capsys,
                                                                                      monkeypatch):
    # Evaluate and sample use the shapes the training's own artifacts used (4 prompts, 4 draws, a
    # 4-symbol prompt, 6 new symbols), so the compilation cache serves them.
    args = [a for path, value in TINY.items() for a in ("--set", f"{path}={value}")]
    args += ["--set", "text.seq_len=32", "--set", "optim.learning_rate=3e-3",
             "--set", "optim.warmup_steps=10", "--no-progress"]
    ref, db_dir = str(tmp_path / "ar"), str(tmp_path / "db")
    assert cli.main(["train", "--config", "pydoc_ar", "--steps", "150", "--workdir", ref, *args,
                     "--set", "ar.objective=plain", "--set", "model.num_blocks=1"]) == 0
    with open(os.path.join(ref, "bpc.json")) as f:
        trained = json.load(f)
    assert trained["bpc"]["mean"] < trained["unigram_bpc"] - 0.3, trained  # it learned from the context
    assert cli.main(["train", "--config", "pydoc_ar", "--steps", "10", "--workdir", db_dir, *args]) == 0
    out = capsys.readouterr().out
    assert "chain draws per symbol" in out and "CE at sigma_max" in out
    assert cli.main(["evaluate", "--workdir", db_dir, "--seeds", "0,1", "--mc", "4", "--reference", ref]) == 0
    with open(os.path.join(db_dir, "evaluation.json")) as f:
        result = json.load(f)
    with open(os.path.join(db_dir, "bpc.json")) as f:
        assert result["bpc"]["values"][0] == pytest.approx(json.load(f)["bpc"]["mean"], rel=1e-6)  # same draws
    assert len(result["bpc"]["values"]) == 2 and result["mc_draws"] == 4
    assert result["gen_ppl"] > 1 and result["held_out_gen_ppl"] < result["gen_ppl"]  # real text reads better
    assert result["tokens_per_s"] > 0 and result["reference_tokens_per_s"] > 0
    assert len(result["samples"]) == 4 and all(len(s.split("|")[1]) == 6 for s in result["samples"])
    assert (result["mauve"] is None) == ("mauve_skipped" in result)
    out_txt = str(tmp_path / "c.txt")
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", db_dir, "--out", out_txt, "--prompt", "The ", "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "mapped to the text8 vocabulary" in printed and "3 network calls per symbol" in printed
    with open(out_txt) as f:
        lines = f.read().splitlines()
    assert len(lines) == 4 and all(line.startswith("the |") and len(line) == len("the |") + 6 for line in lines)
    again = ["sample", "--workdir", db_dir, "--out", out_txt, "--overwrite"]  # the output rule: --overwrite
    assert cli.main([*again, "--prompt", "x" * 30, "--length", "5"]) == 2
    assert "--prompt of 30 symbols plus 5 new ones" in capsys.readouterr().err
    assert cli.main([*again, "--prompt", "x" * 30, "--set", "generation.gen_len=3"]) == 2  # the --set one counts
    assert "--prompt of 30 symbols plus 3 new ones" in capsys.readouterr().err
    # A short prompt leaves room for more than text.seq_len - generation.prompt_len new symbols.
    assert cli.main([*again, "--prompt", "ab", "--length", "30", "--num-samples", "1"]) == 0
    assert [len(line) for line in open(out_txt).read().splitlines()] == [len("ab|") + 30]
    # A wrong --reference is refused from its config, before any scoring, naming --reference.
    monkeypatch.setattr(autoregressive_lm_eval, "score", lambda *a, **k: pytest.fail("scored before the check"))
    assert cli.main(["evaluate", "--workdir", ref, "--reference", db_dir, "--overwrite"]) == 2
    assert "--reference " + db_dir + " must be a plain autoregressive_lm run" in capsys.readouterr().err
    assert cli.main(["evaluate", "--workdir", db_dir, "--reference", str(tmp_path / "nowhere"), "--overwrite"]) == 2
    assert f"--reference {tmp_path / 'nowhere'}: " in capsys.readouterr().err
