import json
import os

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


def test_bench_records_have_every_field(tmp_path):
    settings = bench.BenchSettings(num_blocks=(2,), time_steps=2, warmup_steps=1, sample_steps=2,
                                   sample_batch=2, sample_repeats=1, peak_tflops=0.001)
    # Unrolled layers: FLOPs come from the compiled step itself (the scanned case is tested below).
    config = tiny_config(batch_size=4, num_layers=2, scan_layers=False)
    records = bench.run_bench(config, make_task, settings, progress=False)
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
    e2e_sampler = next(r for r in records if r["mode"] == "e2e")["sampler"]
    assert e2e_sampler["layer_evals_per_sample"] == 2 * sequential["sampler"]["layer_evals_per_sample"]

    table, chart = bench_report.write_results(records, str(tmp_path / "out" / "bench.json"))
    assert len(json.load(open(tmp_path / "out" / "bench.json"))) == len(records)
    assert open(table).read().count("\n") == len(records) + 2
    assert os.path.getsize(chart) > 0


def test_flops_of_a_scanned_stack_count_every_layer():
    """XLA's cost analysis counts a loop body once: a scanned model's FLOPs are read from its
    unrolled twin (4 layers here, so the raw count of the scanned program is well below it)."""
    scanned = tiny_config(num_layers=4, num_blocks=1, batch_size=4)
    compiled = bench.compile_step(BlockTrainer(make_task(scanned))).executable
    assert bench.step_flops(compiled) < 0.6 * bench.counted_flops(scanned, make_task, compiled)


@pytest.mark.parametrize("args,message", [
    (["--modes", "e2e,fast"], "unknown bench mode 'fast'; allowed: e2e, e2e-remat"),
    (["--num-blocks", "1,3"], "bench mode db-sequential with B=3: invalid config: model.num_layers=8; allowed: a "
                              "multiple of model.num_blocks=3"),
    (["--num-blocks", "two"], "--num-blocks expects comma-separated integers"),
    (["--time-steps", "-1"], "--time-steps and --sample-steps must be >= 0"),
    (["--peak-tflops", "-1"], "--peak-tflops=-1.0; allowed: a number > 0 (TFLOP/s)"),
])
def test_bad_bench_arguments_fail_before_anything_compiles(args, message, monkeypatch, capsys):
    monkeypatch.setattr(bench, "compile_step", lambda *a: pytest.fail("compiled despite bad arguments"))
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("ran despite bad arguments"))
    assert cli.main(["bench", "--config", "shapes", *args]) == 2
    assert message in capsys.readouterr().err
