"""Command line: `dblocks {train,sample,evaluate,assemble,bench,list} ...` (also `python -m dblocks_jax`).

A thin layer: it parses arguments, builds and validates the config (so a bad value fails before
anything compiles), calls `dblocks_jax.runs` / the task / the engine, and prints where the
results went.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from dblocks_jax import config as config_lib
from dblocks_jax import presets as presets_lib
from dblocks_jax.engine.checkpoint import CheckpointSaveError
from dblocks_jax.engine.settings import GRIDS, SAMPLING, SCHEDULES, SEED_LIMIT, SOLVERS, field_types, leaves


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dblocks", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show library logs (orbax, absl, asyncio) and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    presets = ", ".join(sorted(presets_lib.PRESETS))
    set_help = "override a config field, e.g. --set model.width=64 (repeatable; `dblocks list --fields`)"

    tr = sub.add_parser("train", parents=[common],
                        help="train every block of a DiffusionBlocks model (B = 1: end-to-end)")
    tr.add_argument("--config", default="shapes", help=f"preset: {presets} (`dblocks list`)")
    tr.add_argument("--num-blocks", type=int, help="model.num_blocks: number of blocks B (1 = end-to-end baseline)")
    tr.add_argument("--steps", type=int, help="optim.steps: optimizer steps per block")
    tr.add_argument("--schedule", help=f"schedule.name: one of {', '.join(SCHEDULES)}")
    tr.add_argument("--seed", type=int, help="run.seed")
    tr.add_argument("--workdir", help="run directory (default: runs/<dataset>_B<B>_<schedule>_seed<seed>)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help=set_help)
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

    sa = sub.add_parser("sample", parents=[common], help="draw samples from a trained run (images or text)")
    sa.add_argument("--workdir", required=True, action="append",
                    help="run directory; repeat it to use blocks trained in separate runs")
    sa.add_argument("--num-samples", type=int, help="sampling.num_samples")
    sa.add_argument("--steps", type=int, help="sampling.steps: chain steps K (autoregressive_lm: ar.steps, network "
                                               "calls per symbol; recurrent_lm: recurrent.steps, core iterations)")
    sa.add_argument("--solver", choices=SOLVERS, help="sampling.solver")
    sa.add_argument("--grid", choices=GRIDS, help="sampling.grid")
    sa.add_argument("--guidance", type=float, help="sampling.guidance: classifier-free guidance (1 = conditional)")
    sa.add_argument("--seed", type=int)
    sa.add_argument("--set", dest="overrides", action="append", default=[], metavar="sampling.FIELD=VALUE",
                    help="any sampling field, e.g. --set sampling.s_churn=40 for --solver edm_stochastic")
    sa.add_argument("--class", dest="class_label", type=int,
                    help="draw every sample of this class (default: a balanced grid over the classes)")
    sa.add_argument("--batch-size", type=int, default=256, help="samples drawn at once (any --num-samples fits)")
    sa.add_argument("--prompt", help="autoregressive_lm, recurrent_lm: the text to continue (default: held-out "
                                     "prompts)")
    sa.add_argument("--length", type=int, help="autoregressive_lm, recurrent_lm: symbols to generate (default: "
                                               "ar.gen_len)")
    sa.add_argument("--out", required=True, help="FILE.png (image grid), FILE.npz (images, labels) or FILE.npy "
                                                 "(images, written batch by batch); language tasks: FILE.txt (a "
                                                 "sample per line)")

    ev = sub.add_parser("evaluate", parents=[common],
                        help="score a trained run over several seeds: generation (Frechet distance in classifier "
                             "features, conditional accuracy, FID for tfds datasets), classification (accuracy, "
                             "ECE, NLL on the held-out split), masked_lm (bits per character, per block; samples), "
                             "autoregressive_lm (bits per character, gen-PPL, distinct-n, tokens/s) or recurrent_lm "
                             "(bits per character against test-time depth K, training FLOPs, generations)")
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--seeds", default="0,1,2", help="comma-separated sampling (or chain) seeds")
    ev.add_argument("--num-samples", type=int, help="generation: samples per seed (default: the held-out split's "
                                                    "size); masked_lm: text samples (default: sampling.num_samples)")
    ev.add_argument("--steps", help="generation and masked_lm: sampling.steps; classification: network calls of "
                                    "the chain, comma-separated to compare several, e.g. 3,6,12 (default: "
                                    "classify.steps); recurrent_lm: core iterations K, comma-separated (default: "
                                    "1,2,4,8,16,32)")
    ev.add_argument("--guidance", type=float, help="generation: sampling.guidance")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="a sampling-role field, e.g. --set classify.official_table=true")
    ev.add_argument("--inception-weights", metavar="PATH",
                    help="generation: pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an .npz with its keys): "
                         "adds the standard FID (InceptionV3). tfds: datasets default to $DBLOCKS_INCEPTION_WEIGHTS; "
                         "bundled datasets only with this flag")
    ev.add_argument("--mc", type=int, help="autoregressive_lm, recurrent_lm: chain starting noises per symbol for the "
                                           "Monte-Carlo likelihood (default: ar.mc_draws, recurrent.mc_draws)")
    ev.add_argument("--reference", metavar="WORKDIR",
                    help="autoregressive_lm, recurrent_lm: a plain autoregressive run (same vocabulary) that scores "
                         "the generations (gen-PPL, MAUVE features; autoregressive_lm: its generation speed beside)")
    ev.add_argument("--untrained", action="store_true",
                    help="score freshly initialised blocks of the run's config (the baseline to beat)")
    ev.add_argument("--json", help="also write the result here (default: <workdir>/evaluation.json, "
                                   "evaluation_untrained.json with --untrained)")

    asm = sub.add_parser("assemble", parents=[common],
                         help="gather blocks trained in separate runs into one run directory")
    asm.add_argument("--workdir", required=True, action="append", help="a run holding some blocks (repeat)")
    asm.add_argument("--out", required=True, help="the new run directory")
    asm.add_argument("--overwrite", action="store_true")

    be = sub.add_parser("bench", parents=[common],
                        help="measure memory, step and compile time, sampling cost: e2e vs DiffusionBlocks")
    be.add_argument("--config", default="shapes", help=f"preset: {presets}")
    be.add_argument("--num-blocks", default="1,2,4", help="comma-separated values of B, e.g. 1,2,3,4,6,12")
    be.add_argument("--modes", default=None, help="comma-separated subset of: e2e, e2e-remat, db-sequential, "
                                                  "db-interleaved, db-remat (default: all)")
    be.add_argument("--batch-size", type=int, help="data.batch_size")
    be.add_argument("--time-steps", type=int, default=20, help="timed steps per mode and B (0: memory only)")
    be.add_argument("--sample-steps", type=int, default=0, help="also time the sampler with K steps (0: skip)")
    be.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: the table in "
                                                      "dblocks_jax/engine/hardware.py: H100/H200 989, A100 312, TPU "
                                                      "v4 275, v5e 197, v5p 459; none for a CPU)")
    be.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help=set_help)
    be.add_argument("--json", help="write the records here, with a .md table and a .png chart beside it")

    ls = sub.add_parser("list", parents=[common],
                        help="the presets, grouped by task (with --fields: every config field)")
    ls.add_argument("--fields", action="store_true", help="every config field with its default and role")
    return parser


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} expects at least one integer")
    return values


def _flags(args: argparse.Namespace, mapping: dict[str, str]) -> dict:
    return {path: getattr(args, flag) for flag, path in mapping.items() if getattr(args, flag, None) is not None}


def check_seed(flag: str, seed: int | None) -> None:
    """The one seed rule of every command: an integer in [0, 2**32)."""
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{flag} {seed}; allowed: an integer >= 0 and < 2**32")


def check_output(flag: str, path: str) -> None:
    """An output file's directory must exist and be writable: checked before any work is done."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{flag} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{flag} {path}: the directory {directory} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a directory; give a file name")


def train_config(args: argparse.Namespace) -> config_lib.Config:
    check_seed("--seed", args.seed)
    overrides = config_lib.parse_overrides(args.overrides)
    overrides.update(_flags(args, {"num_blocks": "model.num_blocks", "steps": "optim.steps",
                                   "schedule": "schedule.name", "seed": "run.seed"}))
    return presets_lib.get_config(args.config, overrides)


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sample command's overrides: only sampling fields may change after training."""
    overrides = config_lib.parse_overrides(getattr(args, "overrides", []))
    roles = {p: f.metadata["role"] for p, (_, f) in leaves(config_lib.Config()).items()}
    fixed = [p for p in overrides if roles[p] != SAMPLING]
    if fixed:
        raise ValueError(f"sample may change sampling fields only; {', '.join(fixed)} defined the training")
    overrides.update(_flags(args, {"num_samples": "sampling.num_samples", "steps": "sampling.steps",
                                   "solver": "sampling.solver", "grid": "sampling.grid",
                                   "guidance": "sampling.guidance"}))
    return overrides


def run_train(args: argparse.Namespace) -> None:
    config = train_config(args)  # validated here, before JAX compiles anything
    blocks = _int_list("--blocks", args.blocks) if args.blocks else None
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    from dblocks_jax import runs
    from dblocks_jax.engine.distributed import initialize_distributed

    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    workdir = args.workdir or runs.default_workdir(config)
    m = config.model
    which = f"blocks {','.join(map(str, blocks))} of {m.num_blocks}" if blocks else f"{m.num_blocks} block(s)"
    depth = m.layer_split.replace(",", "-") if m.uneven else m.layers_per_block
    print(f"{config.task}: training {which} x {depth} layers on {config.data.dataset}, {config.schedule.name} "
          f"schedule, {config.optim.steps} steps per block -> {workdir}", flush=True)
    start = time.perf_counter()
    result = runs.train(config, workdir, overwrite=args.overwrite, resume=args.resume, blocks=blocks,
                        progress=not args.no_progress)
    losses = ", ".join(f"{loss:.4f}" for loss in result.final_loss if not math.isnan(loss))
    print(f"done in {time.perf_counter() - start:.0f} s; final loss per block: {losses or 'n/a (resumed at the end)'}")
    accuracy, bpc = os.path.join(workdir, "accuracy.json"), os.path.join(workdir, "bpc.json")
    if not all(p is not None for p in result.params):
        print(f"checkpoints: {os.path.join(workdir, 'checkpoints')} (this process trained part of the model: "
              f"`dblocks sample` or `dblocks assemble` once every block is trained)")
    elif os.path.exists(os.path.join(workdir, "samples.png")):
        print(f"samples: {os.path.join(workdir, 'samples.png')}")
    elif os.path.exists(accuracy):
        with open(accuracy) as f:
            scores = json.load(f)
        print(f"held-out accuracy {scores['accuracy']['mean']:.4f}, ECE {scores['ece']['mean']:.4f} "
              f"({scores['steps']} network call(s), {scores['num_examples']} images) -> {accuracy}")
    elif os.path.exists(bpc):
        with open(bpc) as f:
            scores = json.load(f)
        if "bpc_by_steps" in scores:  # recurrent_lm
            by_k = ", ".join(f"K={k}: {v['bpc']['mean']:.4f}" for k, v in scores["bpc_by_steps"].items())
            print(f"held-out bits per character ({scores['method']}) {by_k} -> {bpc}; samples: "
                  f"{os.path.join(workdir, 'samples.txt')}")
            return
        shares = " + ".join(f"{s['mean']:.3f}" for s in scores.get("bpc_per_block", ()))
        detail = f"blocks: {shares}" if shares else (
            f"{scores['mc_draws']} chain draws per symbol, +/- {scores['bpc_mc_se']:.4f}; "
            f"CE at sigma_max {scores['ce_at_sigma_max']['mean']:.3f}" if "ce_at_sigma_max" in scores else "exact")
        print(f"held-out {scores['bpc']['mean']:.4f} bits per character ({detail}; unigram floor "
              f"{scores['unigram_bpc']:.3f}; {scores['num_sequences']} windows of {scores['seq_len']}) -> {bpc}; "
              f"samples: {os.path.join(workdir, 'samples.txt')}")
    else:
        print(f"checkpoints: {os.path.join(workdir, 'checkpoints')}")


def run_assemble(args: argparse.Namespace) -> None:
    from dblocks_jax import runs

    sources = runs.assemble(args.workdir, args.out, overwrite=args.overwrite)
    for b, workdir in sources.items():
        print(f"block {b}: {workdir}")
    print(f"wrote {args.out}; sample it with `dblocks sample --workdir {args.out} --out samples.png`")


def run_bench(args: argparse.Namespace) -> None:
    from dblocks_jax.engine import bench, hardware
    from dblocks_jax.evaluation import bench_report
    from dblocks_jax.tasks import make_task

    # Every mode sets its own B: the preset's num_blocks (and its layer split) must not make the
    # base config invalid for a --set that only the benched Bs satisfy.
    overrides = {"model.num_blocks": 1, "model.layer_split": "", **config_lib.parse_overrides(args.overrides)}
    if args.batch_size is not None:
        overrides["data.batch_size"] = args.batch_size
    config = presets_lib.get_config(args.config, overrides)
    modes = tuple(m.strip() for m in args.modes.split(",")) if args.modes else bench.MODES
    if args.time_steps < 0 or args.sample_steps < 0:
        raise ValueError("--time-steps and --sample-steps must be >= 0")
    settings = bench.BenchSettings(num_blocks=_int_list("--num-blocks", args.num_blocks), modes=modes,
                                   time_steps=args.time_steps, sample_steps=args.sample_steps,
                                   peak_tflops=args.peak_tflops)
    bench.plan_runs(config, settings)  # every mode and B validated before anything compiles
    hardware.peak_flops("", args.peak_tflops)
    records = bench.run_bench(config, make_task, settings)
    print(bench_report.markdown_table(records))
    if args.json:
        table, chart = bench_report.write_results(records, args.json)
        print(f"wrote {args.json}, {table}, {chart}")


def run_list(args: argparse.Namespace) -> None:
    print(presets_lib.describe_presets())
    if args.fields:
        types = field_types(config_lib.Config)
        print("\nfields (section.field: type = default [role]):")
        for path, (value, f) in leaves(config_lib.Config()).items():
            doc = f.metadata.get("doc")
            print(f"  {path}: {types[path].__name__} = {value!r} [{f.metadata['role']}]" + (f"  {doc}" if doc else ""))


def quiet_libraries(verbose: bool) -> None:
    """Keep orbax's, absl's and asyncio's logs (tracebacks of cancelled saves, "Event loop is
    closed") out of the terminal: the command prints what went wrong itself."""
    import logging

    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("absl", "orbax", "asyncio", "jax._src.distributed"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        try:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.FATAL)
        except ImportError:
            pass


def interrupted_message(err, argv: list[str], args: argparse.Namespace) -> str:
    """Where training stopped, the last committed checkpoint of each block and how to resume."""
    from dblocks_jax.engine import checkpoint

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    quiet_libraries(args.verbose)
    from dblocks_jax.cli_evaluate import run_evaluate
    from dblocks_jax.cli_sample import run_sample

    commands = {"train": run_train, "sample": run_sample, "evaluate": run_evaluate, "bench": run_bench,
                "assemble": run_assemble, "list": run_list}
    from dblocks_jax.engine.lock import RunLockedError

    try:
        commands[args.command](args)
    except KeyboardInterrupt as err:
        print(f"dblocks {args.command}: {interrupted_message(err, argv, args)}", file=sys.stderr)
        if not args.verbose:  # objects of an interrupted library (an asyncio loop) may fail in __del__ at exit
            sys.unraisablehook = lambda unraisable: None
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RunLockedError) as err:
        if args.verbose:
            raise
        print(f"dblocks {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # NonFiniteLossError: names the block and the step
        print(f"dblocks {args.command}: training stopped: {err}", file=sys.stderr)
        return 1
    except CheckpointSaveError as err:  # names the directory; earlier checkpoints are intact
        print(f"dblocks {args.command}: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a file system refusing (full, read-only, permissions): name the path
        if args.verbose:
            raise
        print(f"dblocks {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
