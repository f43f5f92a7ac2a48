"""The sweep engine behind experiments/*.py: runs, resumability, aggregation and the reports."""

import importlib.util
import json
import os

import numpy as np
import pytest

from dblocks_jax import sweeps

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
SCRIPTS = ("blocks", "partition", "overlap", "solvers", "schedules")


def _script(name):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", os.path.join(EXPERIMENTS_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy_points(scale):
    """Two points that share one trained model (sampler settings only), as the solver sweep does."""
    return [sweeps.Point("euler_K2", {"solver": "euler", "evals": 3}, {"solver": "euler", "sample_steps": 2}),
            sweeps.Point("heun_K1", {"solver": "heun", "evals": 3}, {"solver": "heun", "sample_steps": 1})]


TOY = sweeps.Experiment(
    name="toy", description="test sweep", points=_toy_points,
    table_metrics=("frechet_distance", "conditional_accuracy", "train_memory_mib", "train_time_s"),
    plots=(sweeps.Plot("quality.png", x="solver", metrics=("frechet_distance", "conditional_accuracy")),
           sweeps.SampleGrids("samples.png", x="solver")),
)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny sweep (2 points x 2 seeds, 3 training steps), shared by the tests below."""
    root = tmp_path_factory.mktemp("sweep")
    old = os.environ.get("DBLOCKS_CACHE")
    os.environ["DBLOCKS_CACHE"] = str(root / "cache")
    scale = sweeps.get_scale("tiny")
    out, work = str(root / "out"), str(root / "work")
    records = sweeps.run_sweep(TOY, scale, [0, 1], out, work, progress=False)
    paths = sweeps.write_report(TOY, records, out)
    yield scale, out, work, records, paths
    if old is None:
        os.environ.pop("DBLOCKS_CACHE", None)
    else:
        os.environ["DBLOCKS_CACHE"] = old


def test_sweep_writes_runs_table_and_plots(swept):
    scale, out, work, records, paths = swept
    assert [(r["point"], r["seed"]) for r in records] == [("euler_K2", 0), ("euler_K2", 1), ("heun_K1", 0),
                                                          ("heun_K1", 1)]
    for r in records:
        with open(os.path.join(out, "runs", f"{r['point']}_seed{r['seed']}.json")) as f:
            stored = json.load(f)
        assert stored["run_key"] == r["run_key"]
        assert np.isfinite(stored["quality"]["frechet_distance"])
        assert 0.0 <= stored["quality"]["conditional_accuracy"] <= 1.0
        assert stored["memory_bytes"]["total_peak"] >= stored["memory_bytes"]["step_peak"] > 0
        assert stored["train"]["block_steps"] == [scale.config().steps] * scale.config().num_blocks
        assert stored["sampling"]["network_evals_per_sample"] == 3  # Euler 2 steps + 1 == Heun 1 step x 2 + 1
        assert stored["config"]["seed"] == r["seed"] and stored["jax_version"] and stored["device"]
    # Both points of a seed sample the same trained model: trained once, then reused.
    assert [r["train"]["reused"] for r in records] == [False, False, True, True]
    assert records[0]["train_key"] == records[2]["train_key"] != records[1]["train_key"]
    with open(paths["table"]) as f:
        table = f.read()
    assert "| euler | 3 | 2 |" in table and "±" in table
    for name in ("quality.png", "samples.png"):
        with open(paths[name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_every_finished_run(swept, monkeypatch):
    scale, out, work, records, _ = swept
    runs_dir = os.path.join(out, "runs")
    mtimes = {n: os.stat(os.path.join(runs_dir, n)).st_mtime_ns for n in os.listdir(runs_dir)}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was executed again")

    monkeypatch.setattr(sweeps, "execute", must_not_run)
    again = sweeps.run_sweep(TOY, scale, [0, 1], out, work, progress=False)
    assert [r["created"] for r in again] == [r["created"] for r in records]
    assert {n: os.stat(os.path.join(runs_dir, n)).st_mtime_ns for n in os.listdir(runs_dir)} == mtimes


def test_truncated_or_stale_json_is_rerun(swept, monkeypatch):
    scale, out, work, records, _ = swept
    path = os.path.join(out, "runs", "heun_K1_seed1.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])  # an interrupted writer
    stale = os.path.join(out, "runs", "euler_K2_seed0.json")
    with open(stale) as f:
        stale_record = json.load(f)
    stale_record["config"]["steps"] += 1  # made from another config
    with open(stale, "w") as f:
        json.dump(stale_record, f)

    executed = []
    real_execute = sweeps.execute

    def counted(run, *args, **kwargs):
        executed.append(run.filename)
        return real_execute(run, *args, **kwargs)

    monkeypatch.setattr(sweeps, "execute", counted)
    again = sweeps.run_sweep(TOY, scale, [0, 1], out, work, progress=False)
    assert sorted(executed) == ["euler_K2_seed0.json", "heun_K1_seed1.json"]
    with open(path) as f:
        assert json.load(f)["run_key"] == again[3]["run_key"]
    assert again[3]["train"]["reused"]  # the trained parameters were cached: sampling only
    assert again[3]["quality"]["frechet_distance"] == pytest.approx(records[3]["quality"]["frechet_distance"])


def _record(point, seed, fd, acc, x):
    return {"point": point, "params": {"B": x}, "seed": seed,
            "quality": {"frechet_distance": fd, "conditional_accuracy": acc},
            "memory_bytes": {"total_peak": 2**20 * x, "step_peak": 2**20},
            "train": {"wall_s": 10.0 * x, "final_loss": [0.5, 0.7]},
            "sampling": {"time_s": 1.0, "network_evals_per_sample": 25}}


def test_keys_survive_a_new_config_field_at_its_default():
    """Runs finished before a field was added to Config stay valid; a changed value does not."""
    config = sweeps.get_scale("tiny").config()
    stored = config.to_dict()
    new_field = next(iter(stored))  # pretend this field did not exist when the run was stored
    older = {k: v for k, v in stored.items() if k != new_field}
    assert sweeps.same_config(older, stored) == (stored[new_field] == sweeps._defaults()[new_field])
    assert sweeps.same_config({**older, "layer_split": ""}, {**stored, "layer_split": ""})
    assert not sweeps.same_config({**stored, "steps": stored["steps"] + 1}, stored)
    assert not sweeps.same_config({**stored, "no_such_field": 1}, stored)
    defaults = sweeps._defaults()
    at_default = next(k for k, v in stored.items() if v == defaults[k])
    without = {k: v for k, v in stored.items() if k != at_default}
    assert sweeps._digest(sweeps._identifying(without, ())) == sweeps._digest(sweeps._identifying(stored, ()))


def test_aggregate_mean_and_sample_std():
    records = [_record("B1", 0, 10.0, 0.5, 1), _record("B1", 1, 14.0, 0.7, 1), _record("B1", 2, 12.0, 0.9, 1),
               _record("B2", 0, 3.0, 1.0, 2)]
    rows = sweeps.aggregate(records)
    assert [r["point"] for r in rows] == ["B1", "B2"]
    b1, b2 = rows
    assert b1["seeds"] == [0, 1, 2]
    assert b1["frechet_distance"]["mean"] == pytest.approx(12.0)
    assert b1["frechet_distance"]["std"] == pytest.approx(2.0)  # sample std (n - 1) of 10, 12, 14
    assert b1["conditional_accuracy"]["std"] == pytest.approx(0.2)
    assert b1["final_loss"]["mean"] == pytest.approx(0.6)
    assert b2["frechet_distance"] == {"mean": 3.0, "std": 0.0, "n": 1, "values": [3.0]}
    assert b2["train_memory_mib"]["mean"] == pytest.approx(2.0)
    table = sweeps.markdown_table(rows, ("frechet_distance", "conditional_accuracy"))
    assert "| 1 | 3 | 12.0 ± 2.0 | 0.700 ± 0.200 |" in table


def test_write_json_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "x.json"
    sweeps.write_json_atomic(str(path), {"a": 1})
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        sweeps.write_json_atomic(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_experiment_plans_valid_configs_at_every_scale(name):
    experiment = _script(name).EXPERIMENT
    for scale in sweeps.SCALES.values():
        runs = sweeps.plan(experiment, scale, [0, 1, 2])
        assert runs and len({r.filename for r in runs}) == len(runs)
        even = [r for r in runs if not getattr(r.config, "layer_split", "")]
        assert even and all(r.config.num_layers % r.config.num_blocks == 0 for r in even)


def test_shared_training_across_experiments():
    """Points that train the same model in different experiments share one training."""
    small = sweeps.get_scale("small")
    keys = {name: {r.point.name: r.train_key for r in sweeps.plan(_script(name).EXPERIMENT, small, [0])}
            for name in SCRIPTS}
    b4 = keys["blocks"]["shapes_B4"]
    assert keys["overlap"]["B4_gamma0.05"] == keys["partition"]["B4_equiprobable"] == b4
    assert keys["schedules"]["B4_interleaved"] == b4 != keys["schedules"]["B4_sequential"]
    assert set(keys["solvers"].values()) == {b4}


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown scale"):
        sweeps.get_scale("huge")
    with pytest.raises(ValueError, match="seeds"):
        sweeps.plan(TOY, sweeps.get_scale("tiny"), [0, 0])
    bad = sweeps.Experiment("bad", "", lambda s: [sweeps.Point("p", {}, {"overlap": 0.9})], ())
    with pytest.raises(ValueError, match="point p: invalid config: overlap"):
        sweeps.plan(bad, sweeps.get_scale("tiny"), [0])
