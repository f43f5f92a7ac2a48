import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from dblocks_jax import cli, make_task
from dblocks_jax.engine import bench
from dblocks_jax.evaluation import bench_report
from dblocks_jax.engine.trainer import BlockTrainer


def peak(mode, num_blocks, **overrides):
    config = bench.mode_config(tiny_config(num_layers=8, batch_size=32, **overrides), mode, num_blocks)
    return bench.step_memory(bench.compile_step(BlockTrainer(make_task(config)))[0])["step_peak"]


def test_sequential_blocks_need_far_less_memory_than_end_to_end():
    e2e = peak("e2e", 1)
    assert peak("db-sequential", 4) < 0.5 * e2e
    assert peak("db-sequential", 2) < 0.75 * e2e
    assert peak("db-sequential", 1) == e2e  # B = 1 is the same compiled step


def test_bench_records_have_every_field(tmp_path, monkeypatch):
    settings = bench.BenchSettings(num_blocks=(2,), time_steps=2, warmup_steps=1, sample_steps=2,
                                   sample_batch=2, sample_repeats=1, peak_tflops=0.001)
    # Unrolled layers: FLOPs come from the compiled step itself (the scanned case is tested below).
    config = tiny_config(batch_size=4, num_layers=2, scan_layers=False)
    records = bench.run_bench(config, settings, progress=False)
    assert sorted((r["mode"], r["num_blocks"]) for r in records) == sorted(
        [("e2e", 1), ("e2e-remat", 1), ("db-sequential", 2), ("db-interleaved", 2), ("db-remat", 2)])
    for r in records:
        assert {"mode", "num_blocks", "layers_per_block", "batch_size", "device", "platform", "jax_version",
                "params_per_block", "memory_bytes", "analytic_bytes", "flops_per_step", "config", "step_time_s",
                "step_times_s", "e2e_equivalent_time_s", "achieved_flops_per_s", "mfu", "model_flops_per_step",
                "analytic_is_fit", "compile_s", "task"} <= set(r)
        m = r["memory_bytes"]
        assert set(m) == {"argument", "output", "alias", "temp", "step_peak", "resident_state", "total_peak"}
        assert m["step_peak"] == m["argument"] + m["output"] - m["alias"] + m["temp"]
        assert len(r["step_times_s"]) == 2 and r["flops_per_step"] > 0 and r["compile_s"] > 0
        assert r["attention"] == "xla" and r["dtype"] == "float32" and r["peak_source"] == "--peak-tflops"
        assert r["mfu"] == pytest.approx(r["model_flops_per_step"] / r["step_time_s"] / 1e9)
    by_mode = {r["mode"]: r for r in records}
    # FLOPs count every layer: e2e runs 2 layers, each block of B = 2 one.
    assert by_mode["e2e"]["flops_per_step"] > 1.3 * by_mode["db-sequential"]["flops_per_step"]
    assert by_mode["e2e-remat"]["flops_per_step"] > by_mode["e2e"]["flops_per_step"]  # recompute is counted
    assert by_mode["e2e-remat"]["model_flops_per_step"] == by_mode["e2e"]["flops_per_step"]  # but not as work
    assert by_mode["db-remat"]["model_flops_per_step"] == by_mode["db-sequential"]["flops_per_step"]
    interleaved = next(r for r in records if r["mode"] == "db-interleaved" and r["num_blocks"] == 2)
    sequential = next(r for r in records if r["mode"] == "db-sequential" and r["num_blocks"] == 2)
    assert interleaved["memory_bytes"]["resident_state"] == 2 * sequential["memory_bytes"]["resident_state"]
    assert interleaved["memory_bytes"]["total_peak"] > sequential["memory_bytes"]["total_peak"]
    e2e_inference = next(r for r in records if r["mode"] == "e2e")["inference"]
    assert e2e_inference["unit"] == "images" and e2e_inference["count"] == 2
    assert e2e_inference["layer_evals_per_unit"] == 2 * sequential["inference"]["layer_evals_per_unit"]

    table, chart = bench_report.write_results(records, str(tmp_path / "out" / "bench.json"))
    assert len(json.load(open(tmp_path / "out" / "bench.json"))) == len(records)
    assert open(table).read().count("\n") == len(records) + 2
    assert os.path.getsize(chart) > 0
    # The command writes the three files under temporary names, renamed once all are written.
    monkeypatch.setattr(bench, "run_bench", lambda config, settings: records)
    assert cli.main(["bench", "--config", "shapes", "--num-blocks", "2", "--time-steps", "0",
                     "--json", str(tmp_path / "cli.json")]) == 0
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("cli")) == ["cli.json", "cli.md", "cli.png"]
    assert json.load(open(tmp_path / "cli.json")) == json.loads(json.dumps(records))


def test_flops_of_a_scanned_stack_count_every_layer():
    """XLA's cost analysis counts a loop body once: a scanned model's FLOPs are read from its
    unrolled twin (4 layers here, so the raw count of the scanned program is well below it)."""
    scanned = tiny_config(num_layers=4, num_blocks=1, batch_size=4)
    compiled = bench.compile_step(BlockTrainer(make_task(scanned))).executable
    assert bench.step_flops(compiled) < 0.6 * bench.counted_flops(scanned, compiled=compiled)


@pytest.mark.parametrize("args,message", [
    (["--modes", "e2e,fast"], "unknown bench mode 'fast'; allowed: e2e, e2e-remat"),
    (["--num-blocks", "1,3"], "bench mode db-sequential with B=3: invalid config: model.num_layers=8; allowed: a "
                              "multiple of model.num_blocks=3"),
    (["--num-blocks", "two"], "--num-blocks expects comma-separated integers"),
    (["--time-steps", "-1"], "--time-steps and --sample-steps must be >= 0"),
    (["--peak-tflops", "-1"], "--peak-tflops=-1.0; allowed: a number > 0 (TFLOP/s)"),
    (["--config", "digits_vit", "--num-blocks", "3", "--sample-steps", "2"],
     "--sample-steps 2: task image_classification with model.num_blocks=3 needs at least 3 network calls"),
    (["--config", "digits_vit", "--set", "ar.bridge=hard"], "ar.bridge belongs to autoregressive_lm"),
])
def test_bad_bench_arguments_fail_before_anything_compiles(args, message, monkeypatch, capsys):
    monkeypatch.setattr(bench, "compile_step", lambda *a: pytest.fail("compiled despite bad arguments"))
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("ran despite bad arguments"))
    assert cli.main(["bench", "--config", "shapes", *args] if "--config" not in args else ["bench", *args]) == 2
    assert message in capsys.readouterr().err


# Every task's inference, as `dblocks bench --sample-steps` times it: (preset, tiny overrides, K,
# the unit, units per call for a batch of 2, network calls per unit).
TEXT = {"text.seq_len": 8, "model.width": 16, "model.num_heads": 2, "data.batch_size": 4, "generation.prompt_len": 2,
        "generation.gen_len": 2}
INFERENCE = [
    ("shapes", {"data.image_size": 8, "model.width": 16, "model.num_heads": 2, "model.num_layers": 2,
                "model.num_blocks": 2}, 3, "images", 2, 4),
    ("digits_vit", {"data.image_size": 8, "model.patch_size": 4, "model.width": 16, "model.num_heads": 2,
                    "model.num_layers": 2, "model.num_blocks": 2}, 3, "predictions", 2, 3),
    ("pydoc_md4", {**{k: v for k, v in TEXT.items() if not k.startswith("generation")}, "model.num_layers": 2,
                   "model.num_blocks": 2}, 3, "samples", 2, 4),
    ("pydoc_ar", {**TEXT, "model.num_layers": 2, "model.num_blocks": 2}, 3, "symbols", 2 * 7, 3),
    ("pydoc_recurrent", {**TEXT, "model.num_layers": 3, "recurrent.prelude": 1, "recurrent.core": 1,
                         "recurrent.coda": 1}, 3, "predictions", 2 * 7, 3),
]


@pytest.mark.parametrize("preset,overrides,steps,unit,count,calls", INFERENCE, ids=[c[0] for c in INFERENCE])
def test_every_task_declares_the_inference_the_bench_times(preset, overrides, steps, unit, count, calls):
    from dblocks_jax import get_config

    task = make_task(get_config(preset, overrides))
    params = [task.init_params(k) for k in jax.random.split(jax.random.key(0), task.num_blocks)]
    inference = task.inference(params, batch=2, steps=steps)
    out = jax.tree.leaves(inference.fn(*inference.args))[0]
    assert out.shape[0] == 2 and np.isfinite(np.asarray(out, np.float32)).all()  # one output per example
    assert (inference.unit, inference.count, inference.network_calls) == (unit, count, calls)
    timed = bench.time_inference(task, bench.BenchSettings(sample_steps=steps, sample_batch=2, sample_repeats=1))
    assert timed["unit"] == unit and timed["per_s"] == pytest.approx(count / timed["time_s"])
    assert timed["layer_evals_per_unit"] == calls * task.layers_per_block
