"""Masked-diffusion LM with DiffusionBlocks (MD4, paper Table 3): the ELBO integrand, the
per-band likelihood against a brute-force integral, ancestral unmasking through the chain, the
CLI and the errors, on tiny transformers over Python's pydoc text."""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dblocks_jax import cli, make_task
from dblocks_jax.presets import get_config
from dblocks_jax.engine.trainer import spec_of
from dblocks_jax.tasks.masked_lm_eval import held_out, negative_elbo, score

TINY = {"text.seq_len": 16, "model.width": 32, "model.num_heads": 2, "model.num_layers": 2, "model.num_blocks": 2,
        "data.batch_size": 16, "optim.steps": 4, "optim.warmup_steps": 1, "run.log_every": 2,
        "text.eval_sequences": 64, "sampling.steps": 8, "sampling.num_samples": 4}
TINY_ARGS = [a for path, value in TINY.items() if path != "optim.steps"
             for a in ("--set", f"{path}={value}")]


def tiny(**overrides):
    return get_config("pydoc_md4", {**TINY, **overrides})


def randomized(task, scale=0.5, salt=0):
    """Parameters of every block with random noise added (fresh ones have zero adaLN gates, so every
    block would compute the same function of t): the blocks then differ, and depend on t."""
    out = []
    for b in range(task.num_blocks):
        p = task.init_params(jax.random.key(b))
        out.append(jax.tree.map(lambda x, k=b: x + scale * jax.random.normal(
            jax.random.fold_in(jax.random.key(100 + salt), k), x.shape), p))
    return out


@pytest.fixture(scope="module")
def task_and_params():
    task = make_task(tiny())
    task.check_data()
    return task, randomized(task)


def zero_head(params):
    """A block whose logits are all zero: every symbol has probability 1/V."""
    params = jax.tree.map(jnp.copy, params)
    params["head"]["kernel"].value = jnp.zeros_like(params["head"]["kernel"].value)
    params["head"]["bias"].value = jnp.zeros_like(params["head"]["bias"].value)
    return params


def test_loss_is_the_masked_cross_entropy_times_the_elbo_weight(task_and_params):
    task, params = task_and_params
    batch = {"tokens": jnp.asarray(held_out(task)[:16])}
    draw = task.draw(jax.random.key(0), 0, spec_of(batch))
    loss = task.loss(params[0], batch, draw, 0)
    # By hand: mask where u < 1 - alpha_t, CE of the network's logits on the masked symbols only.
    t, u, x = np.asarray(draw["t"]), np.asarray(draw["u"]), np.asarray(batch["tokens"])
    alpha = (1 - 2e-4) * (1 - t) + 1e-4
    masked = u < (1 - alpha)[:, None]
    z = np.where(masked, task.vocab_size, x)
    logits = task.network(params[0])(jnp.asarray(z), jnp.asarray(t))
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"]))
    expected = (1 - 2e-4) / (1 - alpha) * (ce * masked).sum(-1) / x.shape[1]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert 0 < masked.mean() < 1 and len(set(masked.sum(-1))) > 1  # some masked, not all, different per example


def test_draws_stay_in_the_block_band_and_are_stratified(task_and_params):
    task = task_and_params[0]
    spec = {"tokens": jax.ShapeDtypeStruct((64, 16), jnp.int32)}
    for b in range(task.num_blocks):
        lo, hi = task.partition.training_band(b)
        t = np.sort(np.asarray(task.draw(jax.random.key(b), b, spec)["t"]))
        assert lo <= t.min() and t.max() <= hi
        # Stratified: the k-th smallest lies in the k-th of 64 equal slices of the band.
        np.testing.assert_array_equal(np.floor((t - lo) / (hi - lo) * 64).clip(0, 63), np.arange(64))
    assert task.partition.band(0) == (0.5, 1.0)  # block 0 owns the most masked half


def test_a_uniform_model_scores_log2_of_the_vocabulary(task_and_params):
    """With logits all zero every masked symbol costs ln V, and the integrand's expectation is
    (1 - 2 eps) ln V at every t: the per-band integrals, their widths and the unit conversion
    must add up to log2(27) = 4.755 bits."""
    task, params = task_and_params
    uniform = [zero_head(p) for p in params]
    # The 1/t weight makes one draw noisy (few masks at small t, each weighing much): 32 draws of t
    # per window and band bring the spread of the mean to about 0.02 bits.
    result = score(task, uniform, seeds=(0, 1), windows_NL=held_out(task, 512), draws=32)
    expected = (1 - 2e-4) * math.log2(27)
    assert abs(result["bpc"]["mean"] - expected) < 0.06, result["bpc"]
    for share in result["bpc_per_block"]:  # each band holds half of the integral
        assert abs(share["mean"] - expected / 2) < 0.06, share
    assert 0 < result["bpc_endpoints"]["mean"] < 0.002
    assert 3.9 < result["unigram_bpc"] < 4.3  # pydoc's unigram floor (4.10 bits: data/text.py)


def test_the_integral_splits_into_other_bands_only_where_one_block_owns_each(task_and_params):
    task, params = task_and_params
    windows = held_out(task, 32)
    own = negative_elbo(task, params, windows, seed=5, draws=1)
    split = negative_elbo(task, params, windows, seed=5, draws=1, edges=np.array([0.0, 0.5, 1.0]))
    assert split["per_band"] == own["per_block"] and split["total"] == own["total"]
    with pytest.raises(AssertionError, match=r"owned by blocks \[0, 1\]"):  # (1/3, 2/3] straddles both blocks
        negative_elbo(task, params, windows, seed=5, draws=1, edges=np.array([0.0, 1 / 3, 2 / 3, 1.0]))


def test_bits_per_byte_become_bits_per_character_by_the_texts_bytes_per_character():
    from dblocks_jax.data import text
    from dblocks_jax.tasks.masked_lm_eval import bits_per_character

    task = make_task(tiny(**{"text.vocabulary": "bytes"}))
    windows = text.encode("naïve ✓ " * 4, "bytes")[None, :]  # 8 characters, 11 bytes each repeat
    assert bits_per_character(task, windows) == pytest.approx(44 / 32)
    assert bits_per_character(make_task(tiny()), windows) == 1.0


def exact_negative_elbo(task, params, windows, pieces=16, nodes=8):
    """The diffusion term by brute force: every mask pattern of a short window (2^L of them, each
    with its probability at t), and composite Gauss-Legendre in t (`pieces` sub-intervals of every
    band, `nodes` each: the sinusoidal time features make the integrand wiggle on a scale of
    ~1/1000 in t), each band scored by its own block."""
    n, length = windows.shape
    patterns = np.array(list(itertools.product([0, 1], repeat=length)), bool)  # (2^L, L)
    tokens = np.repeat(windows, len(patterns), axis=0)
    u = np.tile(np.where(patterns, 0.0, 1.0), (n, 1)).astype(np.float32)  # u = 0: masked
    x, w = np.polynomial.legendre.leggauss(nodes)
    per_band = np.zeros(task.num_blocks)
    for b in range(task.num_blocks):
        lo, hi = task.partition.band(b)
        edges = np.linspace(lo, hi, pieces + 1)
        for a, c in zip(edges[:-1], edges[1:]):
            for node, weight in zip(x, w):
                t = a + (c - a) * (node + 1) / 2
                alpha = float(task.law.alpha(t))
                prob = (1 - alpha) ** patterns.sum(1) * alpha ** (length - patterns.sum(1))  # (2^L,)
                assert int(task.partition.block_of(np.float32(t))) == b  # nodes lie inside the band
                f = np.asarray(task.integrand(params[b], jnp.asarray(tokens),
                                              jnp.full(len(tokens), t, jnp.float32), jnp.asarray(u)))
                per_band[b] += (c - a) / 2 * weight * float((f.reshape(n, len(patterns)) @ prob).mean())
    return per_band


def test_per_band_estimate_matches_a_brute_force_integral_and_routes_each_t_to_its_block():
    task = make_task(tiny(**{"text.seq_len": 6}))
    task.check_data()
    # Block 0 random (cross-entropies of tens of nats), block 1 nearly uniform (about ln 27): a t
    # scored by the wrong block would move a band's integral by far more than the estimate's noise.
    params = [randomized(task, scale=0.3)[0], task.init_params(jax.random.key(1))]
    windows = held_out(task, 24)
    exact = exact_negative_elbo(task, params, windows)
    runs = [negative_elbo(task, params, windows, seed, draws=4) for seed in range(24)]
    for b in range(task.num_blocks):
        estimates = np.array([r["per_block"][b] for r in runs])
        stderr = estimates.std(ddof=1) / np.sqrt(len(estimates))
        assert abs(estimates.mean() - exact[b]) < 4 * stderr + 1e-3, (b, estimates.mean(), exact[b], stderr)
        assert stderr < 0.05 * exact[b]
    assert exact[0] > 3 * exact[1]  # the two bands are told apart


def test_ancestral_unmasking_follows_the_forward_marginals_and_reveals_everything(task_and_params):
    task, params = task_and_params
    steps = 8
    tokens, path = task.sample(params, 96, seed=0, steps=steps, grid="equiprobable", keep_path=True)
    assert tokens.shape == (96, 16) and path.shape == (96, steps, 16)
    assert tokens.min() >= 0 and tokens.max() < task.vocab_size  # no mask left, only symbols
    masked = path == task.mask_id
    assert np.all(masked[:, 1:] <= masked[:, :-1])  # a revealed symbol stays revealed
    revealed = ~masked
    assert np.all(np.where(revealed, path == tokens[:, None, :], True))  # and keeps its value to the end
    # After the step to t_i the masked share is 1 - alpha(t_i) (the forward process's marginal).
    grid = task.grid(steps, "equiprobable")
    np.testing.assert_allclose(masked.mean(axis=(0, 2)), 1 - task.law.alpha(grid[1:]), atol=0.04)


def forcing(params, symbol=None):
    """A block whose logits ignore its input: one-hot on `symbol` (or all zero: uniform)."""
    params = zero_head(params)
    if symbol is not None:
        params["head"]["bias"].value = params["head"]["bias"].value.at[symbol].set(50.0)
    return params


def test_each_step_reveals_symbols_drawn_from_the_block_that_owns_its_t(task_and_params):
    task, params = task_and_params
    # Block 0 (t in (0.5, 1]) always says "a", block 1 always "b": the share of "a" is the share
    # revealed while t > 1/2, 1 - (1 - alpha(1/2)) / (1 - alpha(1)) = 1/2.
    tokens = task.sample([forcing(params[0], 1), forcing(params[1], 2)], 256, steps=8, grid="equiprobable")
    assert set(np.unique(tokens)) == {1, 2}
    assert abs((tokens == 1).mean() - 0.5) < 0.03
    # A uniform block's symbols are drawn from its softmax, not its argmax: spread over the vocabulary.
    tokens = task.sample([forcing(params[0]), forcing(params[1])], 64, steps=8, grid="equiprobable")
    counts = np.bincount(tokens.ravel(), minlength=task.vocab_size) / tokens.size
    assert counts.min() > 0.01 and counts.max() < 0.07


def test_samples_depend_on_seed_not_on_batch_size(task_and_params):
    task, params = task_and_params
    whole = task.sample(params, 6, seed=3, batch_size=6)
    np.testing.assert_array_equal(whole, task.sample(params, 6, seed=3, batch_size=4))
    assert not np.array_equal(whole, task.sample(params, 6, seed=4, batch_size=6))
    assert task.decode(np.array([1, 2, 27, 27, 0, 3])) == "ab__ c"


def test_cli_trains_evaluates_and_samples_text_and_the_model_beats_the_unigram_floor(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    # 200 steps of 64 windows of 32 symbols per block: enough to learn from the context (about 3.8
    # bits per character against pydoc's unigram 4.09), in seconds.
    args = ["train", "--config", "pydoc_md4", "--steps", "200", "--no-progress", "--workdir", workdir, *TINY_ARGS,
            "--set", "data.batch_size=64", "--set", "text.seq_len=32", "--set", "optim.warmup_steps=20",
            "--set", "optim.learning_rate=3e-3"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "bits per character" in out and "samples.txt" in out
    with open(os.path.join(workdir, "bpc.json")) as f:
        trained = json.load(f)
    assert trained["bpc"]["mean"] < trained["unigram_bpc"] - 0.15, trained  # it learned more than frequencies
    with open(os.path.join(workdir, "samples.txt")) as f:
        assert len(f.read().splitlines()) == 4
    assert cli.main(["evaluate", "--workdir", workdir, "--seeds", "0,1", "--num-samples", "3"]) == 0
    with open(os.path.join(workdir, "evaluation.json")) as f:
        result = json.load(f)
    assert len(result["bpc"]["values"]) == 2 and result["bpc"]["std"] > 0
    # Seed 0's draws are those of the run's own bpc.json (run.seed 0), scored again from the checkpoints.
    assert result["bpc"]["values"][0] == pytest.approx(trained["bpc"]["mean"], rel=1e-6)
    assert len(result["samples"]) == 3 and all(len(s) == 32 for s in result["samples"])
    assert 0 <= result["word_validity"] <= 1 and result["held_out_word_validity"] > 0.5
    out_txt = str(tmp_path / "samples.txt")
    assert cli.main(["sample", "--workdir", workdir, "--out", out_txt, "--num-samples", "5", "--steps", "4"]) == 0
    with open(out_txt) as f:
        lines = f.read().splitlines()
    assert len(lines) == 5 and all(len(line) == 32 and set(line) <= set(" abcdefghijklmnopqrstuvwxyz")
                                   for line in lines)
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", workdir, "--out", str(tmp_path / "x.png")]) == 2
    assert "--out must end in .txt" in capsys.readouterr().err
    # Resume with another vocabulary: refused before anything compiles, naming the field.
    assert cli.main(["train", "--config", "pydoc_md4", "--steps", "200", "--workdir", workdir, "--resume", *TINY_ARGS,
                     "--set", "data.batch_size=64", "--set", "text.seq_len=32", "--set", "optim.warmup_steps=20",
                     "--set", "optim.learning_rate=3e-3", "--set", "text.vocabulary=bytes"]) == 2
    assert "text.vocabulary" in capsys.readouterr().err


def _train_error(capsys, *extra):
    assert cli.main(["train", "--config", "pydoc_md4", "--steps", "1", "--no-progress", *TINY_ARGS, *extra]) == 2
    return capsys.readouterr().err


def test_bad_text_inputs_fail_before_compiling_with_the_reason(tmp_path, capsys):
    empty, short, binary = tmp_path / "empty.txt", tmp_path / "short.txt", tmp_path / "latin1.txt"
    empty.write_text("")
    short.write_text("too short")
    binary.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    workdir = ["--workdir", str(tmp_path / "w"), "--overwrite"]
    assert "holds 0 symbols" in _train_error(capsys, "--set", f"data.dataset=textfile:{empty}", *workdir)
    assert "at least 64" in _train_error(capsys, "--set", f"data.dataset=textfile:{short}", *workdir)
    assert "is not UTF-8" in _train_error(capsys, "--set", f"data.dataset=textfile:{binary}", *workdir)
    err = _train_error(capsys, "--set", "text.seq_len=50000", *workdir)
    assert "text.seq_len=50000" in err and "held-out text of pydoc holds" in err
    assert "data.dataset" in _train_error(capsys, "--set", "data.dataset=digits", *workdir)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")  # nothing was trained or written


def test_resume_refuses_a_training_text_that_changed(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog " * 40)
    workdir = str(tmp_path / "run")
    base = ["train", "--config", "pydoc_md4", "--steps", "2", "--no-progress", "--workdir", workdir, *TINY_ARGS,
            "--set", f"data.dataset=textfile:{corpus}", "--set", "sampling.num_samples=1"]
    assert cli.main(base) == 0
    corpus.write_text("pack my box with five dozen liquor jugs " * 40)
    capsys.readouterr()
    assert cli.main([*base, "--resume"]) == 2
    assert "training data changed" in capsys.readouterr().err


def test_a_tfds_text_dataset_trains_and_scores_through_grain(tmp_path, monkeypatch):
    """tfds:tiny_shakespeare under TFDS's mock data (records of random symbols): the task streams its
    train split through Grain, holds out its test split, trains and scores (the stream's resume is
    tested in test_text.py)."""
    import functools

    import tensorflow_datasets as tfds

    from dblocks_jax import runs
    from dblocks_jax.data import text_tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    # A small window-shuffle buffer: the mock's records are ~15 symbols, read one by one.
    monkeypatch.setattr(text_tfds, "tfds_corpus", functools.partial(text_tfds.tfds_corpus, shuffle_symbols=512))
    config = tiny(**{"data.dataset": "tfds:tiny_shakespeare", "optim.steps": 3, "sampling.num_samples": 2})
    with tfds.testing.mock_data(num_examples=64):
        result = runs.train(config, str(tmp_path / "run"), progress=False)
    assert result.block_steps == [3, 3]
    with open(tmp_path / "run" / "bpc.json") as f:
        assert json.load(f)["num_sequences"] > 10
    with open(tmp_path / "run" / "run.json") as f:
        assert json.load(f)["data"]["source"] == "tfds:tiny_shakespeare"
