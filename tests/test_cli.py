import json
import os

import numpy as np
import pytest

from dblocks_jax import cli
from dblocks_jax.engine import trainer

TINY = ["--set", "data.image_size=8", "--set", "model.width=32", "--set", "model.num_heads=2",
        "--set", "model.num_layers=2", "--set", "data.batch_size=8", "--set", "sampling.num_samples=4",
        "--set", "sampling.steps=3", "--set", "run.log_every=1"]


def test_train_then_sample_writes_a_complete_run(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--config", "shapes", "--num-blocks", "2", "--steps", "2", "--workdir", workdir,
                     "--no-progress", *TINY]) == 0
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "metrics.jsonl", "run.json", "samples.png",
                                         "tensorboard"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["block_000", "block_001"]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["model"]["num_blocks"] == 2 and config["model"]["width"] == 32 and config["format"] == 3
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert {r["block"] for r in records} == {0, 1} and all(np.isfinite(r["loss"]) for r in records)

    out = str(tmp_path / "s.npz")
    assert cli.main(["sample", "--workdir", workdir, "--num-samples", "3", "--steps", "2", "--solver", "heun",
                     "--out", out]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (3, 8, 8, 1) and np.isfinite(f["images"]).all()
        assert f["labels"].tolist() == [0, 1, 2]
    assert cli.main(["sample", "--workdir", workdir, "--out", str(tmp_path / "g.png")]) == 0
    assert os.path.getsize(tmp_path / "g.png") > 0

    capsys.readouterr()
    assert cli.main(["train", "--config", "shapes", "--num-blocks", "2", "--steps", "3", "--workdir", workdir,
                     "--no-progress", "--resume", *TINY]) == 2
    assert "differing fields (saved -> now): optim.steps: 2 -> 3" in capsys.readouterr().err
    assert cli.main(["sample", "--workdir", workdir, "--set", "model.width=8", "--out", out]) == 2
    assert "sample may change sampling fields only; model.width defined the training" in capsys.readouterr().err
    stochastic = str(tmp_path / "st.npz")
    assert cli.main(["sample", "--workdir", workdir, "--num-samples", "3", "--steps", "2", "--solver",
                     "edm_stochastic", "--set", "sampling.s_churn=10", "--out", stochastic]) == 0
    with np.load(stochastic) as f:
        assert f["images"].shape == (3, 8, 8, 1) and np.isfinite(f["images"]).all()


@pytest.mark.parametrize("args,message", [
    (["--set", "partition.overlap=0.7"], "partition.overlap=0.7; allowed: a number in [0, 0.5)"),
    (["--num-blocks", "3"], "model.num_layers=8; allowed: a multiple of model.num_blocks=3"),
    (["--set", "data.batch_size=0"], "data.batch_size=0; allowed: an integer >= 1"),
    (["--config", "nope"], "unknown config preset 'nope'"),
    (["--set", "colour=red"], "unknown config field(s) colour"),
    (["--set", "overlap=0.1"], "unknown config field(s) overlap (now partition.overlap)"),
    (["--set", "optim.learning_rate=inf"], "optim.learning_rate must be a finite number"),
])
def test_bad_train_arguments_fail_before_anything_compiles(args, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(trainer.BlockTrainer, "__init__", lambda *a, **k: pytest.fail("compiled despite a bad config"))
    assert cli.main(["train", "--workdir", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_sample_errors_are_clear(tmp_path, capsys):
    assert cli.main(["sample", "--workdir", str(tmp_path), "--out", "x.png"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert cli.main(["sample", "--workdir", str(tmp_path), "--out", "x.jpg"]) == 2
    assert "--out must end in .png, .npz, .npy (image_generation) or .txt" in capsys.readouterr().err


def test_module_entry_point_runs_and_reports_bad_config():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dblocks_jax", "train", "--set", "model.num_blocks=0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "model.num_blocks=0; allowed: an integer >= 1" in proc.stderr


def test_list_prints_presets_by_task_and_every_field_with_its_role(capsys):
    assert cli.main(["list", "--fields"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("image_generation (dit): ") and "\n  shapes " in out and "cifar10_dit_s" in out
    assert "  model.width: int = 96 [assembly]" in out and "  sampling.steps: int = 50 [sampling]" in out
