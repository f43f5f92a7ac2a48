"""`dblocks sample`: the run's task writes its samples (`Task.write_samples`) in one of the output
formats it declares (`Task.sample_formats`)."""

from __future__ import annotations

import argparse
import dataclasses
import os

from dblocks_jax import config as config_lib
from dblocks_jax import runs
from dblocks_jax.commands.common import check_output, check_run_for_use, check_seed, task_options, written_whole
from dblocks_jax.tasks import registry


def formats() -> dict[str, list[str]]:
    """{extension: the tasks whose samples it holds} over every registered task."""
    out: dict[str, list[str]] = {}
    for name, cls in registry.task_classes().items():
        for ext in cls.sample_formats:
            out.setdefault(ext, []).append(name)
    return out


def run_sample(args: argparse.Namespace) -> None:
    known = formats()
    if not args.out.endswith(tuple(known)):
        by_tasks: dict[tuple, list[str]] = {}
        for ext, tasks in known.items():
            by_tasks.setdefault(tuple(tasks), []).append(ext)
        allowed = " or ".join(f"{', '.join(exts)} ({', '.join(tasks)})" for tasks, exts in by_tasks.items())
        raise ValueError(f"--out must end in {allowed}, got {args.out!r}")
    check_seed("--seed", args.seed)
    config = runs.read_run_config(args.workdir)
    task_cls, where = type(config).task_class, args.workdir[0]
    if not task_cls.sample_formats:
        raise ValueError(f"{where} holds a run of task {task_cls.name}, which has no sampler (tasks that sample: "
                         f"{', '.join(sorted({t for ts in known.values() for t in ts}))}); score it with "
                         f"`dblocks evaluate`")
    if not args.out.endswith(task_cls.sample_formats):
        raise ValueError(f"--out must end in {', '.join(task_cls.sample_formats)} for a {task_cls.name} run, got "
                         f"{args.out!r}")
    options = task_options(args, "sample", task_cls, where)
    overrides = config_lib.parse_overrides(args.overrides, type(config))
    request = runs.request_for(config, "sample", args.workdir, options=options, overrides=overrides,
                               seed=args.seed)  # the flags checked before the output and the run's files
    check_output("--out", args.out, args.overwrite)
    check_run_for_use(args.workdir, config)
    with written_whole(args.out) as partial:
        lines = task_cls.write_samples(dataclasses.replace(request, output=partial))
    for line in lines:  # the hook named the temporary file, as given or as an absolute path
        print(line.replace(os.path.abspath(partial), os.path.abspath(args.out)).replace(partial, args.out))
