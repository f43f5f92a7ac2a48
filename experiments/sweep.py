"""Paper-style sweeps (experiments/*.py): a run is (experiment, scale, point, seed) -> one JSON file.

Every run trains with `dblocks_jax.runs.train` and records what the paper's tables compare: sample
quality (Frechet distance in the feature space of the dataset's own classifier, conditional
accuracy, on the held-out split), the training memory of the compiled step (deterministic,
`bench.memory_bytes`), training wall time, sampling time and network evaluations, the final
losses, the full config, the JAX version and the device. This module plans and runs sweeps;
`sweep_run` runs one (which configs are the same, trained-parameter cache, measurements), and
`sweep_report` turns the runs into mean ± std per point, a markdown table and PNG plots with
error bars.

Two caches make sweeps cheap to interrupt and to combine:

- `<out>/runs/<point>_seed<S>.json` is the result of one run. A sweep skips every run whose JSON
  exists, parses and was made from the same config (the fields with an assembly, identity or
  sampling role; records written by dblocks-jax 0.1 hold its flat config and still count);
  files are written to a temporary name and renamed, so an interrupted write never counts.
- `<work>/<key>/` holds the trained parameters of one *training* config (the assembly and
  identity fields). Points of different experiments that train the same model (B = 4 in the
  block sweep, gamma = 0.05 in the overlap sweep, the solver sweep that only samples) train it
  once. The key carries `PARAMS_FORMAT`, so parameters of another layout are never reused.

Run a script as `python experiments/<name>.py`; it imports this module as `sweep` (same folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

from sweep_report import (METRICS, Metric, Plot, SampleGrids, aggregate, markdown_table, summarize, write_json_atomic,
                          write_report)
from sweep_run import (FORMAT_VERSION, PARAMS_FORMAT, REPO, RUN_ROLES, TRAIN_ROLES, Caches, _digest, _environment,
                       config_values, enable_compilation_cache, execute, identifying, same_config, sample_and_score,
                       train_key, train_or_load, training_memory, write_grid)
from tqdm.auto import tqdm

from dblocks_jax.config import Config
from dblocks_jax.presets import get_config

__all__ = [  # this module, and what the scripts and tests use of sweep_run and sweep_report through it
    "Experiment", "Point", "Run", "Scale", "SCALES", "default_out_dir", "divisors_in", "get_scale", "load_record",
    "main", "plan", "run_sweep",
    "FORMAT_VERSION", "PARAMS_FORMAT", "REPO", "RUN_ROLES", "TRAIN_ROLES", "Caches", "config_values",
    "enable_compilation_cache", "execute", "identifying", "same_config", "sample_and_score", "train_key",
    "train_or_load", "training_memory", "write_grid",
    "METRICS", "Metric", "Plot", "SampleGrids", "aggregate", "markdown_table", "summarize", "write_json_atomic",
    "write_report",
]


# --------------------------------------------------------------------------------------------------
# Scales, points, experiments


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big every run of a sweep is. `datasets[0]` is the main dataset of every experiment;
    the block sweep also covers the others. `overrides` are {config path: value}."""

    name: str
    preset: str
    overrides: dict
    datasets: tuple[str, ...]
    num_blocks: tuple[int, ...]  # the block sweep's B values on the main dataset
    other_num_blocks: tuple[int, ...]  # ... and on the other datasets
    num_samples: int  # samples per run for the quality score
    classifier_steps: int  # feature classifier training steps (cached per dataset and size)

    def config(self, overrides: dict[str, Any] | None = None) -> Config:
        """The preset with the scale's settings (and `num_samples` for the quality score), then
        {path: value} `overrides`."""
        return get_config(self.preset, {**self.overrides, "sampling.num_samples": self.num_samples,
                                        **(overrides or {})})


_SMALL = {"data.image_size": 16, "model.width": 48, "model.num_heads": 2, "model.num_layers": 12,
          "model.num_blocks": 4, "model.patch_size": 4, "data.batch_size": 32, "optim.steps": 600,
          "optim.warmup_steps": 60, "optim.learning_rate": 2e-3, "run.log_every": 100, "sampling.steps": 24}

SCALES: dict[str, Scale] = {
    # For tests: seconds per run.
    "tiny": Scale("tiny", "shapes", {"data.image_size": 8, "model.width": 16, "model.num_heads": 2,
                                     "model.num_layers": 4, "model.num_blocks": 2, "model.patch_size": 4,
                                     "data.batch_size": 8, "optim.steps": 3, "optim.warmup_steps": 1,
                                     "run.log_every": 3, "sampling.steps": 4, "optim.ema_decay": 0.0},
                  datasets=("shapes",), num_blocks=(1, 2), other_num_blocks=(), num_samples=24,
                  classifier_steps=20),
    # A 2-core CPU: the whole set of experiments in about an hour on one core (experiments/README.md
    # gives the measurements this size was chosen from).
    "small": Scale("small", "shapes", dict(_SMALL), datasets=("shapes", "digits", "patterns"),
                   num_blocks=(1, 2, 3, 4, 6, 12), other_num_blocks=(1, 4, 12), num_samples=240,
                   classifier_steps=1500),
    # `small` trained 3x longer, for the block sweep on shapes only (B = 1, 4, 12): do the trends of
    # `small` hold once the models are further from their initialisation? About 20 minutes on one core.
    "small_long": Scale("small_long", "shapes", {**_SMALL, "optim.steps": 1800, "optim.warmup_steps": 180},
                        datasets=("shapes",), num_blocks=(1, 4, 12), other_num_blocks=(), num_samples=240,
                        classifier_steps=1500),
    # The paper's DiT-S/2 CIFAR-10 setting (L = 12, as in its block-count table) for a GPU/TPU.
    "paper": Scale("paper", "cifar10_dit_s", {"model.num_layers": 12, "model.num_blocks": 3, "sampling.steps": 50},
                   datasets=("tfds:cifar10", "tfds:mnist", "tfds:fashion_mnist"), num_blocks=(1, 2, 3, 4, 6, 12),
                   other_num_blocks=(1, 3, 6), num_samples=10_000, classifier_steps=5000),
}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; allowed: {', '.join(SCALES)}")
    return SCALES[name]


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of a sweep: `params` is what the tables and plots show (e.g. dataset and B),
    `overrides` the {config path: value} it sets on top of the scale (training or sampling fields)."""

    name: str
    params: dict
    overrides: dict


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    points: Callable[[Scale], list[Point]]
    table_metrics: tuple[str, ...]
    plots: tuple = ()
    hidden_params: tuple[str, ...] = ()  # params used by plots only, left out of the table


@dataclasses.dataclass(frozen=True)
class Run:
    experiment: str
    scale: str
    point: Point
    seed: int
    config: Config

    @property
    def filename(self) -> str:
        return f"{self.point.name}_seed{self.seed}.json"

    @property
    def key(self) -> str:
        """Identifies what the run measures: its assembly, identity and sampling fields."""
        return _digest(identifying(self.config, RUN_ROLES))

    @property
    def train_key(self) -> str:
        """Identifies the trained parameters: the assembly and identity fields."""
        return train_key(self.config)


def plan(experiment: Experiment, scale: Scale, seeds: Sequence[int]) -> list[Run]:
    """Every run of the sweep, configs validated before anything trains."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    points = experiment.points(scale)
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"{experiment.name}: duplicate point names {names}")
    runs = []
    for point in points:
        try:
            config = scale.config(point.overrides)
        except ValueError as err:
            raise ValueError(f"{experiment.name}, point {point.name}: {err}") from None
        runs.extend(Run(experiment.name, scale.name, point, seed, config.override({"run.seed": seed}))
                    for seed in seeds)
    return runs


def load_record(path: str, run: Run) -> dict | None:
    """The finished record of `run` at `path`, or None if missing, unreadable (e.g. truncated),
    unfinished or made from another config (a record of dblocks-jax 0.1 with its flat config
    counts when that config is the same)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "quality" not in record or not isinstance(record.get("config"), dict):
        return None
    if record.get("point") != run.point.name or record.get("seed") != run.seed:
        return None
    return record if same_config(record["config"], run.config, RUN_ROLES) else None


# --------------------------------------------------------------------------------------------------
# Running a sweep


def run_sweep(experiment: Experiment, scale: Scale, seeds: Sequence[int], out_dir: str, work_root: str,
              progress: bool = True) -> list[dict]:
    """Run every missing run of the sweep (resumable) and return all records in plan order."""
    runs = plan(experiment, scale, seeds)
    enable_compilation_cache(os.path.join(work_root, "jax_cache"))
    runs_dir = os.path.join(out_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    caches = Caches(scale.classifier_steps)
    environment = _environment()
    records = []
    bar = tqdm(runs, desc=f"{experiment.name} ({scale.name})", unit="run", disable=not progress, dynamic_ncols=True)
    for run in bar:
        path = os.path.join(runs_dir, run.filename)
        record = load_record(path, run)
        if record is not None:
            record["params"] = run.point.params  # presentation only: the plan's labels win
        else:
            bar.set_postfix_str(f"{run.point.name} seed {run.seed}")
            grid_path = os.path.join(runs_dir, run.filename[:-5] + ".png")
            record = execute(run, work_root, caches, grid_path, environment)
            write_json_atomic(path, record)
            q = record["quality"]
            acc = q["conditional_accuracy"]
            bar.write(f"{experiment.name} {run.point.name} seed {run.seed}: FD {q['frechet_distance']:.2f}"
                      + (f", acc {acc:.3f}" if acc is not None else "")
                      + f", train {record['train']['wall_s']:.1f} s"
                      + (" (reused)" if record["train"]["reused"] else "")
                      + f", sample {record['sampling']['time_s']:.2f} s")
        records.append(record)
    return records


# --------------------------------------------------------------------------------------------------
# Command line of every experiment script


def default_out_dir(experiment: str, scale: str) -> str:
    base = os.path.join(REPO, "experiments", "results", experiment)
    return base if scale == "small" else os.path.join(base, scale)


def main(experiment: Experiment, argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=experiment.description)
    parser.add_argument("--scale", default="small", choices=sorted(SCALES))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (at least 3 for a table)")
    parser.add_argument("--out", default=None, help="results directory (default experiments/results/<experiment>"
                                                    "[/<scale>])")
    parser.add_argument("--work", default=None, help="where trained parameters are cached (default "
                                                     "runs/experiments/<scale>, shared by all experiments)")
    parser.add_argument("--report-only", action="store_true", help="only aggregate the existing runs")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scale = get_scale(args.scale)
    out_dir = args.out or default_out_dir(experiment.name, scale.name)
    work = args.work or os.path.join(REPO, "runs", "experiments", scale.name)
    if args.report_only:
        runs = plan(experiment, scale, seeds)
        records = []
        for run in runs:
            record = load_record(os.path.join(out_dir, "runs", run.filename), run)
            if record is not None:
                records.append({**record, "params": run.point.params})
        if not records:
            raise SystemExit(f"no finished runs of {experiment.name} under {out_dir}/runs")
    else:
        start = time.perf_counter()
        records = run_sweep(experiment, scale, seeds, out_dir, work, progress=not args.no_progress)
        print(f"{experiment.name}: {len(records)} runs in {time.perf_counter() - start:.0f} s", flush=True)
    paths = write_report(experiment, records, out_dir)
    with open(paths["table"]) as f:
        print(f.read())
    return records


def divisors_in(values: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The values of B that divide the layers evenly (uneven splits need a layer-split config field)."""
    return tuple(b for b in values if num_layers % b == 0)
