"""What the experiment scripts share: the cost of one block's compiled training step, mean and
spread over seeds, and the append-only records that let an interrupted experiment resume."""

from __future__ import annotations

import json
import os
import statistics

from dblocks_jax.engine import bench
from dblocks_jax.engine.trainer import BlockTrainer
from dblocks_jax.tasks import make_task


def step_cost(config, time_steps: int) -> dict:
    """Training memory of one block's compiled step (XLA's memory analysis: deterministic) and its
    median time over `time_steps` steps (one compile)."""
    trainer = BlockTrainer(make_task(config))
    compiled, compile_s = bench.compile_step(trainer)
    mem = bench.memory_bytes(trainer, compiled, resident_blocks=trainer.task.num_blocks)
    times = bench.time_steps(trainer, compiled, bench.BenchSettings(time_steps=time_steps))
    return {"step_peak_bytes": mem["step_peak"], "interleaved_total_bytes": mem["total_peak"],
            "block_state_bytes": trainer.state_bytes, "step_seconds": statistics.median(times),
            "compile_seconds": compile_s}


def mean_std(values) -> tuple[float, float]:
    values = list(values)
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


def update_json(path: str, key: str, value) -> dict:
    """Add `key` to the JSON object in `path` (re-read first: another process may have written it)."""
    data = read_json(path)
    data[key] = value
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return data
