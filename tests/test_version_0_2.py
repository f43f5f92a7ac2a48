"""A run directory written by dblocks-jax 0.2 (tests/data/v0_2/ar_run: a tiny autoregressive run,
B = 2, 2 steps per block, trained by that version; its config.json holds every task's sections,
`model.family` and the generation settings under `ar`) is used like a run of this version:
sampled, evaluated and resumed, with a note on what its config dropped."""

import json
import os
import shutil

import pytest

from dblocks_jax import cli

RUN = os.path.join(os.path.dirname(__file__), "data", "v0_2", "ar_run")


@pytest.fixture
def run(tmp_path):
    shutil.copytree(RUN, tmp_path / "run")
    return tmp_path / "run"


def test_a_run_of_version_0_2_samples_evaluates_and_resumes(run, capsys):
    out = run / "c.txt"
    assert cli.main(["sample", "--workdir", str(run), "--prompt", "the ", "--num-samples", "2", "--out", str(out)]) == 0
    _, err = capsys.readouterr()
    assert f"note: {run}/config.json was written by dblocks-jax 0.2" in err
    assert ("moved ar.temperature -> generation.temperature, ar.top_p -> generation.top_p, ar.prompt_len -> "
            "generation.prompt_len, ar.gen_len -> generation.gen_len; dropped the sections classify, recurrent, "
            "which task autoregressive_lm never reads") in err
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("the |") and len(line) == len("the |") + 8 for line in lines)

    assert cli.main(["evaluate", "--workdir", str(run), "--seeds", "0"]) == 0
    result = json.load(open(run / "evaluation.json"))
    with open(run / "bpc.json") as f:  # written by 0.2 with run.seed's draws: the same blocks, the same score
        assert result["bpc"]["values"][0] == pytest.approx(json.load(f)["bpc"]["mean"], rel=1e-6)
    assert result["gen_len"] == 8 and result["prompt_len"] == 4  # 0.2's ar.gen_len, ar.prompt_len, moved

    argv = ["train", "--config", "pydoc_ar", "--workdir", str(run), "--resume", "--no-progress"]
    stored = json.load(open(run / "config.json"))
    trained = (("model.num_blocks", 2), ("model.num_layers", 2), ("model.width", 16), ("model.num_heads", 2),
               ("text.seq_len", 16), ("data.batch_size", 4), ("optim.steps", 2), ("run.log_every", 1),
               ("text.eval_sequences", 4), ("sampling.num_samples", 2), ("generation.gen_len", 8),
               ("generation.prompt_len", 4), ("ar.mc_draws", 2))
    same = [a for path, value in trained for a in ("--set", f"{path}={value}")]
    assert stored["format"] == 2 and cli.main([*argv, *same]) == 0  # finished: nothing to train
    rewritten = json.load(open(run / "config.json"))
    assert rewritten["format"] == 3 and "classify" not in rewritten and "family" not in rewritten["model"]
    assert rewritten["generation"]["gen_len"] == 8
    assert cli.main([*argv, *same[:-2], "--set", "ar.mc_draws=3", "--set", "optim.learning_rate=0.5"]) == 2
    assert "optim.learning_rate: 0.002 -> 0.5" in capsys.readouterr().err
