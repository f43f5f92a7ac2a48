"""`dblocks plot`: curves per block from metrics.jsonl, seeds of one configuration as a mean +/- std
band, one panel per configuration; no training needed (the run directories are written here)."""

import json
import os

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from dblocks_jax import cli
from dblocks_jax.commands import plot
from dblocks_jax.evaluation import curves


def make_run(path, config, losses: dict[int, list[float]]) -> str:
    """A run directory with `config` and one metrics record per (block, logged block step)."""
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json())
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for b, values in losses.items():
            for k, loss in enumerate(values):
                f.write(json.dumps({"step": 2 * k + b, "block": b, "block_step": 10 * (k + 1), "loss": loss,
                                    "grad_norm": 1.0, "lr": 1e-3, "elapsed_s": float(k)}) + "\n")
    return str(path)


@pytest.fixture
def three_runs(tmp_path):
    """B = 2 at seeds 0 and 1 (seed 1 logged one step fewer for block 1), and B = 4 at seed 0."""
    b2 = tiny_config(num_blocks=2)
    seed0 = make_run(tmp_path / "b2s0", b2, {0: [3.0, 2.0, 1.0], 1: [4.0, 3.0, 2.0]})
    seed1 = make_run(tmp_path / "b2s1", b2.override({"run.seed": 1}), {0: [3.2, 2.4, 1.4], 1: [4.4, 3.2]})
    b4 = make_run(tmp_path / "b4", tiny_config(num_blocks=4), {b: [5.0 - b, 4.0 - b] for b in range(4)})
    return seed0, seed1, b4


def test_seeds_of_one_config_form_one_band_and_configs_their_own_panels(three_runs, tmp_path, capsys):
    seed0, seed1, b4 = three_runs
    trainings = {w: plot.training_of(w)[0] for w in three_runs}
    groups = curves.group_runs(trainings)
    assert groups == {"model.num_blocks=2": [seed0, seed1], "model.num_blocks=4": [b4]}
    records = {w: curves.read_metrics(w)[0] for w in three_runs}
    by_group = curves.group_curves(records, groups, "loss")
    steps, values = by_group["model.num_blocks=2"][1]
    assert steps.tolist() == [10, 20] and values.tolist() == [[4.0, 3.0], [4.4, 3.2]]  # the steps both logged
    mean, std = curves.band(values)
    np.testing.assert_allclose(mean, [4.2, 3.1])
    np.testing.assert_allclose(std, [np.std([4.0, 4.4], ddof=1), np.std([3.0, 3.2], ddof=1)])
    assert sorted(by_group["model.num_blocks=4"]) == [0, 1, 2, 3]

    out = tmp_path / "curves.png"
    assert cli.main(["plot", seed0, seed1, b4, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.num_blocks=2: 2 seed(s)" in printed and "model.num_blocks=4: 1 seed(s)" in printed
    assert f"block 0: loss at block step 30: {np.mean([1.0, 1.4]):.4f} +/- {np.std([1.0, 1.4], ddof=1):.4f}" in printed
    assert "block 3: loss at block step 20: 1.0000 (one seed: no spread)" in printed
    width, height = Image.open(out).size
    assert width > 2 * height  # two panels side by side


def test_what_does_not_change_the_training_does_not_split_seeds(tmp_path, capsys):
    """Logging, sampling and sharding settings differ between seeds (a resume may change them); a
    directory given twice is one run; a run trained in parts (`--blocks`) is one seed; a last record
    cut short is skipped with a note; a block one seed has not logged yet is said."""
    base = tiny_config(num_blocks=2)
    a = make_run(tmp_path / "a", base, {0: [3.0, 2.0], 1: [4.0, 3.0]})
    b = make_run(tmp_path / "b", base.override({"run.seed": 1, "run.log_every": 5, "sampling.steps": 8}),
                 {0: [3.4, 2.4]})  # block 1 not logged yet
    c0 = make_run(tmp_path / "c0", base.override({"run.seed": 2}), {0: [2.6, 1.6]})
    c1 = make_run(tmp_path / "c1", base.override({"run.seed": 2}), {1: [4.2, 3.4]})
    with open(os.path.join(a, "metrics.jsonl"), "a") as f:
        f.write('{"step": 9, "block": 0, "blo')
    assert cli.main(["plot", a, b, c0, c1, str(tmp_path / "a") + "/", "--out", str(tmp_path / "c.png")]) == 0
    captured = capsys.readouterr()
    assert "metrics.jsonl, line 5: skipped a last record cut short" in captured.err
    assert f"a: 3 seed(s) ({a}, {b}, {c0} + {c1})" in captured.out
    assert f"block 0: loss at block step 20: {np.mean([2.0, 2.4, 1.6]):.4f} +/- " in captured.out
    assert "block 1: loss at block step 20: 3.2000 +/- " in captured.out and "(logged by 2 of 3 seeds)" in captured.out
    # The same seed logging the same block twice is refused: it is no second seed.
    d = make_run(tmp_path / "d", base, {0: [1.0]})
    assert cli.main(["plot", a, d, "--out", str(tmp_path / "d.png")]) == 2
    refusal = f"{a} and {d} are runs of the same configuration and seed that both logged block 0"
    assert refusal in capsys.readouterr().err


def test_one_run_is_labelled_by_its_directory_and_any_logged_metric_plots(three_runs, tmp_path, capsys):
    seed0, _, _ = three_runs
    assert curves.group_runs({seed0: plot.training_of(seed0)[0]}) == {"b2s0": [seed0]}
    assert cli.main(["plot", seed0, "--metric", "grad_norm", "--out", str(tmp_path / "g.svg")]) == 0
    assert "block 1: grad_norm at block step 30: 1.0000" in capsys.readouterr().out
    assert "<svg" in (tmp_path / "g.svg").read_text()


def test_plot_refuses_what_it_cannot_draw_naming_it(three_runs, tmp_path, capsys):
    seed0, _, _ = three_runs
    out = str(tmp_path / "c.png")
    cases = [
        (["--metric", "accuracy", "--out", out], "--metric accuracy: " + seed0 + " does not log it; allowed: "
                                                 "elapsed_s, grad_norm, loss, lr"),
        (["--out", str(tmp_path / "c.jpg")], "--out must end in .png, .pdf, .svg"),
    ]
    for argv, message in cases:
        assert cli.main(["plot", seed0, *argv]) == 2
        assert message in capsys.readouterr().err
    os.remove(os.path.join(seed0, "metrics.jsonl"))
    assert cli.main(["plot", seed0, "--out", out]) == 2
    assert f"{seed0}/metrics.jsonl not found" in capsys.readouterr().err
    open(out, "w").close()
    assert cli.main(["plot", seed0, "--out", out]) == 2
    assert "pass --overwrite to replace" in capsys.readouterr().err
