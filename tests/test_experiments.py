"""The sweep engine behind experiments/*.py: runs, resumability, old records, aggregation, reports."""

import dataclasses
import glob
import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
if EXPERIMENTS_DIR not in sys.path:  # as when a script runs: `python experiments/blocks.py`
    sys.path.insert(0, EXPERIMENTS_DIR)

import sweep  # noqa: E402
import sweep_run  # noqa: E402

from dblocks_jax import data, make_task  # noqa: E402
from dblocks_jax.config import FLAT_NAMES  # noqa: E402
from dblocks_jax.engine import bench  # noqa: E402
from dblocks_jax.engine.solvers import evaluations_per_sample  # noqa: E402
from dblocks_jax.engine.trainer import BlockTrainer  # noqa: E402
from dblocks_jax.evaluation import image_quality  # noqa: E402

SCRIPTS = ("blocks", "partition", "overlap", "solvers", "schedules")
RESULTS = os.path.join(EXPERIMENTS_DIR, "results")


def _script(name):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", os.path.join(EXPERIMENTS_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy_points(scale):
    """Two points that share one trained model (sampler settings only), as the solver sweep does."""
    return [sweep.Point("euler_K2", {"solver": "euler", "evals": 3}, {"sampling.solver": "euler", "sampling.steps": 2}),
            sweep.Point("heun_K2", {"solver": "heun", "evals": 5}, {"sampling.solver": "heun", "sampling.steps": 2})]


TOY = sweep.Experiment(
    name="toy", description="test sweep", points=_toy_points,
    table_metrics=("frechet_distance", "conditional_accuracy", "train_memory_mib", "train_time_s"),
    plots=(sweep.Plot("quality.png", x="solver", metrics=("frechet_distance", "conditional_accuracy")),
           sweep.SampleGrids("samples.png", x="solver")),
)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny sweep (2 points x 2 seeds, 3 training steps), shared by the tests below."""
    root = tmp_path_factory.mktemp("sweep")
    old = os.environ.get("DBLOCKS_CACHE")
    os.environ["DBLOCKS_CACHE"] = str(root / "cache")
    scale = sweep.get_scale("tiny")
    out, work = str(root / "out"), str(root / "work")
    records = sweep.run_sweep(TOY, scale, [0, 1], out, work, progress=False)
    paths = sweep.write_report(TOY, records, out)
    yield scale, out, work, records, paths
    if old is None:
        os.environ.pop("DBLOCKS_CACHE", None)
    else:
        os.environ["DBLOCKS_CACHE"] = old


def test_sweep_writes_runs_table_and_plots(swept):
    scale, out, work, records, paths = swept
    assert [(r["point"], r["seed"]) for r in records] == [("euler_K2", 0), ("euler_K2", 1), ("heun_K2", 0),
                                                          ("heun_K2", 1)]
    config = scale.config()
    for r in records:
        with open(os.path.join(out, "runs", f"{r['point']}_seed{r['seed']}.json")) as f:
            stored = json.load(f)
        assert stored == json.loads(json.dumps(r))  # what the sweep returned is what it wrote
        assert stored["train"]["block_steps"] == [config.optim.steps] * config.model.num_blocks
        s = stored["sampling"]
        assert s["network_evals_per_sample"] == evaluations_per_sample(s["solver"], s["steps"]) == r["params"]["evals"]
        # Guided (2.0, class-conditional): the conditional and the null pass of a 2-layer block per evaluation.
        assert s["layer_evals_per_sample"] == r["params"]["evals"] * config.model.layers_per_block * 2
        assert stored["config"]["run"]["seed"] == r["seed"] and stored["jax_version"] and stored["device"]
    # Both points of a seed sample the same trained model: trained once, then reused with the same
    # training record and memory, but sampled differently.
    assert [r["train"]["reused"] for r in records] == [False, False, True, True]
    for seed in (0, 1):
        euler, heun = records[seed], records[2 + seed]
        assert euler["train_key"] == heun["train_key"] and euler["run_key"] != heun["run_key"]
        assert {k: v for k, v in euler["train"].items() if k != "reused"} == \
               {k: v for k, v in heun["train"].items() if k != "reused"}
        assert euler["memory_bytes"] == heun["memory_bytes"]
        assert euler["sampling"]["network_evals_per_sample"] != heun["sampling"]["network_evals_per_sample"]
        assert euler["quality"]["frechet_distance"] != heun["quality"]["frechet_distance"]
    assert records[0]["train_key"] != records[1]["train_key"]  # another seed, another model
    assert records[0]["train"]["final_loss"] != records[1]["train"]["final_loss"]
    with open(paths["table"]) as f:
        table = f.read()
    assert "| euler | 3 | 2 |" in table and "| heun | 5 | 2 |" in table and "±" in table
    for name in ("quality.png", "samples.png"):
        with open(paths[name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_stored_memory_is_that_of_a_freshly_compiled_step(swept):
    scale, _, _, records, _ = swept
    run = sweep.plan(TOY, scale, [0])[0]
    trainer = BlockTrainer(make_task(run.config))
    expected = bench.memory_bytes(trainer, bench.compile_step(trainer)[0], run.config.model.num_blocks)
    assert records[0]["memory_bytes"] == expected
    # Interleaved: the other block's state is resident beside the step.
    assert expected["total_peak"] - expected["step_peak"] == trainer.state_bytes > 0


def test_stored_quality_is_that_of_the_runs_own_samples(swept, tmp_path):
    """Rescore a record from its own cached parameters: the seeded samples of its config give the
    stored distance, accuracy and sample grid."""
    scale, out, work, records, _ = swept
    for run, record in zip(sweep.plan(TOY, scale, [0, 1])[::3], records[::3]):  # euler seed 0, heun seed 1
        params, info = sweep.train_or_load(run.config, work)
        assert info["reused"] and info["final_loss"] == record["train"]["final_loss"]
        images, labels = make_task(run.config).samples(params, seed=run.seed)
        assert len(images) == record["quality"]["num_samples"] == scale.num_samples
        classifier = image_quality.FeatureClassifier("shapes", run.config.data.image_size,
                                                     image_quality.ClassifierSettings(steps=scale.classifier_steps))
        reference = data.load_split("shapes", "test", run.config.data.image_size)[0]
        fd = image_quality.feature_frechet_distance(classifier, images, reference)
        assert fd == pytest.approx(record["quality"]["frechet_distance"], rel=1e-5)
        acc = image_quality.conditional_accuracy(classifier, images, labels)
        assert acc == pytest.approx(record["quality"]["conditional_accuracy"], abs=1.5 / len(images))
        grid = tmp_path / f"{run.point.name}.png"
        sweep.write_grid(str(grid), images, labels)
        from PIL import Image

        stored = np.asarray(Image.open(os.path.join(out, "runs", run.filename[:-5] + ".png")), np.int32)
        assert np.abs(np.asarray(Image.open(grid), np.int32) - stored).max() <= 1


def test_rerun_skips_every_finished_run(swept, monkeypatch):
    scale, out, work, records, _ = swept
    runs_dir = os.path.join(out, "runs")
    mtimes = {n: os.stat(os.path.join(runs_dir, n)).st_mtime_ns for n in os.listdir(runs_dir)}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was executed again")

    monkeypatch.setattr(sweep, "execute", must_not_run)
    again = sweep.run_sweep(TOY, scale, [0, 1], out, work, progress=False)
    assert [r["created"] for r in again] == [r["created"] for r in records]
    assert {n: os.stat(os.path.join(runs_dir, n)).st_mtime_ns for n in os.listdir(runs_dir)} == mtimes


def test_truncated_or_stale_json_is_rerun(swept, monkeypatch):
    scale, out, work, records, _ = swept
    runs = os.path.join(out, "runs")

    def rewrite(name, change):
        with open(os.path.join(runs, name)) as f:
            record = json.load(f)
        change(record["config"])
        with open(os.path.join(runs, name), "w") as f:
            json.dump(record, f)

    path = os.path.join(runs, "heun_K2_seed1.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])  # an interrupted writer
    rewrite("euler_K2_seed0.json", lambda c: c["optim"].update(steps=c["optim"]["steps"] + 1))  # another training
    rewrite("heun_K2_seed0.json", lambda c: c["sampling"].update(guidance=1.0))  # another sampler
    rewrite("euler_K2_seed1.json", lambda c: c["run"].update(log_every=7))  # bookkeeping only: still the same run

    executed = []
    real_execute = sweep.execute

    def counted(run, *args, **kwargs):
        executed.append(run.filename)
        return real_execute(run, *args, **kwargs)

    monkeypatch.setattr(sweep, "execute", counted)
    again = sweep.run_sweep(TOY, scale, [0, 1], out, work, progress=False)
    assert sorted(executed) == ["euler_K2_seed0.json", "heun_K2_seed0.json", "heun_K2_seed1.json"]
    with open(path) as f:
        assert json.load(f)["run_key"] == again[3]["run_key"]
    assert again[3]["train"]["reused"]  # the trained parameters were cached: sampling only
    assert again[3]["quality"]["frechet_distance"] == pytest.approx(records[3]["quality"]["frechet_distance"])
    assert again[1]["created"] == records[1]["created"]


def test_keys_and_config_comparison_follow_the_field_roles():
    """Runs finished before a field was added to Config stay valid; a changed value does not;
    free fields never count, sampling fields count for a run but not for its training."""
    config = sweep.get_scale("tiny").config()
    stored = config.to_dict()
    at_default = {k: v for k, v in stored["model"].items() if k != "remat"}  # pretend model.remat is new
    assert not config.model.remat and sweep.same_config({**stored, "model": at_default}, config)
    # Written by version 0.2: every task's sections and model.family; the same run.
    v0_2 = {**stored, "format": 2, "model": {**stored["model"], "family": "dit"}, "ar": {"bridge": "hard"},
            "text": {"seq_len": 9}}
    assert sweep.same_config(v0_2, config) and sweep.same_config(config, v0_2)
    not_at_default = {k: v for k, v in stored["model"].items() if k != "width"}  # tiny width 16, default 96
    assert not sweep.same_config({**stored, "model": not_at_default}, config)
    assert not sweep.same_config({**stored, "model": {**stored["model"], "no_such_field": 1}}, config)
    assert not sweep.same_config(config.override({"optim.steps": 4}), config)
    free = config.override({"run.log_every": 7, "schedule.block_shards": 1, "run.keep_checkpoints": 5})
    assert sweep.same_config(free, config) and sweep.train_key(free) == sweep.train_key(config)
    sampled = config.override({"sampling.solver": "heun"})
    assert sweep.same_config(sampled, config, sweep.TRAIN_ROLES) and not sweep.same_config(sampled, config)
    assert sweep.train_key(sampled) == sweep.train_key(config)
    assert sweep.train_key(config.override({"run.seed": 1})) != sweep.train_key(config)
    # A field at its default is left out of the keys: adding one keeps every key.
    assert "model.remat" not in sweep.identifying(config, sweep.RUN_ROLES)
    assert "model.width" in sweep.identifying(config, sweep.TRAIN_ROLES)


def test_train_key_names_the_parameter_layout(monkeypatch):
    config = sweep.get_scale("tiny").config()
    key = sweep.train_key(config)
    monkeypatch.setattr(sweep_run, "PARAMS_FORMAT", 1)
    assert sweep.train_key(config) != key


def _old_record(name="shapes_B4_seed0.json"):
    with open(os.path.join(RESULTS, "blocks", "runs", name)) as f:
        return json.load(f)


def test_a_committed_record_of_version_0_1_is_recognised():
    """experiments/results hold records of dblocks-jax 0.1 (a flat config, format 1): the plan of
    this version recognises them, and rejects them for another config."""
    record = _old_record()
    assert record["format"] == 1 and "steps" in record["config"] and "optim" not in record["config"]
    runs = {(r.point.name, r.seed): r for r in sweep.plan(_script("blocks").EXPERIMENT, sweep.get_scale("small"), [0])}
    run = runs[("shapes_B4", 0)]
    path = os.path.join(RESULTS, "blocks", "runs", "shapes_B4_seed0.json")
    assert sweep.load_record(path, run) == record
    assert sweep.same_config(record["config"], run.config) and sweep.same_config(run.config, record["config"])
    for changed in ({"optim.steps": 601}, {"sampling.steps": 25}, {"model.num_blocks": 3},
                    {"model.layer_split": "2,4,3,3"}, {"sampling.s_churn": 1.0}):
        other = dataclasses.replace(run, config=run.config.override(changed))
        assert sweep.load_record(path, other) is None, changed
    free = dataclasses.replace(run, config=run.config.override({"run.log_every": 1, "run.checkpoint_every": 3}))
    assert sweep.load_record(path, free) == record
    assert not sweep.same_config({**record["config"], "no_such_field": 1}, run.config)
    assert sweep.load_record(path, runs[("shapes_B2", 0)]) is None  # another point


@pytest.mark.parametrize("name,scale", [(n, "small") for n in SCRIPTS] + [("blocks", "small_long")])
def test_every_committed_run_loads(name, scale):
    """`--report-only` regenerates every committed table: each run file is matched by its plan."""
    out = sweep.default_out_dir(name, scale)
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "runs", "*.json")))
    runs = sweep.plan(_script(name).EXPERIMENT, sweep.get_scale(scale), [0, 1, 2])
    loaded = sorted(r.filename for r in runs if sweep.load_record(os.path.join(out, "runs", r.filename), r))
    assert files and loaded == files


def test_parameters_of_another_layout_are_never_reused(swept, tmp_path):
    """A cache written by version 0.1 (same config, no params_format) is ignored; so is one with
    the right format but leaves of other shapes."""
    scale, _, work, _, _ = swept
    config = sweep.plan(TOY, scale, [0])[0].config
    directory = sweep_run._find_training(config, work, os.path.join(work, sweep.train_key(config)))
    assert directory is not None
    work2 = tmp_path / "work"
    old = work2 / "16e31092945cee17"
    shutil.copytree(directory, old)
    info = json.loads((old / "train.json").read_text())
    old_names = {path: name for name, path in FLAT_NAMES.items()}
    flat = {old_names.get(p, p.rsplit(".", 1)[-1]): v for p, v in sweep.config_values(config).items()}
    assert sweep.same_config(flat, config, sweep.TRAIN_ROLES)  # the same training, written by 0.1
    info = {k: v for k, v in info.items() if k != "params_format"}
    (old / "train.json").write_text(json.dumps({**info, "config": flat}))
    assert sweep_run._find_training(config, str(work2), str(work2 / "none")) is None
    bad = work2 / "bad"
    shutil.copytree(directory, bad)
    with np.load(bad / "params.npz") as stored:
        leaves = {k: stored[k] for k in stored.files}
    leaves["leaf_0"] = np.zeros(leaves["leaf_0"].shape + (2,), leaves["leaf_0"].dtype)
    np.savez(bad / "params.npz", **leaves)
    assert sweep_run._find_training(config, str(work2), str(bad)) == str(bad)  # found by its config ...
    only_bad = tmp_path / "only_bad"
    shutil.copytree(bad, only_bad / sweep.train_key(config))
    _, info = sweep.train_or_load(config, str(only_bad))  # ... but its leaf shapes do not fit: retrained
    assert not info["reused"]


def _record(point, seed, fd, acc, x):
    return {"point": point, "params": {"B": x}, "seed": seed,
            "quality": {"frechet_distance": fd, "conditional_accuracy": acc},
            "memory_bytes": {"total_peak": 2**20 * x, "step_peak": 2**20},
            "train": {"wall_s": 10.0 * x, "final_loss": [0.5, 0.7]},
            "sampling": {"time_s": 1.0, "network_evals_per_sample": 25}}


def test_aggregate_mean_and_sample_std():
    records = [_record("B1", 0, 10.0, 0.5, 1), _record("B1", 1, 14.0, 0.7, 1), _record("B1", 2, 12.0, 0.9, 1),
               _record("B2", 0, 3.0, 1.0, 2)]
    rows = sweep.aggregate(records)
    assert [r["point"] for r in rows] == ["B1", "B2"]
    b1, b2 = rows
    assert b1["seeds"] == [0, 1, 2]
    assert b1["frechet_distance"]["mean"] == pytest.approx(12.0)
    assert b1["frechet_distance"]["std"] == pytest.approx(2.0)  # sample std (n - 1) of 10, 12, 14
    assert b1["conditional_accuracy"]["std"] == pytest.approx(0.2)
    assert b1["final_loss"]["mean"] == pytest.approx(0.6)
    assert b2["frechet_distance"] == {"mean": 3.0, "std": 0.0, "n": 1, "values": [3.0]}
    assert b2["train_memory_mib"]["mean"] == pytest.approx(2.0)
    table = sweep.markdown_table(rows, ("frechet_distance", "conditional_accuracy"))
    assert "| 1 | 3 | 12.0 ± 2.0 | 0.700 ± 0.200 |" in table


def test_write_json_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "x.json"
    sweep.write_json_atomic(str(path), {"a": 1})
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        sweep.write_json_atomic(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_experiment_plans_valid_configs_at_every_scale(name):
    experiment = _script(name).EXPERIMENT
    for scale in sweep.SCALES.values():
        runs = sweep.plan(experiment, scale, [0, 1, 2])
        assert runs and len({r.filename for r in runs}) == len(runs)
        even = [r for r in runs if not r.config.model.layer_split]
        assert even and all(r.config.model.num_layers % r.config.model.num_blocks == 0 for r in even)


def test_shared_training_across_experiments():
    """Points that train the same model in different experiments share one training."""
    small = sweep.get_scale("small")
    keys = {name: {r.point.name: r.train_key for r in sweep.plan(_script(name).EXPERIMENT, small, [0])}
            for name in SCRIPTS}
    b4 = keys["blocks"]["shapes_B4"]
    assert keys["overlap"]["B4_gamma0.05"] == keys["partition"]["B4_equiprobable"] == b4
    assert keys["schedules"]["B4_interleaved"] == b4 != keys["schedules"]["B4_sequential"]
    assert set(keys["solvers"].values()) == {b4}


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown scale"):
        sweep.get_scale("huge")
    with pytest.raises(ValueError, match="seeds"):
        sweep.plan(TOY, sweep.get_scale("tiny"), [0, 0])
    bad = sweep.Experiment("bad", "", lambda s: [sweep.Point("p", {}, {"partition.overlap": 0.9})], ())
    with pytest.raises(ValueError, match="point p: invalid config: partition.overlap"):
        sweep.plan(bad, sweep.get_scale("tiny"), [0])
    flat = sweep.Experiment("flat", "", lambda s: [sweep.Point("p", {}, {"overlap": 0.1})], ())
    with pytest.raises(ValueError, match="overlap .now partition.overlap"):
        sweep.plan(flat, sweep.get_scale("tiny"), [0])
