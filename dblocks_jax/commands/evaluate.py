"""`dblocks evaluate`: the run's task scores it (`Task.evaluate`), prints its report
(`Task.report`) and the result goes to JSON."""

from __future__ import annotations

import argparse
import json
import os

from dblocks_jax import config as config_lib
from dblocks_jax import runs
from dblocks_jax.commands.common import check_output, check_run_for_use, check_seed, task_options, written_whole
from dblocks_jax.engine import events
from dblocks_jax.tasks.plugin import int_list


def run_evaluate(args: argparse.Namespace) -> None:
    path = args.json or os.path.join(args.workdir, "evaluation_untrained.json" if args.untrained
                                     else "evaluation.json")
    seeds = int_list("--seeds", args.seeds)
    for seed in seeds:
        check_seed("--seeds", seed)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"--seeds {args.seeds} repeats {', '.join(map(str, repeated))}: a seed drawn twice draws the "
                         f"same numbers, and its spread would read as a measure of noise; allowed: distinct seeds")
    config = runs.read_run_config(args.workdir)
    task_cls = type(config).task_class
    options = task_options(args, "evaluate", task_cls, args.workdir)
    overrides = config_lib.parse_overrides(args.overrides, type(config))
    request = runs.request_for(config, "evaluate", args.workdir, options=options, overrides=overrides, seeds=seeds,
                               untrained=args.untrained, output=path)
    check_output("--json", path, args.overwrite, also=task_cls.evaluation_outputs(path))
    partial = check_run_for_use(args.workdir, config, args.untrained)
    result = {**task_cls.evaluate(request), "partial_blocks": {str(b): n for b, n in partial.items()}}
    with written_whole(path) as partial, open(partial, "w") as f:
        json.dump(result, f, indent=1)
    for line in task_cls.report(result):
        print(line)
    print(f"wrote {path}")
    if config.run.tensorboard:  # beside the training curves, at the run's last step
        try:
            events.write_result(args.workdir, "eval_untrained" if args.untrained else "eval", result,
                                config.optim.steps)
        except OSError as err:
            print(f"note: no TensorBoard events written to {events.event_dir(args.workdir)}: {err}")
