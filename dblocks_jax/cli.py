"""Command line: `dblocks {train,sample,evaluate,assemble,bench,plot,list} ...` (also `python -m dblocks_jax`).

A thin layer: it parses the arguments and hands them to the subcommand (`dblocks_jax.commands`),
which validates the config before anything compiles; errors become one line and an exit status.
The tasks' own flags come from the registry (`Task.flags`), so a plug-in's flags appear here too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from dblocks_jax.commands.bench import run_bench
from dblocks_jax.commands.common import add_task_flags
from dblocks_jax.commands.evaluate import run_evaluate
from dblocks_jax.commands.listing import run_list
from dblocks_jax.commands.plot import run_plot
from dblocks_jax.commands.sample import run_sample
from dblocks_jax.commands.train import interrupted_message, run_assemble, run_train
from dblocks_jax.config import config_class
from dblocks_jax.engine.checkpoint import CheckpointSaveError
from dblocks_jax.engine.lock import RunLockedError
from dblocks_jax.engine.settings import SCHEDULES
from dblocks_jax.presets import presets
from dblocks_jax.tasks import task_names

INTERRUPTED = 130  # the exit status of a program ended by SIGINT (128 + 2)
ANSWERED = threading.Event()  # set once a command has answered Ctrl-C: no interrupt is raised again after it
COMMANDS = {"train": run_train, "sample": run_sample, "evaluate": run_evaluate, "bench": run_bench,
            "assemble": run_assemble, "plot": run_plot, "list": run_list}

SET_HELP = "override a config field, e.g. --set model.width=64 (repeatable; `dblocks list --fields`)"


def _parser() -> argparse.ArgumentParser:
    for name in task_names():  # every registered task's declarations, config and presets, checked up front
        config_class(name)
    presets()
    parser = argparse.ArgumentParser(prog="dblocks", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show library logs (orbax, absl, asyncio) and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    preset_help = "preset (`dblocks list`; default: the first task's first preset)"

    tr = sub.add_parser("train", parents=[common],
                        help="train every block of a DiffusionBlocks model (B = 1: end-to-end)")
    tr.add_argument("--config", help=preset_help)
    tr.add_argument("--num-blocks", type=int, help="model.num_blocks: number of blocks B (1 = end-to-end baseline)")
    tr.add_argument("--steps", type=int, help="optim.steps: optimizer steps per block")
    tr.add_argument("--schedule", help=f"schedule.name: one of {', '.join(SCHEDULES)}")
    tr.add_argument("--seed", type=int, help="run.seed")
    tr.add_argument("--workdir", help="run directory (default: runs/<dataset>[task suffix]_B<B>_<schedule>_seed<seed>)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help=SET_HELP)
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

    sa = sub.add_parser("sample", parents=[common], help="draw samples from a trained run (its task says what a "
                                                         "sample is: images, text)")
    sa.add_argument("--workdir", required=True, action="append",
                    help="run directory; repeat it to use blocks trained in separate runs")
    sa.add_argument("--seed", type=int)
    sa.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="a sampling-role field of the run's config, e.g. --set sampling.s_churn=40")
    sa.add_argument("--out", required=True, help="the output file; its extension is one the run's task writes")
    sa.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_task_flags(sa, "sample")

    ev = sub.add_parser("evaluate", parents=[common],
                        help="score a trained run over several seeds with its task's evaluation (`dblocks list` "
                             "says what each task measures)")
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--seeds", default="0,1,2", help="comma-separated sampling (or chain) seeds")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="a sampling-role field of the run's config, e.g. --set sampling.steps=100")
    ev.add_argument("--untrained", action="store_true",
                    help="score freshly initialised blocks of the run's config (the baseline to beat)")
    ev.add_argument("--json", help="also write the result here (default: <workdir>/evaluation.json, "
                                   "evaluation_untrained.json with --untrained)")
    ev.add_argument("--overwrite", action="store_true", help="replace the result files if they exist")
    add_task_flags(ev, "evaluate")

    asm = sub.add_parser("assemble", parents=[common],
                         help="gather blocks trained in separate runs into one run directory")
    asm.add_argument("--workdir", required=True, action="append", help="a run holding some blocks (repeat)")
    asm.add_argument("--out", required=True, help="the new run directory")
    asm.add_argument("--overwrite", action="store_true")

    be = sub.add_parser("bench", parents=[common],
                        help="measure memory, step and compile time, inference cost: e2e vs DiffusionBlocks")
    be.add_argument("--config", help=preset_help)
    be.add_argument("--num-blocks", default="1,2,4", help="comma-separated values of B, e.g. 1,2,3,4,6,12")
    be.add_argument("--modes", default=None, help="comma-separated subset of: e2e, e2e-remat, db-sequential, "
                                                  "db-interleaved, db-remat (default: all)")
    be.add_argument("--batch-size", type=int, help="data.batch_size")
    be.add_argument("--time-steps", type=int, default=20, help="timed steps per mode and B (0: memory only)")
    be.add_argument("--sample-steps", type=int, default=0,
                    help="also time the task's inference with K chain steps (0: skip)")
    be.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: the table in "
                                                      "dblocks_jax/engine/hardware.py: H100/H200 989, A100 312, TPU "
                                                      "v4 275, v5e 197, v5p 459; none for a CPU)")
    be.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help=SET_HELP)
    be.add_argument("--json", help="write the records here, with a .md table and a .png chart beside it")
    be.add_argument("--overwrite", action="store_true", help="replace the --json, .md and .png files if they exist")

    pl = sub.add_parser("plot", parents=[common],
                        help="a logged metric against each block's step for one or many runs (seeds of one config: "
                             "mean +/- std)")
    pl.add_argument("workdir", nargs="+", metavar="RUN", help="run directories (their metrics.jsonl)")
    pl.add_argument("--metric", default="loss", help="a field of metrics.jsonl: loss, grad_norm, lr, elapsed_s")
    pl.add_argument("--out", default="curves.png", help="the figure (.png, .pdf or .svg; default curves.png)")
    pl.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    ls = sub.add_parser("list", parents=[common], help="the tasks and their presets (with --fields: every config "
                                                       "field, by common section and by task)")
    ls.add_argument("--fields", action="store_true", help="every config field with its default and role")
    return parser


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


def redeliver_swallowed_interrupts() -> None:
    """Make a Ctrl-C that Python swallowed count. SIGINT raises KeyboardInterrupt wherever the main
    thread is; when that is a garbage-collection callback (JAX installs one) or a `__del__`, Python
    prints "Exception ignored in ..." and goes on, and the command would run to its end. This
    unraisable hook sees such an interrupt and sends SIGINT to the main thread again a moment later,
    once the callback has returned (a signal, so that a blocking wait wakes up too), unless the
    command has answered an interrupt already; other unraisable errors go to the hook that was there."""
    previous = sys.unraisablehook

    def again() -> None:
        if not ANSWERED.is_set():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            threading.Timer(0.01, again).start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _parser()
    except ValueError as err:  # a task plug-in that fails to load or declares clashing flags
        print(f"dblocks: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dblocks: interrupted; nothing was written", file=sys.stderr)
        return INTERRUPTED
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt as err:
        ANSWERED.set()
        print(f"dblocks {args.command}: {interrupted_message(err, argv, args)}", file=sys.stderr)
        if not args.verbose:  # objects of an interrupted library (an asyncio loop) may fail in __del__ at exit
            sys.unraisablehook = lambda unraisable: None
        return INTERRUPTED
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


def run() -> None:
    """The `dblocks` program (console script and `python -m dblocks_jax`): `main`, then exit. After
    Ctrl-C the process ends at once with 130 once the message is out: whatever was to be saved was
    saved before the interruption reached `main` (checkpoints are committed or not, never half),
    and a normal interpreter exit could crash while XLA is still compiling in the background."""
    redeliver_swallowed_interrupts()
    status = main()
    if status == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
