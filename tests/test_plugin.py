"""A task outside the package is a plug-in: tests/toy_task.py, registered only through the
`dblocks_jax.tasks` entry point of a distribution on sys.path (a `*.dist-info` folder with
`entry_points.txt`, nothing installed and nothing in dblocks_jax edited), is listed, trained,
resumed, evaluated, sampled, benched and assembled from the CLI; its own flags and config section
work, and the other tasks' are refused naming their owners."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_events import read_scalars

from dblocks_jax import cli
from dblocks_jax.tasks import registry

TESTS = os.path.dirname(os.path.abspath(__file__))


def write_distribution(root, entry_points: str = "toy_mixture = toy_task:ToyTask",
                       name: str = "dblocks_toy_plugin") -> str:
    """A distribution that registers tasks (by default the toy task): what `pip install` of a
    plug-in leaves."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dblocks_jax.tasks]\n{entry_points}\n")
    return str(root)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The toy task registered in this process for the module's tests, unregistered after."""
    where = write_distribution(tmp_path_factory.mktemp("site"))
    sys.path.insert(0, where)
    registry.refresh()
    try:
        yield tmp_path_factory.mktemp("runs")
    finally:
        sys.path.remove(where)
        registry.refresh()


def dblocks(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


TRAIN = ["train", "--config", "toy_mixture", "--no-progress"]


def test_a_fresh_interpreter_finds_the_plugin_through_its_entry_point(tmp_path):
    where = write_distribution(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([where, TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "dblocks_jax", "list", "--fields"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "toy_mixture (mlp): 2-D Gaussian-mixture denoising" in proc.stdout
    assert "\n  toy_mixture      2-D Gaussian-mixture denoising with MLP blocks" in proc.stdout
    assert "mixture (tasks: toy_mixture):\n  mixture.eval_samples: int = 512 [sampling]" in proc.stdout


@pytest.fixture(scope="module")
def toy_run(plugin):
    """The toy task trained once from the CLI: (its directory, what train printed)."""
    run, printed = plugin / "toy", io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main([*TRAIN, "--workdir", str(run)])
    assert status == 0
    return run, printed.getvalue()


def test_the_plugin_trains_resumes_evaluates_samples_from_the_cli(plugin, toy_run, capsys):
    run, out = toy_run
    assert out.startswith("toy_mixture: training 2 block(s)") and "mean distance of 256 samples" in out
    assert np.load(run / "samples.npy").shape == (256, 2)
    config = json.load(open(run / "config.json"))
    assert config["task"] == "toy_mixture" and config["mixture"] == {"eval_samples": 512}
    assert {k for k, v in config.items() if isinstance(v, dict)} == {
        "data", "model", "noise", "partition", "optim", "schedule", "sampling", "run", "mixture"}

    # --resume of the finished run: its own sampling field may change, a training field may not.
    status, out, err = dblocks(capsys, *TRAIN, "--workdir", run, "--resume", "--set", "mixture.eval_samples=64")
    assert status == 0 and "mean distance" in out, err
    assert json.load(open(run / "config.json"))["mixture"]["eval_samples"] == 64
    status, _, err = dblocks(capsys, *TRAIN, "--workdir", run, "--resume", "--set", "optim.learning_rate=0.5")
    assert status == 2 and "optim.learning_rate: 0.01 -> 0.5" in err

    status, out, err = dblocks(capsys, "evaluate", "--workdir", run, "--seeds", "0,1")
    assert status == 0, err
    result = json.load(open(run / "evaluation.json"))
    assert result["num_samples"] == 64 and len(result["distance"]) == 2  # mixture.eval_samples, as resumed
    assert result["partial_blocks"] == {}  # every block trained to optim.steps
    assert max(result["distance"]) < 0.3 and "mean distance to the nearest mode" in out  # it learned the modes
    status, out, err = dblocks(capsys, "evaluate", "--workdir", run, "--seeds", "0", "--untrained", "--num-samples",
                               "100")
    untrained = json.load(open(run / "evaluation_untrained.json"))
    assert status == 0 and untrained["num_samples"] == 100 and untrained["distance"][0] > 2 * max(result["distance"])
    # Both evaluations' numbers are in the run's TensorBoard events, at its last step (lists are left out).
    steps = json.load(open(run / "config.json"))["optim"]["steps"]
    scalars = read_scalars(str(run / "tensorboard"))
    assert scalars["eval/num_samples"] == {steps: 64} and scalars["eval_untrained/num_samples"] == {steps: 100}
    assert not any("distance" in tag for tag in scalars)

    status, out, err = dblocks(capsys, "sample", "--workdir", run, "--num-samples", "8", "--out", plugin / "p.npy")
    assert status == 0, err
    assert np.load(plugin / "p.npy").shape == (8, 2)


@pytest.mark.parametrize("argv,message", [
    (["sample", "--out", "{p}/x.png"], "--out must end in .npy for a toy_mixture run"),
    (["sample", "--out", "{p}/x.npy", "--prompt", "hi"],
     "--prompt: for autoregressive_lm, recurrent_lm runs; {p}/toy holds a run of task toy_mixture (sample takes "
     "--num-samples)"),
    (["evaluate", "--guidance", "2"], "--guidance: for image_generation runs; {p}/toy holds a run of task toy_mixture"),
    (["evaluate", "--set", "ar.bridge=hard"], "ar.bridge belongs to autoregressive_lm; this run is toy_mixture"),
    (["evaluate", "--set", "mixture.eval_samples=0", "--overwrite"],
     "mixture.eval_samples=0; allowed: an integer >= 1"),
    (["sample", "--out", "{p}/x.npy", "--num-samples", "0"], "--num-samples 0; allowed: an integer >= 1"),
])
def test_flags_and_fields_of_other_tasks_are_refused_naming_them(plugin, toy_run, capsys, argv, message):
    """Each refused before anything is loaded or compiled, with the owner of the flag or field named."""
    argv = [a.format(p=plugin) for a in argv]
    status, _, err = dblocks(capsys, argv[0], "--workdir", plugin / "toy", *argv[1:])
    assert status == 2 and message.format(p=plugin) in err, err


def test_the_plugin_benches_with_its_inference_and_assembles(plugin, capsys):
    records = plugin / "bench.json"
    status, out, err = dblocks(capsys, "bench", "--config", "toy_mixture", "--num-blocks", "2", "--modes",
                               "e2e,db-sequential", "--time-steps", "1", "--sample-steps", "4", "--json", records)
    assert status == 0, err
    by_mode = {r["mode"]: r for r in json.load(open(records))}
    assert by_mode["e2e"]["task"] == "toy_mixture" and by_mode["db-sequential"]["num_blocks"] == 2
    for r in by_mode.values():  # the task's own inference, timed: 4 Euler steps of 2-D points and the read-out
        assert r["inference"]["unit"] == "points" and r["inference"]["network_calls_per_unit"] == 5
        assert r["inference"]["time_s"] > 0
    halves = [plugin / "half0", plugin / "half1"]
    for b, half in enumerate(halves):
        status, out, err = dblocks(capsys, *TRAIN, "--workdir", half, "--blocks", str(b))
        assert status == 0 and "trained part of the model" in out, err
    status, out, err = dblocks(capsys, "assemble", "--workdir", halves[0], "--workdir", halves[1], "--out",
                               plugin / "whole")
    assert status == 0, err
    status, _, err = dblocks(capsys, "evaluate", "--workdir", plugin / "whole", "--seeds", "0")
    assert status == 0 and max(json.load(open(plugin / "whole" / "evaluation.json"))["distance"]) < 0.3, err


BAD_PLUGINS = [
    ("image_generation = toy_task:ToyTask", "two tasks are registered as 'image_generation'"),
    ("broken = no_such_module:Task", "task 'broken' (entry point broken = no_such_module:Task of dblocks-bad-plugin) "
                                     "failed to load: ModuleNotFoundError"),
    ("renamed = toy_task:ToyTask", "task 'renamed' (entry point renamed = toy_task:ToyTask of dblocks-bad-plugin) "
                                   "calls itself 'toy_mixture'"),
    ("nameless = toy_task:mixture_points", "is not a dblocks_jax.tasks.base.Task subclass"),
    ("no_family = bad_tasks:NoFamily", "declares no network family"),
    ("shell_flag = bad_tasks:ShellFlag", "task shell_flag declares --seed (key 'seed') for sample, which the shell's"),
    ("steps_float = bad_tasks:StepsFloat", "sample --steps: tasks image_generation and steps_float declare it with "
                                           "different types"),
    ("preset_clash = bad_tasks:PresetClash", "preset 'shapes' is declared by tasks image_generation and preset_clash"),
    ("text_clash = bad_tasks:TextClash", "declare different config sections named 'text'"),
    ("bad_field = bad_tasks:BadField", "a flag may set sampling-role fields only, not --lr -> optim.learning_rate"),
    ("same_key = bad_tasks:SameKey", "sample flags --n, --num-samples (tasks autoregressive_lm, image_generation, "
                                     "masked_lm, recurrent_lm, same_key"),  # (and toy_mixture, when registered)
    ("format_section = bad_tasks:FormatSection", "config section name 'format' is taken"),
]
BAD_TASKS = """
import dataclasses
from toy_task import ToyTask
from dblocks_jax.engine.settings import Section, setting, SAMPLING
from dblocks_jax.tasks.plugin import Flag, Preset

class NoFamily(ToyTask):
    name, family, presets = "no_family", "", ()

class ShellFlag(ToyTask):
    name, presets, flags = "shell_flag", (), (Flag("--seed", ("sample",), "a seed", int),)

class StepsFloat(ToyTask):
    name, presets, flags = "steps_float", (), (Flag("--steps", ("sample",), "steps", float),)

class PresetClash(ToyTask):
    name, presets = "preset_clash", (Preset("shapes", "mine", {"data.dataset": "mixture"}),)

@dataclasses.dataclass(frozen=True)
class OtherText(Section):
    _path = "text"
    seq_len: int = setting(8, SAMPLING)

class TextClash(ToyTask):
    name, presets, sections = "text_clash", (), (OtherText,)

class BadField(ToyTask):
    name, presets, flags = "bad_field", (), (Flag("--lr", ("evaluate",), "lr", float, field="optim.learning_rate"),)

class SameKey(ToyTask):
    name, presets, flags = "same_key", (), (Flag("--n", ("sample",), "n", int, dest="num_samples"),)

@dataclasses.dataclass(frozen=True)
class Format(Section):
    _path = "format"
    x: int = setting(1, SAMPLING)

class FormatSection(ToyTask):
    name, presets, sections = "format_section", (), (Format,)
"""


@pytest.mark.parametrize("entry_point,message", BAD_PLUGINS, ids=[e.split(" = ")[0] for e, _ in BAD_PLUGINS])
def test_a_faulty_plugin_is_named_and_stops_every_command_with_one_line(tmp_path, capsys, entry_point, message):
    """A plug-in that cannot load or declares what another task or the shell owns: every command
    fails with one line naming the plug-in and the fault (no traceback, nothing half-registered)."""
    where = write_distribution(tmp_path, entry_point, name="dblocks_bad_plugin")
    (tmp_path / "bad_tasks.py").write_text(BAD_TASKS)
    sys.path.insert(0, where)
    registry.refresh()
    try:
        status, _, err = dblocks(capsys, "list")
        again, _, _ = dblocks(capsys, "train", "--config", "shapes", "--steps", "1")
    finally:
        sys.path.remove(where)
        sys.modules.pop("bad_tasks", None)
        registry.refresh()
    assert status == again == 2 and message in err and "Traceback" not in err, err
