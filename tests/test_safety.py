"""Nothing lost, no tracebacks: the run-directory lock, a safe `assemble`, output paths checked
before any work, a clean Ctrl-C, broken config files named, one seed rule, batched sampling,
an up-front memory check, shapes checked on restore, effective settings written back on resume
and a warning for samples that diverged."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import child_xla_flags, tiny_config

from dblocks_jax import cli, train
from dblocks_jax.engine import checkpoint
from dblocks_jax.engine.lock import RunLock, RunLockedError

TINY = ["--set", "data.image_size=8", "--set", "model.width=32", "--set", "model.num_heads=2",
        "--set", "model.num_layers=2", "--set", "model.num_blocks=2", "--set", "data.batch_size=8",
        "--set", "sampling.num_samples=4",
        "--set", "sampling.steps=2", "--set", "run.log_every=1", "--no-progress"]


def cli_child(*args, timeout=300, **popen):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=child_xla_flags(1))
    return subprocess.Popen([sys.executable, "-m", "dblocks_jax", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


@pytest.fixture(scope="module")
def two_halves(tmp_path_factory):
    """Block 0 and block 1 of one model, trained in separate run directories."""
    root = tmp_path_factory.mktemp("halves")
    config = tiny_config(num_blocks=2, steps=2, schedule="sequential")
    a, b = str(root / "a"), str(root / "b")
    train(config, a, blocks=[0], progress=False)
    train(config, b, blocks=[1], progress=False)
    return config, a, b


def tree_listing(path):
    return sorted(os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_assemble_never_writes_into_one_of_its_inputs(two_halves, capsys, where):
    _, a, b = two_halves
    before = tree_listing(a)
    out = a if where == "same" else os.path.join(a, "assembled")
    assert cli.main(["assemble", "--workdir", a, "--workdir", b, "--out", out, "--overwrite"]) == 2
    assert "--out" in capsys.readouterr().err
    assert tree_listing(a) == before  # nothing touched


def test_a_second_writer_is_refused_at_once_naming_the_owner(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        os.makedirs(workdir)
        with open(os.path.join(workdir, ".lock"), "w") as f:
            json.dump({"pid": owner.pid, "host": socket.gethostname(), "command": "dblocks train", "since": "x"}, f)
        start = time.perf_counter()
        assert cli.main(["train", "--workdir", workdir, "--steps", "1", *TINY]) == 2
        assert time.perf_counter() - start < 30  # refused, not waiting
        err = capsys.readouterr().err
        assert f"is being written by process {owner.pid} on {socket.gethostname()} (dblocks train" in err
        assert not os.path.exists(os.path.join(workdir, "config.json"))  # nothing written
    finally:
        owner.kill()
        owner.wait()
    # The owner is gone: its lock is stale, taken over with a message, and the run proceeds.
    assert cli.main(["train", "--workdir", workdir, "--steps", "1", *TINY]) == 0
    assert f"taking over the lock of process {owner.pid}" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(workdir, ".lock"))  # released at the end


def test_the_lock_is_exclusive_between_processes(tmp_path):
    holder = RunLock(str(tmp_path)).acquire()
    try:
        child = subprocess.run([sys.executable, "-c", "import sys; from dblocks_jax.engine.lock import RunLock\n"
                                f"RunLock({str(tmp_path)!r}).acquire()"], capture_output=True, text=True, timeout=60)
        assert child.returncode != 0 and f"process {os.getpid()}" in child.stderr
        with pytest.raises(RunLockedError):  # and within one process, a second writer too
            RunLock(str(tmp_path)).acquire()
    finally:
        holder.release()
    assert not os.path.exists(tmp_path / ".lock")


def read_only_mount_works() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt && mount -o remount,ro /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not read_only_mount_works(),
                    reason="needs a private mount namespace (unshare -m) to make a directory read-only; as root "
                           "chmod does not stop writes")
def test_a_read_only_workdir_is_named_before_anything_compiles(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    script = (f"mount --bind {target} {target} && mount -o remount,bind,ro {target} && "
              f"exec {sys.executable} -m dblocks_jax train --workdir {target}/run --steps 1 " + " ".join(TINY))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=child_xla_flags(1))
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{target}/run" in proc.stderr and "not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_output_paths_are_checked_before_sampling(two_halves, capsys, monkeypatch, tmp_path):
    from dblocks_jax import runs

    monkeypatch.setattr(runs, "load_run", lambda *a, **k: pytest.fail("loaded the run before checking --out"))
    _, a, b = two_halves
    assert cli.main(["sample", "--workdir", a, "--workdir", b, "--out", "/missing/dir/a.png"]) == 2
    assert "--out /missing/dir/a.png: the directory /missing/dir does not exist" in capsys.readouterr().err
    assert cli.main(["evaluate", "--workdir", a, "--json", "/missing/e.json"]) == 2
    assert "--json /missing/e.json: the directory /missing does not exist" in capsys.readouterr().err
    assert cli.main(["evaluate", "--workdir", a, "--num-samples", "0"]) == 2
    assert "--num-samples 0; allowed: an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "sample"])
@pytest.mark.parametrize("seed,message", [("99999999999999999999999", "< 2**32"), ("-1", "an integer >= 0")])
def test_one_seed_rule_everywhere(two_halves, capsys, command, seed, message, tmp_path):
    _, a, b = two_halves
    args = (["train", "--workdir", str(tmp_path / "x"), *TINY] if command == "train"
            else ["sample", "--workdir", a, "--workdir", b, "--out", str(tmp_path / "s.png")])
    assert cli.main([*args, "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert f"--seed {seed}" in err and message in err


def test_broken_config_files_are_named(tmp_path, capsys):
    for content, what in (("[1, 2]", "expected a JSON object, got list"), ("{broken", "is not valid JSON")):
        run = tmp_path / what.split()[0]
        run.mkdir()
        (run / "config.json").write_text(content)
        assert cli.main(["sample", "--workdir", str(run), "--out", str(tmp_path / "s.png")]) == 2
        err = capsys.readouterr().err
        assert f"{run}/config.json" in err and what in err


def test_sampling_in_batches_gives_the_same_samples_for_any_batch_size(two_halves, tmp_path):
    _, a, b = two_halves
    outs = []
    for batch in ("3", "7"):
        out = str(tmp_path / f"b{batch}.npy")
        assert cli.main(["sample", "--workdir", a, "--workdir", b, "--num-samples", "7", "--batch-size", batch,
                         "--out", out]) == 0
        outs.append(np.load(out))
    assert outs[0].shape == (7, 8, 8, 1)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)  # each sample's noise is its own


def test_a_config_that_cannot_fit_in_memory_is_refused_with_the_figure(tmp_path, capsys, monkeypatch):
    from dblocks_jax.engine import trainer

    monkeypatch.setattr(trainer.BlockTrainer, "__init__", lambda *a, **k: pytest.fail("compiled despite no room"))
    assert cli.main(["train", "--workdir", str(tmp_path / "big"), "--set", "data.image_size=2048"]) == 2
    err = capsys.readouterr().err
    assert "GiB" in err and "data.image_size" in err and "Traceback" not in err


def test_checkpoint_shapes_are_checked_against_the_config(two_halves, tmp_path, capsys):
    config, a, _ = two_halves
    saved = json.load(open(os.path.join(a, "config.json")))
    saved["model"]["width"] = 16  # the checkpoints hold width 32
    bad = tmp_path / "bad"
    os.makedirs(bad)
    json.dump(saved, open(bad / "config.json", "w"))
    os.makedirs(bad / "checkpoints")
    subprocess.run(["cp", "-r", checkpoint.block_dir(a, 0), str(bad / "checkpoints")], check=True)
    from dblocks_jax import make_task
    from dblocks_jax.config import Config
    from dblocks_jax.engine.trainer import BlockTrainer

    trainer = BlockTrainer(make_task(Config.from_dict(saved)))
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match=r"block_000/2 does not fit this config: params/"
                                                                r"class_embed/embedding has shape \(4, 32\) in the "
                                                                r"checkpoint, \(4, 16\) in this config"):
        checkpoint.restore_block(str(bad), 0, trainer.abstract_state)


def test_resume_writes_the_effective_sampling_settings_back(tmp_path):
    config = tiny_config(num_blocks=2, steps=2)
    workdir = str(tmp_path / "run")
    train(config, workdir, progress=False, write_artifacts=False)
    train(config.override({"sampling.steps": 8}), workdir, resume=True, progress=False, write_artifacts=False)
    assert json.load(open(os.path.join(workdir, "config.json")))["sampling"]["steps"] == 8


def test_diverged_samples_are_flagged(capsys):
    from dblocks_jax.tasks.image_generation import check_samples

    check_samples(np.zeros((2, 4, 4, 1)))
    assert capsys.readouterr().err == ""
    check_samples(np.full((2, 4, 4, 1), 2.5e11))
    assert "far outside the data range [-1, 1]" in capsys.readouterr().err
    check_samples(np.array([np.nan, 0.0]))
    assert "non-finite" in capsys.readouterr().err


def test_ctrl_c_prints_one_line_with_the_resume_command_and_exits_130(tmp_path):
    workdir = str(tmp_path / "run")
    # A child of a shell's background job inherits SIGINT ignored: the child restores Python's own
    # handler first, as a terminal's Ctrl-C would find it. Steps enough that only the signal ends it.
    args = ["train", "--workdir", workdir, "--steps", "100000", "--set", "run.checkpoint_every=5", *TINY]
    restore = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               f"sys.argv = ['dblocks'] + {args!r}; runpy.run_module('dblocks_jax', run_name='__main__')")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=child_xla_flags(1))
    proc = subprocess.Popen([sys.executable, "-c", restore], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 240
        block_dir = os.path.join(workdir, "checkpoints", "block_000")
        while time.time() < deadline and not (os.path.isdir(block_dir)
                                              and any(n.isdigit() for n in os.listdir(block_dir))):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a run behind, whatever failed above
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted" in err and f"dblocks train --workdir {workdir}" in err and "--resume" in err
    assert "last committed checkpoint" in err


def test_a_resume_past_a_corrupted_checkpoint_prints_messages_not_library_tracebacks(tmp_path):
    workdir = str(tmp_path / "run")
    args = ["train", "--workdir", workdir, "--steps", "4", "--set", "run.checkpoint_every=2",
            "--set", "run.keep_checkpoints=3", *TINY]
    first = cli_child(*args)
    assert first.wait(timeout=300) == 0
    newest = checkpoint.latest_step(workdir, 1)
    for root, _, files in os.walk(os.path.join(checkpoint.step_dir(workdir, 1, newest), "state")):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(0, os.path.getsize(f.name) // 2))
    resumed = cli_child(*args, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "falling back to an earlier checkpoint" in out
    assert "Traceback" not in err and "Event loop is closed" not in err and "ERROR:absl" not in err, err[-3000:]


def test_a_workdir_that_is_a_file_and_a_bench_base_config_are_handled(tmp_path, capsys, monkeypatch):
    path = tmp_path / "file"
    path.write_text("not a directory")
    assert cli.main(["train", "--workdir", str(path), *TINY]) == 2
    assert f"--workdir {path} is a file, not a directory" in capsys.readouterr().err
    # bench sets each mode's B itself: the preset's B = 4 must not reject a --set that B = 1, 2 satisfy.
    from dblocks_jax.engine import bench

    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda config, settings: seen.append(
        [cfg.model.num_blocks for _, cfg in bench.plan_runs(config, settings)]) or [])
    monkeypatch.setattr(bench, "compile_step", lambda *a: pytest.fail("compiled"))
    assert cli.main(["bench", "--num-blocks", "1,2", "--modes", "db-sequential", "--set", "model.num_layers=2"]) == 0
    assert seen == [[1, 2]]


@pytest.mark.parametrize("argv", [["sample", "--workdir", "a", "--workdir", "b", "--out", "s.png"],
                                  ["bench"], ["list"], ["evaluate", "--workdir", "a"]])
def test_ctrl_c_outside_train_is_one_line_too(argv):
    args = cli._parser().parse_args(argv)
    assert cli.interrupted_message(KeyboardInterrupt(), argv, args) == "interrupted; nothing was written"


def test_the_memory_floor_counts_the_examples_each_device_holds():
    from dblocks_jax import make_task

    one = make_task(tiny_config(schedule="parallel", data_shards=1)).memory_floor()[0][0]
    four = make_task(tiny_config(schedule="parallel", data_shards=4)).memory_floor()[0][0]
    assert one == 4 * four > 0
