"""Image classification with DiffusionBlocks (paper Table 1): the loss, the chain, the released
code's two defects, the plain baseline, the CLI and the errors, on a tiny ViT over 8x8 digits."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dblocks_jax import cli, make_task
from dblocks_jax.presets import get_config
from dblocks_jax.engine.trainer import BlockTrainer, spec_of
from dblocks_jax.tasks.image_classification_eval import held_out

TINY = {"data.image_size": 8, "model.patch_size": 4, "model.width": 16, "model.num_heads": 2,
        "model.num_layers": 2, "model.num_blocks": 2, "data.batch_size": 16, "optim.steps": 4,
        "optim.warmup_steps": 1, "run.log_every": 2}
TINY_ARGS = [a for path, value in TINY.items() if path not in ("model.num_blocks", "optim.steps")
             for a in ("--set", f"{path}={value}")]


def tiny(**overrides):
    return get_config("digits_vit", {**TINY, **overrides})


@pytest.fixture(scope="module")
def task_and_params():
    """A tiny B = 2 task with random (not fresh: fresh heads are zero) parameters for every block."""
    task = make_task(tiny())
    params = []
    for b in range(task.num_blocks):
        p = task.init_params(jax.random.key(b))
        p = jax.tree.map(lambda x, k=b: x + 0.3 * jax.random.normal(jax.random.fold_in(jax.random.key(9), k),
                                                                    x.shape), p)
        params.append(p)
    return task, params


def batch_of(task, n=16):
    images, labels = held_out(task)
    return {"image": jnp.asarray(images[:n]), "label": jnp.asarray(labels[:n])}


def test_loss_is_cross_entropy_times_the_edm_weight_of_each_example(task_and_params):
    task, params = task_and_params
    batch = batch_of(task)
    draw = task.draw(jax.random.key(0), 0, spec_of(batch))
    loss = task.loss(params[0], batch, draw, 0)
    # By hand: z = E-hat[label] + sigma eps, the network's logits of D(z, sigma), CE times lambda(sigma).
    net, sigma = task.network(params[0]), draw["sigma"]
    z = net.table()[batch["label"]] + sigma[:, None] * draw["eps"]
    ce = optax.softmax_cross_entropy_with_integer_labels(task.denoised_logits(net, batch["image"], z, sigma),
                                                         batch["label"])
    weight = task.edm.loss_weight(sigma)
    np.testing.assert_allclose(loss, ce * weight, rtol=1e-5)
    assert float(jnp.std(sigma)) > 0 and float(jnp.std(weight)) > 0  # the weights differ per example

    # Defect 1 of the released code: `(loss * w).mean()` with loss [N] and w [N, 1] broadcasts to
    # [N, N], so the weight acts as one scalar per batch. Our switch gives exactly that mean.
    official = make_task(tiny(**{"classify.official_weight": True}))
    released = np.mean(np.asarray(ce)[None, :] * np.asarray(weight)[:, None])
    np.testing.assert_allclose(jnp.mean(official.loss(params[0], batch, draw, 0)), released, rtol=1e-5)
    assert abs(released - float(jnp.mean(loss))) > 1e-3 * abs(released)


def test_chain_is_euler_on_the_next_blocks_table_and_reads_out_at_sigma_min(task_and_params):
    task, params = task_and_params
    images = batch_of(task, 8)["image"]
    steps = 4
    grid = task.grid(steps)
    assert len(grid) == steps and grid[0] == task.law.sigma_max and grid[-1] == task.law.sigma_min
    owners = task.partition.block_of(grid)
    assert owners.tolist() == sorted(owners.tolist()) and set(owners.tolist()) == {0, 1}

    def replay(raw_table):
        z = task.start_state(seed=3, start=0, count=len(images))
        nets = [task.network(p) for p in params]
        for t, t_next, b, b_next in zip(grid[:-1], grid[1:], owners[:-1], owners[1:]):
            logits = task.denoised_logits(nets[b], images, z, jnp.full((len(images),), t, jnp.float32))
            table = nets[b_next].label_embed[...] if raw_table else nets[b_next].table()
            d = jax.nn.softmax(logits) @ table
            z = z + (t_next - t) * (z - d) / t
        return task.denoised_logits(nets[owners[-1]], images, z, jnp.full((len(images),), grid[-1], jnp.float32))

    for raw in (False, True):
        got = task.predict_logits(params, np.asarray(images), steps=steps, seed=3, official_table=raw)
        np.testing.assert_allclose(got, replay(raw), rtol=1e-3, atol=1e-3)  # float32, jit vs eager order
    # Defect 2 (the un-normalised table) changes the prediction; another seed another chain.
    assert not np.allclose(task.predict_logits(params, np.asarray(images), steps=steps, seed=3),
                           task.predict_logits(params, np.asarray(images), steps=steps, seed=3, official_table=True))
    assert not np.allclose(task.predict_logits(params, np.asarray(images), steps=steps, seed=3),
                           task.predict_logits(params, np.asarray(images), steps=steps, seed=4))


def test_default_chain_calls_each_block_once_and_predictions_ignore_the_batch(task_and_params):
    task, params = task_and_params
    assert task.inference_steps() == 2  # B = 2 points: one call per block
    three = make_task(tiny(**{"model.num_blocks": 1, "model.num_layers": 1}))
    assert three.inference_steps() == 2  # B = 1 still needs a start and a read-out
    b3 = get_config("digits_vit", {**TINY, "model.num_layers": 3, "model.num_blocks": 3})
    assert make_task(b3).partition.block_of(make_task(b3).grid()).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="inference steps=1; allowed: an integer >= 2"):
        task.grid(1)
    with pytest.raises(ValueError, match="inference steps=2; allowed: an integer >= 3 .*each of the 3 block"):
        make_task(b3).grid(2)  # two points would skip the middle block
    with pytest.raises(ValueError, match="inference steps=0; allowed"):
        task.inference_steps(0)
    images = np.asarray(batch_of(task, 12)["image"])
    whole = task.predict_logits(params, images, seed=5)
    # Batches of 5 and of 12 round their float32 matmuls differently (up to ~2e-4 relative on the
    # CPU's elemental emitters); noise drawn per batch instead of per example would move logits by O(1).
    np.testing.assert_allclose(task.predict_logits(params, images, seed=5, batch_size=5), whole, rtol=1e-3,
                               atol=1e-4)


def test_blocks_start_from_one_label_table_and_differ_elsewhere():
    task = make_task(tiny())
    trainer = BlockTrainer(task)
    a, b = (trainer.init_state(i).params for i in range(2))
    np.testing.assert_array_equal(a["label_embed"][...], b["label_embed"][...])
    assert abs(float(np.std(a["label_embed"][...])) - 0.02) < 0.005
    assert not np.array_equal(a["patch_embed"]["kernel"][...], b["patch_embed"]["kernel"][...])


def test_plain_objective_is_an_ordinary_classifier_and_needs_one_block():
    with pytest.raises(ValueError, match="classify.objective='plain'.*set model.num_blocks=1"):
        tiny(**{"classify.objective": "plain"})
    task = make_task(tiny(**{"classify.objective": "plain", "model.num_blocks": 1}))
    params = task.init_params(jax.random.key(0))
    assert "cls_token" in params and "label_embed" not in params
    batch = batch_of(task)
    spec = spec_of(batch)
    losses = [task.loss(params, batch, task.draw(jax.random.key(k), 0, spec), 0) for k in (0, 1)]
    np.testing.assert_allclose(losses[0], losses[1])  # no noise enters a plain classifier
    net = task.network(params)
    h, cond = net.features(batch["image"], None, jnp.zeros(16))
    np.testing.assert_allclose(losses[0], optax.softmax_cross_entropy_with_integer_labels(net.logits(h, cond),
                                                                                          batch["label"]), rtol=1e-5)


def test_dropout_draws_one_key_per_example_and_changes_the_loss(task_and_params):
    _, params = task_and_params
    task = make_task(tiny(**{"model.dropout": 0.5}))
    batch = batch_of(task)
    spec = spec_of(batch)
    draws = [task.draw(jax.random.key(k), 0, spec) for k in (0, 0, 1)]
    assert draws[0]["dropout"].shape[0] == 16
    same, again, other = (task.loss(params[0], batch, d, 0) for d in draws)
    np.testing.assert_array_equal(same, again)
    assert not np.allclose(same, other)
    assert "dropout" not in make_task(tiny()).draw(jax.random.key(0), 0, spec)
    # Inference never drops out: the same parameters predict the same with or without the rate.
    images = np.asarray(batch["image"][:6])
    np.testing.assert_array_equal(task.predict_logits(params, images, seed=1),
                                  make_task(tiny()).predict_logits(params, images, seed=1))


@pytest.mark.parametrize("overrides, message", [
    ({"classify.num_classes": 12}, "classify.num_classes=12, but data.dataset=digits has 10 classes"),
    ({"model.patch_size": 3}, "model.patch_size=3; allowed: a positive divisor of data.image_size=8"),
    ({"model.family": "dit"}, "model.family (the network family is the task's: image_classification builds vit)"),
    ({"ar.bridge": "hard"}, "ar.bridge belongs to autoregressive_lm; this run is image_classification"),
    ({"classify.steps": 2, "model.num_blocks": 4, "model.num_layers": 4},  # refused before training every block
     "classify.steps=2; allowed: 0 (one call per block) or an integer >= 4"),
    ({"data.augment": "mixup"}, "data.augment='mixup'; allowed: none, crop, flip, crop_flip"),
])
def test_bad_classification_configs_fail_before_compiling(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_task(tiny(**overrides))


def test_a_dataset_without_labels_is_refused(monkeypatch):
    from dblocks_jax.data import images as image_data
    from dblocks_jax.data.images import DatasetInfo

    # A real TFDS image dataset without a 'label' feature, read from its builder's metadata (offline).
    with pytest.raises(ValueError, match="tfds:celeb_a': not a TFDS image classification dataset with 'image' and "
                                         "'label' features"):
        make_task(tiny(**{"data.dataset": "tfds:celeb_a"}))

    monkeypatch.setitem(image_data._BUNDLED, "digits", DatasetInfo("digits", channels=1, num_classes=0, image_size=8))
    with pytest.raises(ValueError, match="data.dataset=digits has 0 class.*labelled data"):
        make_task(tiny())


def test_cli_trains_evaluates_and_refuses_to_sample(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--config", "digits_vit", "--num-blocks", "2", "--steps", "400", "--workdir", workdir,
                     "--no-progress", "--set", "optim.learning_rate=3e-3", "--set", "noise.p_mean=0.5",
                     *TINY_ARGS]) == 0  # a law shifted to high noise: the tiny blocks must read the image
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and os.path.exists(os.path.join(workdir, "accuracy.json"))
    path = str(tmp_path / "eval.json")
    assert cli.main(["evaluate", "--workdir", workdir, "--steps", "2,4", "--seeds", "0,1", "--json", path]) == 0
    result = json.load(open(path))
    assert [r["steps"] for r in result["by_steps"]] == [2, 4]
    from dblocks_jax.runs import load_run
    from dblocks_jax.tasks.image_classification_eval import score

    task, params, _ = load_run(workdir)  # the same numbers from the checkpoints, without the CLI
    for r in result["by_steps"]:
        assert len(r["accuracy"]["values"]) == 2 and r["top5"] is None  # 10 classes: no top-5
        direct = score(task, params, steps=r["steps"], seeds=(0, 1))
        for metric in ("accuracy", "ece", "nll"):
            assert r[metric]["values"] == pytest.approx(direct[metric]["values"], rel=1e-6), metric
    # 400 steps of two 1-layer blocks: well above fresh blocks of the same config (chance, 0.1).
    assert cli.main(["evaluate", "--workdir", workdir, "--seeds", "0,1", "--untrained"]) == 0
    untrained = json.load(open(os.path.join(workdir, "evaluation_untrained.json")))
    assert result["accuracy"]["mean"] > untrained["accuracy"]["mean"] + 0.1, (result["accuracy"], untrained["accuracy"])
    assert os.path.getsize(str(tmp_path / "eval_reliability.png")) > 0
    assert len(result["table_agreement"]["consecutive_cosine"]) == 1
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", workdir, "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "holds a run of task image_classification" in err
    assert "tasks that sample: autoregressive_lm, image_generation, masked_lm, recurrent_lm" in err
    assert cli.main(["evaluate", "--workdir", workdir, "--guidance", "2", "--json", path]) == 2
    assert "--guidance: for image_generation runs" in capsys.readouterr().err
    assert cli.main(["evaluate", "--workdir", workdir, "--steps", "1", "--json", path, "--overwrite"]) == 2
    assert "inference steps=1; allowed: an integer >= 2" in capsys.readouterr().err
