import gc
import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config, tiny_task

from dblocks_jax import NonFiniteLossError, data, make_task, train
from dblocks_jax.engine import checkpoint
from dblocks_jax.engine.trainer import BlockTrainer, block_plan, spec_of


def host(tree):
    return jax.tree.map(np.array, jax.device_get(tree))


def test_interleaved_step_changes_only_the_chosen_block():
    config = tiny_config(num_blocks=3, num_layers=3, steps=3, schedule="interleaved")
    snapshots = []
    train(config, on_step=lambda t, b, resident: snapshots.append((b, {k: host(v) for k, v in resident.items()})),
          progress=False)
    for (b, after), (_, before) in zip(snapshots[1:], snapshots[:-1]):
        for other in before:
            if other == b:
                changed = [not np.array_equal(x, y) for x, y in
                           zip(jax.tree.leaves(before[b]), jax.tree.leaves(after[b]))]
                assert any(changed)
            elif other in after:
                jax.tree.map(np.testing.assert_array_equal, before[other], after[other])  # bitwise
    assert len({b for b, _ in snapshots}) == 3


def live_bytes():
    return sum(x.nbytes for x in jax.live_arrays())


@pytest.mark.parametrize("schedule", ["sequential", "interleaved"])
def test_only_sequential_keeps_a_single_block_on_the_device(schedule):
    config = tiny_config(num_blocks=4, num_layers=4, steps=3, schedule=schedule)
    one_block = BlockTrainer(make_task(config)).state_bytes
    gc.collect()
    baseline = live_bytes()
    resident_counts, extra_bytes = [], []
    train(config, progress=False, on_step=lambda t, b, resident: (
        resident_counts.append(len(resident)), extra_bytes.append(live_bytes() - baseline)))
    if schedule == "sequential":
        assert max(resident_counts) == 1
        assert max(extra_bytes) < 1.5 * one_block, (max(extra_bytes), one_block)
    else:
        assert max(resident_counts) == 4
        assert max(extra_bytes) > 3.5 * one_block


def eval_loss(task, params, block, batch):
    """The block's loss on `batch`, averaged over 8 fixed draws (paired across parameter sets)."""
    keys = jax.random.split(jax.random.key(123), 8)
    return float(np.mean([task.loss(params, batch, task.draw(k, block, spec_of(batch)), block).mean() for k in keys]))


@pytest.mark.parametrize("num_blocks", [1, 4])
def test_short_shapes_run_lowers_every_blocks_loss(num_blocks, tmp_path):
    config = tiny_config(num_blocks=num_blocks, num_layers=4, steps=40, batch_size=32, learning_rate=2e-3,
                         warmup_steps=5, log_every=10)
    result = train(config, str(tmp_path), progress=False, write_artifacts=False)
    trainer = BlockTrainer(make_task(config))
    images, labels = data.load_split("shapes", "test", 8)
    batch = {"image": images[:64], "label": labels[:64]}
    for b in range(num_blocks):
        before = eval_loss(trainer.task, jax.device_get(trainer.init_state(b)).params, b, batch)
        after = eval_loss(trainer.task, result.params[b], b, batch)
        assert after < 0.95 * before, (b, before, after)  # paired: same images and noise
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {r["block"] for r in records} == set(range(num_blocks))
    assert sum(result.block_steps) == num_blocks * 40


def test_both_schedules_give_each_block_exactly_steps_and_interleaved_mixes_them():
    sequential = block_plan(4, 500, "sequential", seed=0)
    np.testing.assert_array_equal(sequential, np.repeat(np.arange(4), 500))
    interleaved = block_plan(4, 500, "interleaved", seed=0)
    np.testing.assert_array_equal(np.bincount(interleaved), [500] * 4)
    # Uniform at every step: each quarter of the plan holds each block about equally often.
    for quarter in interleaved.reshape(4, 500):
        assert np.all(np.abs(np.bincount(quarter, minlength=4) - 125) < 40)
    assert not np.array_equal(interleaved, block_plan(4, 500, "interleaved", seed=1))


def test_training_is_deterministic_and_checkpoints_restore(tmp_path):
    config = tiny_config(steps=3)
    first = train(config, str(tmp_path / "a"), progress=False, write_artifacts=False)
    second = train(config, None, progress=False)
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
    trainer = BlockTrainer(make_task(config))
    for b in range(config.model.num_blocks):
        restored, _ = checkpoint.restore_block(str(tmp_path / "a"), b, trainer.abstract_state)
        jax.tree.map(np.testing.assert_array_equal, restored.ema, first.params[b])
        assert checkpoint.latest_step(str(tmp_path / "a"), b) == first.block_steps[b]


def nan_batches(config, bad_block, bad_index):
    images, labels = data.load_split("shapes", "train", config.data.image_size)

    def batches(block):
        clean = data.Batches(images, labels, config.data.batch_size, seed=block)
        for index, batch in enumerate(clean):
            if block == bad_block and index == bad_index:
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
            yield batch

    return batches


def test_nan_loss_stops_training_naming_block_and_step_and_keeps_saved_blocks(tmp_path):
    config = tiny_config(num_blocks=2, steps=6, schedule="sequential", log_every=100)
    with pytest.raises(NonFiniteLossError, match=r"loss \(nan\) in block 1 at its step 4 \(global step 10\)"):
        train(config, str(tmp_path), batches=nan_batches(config, 1, 3), progress=False)
    assert checkpoint.latest_step(str(tmp_path), 0) == 6
    assert checkpoint.latest_step(str(tmp_path), 1) is None
    restored, record = checkpoint.restore_block(str(tmp_path), 0, BlockTrainer(make_task(config)).abstract_state)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))


def test_nan_loss_stops_interleaved_training_before_any_save(tmp_path):
    config = tiny_config(num_blocks=2, steps=6, schedule="interleaved", log_every=3)
    global_step = int(np.flatnonzero(block_plan(2, 6, "interleaved", seed=0) == 0)[2]) + 1  # block 0's third step
    with pytest.raises(NonFiniteLossError, match=rf"block 0 at its step 3 \(global step {global_step}\)"):
        train(config, str(tmp_path), batches=nan_batches(config, 0, 2), progress=False)
    assert checkpoint.latest_step(str(tmp_path), 0) is None and checkpoint.latest_step(str(tmp_path), 1) is None


def test_non_finite_gradient_with_finite_loss_is_reported_and_not_applied():
    """A gradient can be infinite while the loss is finite: sqrt at 0 has a finite value and an
    infinite derivative. The guard must look at the gradient norm, not only at the loss."""
    import jax.numpy as jnp

    from dblocks_jax.engine import loop
    from dblocks_jax.tasks.image_generation import ImageGeneration

    class SqrtLoss(ImageGeneration):
        def loss(self, params, batch, draw, block):
            base = super().loss(params, batch, draw, block)
            return base + jnp.sqrt(jnp.abs(params["final_linear"]["bias"][...][0]))  # the zero-initialised bias

    task = SqrtLoss(tiny_config(schedule="sequential"))  # block 0 takes the first step
    trainer = BlockTrainer(task)
    images, labels = data.load_split("shapes", "train", 8)
    batch = {"image": images[:16], "label": labels[:16]}
    state = trainer.init_state(0)
    before = host(state)
    new, (loss, grad_norm) = trainer.train_step(state, batch, 0, 0)
    assert np.isfinite(loss) and not np.isfinite(grad_norm), (loss, grad_norm)
    jax.tree.map(np.testing.assert_array_equal, host(new), before)  # the whole update was skipped
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm \(inf, loss [0-9.]+\) in block 0 at its "
                                                  r"step 1"):
        loop.train(task, progress=False)


def test_existing_run_is_not_overwritten_by_accident(tmp_path):
    config = tiny_config(steps=1)
    train(config, str(tmp_path), progress=False, write_artifacts=False)
    before = os.listdir(tmp_path / "checkpoints")
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(config, str(tmp_path), progress=False)
    assert os.listdir(tmp_path / "checkpoints") == before


def test_corrupt_checkpoint_error_names_the_file(tmp_path):
    config = tiny_config(steps=1)
    train(config, str(tmp_path), progress=False, write_artifacts=False)
    step_dir = os.path.join(checkpoint.block_dir(str(tmp_path), 1), "1")
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(ValueError, match="block_001"):
        checkpoint.restore_block(str(tmp_path), 1, BlockTrainer(make_task(config)).abstract_state)


def test_ema_tracks_the_parameters_with_warmed_up_decay():
    trainer = BlockTrainer(tiny_task(ema_decay=0.9))
    images, labels = data.load_split("shapes", "train", 8)
    batch = {"image": images[:16], "label": labels[:16]}
    state = trainer.init_state(0)
    ema0 = host(state.ema)
    new, _ = trainer.train_step(state, batch, 0, 5)
    decay = min(0.9, 6 / 15)
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema0, host(new.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), host(new.ema), expected)
    no_ema = BlockTrainer(tiny_task(ema_decay=0.0))
    new, _ = no_ema.train_step(no_ema.init_state(0), batch, 0, 5)
    jax.tree.map(np.testing.assert_array_equal, host(new.ema), host(new.params))


def test_uneven_layer_split_trains_and_samples():
    config = tiny_config(num_layers=3, num_blocks=2, layer_split="1,2", steps=2, schedule="sequential")
    result = train(config, progress=False)
    assert result.block_steps == [2, 2] and all(np.isfinite(result.final_loss))
    images = make_task(config).generate(result.params, num_samples=3)
    assert images.shape == (3, 8, 8, 1) and np.isfinite(np.asarray(images)).all()
