"""Command line: `python -m dblocks_jax {train,sample,evaluate,bench} ...` (also installed as `dblocks`).

A thin layer over `dblocks_jax.training`, `dblocks_jax.sampling` and `dblocks_jax.bench`: it parses
arguments, builds and validates the config (so a bad value fails before anything compiles), and
prints where the results went.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from dblocks_jax import config as config_lib
from dblocks_jax.checkpoint import CheckpointSaveError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dblocks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train every block of a DiffusionBlocks model (B = 1: end-to-end)")
    tr.add_argument("--config", default="shapes", help=f"preset: {', '.join(sorted(config_lib.PRESETS))}")
    tr.add_argument("--num-blocks", type=int, help="number of blocks B (1 = end-to-end baseline)")
    tr.add_argument("--steps", type=int, help="optimizer steps per block")
    tr.add_argument("--schedule", help=f"one of {', '.join(config_lib.SCHEDULES)}")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--workdir", help="run directory (default: runs/<dataset>_B<B>_<schedule>_seed<seed>)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override any config field, e.g. --set width=64 (repeatable)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run in --workdir")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --workdir from its newest intact checkpoint (starts it if it has none)")
    tr.add_argument("--blocks", help="train only these blocks, e.g. 0,1 (the rest elsewhere; see `assemble`)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    dist = tr.add_argument_group("multi-host (jax.distributed); flags override JAX_COORDINATOR_ADDRESS, "
                                 "JAX_NUM_PROCESSES and JAX_PROCESS_ID")
    dist.add_argument("--coordinator", help="host:port of process 0")
    dist.add_argument("--num-processes", type=int)
    dist.add_argument("--process-id", type=int)

    sa = sub.add_parser("sample", help="draw samples from a trained run")
    sa.add_argument("--workdir", required=True, action="append",
                    help="run directory; repeat it to use blocks trained in separate runs")
    sa.add_argument("--num-samples", type=int)
    sa.add_argument("--steps", type=int, help="sampler steps K")
    sa.add_argument("--solver", choices=config_lib.SOLVERS)
    sa.add_argument("--grid", choices=config_lib.GRIDS)
    sa.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = conditional)")
    sa.add_argument("--seed", type=int)
    sa.add_argument("--class", dest="class_label", type=int,
                    help="draw every sample of this class (default: a balanced grid over the classes)")
    sa.add_argument("--out", required=True, help="FILE.png (image grid) or FILE.npz (images, labels)")

    ev = sub.add_parser("evaluate", help="score a trained run: Frechet distance in classifier feature space "
                                         "and conditional accuracy, over several sampling seeds, and standard FID "
                                         "for tfds datasets")
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--seeds", default="0,1,2", help="comma-separated sampling seeds")
    ev.add_argument("--num-samples", type=int, help="samples per seed (default: the held-out split's size)")
    ev.add_argument("--steps", type=int, help="sampler steps K")
    ev.add_argument("--guidance", type=float)
    ev.add_argument("--inception-weights", metavar="PATH",
                    help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an .npz with its keys): adds the "
                         "standard FID (InceptionV3). tfds: datasets default to $DBLOCKS_INCEPTION_WEIGHTS; "
                         "bundled datasets only with this flag")
    ev.add_argument("--untrained", action="store_true",
                    help="score freshly initialised blocks of the run's config (the baseline to beat)")
    ev.add_argument("--json", help="also write the result here (default: <workdir>/evaluation.json, "
                                   "evaluation_untrained.json with --untrained)")
    asm = sub.add_parser("assemble", help="gather blocks trained in separate runs into one run directory")
    asm.add_argument("--workdir", required=True, action="append", help="a run holding some blocks (repeat)")
    asm.add_argument("--out", required=True, help="the new run directory")
    asm.add_argument("--overwrite", action="store_true")

    be = sub.add_parser("bench", help="measure memory, step time and sampling cost: e2e vs DiffusionBlocks")
    be.add_argument("--config", default="shapes", help=f"preset: {', '.join(sorted(config_lib.PRESETS))}")
    be.add_argument("--num-blocks", default="1,2,4", help="comma-separated values of B, e.g. 1,2,3,4,6,8")
    be.add_argument("--modes", default=None, help="comma-separated subset of: e2e, e2e-remat, db-sequential, "
                                                  "db-interleaved, db-remat (default: all)")
    be.add_argument("--batch-size", type=int, help="override the preset's batch size")
    be.add_argument("--time-steps", type=int, default=20, help="timed steps per mode and B (0: memory only)")
    be.add_argument("--sample-steps", type=int, default=0, help="also time the sampler with K steps (0: skip)")
    be.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    be.add_argument("--json", help="write the records here, with a .md table and a .png chart beside it")
    return parser


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} expects at least one integer")
    return values


def run_bench(args: argparse.Namespace) -> None:
    from dblocks_jax import bench

    overrides = config_lib.parse_overrides(args.overrides)
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    config = config_lib.get_config(args.config, **overrides)
    modes = tuple(m.strip() for m in args.modes.split(",")) if args.modes else bench.MODES
    if args.time_steps < 0 or args.sample_steps < 0:
        raise ValueError("--time-steps and --sample-steps must be >= 0")
    settings = bench.BenchSettings(num_blocks=_int_list("--num-blocks", args.num_blocks), modes=modes,
                                   time_steps=args.time_steps, sample_steps=args.sample_steps)
    bench.plan_runs(config, settings)  # every mode and B validated before anything compiles
    records = bench.run_bench(config, settings)
    print(bench.markdown_table(records))
    if args.json:
        table, chart = bench.write_results(records, args.json)
        print(f"wrote {args.json}, {table}, {chart}")


def train_config(args: argparse.Namespace) -> config_lib.Config:
    overrides = config_lib.parse_overrides(args.overrides)
    for flag, field in (("num_blocks", "num_blocks"), ("steps", "steps"), ("schedule", "schedule"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            overrides[field] = getattr(args, flag)
    return config_lib.get_config(args.config, **overrides)


def sample_config(args: argparse.Namespace) -> config_lib.Config:
    """The run's saved config with the sampling flags applied."""
    from dblocks_jax import training

    flags = {"num_samples": args.num_samples, "sample_steps": args.steps, "solver": args.solver,
             "grid": args.grid, "guidance": args.guidance, "seed": args.seed}
    return training.read_runs_config(args.workdir, **{k: v for k, v in flags.items() if v is not None})


def run_train(args: argparse.Namespace) -> None:
    config = train_config(args)  # validated here, before JAX compiles anything
    blocks = _int_list("--blocks", args.blocks) if args.blocks else None
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    from dblocks_jax import parallel, training

    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    workdir = args.workdir or training.default_workdir(config)
    which = f"blocks {','.join(map(str, blocks))} of {config.num_blocks}" if blocks else f"{config.num_blocks} block(s)"
    depth = config.layer_split.replace(",", "-") if config.uneven else config.layers_per_block
    print(f"training {which} x {depth} layers on {config.dataset}, "
          f"{config.schedule} schedule, {config.steps} steps per block -> {workdir}", flush=True)
    start = time.perf_counter()
    result = training.train(config, workdir, overwrite=args.overwrite, resume=args.resume, blocks=blocks,
                            progress=not args.no_progress)
    losses = ", ".join(f"{loss:.4f}" for loss in result.final_loss if not math.isnan(loss))
    print(f"done in {time.perf_counter() - start:.0f} s; final loss per block: {losses or 'n/a (resumed at the end)'}")
    if os.path.exists(os.path.join(workdir, "samples.png")) and all(p is not None for p in result.params):
        print(f"samples: {os.path.join(workdir, 'samples.png')}")
    else:
        print(f"checkpoints: {os.path.join(workdir, 'checkpoints')} (this process trained part of the model: "
              f"`dblocks sample` or `dblocks assemble` once every block is trained)")


def run_assemble(args: argparse.Namespace) -> None:
    from dblocks_jax import training

    sources = training.assemble(args.workdir, args.out, overwrite=args.overwrite)
    for b, workdir in sources.items():
        print(f"block {b}: {workdir}")
    print(f"wrote {args.out}; sample it with `dblocks sample --workdir {args.out} --out samples.png`")


def run_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from dblocks_jax import training
    from dblocks_jax.plotting import save_image_grid

    if not args.out.endswith((".png", ".npz")):
        raise ValueError(f"--out must end in .png or .npz, got {args.out!r}")
    config = sample_config(args)
    trainer = training.BlockTrainer(config)
    params, _ = training.restore_run(args.workdir, trainer)
    labels = None
    if args.class_label is not None:
        if not 0 <= args.class_label < config.num_classes:
            raise ValueError(f"--class {args.class_label}; allowed: 0..{config.num_classes - 1} for this run "
                             f"(class-conditional: {config.class_conditional})")
        labels = np.full(config.num_samples, args.class_label, np.int32)
    images, labels = training.sample_from_config(config, trainer.model, params, labels=labels)
    if args.out.endswith(".png"):
        save_image_grid(args.out, images, num_cols=int(np.ceil(np.sqrt(len(images)))))
    else:
        np.savez(args.out, images=images, labels=labels if labels is not None else np.zeros(0, np.int32))
    print(f"wrote {config.num_samples} samples ({config.solver}, {config.sample_steps} steps, {config.grid} grid, "
          f"guidance {config.guidance}) to {args.out}")


def run_evaluate(args: argparse.Namespace) -> None:
    from dblocks_jax import metrics

    overrides = {k: v for k, v in (("sample_steps", args.steps), ("guidance", args.guidance)) if v is not None}
    result = metrics.evaluate_run(args.workdir, seeds=_int_list("--seeds", args.seeds),
                                  num_samples=args.num_samples, overrides=overrides, untrained=args.untrained,
                                  inception_weights=args.inception_weights)
    default_name = "evaluation_untrained.json" if args.untrained else "evaluation.json"
    path = args.json or os.path.join(args.workdir, default_name)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    fd, acc = result["frechet_distance"], result["conditional_accuracy"]
    print(f"Frechet distance (classifier features, {result['num_samples']} samples vs {result['num_reference']} "
          f"held-out): {fd['mean']:.3f} +/- {fd['std']:.3f} over {len(result['seeds'])} seeds")
    if acc:
        print(f"conditional accuracy: {acc['mean']:.3f} +/- {acc['std']:.3f} "
              f"(classifier's own held-out accuracy: {result['classifier']['held_out_accuracy']:.3f})")
    fid = result["fid"]
    if fid:
        print(f"FID (InceptionV3 pool3, {result['num_samples']} samples vs {result['num_reference']} held-out): "
              f"{fid['mean']:.2f} +/- {fid['std']:.2f} over {len(result['seeds'])} seeds (weights: {fid['weights']})")
    elif result["dataset"].startswith("tfds:"):
        print(f"FID not computed: {result['fid_skipped']}")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"train": run_train, "sample": run_sample, "evaluate": run_evaluate, "bench": run_bench,
                    "assemble": run_assemble}
        commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"dblocks {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # NonFiniteLossError: names the block and the step
        print(f"dblocks {args.command}: training stopped: {err}", file=sys.stderr)
        return 1
    except CheckpointSaveError as err:  # names the directory; earlier checkpoints are intact
        print(f"dblocks {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
