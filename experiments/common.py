"""What the experiment scripts share: the cost of one block's compiled training step, mean and
spread over seeds, and the append-only records that let an interrupted experiment resume."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile

from dblocks_jax.engine import bench
from dblocks_jax.engine.trainer import BlockTrainer
from dblocks_jax.tasks import make_task


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """--seeds, --out and --tiny, as every experiment script takes them."""
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", help=f"results directory (default: experiments/results/{name}; with --tiny a "
                                      f"temporary directory, so that smoke runs never mix with real ones)")
    parser.add_argument("--tiny", action="store_true", help="tiny models, few steps: checks the script, not the claim")


def results_dir(args: argparse.Namespace, name: str) -> str:
    """--out, or the experiment's default directory (a temporary one with --tiny), created."""
    out = args.out or (os.path.join(tempfile.gettempdir(), f"dblocks_{name}_tiny") if args.tiny
                       else os.path.join("experiments", "results", name))
    os.makedirs(out, exist_ok=True)
    return out


def step_cost(config, time_steps: int) -> dict:
    """Training memory of one block's compiled step (XLA's memory analysis: deterministic) and its
    median and mean time over `time_steps` steps (one compile)."""
    trainer = BlockTrainer(make_task(config))
    compiled, compile_s, _ = bench.compile_step(trainer)
    mem = bench.memory_bytes(trainer, compiled, resident_blocks=trainer.task.num_blocks)
    times = bench.time_steps(trainer, compiled, bench.BenchSettings(time_steps=time_steps))
    return {"step_peak_bytes": mem["step_peak"], "interleaved_total_bytes": mem["total_peak"],
            "block_state_bytes": trainer.state_bytes, "step_seconds": statistics.median(times),
            "step_mean_seconds": statistics.fmean(times), "compile_seconds": compile_s}


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std; NaN for both when a value is not finite (a metric a tiny run cannot
    measure, such as distinct-2 of continuations without two words), which `statistics` refuses."""
    values = list(values)
    if not all(math.isfinite(v) for v in values):
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def read_records(path: str) -> list[dict]:
    """The JSON lines of `path` (none if it does not exist yet)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_record(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_json(path: str) -> dict:
    """The JSON object in `path` ({} if it does not exist yet)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_record(out: str, name: str, record: dict) -> str:
    """A device script's record as <out>/<name>.json (created): the path written."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)
    return path


def update_json(path: str, key: str, value) -> dict:
    """Add `key` to the JSON object in `path` (re-read first: another process may have written it)."""
    data = read_json(path)
    data[key] = value
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return data
