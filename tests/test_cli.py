import json
import os

import numpy as np
import pytest

from dblocks_jax import cli, training

TINY = ["--set", "image_size=8", "--set", "width=32", "--set", "num_heads=2", "--set", "num_layers=2",
        "--set", "batch_size=8", "--set", "num_samples=4", "--set", "sample_steps=3", "--set", "log_every=1"]


def test_train_then_sample_writes_a_complete_run(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert cli.main(["train", "--config", "shapes", "--num-blocks", "2", "--steps", "2", "--workdir", workdir,
                     "--no-progress", *TINY]) == 0
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "metrics.jsonl", "run.json", "samples.png"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["block_000", "block_001"]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["num_blocks"] == 2 and config["width"] == 32
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
    assert "differing fields (saved -> now): steps: 2 -> 3" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--set", "overlap=0.7"], "overlap=0.7; allowed: a number in [0, 0.5)"),
    (["--num-blocks", "3"], "num_layers=8; allowed: a multiple of num_blocks=3"),
    (["--set", "batch_size=0"], "batch_size=0; allowed: an integer >= 1"),
    (["--config", "nope"], "unknown config preset 'nope'"),
    (["--set", "colour=red"], "unknown config field(s) colour"),
])
def test_bad_train_arguments_fail_before_anything_compiles(args, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(training, "BlockTrainer", lambda *a, **k: pytest.fail("compiled despite a bad config"))
    assert cli.main(["train", "--workdir", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_sample_errors_are_clear(tmp_path, capsys):
    assert cli.main(["sample", "--workdir", str(tmp_path), "--out", "x.png"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert cli.main(["sample", "--workdir", str(tmp_path), "--out", "x.jpg"]) == 2
    assert ".png or .npz" in capsys.readouterr().err


def test_module_entry_point_runs_and_reports_bad_config():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dblocks_jax", "train", "--set", "num_blocks=0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "num_blocks=0; allowed: an integer >= 1" in proc.stderr
