"""Checkpoints and faults: a run killed with SIGKILL and resumed ends bitwise equal to an
uninterrupted one (every schedule); a corrupted checkpoint is named and skipped; a different
config is refused with the differing fields; a full disk fails the save and keeps the previous
checkpoint; blocks trained in separate runs assemble into one sampler."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import child_xla_flags, paths, tiny_config

from dblocks_jax import cli, make_task, train
from dblocks_jax.engine import checkpoint
from dblocks_jax.engine.rundir import restore_run
from dblocks_jax.engine.trainer import BlockTrainer

# Runs `train` in a child process that kills itself with SIGKILL after a given step, or that runs
# out of file size (RLIMIT_FSIZE, what a full disk looks like to the writer) once a checkpoint exists.
CHILD = """
import json, os, resource, signal, sys, time
config_json, workdir, mode, at = sys.argv[1:5]
from dblocks_jax.config import Config
from dblocks_jax import train
config = Config.from_dict(json.loads(config_json))

def on_step(t, block, resident):
    if t + 1 != int(at):
        return
    # Saves are asynchronous: wait until every block has a committed checkpoint, so that there is
    # something to resume from (kill) or to keep intact (full disk).
    blocks = [os.path.join(workdir, "checkpoints", f"block_{b:03d}") for b in range(config.model.num_blocks)]
    while not all(os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d)) for d in blocks):
        time.sleep(0.05)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))

try:
    train(config, workdir, progress=False, write_artifacts=False, on_step=on_step)
except Exception as err:
    print("FAILED:", type(err).__name__, err, flush=True)
    sys.exit(3)
"""


def run_child(config, workdir, mode: str, at: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=child_xla_flags(2))
    return subprocess.run([sys.executable, "-c", CHILD, config.to_json(), str(workdir), mode, str(at)], env=env,
                          capture_output=True, text=True, timeout=300)


def final_states(config, workdir):
    trainer = BlockTrainer(make_task(config))
    return [checkpoint.restore_block(str(workdir), b, trainer.abstract_state)[0]
            for b in range(config.model.num_blocks)]


def assert_bitwise_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("schedule,kill_at", [("interleaved", 10), ("sequential", 10), ("parallel", 5)])
def test_run_killed_mid_way_and_resumed_equals_uninterrupted_run(tmp_path, capsys, schedule, kill_at):
    config = tiny_config(num_blocks=2, steps=8, checkpoint_every=3, log_every=2, schedule=schedule,
                         block_shards=2 if schedule == "parallel" else 0)
    killed = run_child(config, tmp_path / "killed", "kill", kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    last_blocks = [checkpoint.latest_step(str(tmp_path / "killed"), b) for b in range(2)]
    assert last_blocks != [8, 8]  # really cut short

    capsys.readouterr()
    resumed = train(config, str(tmp_path / "killed"), resume=True, progress=False, write_artifacts=False)
    assert "continuing" in capsys.readouterr().out  # it resumed, it did not start again
    reference = train(config, str(tmp_path / "reference"), progress=False, write_artifacts=False)
    assert resumed.block_steps == reference.block_steps == [8, 8]
    assert_bitwise_equal(final_states(config, tmp_path / "killed"), final_states(config, tmp_path / "reference"))
    records = [json.loads(line) for line in open(tmp_path / "killed" / "metrics.jsonl")]
    logged = [(r["step"], r["block"]) for r in records]
    assert logged == sorted(logged) and len(logged) == len(set(logged))  # nothing logged twice after the resume


def test_corrupted_checkpoint_is_named_and_resume_falls_back(tmp_path, capsys):
    config = tiny_config(num_blocks=2, steps=6, checkpoint_every=2, keep_checkpoints=3, schedule="interleaved")
    workdir = str(tmp_path / "run")
    killed = run_child(config, workdir, "kill", 9)
    assert killed.returncode == -9
    newest = checkpoint.latest_step(workdir, 1)
    truncate_arrays(workdir, 1, newest)
    with pytest.raises(checkpoint.CorruptCheckpointError, match=f"block_001/{newest}"):
        checkpoint.restore_block(workdir, 1, BlockTrainer(make_task(config)).abstract_state, newest)

    # A changed checkpoint cadence does not matter: resume points come from the checkpoints' records.
    capsys.readouterr()
    train(config.override({"run.checkpoint_every": 5}), workdir, resume=True, progress=False, write_artifacts=False)
    out = capsys.readouterr().out
    assert "falling back to an earlier checkpoint" in out and "continuing" in out
    reference = str(tmp_path / "reference")
    train(config, reference, progress=False, write_artifacts=False)
    assert_bitwise_equal(final_states(config, workdir), final_states(config, reference))

    # A corrupted *final* checkpoint: the resume falls back, retrains, and replaces it; the bad one
    # is moved aside, not deleted.
    truncate_arrays(workdir, 0, 6)
    train(config, workdir, resume=True, progress=False, write_artifacts=False)
    assert_bitwise_equal(final_states(config, workdir), final_states(config, reference))
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "discarded", "block_000", "6"))


def truncate_arrays(workdir, block, step):
    for root, _, files in os.walk(os.path.join(checkpoint.step_dir(workdir, block, step), "state")):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(f.name) // 2))


def test_checksum_catches_arrays_that_do_not_match_their_record(tmp_path):
    config = tiny_config(num_blocks=1, num_layers=2, steps=2)
    train(config, str(tmp_path), progress=False, write_artifacts=False)
    record_path = os.path.join(checkpoint.step_dir(str(tmp_path), 0, 2), "record", "metadata")
    record = json.load(open(record_path))
    json.dump(dict(record, checksum="00000000"), open(record_path, "w"))
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"block_000/2 is corrupted"):
        checkpoint.restore_block(str(tmp_path), 0, BlockTrainer(make_task(config)).abstract_state)


def test_resume_with_a_different_config_lists_the_differing_fields(tmp_path):
    config = tiny_config(num_blocks=2, steps=2)
    train(config, str(tmp_path), progress=False, write_artifacts=False)
    changed = config.override(paths(learning_rate=1e-3, overlap=0.1, sample_steps=8))  # sampling may change
    with pytest.raises(ValueError, match=r"saved -> now\): partition.overlap: 0\.05 -> 0\.1; "
                                         r"optim.learning_rate: 0\.002 -> 0\.001$"):
        train(changed, str(tmp_path), resume=True, progress=False)
    fresh = tmp_path / "new" / "run"  # --resume on a directory without a run starts one
    train(config.override({"optim.steps": 1}), str(fresh), resume=True, progress=False, write_artifacts=False)
    assert (fresh / "config.json").exists() and checkpoint.latest_step(str(fresh), 1) == 1


def test_full_disk_during_save_raises_and_keeps_the_previous_checkpoint(tmp_path):
    config = tiny_config(num_blocks=1, num_layers=2, steps=6, checkpoint_every=2, log_every=1)
    failed = run_child(config, tmp_path, "full_disk", 3)
    assert failed.returncode == 3, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert "CheckpointSaveError" in failed.stdout and "block_000/4" in failed.stdout
    assert "earlier checkpoints" in failed.stdout and "are intact" in failed.stdout
    assert checkpoint.all_steps(str(tmp_path), 0) == [2]
    state, record = checkpoint.restore_block(str(tmp_path), 0, BlockTrainer(make_task(config)).abstract_state)
    assert record["block_step"] == 2
    # With space again, the run resumes from that checkpoint and finishes.
    result = train(config, str(tmp_path), resume=True, progress=False, write_artifacts=False)
    assert result.block_steps == [6] and checkpoint.latest_step(str(tmp_path), 0) == 6


def test_blocks_trained_in_separate_runs_assemble_into_one_sampler(tmp_path, capsys):
    config = tiny_config(num_blocks=2, steps=2, schedule="sequential")
    a, b, out = (str(tmp_path / n) for n in ("a", "b", "assembled"))
    train(config, a, blocks=[0], progress=False)
    train(config, b, blocks=[1], progress=False)
    assert not os.path.exists(os.path.join(a, "samples.png"))  # half a model: nothing to sample yet
    whole = train(config, None, progress=False)
    trainer = BlockTrainer(make_task(config))
    params, steps = restore_run([a, b], trainer)
    assert steps == [2, 2]
    assert_bitwise_equal(params, whole.params)  # a block's training does not depend on the others

    assert cli.main(["assemble", "--workdir", a, "--workdir", b, "--out", out]) == 0
    assert_bitwise_equal(restore_run(out, trainer)[0], whole.params)
    assert cli.main(["sample", "--workdir", a, "--workdir", b, "--out", str(tmp_path / "s.png")]) == 0
    assert os.path.exists(tmp_path / "s.png")

    with pytest.raises(FileNotFoundError, match=r"block\(s\) \[1\]"):
        restore_run([a], trainer)
    other = str(tmp_path / "other")
    train(config.override({"partition.overlap": 0.1}), other, blocks=[1], progress=False)
    capsys.readouterr()
    assert cli.main(["assemble", "--workdir", a, "--workdir", other, "--out", str(tmp_path / "bad")]) == 2
    message = f"model-defining fields disagree: partition.overlap: 0.05 in {a} vs 0.1 in {other}"
    assert message in capsys.readouterr().err
