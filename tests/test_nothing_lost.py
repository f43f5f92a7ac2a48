"""Nothing lost, round 2: an overwritten run never keeps parts of the old one, one output rule for
every file a command writes, checks before work, honest evaluation of partial or changed runs, and
clear errors for the text sources (Ctrl-C is in test_interrupts.py, EDM's churn in
test_sampling.py)."""

import json
import os
import zipfile

import numpy as np
import pytest
from conftest import tiny_config

from dblocks_jax import cli, runs
from dblocks_jax.data import text
from dblocks_jax.engine import checkpoint
from dblocks_jax.evaluation.stats import describe, summary

TINY = ["--set", "data.image_size=8", "--set", "model.width=32", "--set", "model.num_heads=2",
        "--set", "model.num_layers=2", "--set", "model.num_blocks=2", "--set", "data.batch_size=8",
        "--set", "sampling.num_samples=4", "--set", "sampling.steps=2", "--no-progress"]


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A finished tiny image run (2 blocks, 4 steps each), checkpoints every 2 run steps, 4 kept."""
    workdir = str(tmp_path_factory.mktemp("shapes") / "run")
    assert cli.main(["train", "--steps", "4", "--workdir", workdir, "--set", "run.checkpoint_every=2",
                     "--set", "run.keep_checkpoints=4", *TINY]) == 0
    return workdir


def test_an_overwritten_run_keeps_nothing_of_the_old_one_even_when_the_new_one_fails(shapes_run, tmp_path):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(shapes_run, workdir)
    with open(os.path.join(workdir, "evaluation.json"), "w") as f:
        f.write("{}")  # a result of the old run
    before = set(os.listdir(workdir))
    assert {"samples.png", "evaluation.json", "checkpoints", "metrics.jsonl"} <= before

    def stop(t, block, resident):
        raise Stop

    with pytest.raises(Stop):
        runs.train(tiny_config(num_blocks=2, num_layers=2, steps=3), workdir, overwrite=True, progress=False,
                   on_step=stop)
    left = set(os.listdir(workdir))
    assert "samples.png" not in left and "evaluation.json" not in left  # the old run's results went with it
    assert not os.listdir(os.path.join(workdir, "checkpoints")) if "checkpoints" in left else True
    assert json.load(open(os.path.join(workdir, "config.json")))["optim"]["steps"] == 3  # the new run's


def test_one_output_rule_for_every_file_a_command_writes(shapes_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    out.write_bytes(b"mine")
    assert cli.main(["sample", "--workdir", shapes_run, "--out", str(out)]) == 2
    assert f"{out} exist(s); pass --overwrite to replace, or choose another --out" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert cli.main(["sample", "--workdir", shapes_run, "--out", str(out), "--overwrite", "--num-samples", "2"]) == 0
    with np.load(out) as f:
        assert f["images"].shape[0] == 2
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []  # written under another name, then renamed

    report = tmp_path / "e.json"
    report.write_text("{}")
    assert cli.main(["evaluate", "--workdir", shapes_run, "--json", str(report)]) == 2
    assert f"{report} exist(s); pass --overwrite" in capsys.readouterr().err and report.read_text() == "{}"
    stem = tmp_path / "bench"
    (tmp_path / "bench.md").write_text("mine")
    assert cli.main(["bench", "--json", f"{stem}.json", "--time-steps", "0"]) == 2
    assert "bench.md exist(s); pass --overwrite" in capsys.readouterr().err


def test_a_failed_sample_leaves_no_file_under_the_name(shapes_run, tmp_path, monkeypatch, capsys):
    from dblocks_jax.tasks.image_generation import ImageGeneration

    def half_then_fail(cls, request):
        with open(request.output, "wb") as f:
            f.write(b"half an image")
        raise OSError("disk full")

    monkeypatch.setattr(ImageGeneration, "write_samples", classmethod(half_then_fail))
    assert cli.main(["sample", "--workdir", shapes_run, "--out", str(tmp_path / "s.png")]) == 2
    assert "disk full" in capsys.readouterr().err and os.listdir(tmp_path) == []


def test_a_run_whose_blocks_stopped_early_is_said_to_be_partial(shapes_run, tmp_path, capsys):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(shapes_run, workdir)
    newest = checkpoint.latest_step(workdir, 1)
    shutil.rmtree(checkpoint.step_dir(workdir, 1, newest))  # as if stopped before block 1's last save
    earlier = checkpoint.latest_step(workdir, 1)
    assert earlier < newest == 4
    assert cli.main(["sample", "--workdir", workdir, "--out", str(tmp_path / "s.png")]) == 0
    err = capsys.readouterr().err
    assert f"warning: 1 of 2 block(s) stopped before optim.steps=4 (block 1 at step {earlier})" in err
    assert runs.partial_blocks(workdir, runs.read_run_config(workdir)) == {1: earlier}
    assert runs.partial_blocks(shapes_run, runs.read_run_config(shapes_run)) == {}


def test_evaluation_refuses_repeated_seeds_and_says_one_seed_has_no_spread(capsys):
    assert cli.main(["evaluate", "--workdir", "nowhere", "--seeds", "0,0"]) == 2
    assert "--seeds 0,0 repeats 0" in capsys.readouterr().err
    assert describe(summary([0.5])) == "0.5000 (one seed: no spread)"
    assert describe(summary([0.5, 0.7]), 2) == "0.60 +/- 0.14"


def test_a_text_changed_since_training_is_refused_where_the_run_is_used(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog " * 40)
    workdir = str(tmp_path / "run")
    args = ["train", "--config", "pydoc_md4", "--steps", "2", "--workdir", workdir, "--no-progress",
            "--set", f"data.dataset=textfile:{corpus}", "--set", "text.seq_len=16", "--set", "model.width=16",
            "--set", "model.num_heads=2", "--set", "model.num_layers=3", "--set", "data.batch_size=4",
            "--set", "sampling.num_samples=2", "--set", "sampling.steps=4", "--set", "text.eval_sequences=4"]
    assert cli.main(args) == 0
    capsys.readouterr()
    corpus.write_text("a different text altogether, " * 60)
    assert cli.main(["sample", "--workdir", workdir, "--out", str(tmp_path / "s.txt")]) == 2
    err = capsys.readouterr().err
    assert f"{workdir} was trained on other data than textfile:{corpus} holds now" in err and "sha256" in err
    assert cli.main(["evaluate", "--workdir", workdir, "--untrained", "--seeds", "0"]) == 0  # fresh blocks: no claim

    # Halves of the run assembled: the assembled run keeps their fingerprint and is checked alike; halves
    # trained on different texts are refused.
    import shutil

    halves = [str(tmp_path / f"half{b}") for b in range(2)]
    for half, drop in zip(halves, ([1, 2], [0])):  # B = 3: blocks 0 | 1, 2
        shutil.copytree(workdir, half)
        for b in drop:
            shutil.rmtree(os.path.join(half, "checkpoints", f"block_{b:03d}"))
    assembled = str(tmp_path / "assembled")
    assert cli.main(["assemble", "--workdir", halves[0], "--workdir", halves[1], "--out", assembled]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", assembled, "--out", str(tmp_path / "s.txt")]) == 2
    assert "was trained on other data than" in capsys.readouterr().err
    record = json.load(open(os.path.join(halves[1], "run.json")))
    record["data"]["train_sha256"] = "0" * 64
    json.dump(record, open(os.path.join(halves[1], "run.json"), "w"))
    assert cli.main(["assemble", "--workdir", halves[0], "--workdir", halves[1], "--out", str(tmp_path / "mix")]) == 2
    assert "they trained on different data" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "mix")


def test_overwrite_never_empties_a_directory_that_is_not_a_run(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "config.json").write_text('{"learning_rate": 0.1}')  # another program's config
    assert cli.main(["train", "--workdir", str(project), "--overwrite", "--steps", "1", *TINY]) == 2
    assert "no config.json or run.json of a dblocks run" in capsys.readouterr().err
    assert sorted(os.listdir(project)) == ["config.json", "src"] and (project / "src" / "main.py").exists()


def test_text_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="is a directory; give a text file"):
        text.read_text(f"textfile:{tmp_path}")
    archive = tmp_path / "text8.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("notes.txt", "hello world " * 100)
    with pytest.raises(ValueError, match="the zip holds 'notes.txt', not text8"):
        text.read_text(f"text8:{archive}")
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("text8", "hello world " * 100)
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(ValueError, match="starts like a zip archive but cannot be read as one"):
        text.read_text(f"textfile:{truncated}")


def test_no_message_or_comment_cites_a_document_that_does_not_ship():
    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dblocks_jax")
    cited = [os.path.join(d, f) for d, _, fs in os.walk(package) for f in fs
             if f.endswith(".py") and "DESIGN" in open(os.path.join(d, f)).read()]
    assert cited == []


def test_an_interrupted_assemble_says_its_output_may_be_incomplete(tmp_path):
    import argparse

    from dblocks_jax.commands.train import interrupted_message

    out = tmp_path / "assembled"
    args = argparse.Namespace(command="assemble", out=str(out))
    assert interrupted_message(KeyboardInterrupt(), [], args) == "interrupted; nothing was written"
    out.mkdir()
    assert interrupted_message(KeyboardInterrupt(), [], args) == (
        f"interrupted; --out {out} may be incomplete: assemble again with --overwrite")
