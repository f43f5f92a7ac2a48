"""`dblocks train` and `dblocks assemble`: the commands that write a run directory."""

from __future__ import annotations

import argparse
import math
import os
import time

from dblocks_jax import config as config_lib
from dblocks_jax import presets as presets_lib
from dblocks_jax import runs
from dblocks_jax.commands.common import check_seed, flag_values, preset_and_overrides
from dblocks_jax.engine import checkpoint
from dblocks_jax.engine.distributed import initialize_distributed
from dblocks_jax.tasks.plugin import int_list

TRAIN_FLAGS = {"num_blocks": "model.num_blocks", "steps": "optim.steps", "schedule": "schedule.name",
               "seed": "run.seed"}


def train_config(args: argparse.Namespace) -> config_lib.Config:
    check_seed("--seed", args.seed)
    name, overrides = preset_and_overrides(args.config, args.overrides)
    overrides.update(flag_values(args, TRAIN_FLAGS))
    return presets_lib.get_config(name, overrides)


def run_train(args: argparse.Namespace) -> None:
    config = train_config(args)  # validated here, before JAX compiles anything
    blocks = int_list("--blocks", args.blocks) if args.blocks else None
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    workdir = args.workdir or runs.default_workdir(config)
    m = config.model
    which = f"blocks {','.join(map(str, blocks))} of {m.num_blocks}" if blocks else f"{m.num_blocks} block(s)"
    depth = m.layer_split.replace(",", "-") if m.uneven else m.layers_per_block
    print(f"{config.task}: training {which} x {depth} layers on {config.data.dataset}, {config.schedule.name} "
          f"schedule, {config.optim.steps} steps per block -> {workdir}", flush=True)
    estimate = type(config).task_class.work_estimate(config)
    if estimate:
        print(estimate, flush=True)
    start = time.perf_counter()
    result = runs.train(config, workdir, overwrite=args.overwrite, resume=args.resume, blocks=blocks,
                        progress=not args.no_progress)
    losses = ", ".join(f"{loss:.4f}" for loss in result.final_loss if not math.isnan(loss))
    print(f"done in {time.perf_counter() - start:.0f} s; final loss per block: {losses or 'n/a (resumed at the end)'}")
    if not all(p is not None for p in result.params):
        print(f"checkpoints: {os.path.join(workdir, 'checkpoints')} (this process trained part of the model: "
              f"`dblocks sample` or `dblocks assemble` once every block is trained)")
        return
    try:
        lines = type(config).task_class.train_summary(workdir)
    except FileNotFoundError as err:  # the task's results file is not there (another process writes it)
        lines = [f"checkpoints: {os.path.join(workdir, 'checkpoints')} (no results to show: {err})"]
    for line in lines:
        print(line)


def run_assemble(args: argparse.Namespace) -> None:
    sources = runs.assemble(args.workdir, args.out, overwrite=args.overwrite)
    for b, workdir in sources.items():
        print(f"block {b}: {workdir}")
    print(f"wrote {args.out}; use it like any run (`dblocks sample --workdir {args.out} ...`, `dblocks evaluate`)")


def interrupted_message(err, argv: list[str], args: argparse.Namespace) -> str:
    """Where training stopped, the last committed checkpoint of each block and how to resume."""
    if args.command == "assemble" and os.path.exists(args.out):  # it may have been emptied or half copied
        return f"interrupted; --out {args.out} may be incomplete: assemble again with --overwrite"
    if args.command != "train":
        return "interrupted; nothing was written"
    workdir = getattr(err, "workdir", None) or args.workdir
    where = f" after step {err.position} of {err.length}" if hasattr(err, "position") else ""
    if not workdir or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return f"interrupted{where}; no checkpoint was committed"
    blocks = sorted(int(n[6:]) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.startswith("block_"))
    last = ", ".join(f"block {b}: step {checkpoint.latest_step(workdir, b)}" for b in blocks) or "none"
    again = [a for a in argv if a not in ("--overwrite", "--resume")]
    if "--workdir" not in again:
        again += ["--workdir", workdir]
    return (f"interrupted{where}; last committed checkpoint per block: {last}. Resume with: dblocks "
            f"{' '.join(again)} --resume")
