"""`dblocks plot RUN... [--metric loss] [--out curves.png]`: a logged metric against each block's
step for one or many runs; runs that differ only in their seed become one mean +/- std band. Reads
`metrics.jsonl`, so it works without TensorBoard and on runs still training."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dblocks_jax import runs
from dblocks_jax.commands.common import check_output, written_whole
from dblocks_jax.engine.settings import TRAINING_ROLES, values_with_roles
from dblocks_jax.evaluation import curves as curves_lib
from dblocks_jax.evaluation.stats import describe, summary

FORMATS = (".png", ".pdf", ".svg")


def training_of(workdir: str) -> tuple[dict, int]:
    """(the fields that define the run's training but for its seed, with its task; its seed):
    runs equal in the first are seeds of one configuration, whatever their logging, sampling or
    sharding settings."""
    config = runs.read_run_config(workdir)
    fields = values_with_roles(config, TRAINING_ROLES)
    return {"task": config.task, **{k: v for k, v in fields.items() if k != "run.seed"}}, config.run.seed


def read_runs(workdirs: list[str]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """({run: records}, {run: training}) with the directories of one run trained in parts (`train
    --blocks`: same training and seed, other blocks) joined into one run, named "A + B"."""
    parts: dict[str, list[str]] = {}
    trainings = {}
    for w in workdirs:
        training, seed = training_of(w)
        parts.setdefault(json.dumps([training, seed], sort_keys=True, default=str), []).append(w)
        trainings[w] = training
    records, joined = {}, {}
    for members in parts.values():
        name, logged, seen = " + ".join(members), [], {}
        for w in members:
            rs, notes = curves_lib.read_metrics(w)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            for b in sorted({r["block"] for r in rs}):
                if b in seen:
                    raise ValueError(f"{seen[b]} and {w} are runs of the same configuration and seed that both logged "
                                     f"block {b}: plot one of them (seeds of one configuration differ in run.seed)")
                seen[b] = w
            logged += rs
        records[name], joined[name] = logged, trainings[members[0]]
    return records, joined


def run_plot(args: argparse.Namespace) -> None:
    if not args.out.endswith(FORMATS):
        raise ValueError(f"--out must end in {', '.join(FORMATS)}, got {args.out!r}")
    check_output("--out", args.out, args.overwrite)
    workdirs, seen = [], set()
    for w in args.workdir:  # a directory given twice (runs/a, ./runs/a/) is one run, not two seeds
        if os.path.realpath(w) not in seen:
            seen.add(os.path.realpath(w))
            workdirs.append(w)
    records, trainings = read_runs(workdirs)
    for name, rs in records.items():
        logged = curves_lib.metrics_of(rs)
        if args.metric not in logged:
            raise ValueError(f"--metric {args.metric}: {name} does not log it; allowed: {', '.join(logged)}")
    groups = curves_lib.group_runs(trainings)
    curves = curves_lib.group_curves(records, groups, args.metric)
    for label, by_block in curves.items():
        members = groups[label]
        print(f"{label}: {len(members)} seed(s) ({', '.join(members)})")
        for b, (steps, values_ST) in by_block.items():
            some = f" (logged by {len(values_ST)} of {len(members)} seeds)" if len(values_ST) < len(members) else ""
            if len(steps):
                print(f"  block {b}: {args.metric} at block step {steps[-1]}: "
                      f"{describe(summary(values_ST[:, -1]))}{some}")
            else:
                print(f"  block {b}: its seeds logged no block step in common{some}")
    with written_whole(args.out) as partial:
        curves_lib.save_curves(partial, curves, args.metric, {label: len(m) for label, m in groups.items()})
    print(f"wrote {os.path.abspath(args.out)}")
