"""`dblocks bench`: memory, step, compile and inference time of every mode (`engine.bench`)."""

from __future__ import annotations

import argparse
import os

from dblocks_jax import presets as presets_lib
from dblocks_jax.commands.common import check_output, preset_and_overrides, written_whole
from dblocks_jax.engine import bench, hardware
from dblocks_jax.evaluation import bench_report
from dblocks_jax.tasks.plugin import int_list


def run_bench(args: argparse.Namespace) -> None:
    name, overrides = preset_and_overrides(args.config, args.overrides)
    # Every mode sets its own B: the preset's num_blocks (and its layer split) must not make the
    # base config invalid for a --set that only the benched Bs satisfy.
    overrides = {"model.num_blocks": 1, "model.layer_split": "", **overrides}
    if args.batch_size is not None:
        overrides["data.batch_size"] = args.batch_size
    config = presets_lib.get_config(name, overrides)
    modes = tuple(m.strip() for m in args.modes.split(",")) if args.modes else bench.MODES
    if args.time_steps < 0 or args.sample_steps < 0:
        raise ValueError("--time-steps and --sample-steps must be >= 0")
    settings = bench.BenchSettings(num_blocks=int_list("--num-blocks", args.num_blocks), modes=modes,
                                   time_steps=args.time_steps, sample_steps=args.sample_steps,
                                   peak_tflops=args.peak_tflops)
    if args.json:
        stem = os.path.splitext(args.json)[0]
        check_output("--json", args.json, args.overwrite, also=(stem + ".md", stem + ".png"))
    bench.plan_runs(config, settings)  # every mode and B validated before anything compiles
    hardware.peak_flops("", args.peak_tflops)
    records = bench.run_bench(config, settings)
    print(bench_report.markdown_table(records))
    if args.json:  # each file under a temporary name until all three are written
        table, chart = stem + ".md", stem + ".png"
        with written_whole(args.json) as json_tmp, written_whole(table) as table_tmp, written_whole(chart) as chart_tmp:
            bench_report.write_results(records, json_tmp, table_tmp, chart_tmp)
        print(f"wrote {args.json}, {table}, {chart}")
