"""`dblocks evaluate`: the run's task scores it (`Task.evaluate`), prints its report
(`Task.report`) and the result goes to JSON."""

from __future__ import annotations

import argparse
import json
import os

from dblocks_jax import config as config_lib
from dblocks_jax import runs
from dblocks_jax.commands.common import check_output, check_seed, task_options
from dblocks_jax.tasks.plugin import int_list


def run_evaluate(args: argparse.Namespace) -> None:
    path = args.json or os.path.join(args.workdir, "evaluation_untrained.json" if args.untrained
                                     else "evaluation.json")
    check_output("--json", path)
    seeds = int_list("--seeds", args.seeds)
    for seed in seeds:
        check_seed("--seeds", seed)
    config = runs.read_run_config(args.workdir)
    task_cls = type(config).task_class
    options = task_options(args, "evaluate", task_cls, args.workdir)
    overrides = config_lib.parse_overrides(args.overrides, type(config))
    request = runs.request_for(config, "evaluate", args.workdir, options=options, overrides=overrides, seeds=seeds,
                               untrained=args.untrained, output=path)
    result = task_cls.evaluate(request)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    for line in task_cls.report(result):
        print(line)
    print(f"wrote {path}")
