"""`dblocks plot RUN... [--metric loss] [--out curves.png]`: a logged metric against each block's
step for one or many runs; runs that differ only in their seed become one mean +/- std band. Reads
`metrics.jsonl`, so it works without TensorBoard and on runs still training."""

from __future__ import annotations

import argparse
import os

from dblocks_jax import runs
from dblocks_jax.commands.common import check_output, written_whole
from dblocks_jax.evaluation import curves as curves_lib
from dblocks_jax.evaluation.stats import describe, summary

FORMATS = (".png", ".pdf", ".svg")


def run_plot(args: argparse.Namespace) -> None:
    if not args.out.endswith(FORMATS):
        raise ValueError(f"--out must end in {', '.join(FORMATS)}, got {args.out!r}")
    check_output("--out", args.out, args.overwrite)
    workdirs = list(dict.fromkeys(args.workdir))
    configs = {w: runs.read_run_config(w).to_dict() for w in workdirs}
    records = {w: curves_lib.read_metrics(w) for w in workdirs}
    for w, rs in records.items():
        logged = curves_lib.metrics_of(rs)
        if args.metric not in logged:
            raise ValueError(f"--metric {args.metric}: {w} does not log it; allowed: {', '.join(logged)}")
    groups = curves_lib.group_runs(configs)
    curves = curves_lib.group_curves(records, groups, args.metric)
    for label, by_block in curves.items():
        members = groups[label]
        print(f"{label}: {len(members)} run(s) ({', '.join(members)})")
        for b, (steps, values_ST) in by_block.items():
            if len(steps):
                print(f"  block {b}: {args.metric} at block step {steps[-1]}: {describe(summary(values_ST[:, -1]))}")
            else:
                print(f"  block {b}: its seeds logged no step in common")
    with written_whole(args.out) as partial:
        curves_lib.save_curves(partial, curves, args.metric)
    print(f"wrote {os.path.abspath(args.out)}")
