"""Paper-style sweeps (experiments/*.py): a run is (experiment, scale, point, seed) -> one JSON file.

Every run trains with `training.train` and records what the paper's tables compare: sample quality
(Frechet distance in the feature space of the dataset's own classifier, conditional accuracy, on the
held-out split), the training memory of the compiled step (deterministic, `bench.step_memory`),
training wall time, sampling time and network evaluations, the final losses, the full config, the
JAX version and the device. `aggregate` turns the runs into mean +/- std per point, a markdown
table and PNG plots with error bars.

Two caches make sweeps cheap to interrupt and to combine:

- `<out>/runs/<point>_seed<S>.json` is the result of one run. A sweep skips every run whose JSON
  exists, parses and was made from the same config; files are written to a temporary name and
  renamed, so an interrupted write never counts.
- `<work>/<key>/` holds the trained parameters of one *training* config (sampler settings are not
  part of the key). Points of different experiments that train the same model (B = 4 in the block
  sweep, gamma = 0.05 in the overlap sweep, the solver sweep that only samples) train it once.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import time
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from dblocks_jax import bench, data, metrics, training
from dblocks_jax.config import Config, get_config
from dblocks_jax.model import BlockModel
from dblocks_jax.plotting import image_grid
from dblocks_jax.sampling import evaluations_per_sample, sampler_and_inputs

SAMPLING_FIELDS = ("sample_steps", "solver", "grid", "guidance", "num_samples")
# Fields that change neither the trained parameters nor the sampler: not part of any cache key.
_BOOKKEEPING_FIELDS = ("log_every", "checkpoint_every", "keep_checkpoints")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Scales, points, experiments


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big every run of a sweep is. `datasets[0]` is the main dataset of every experiment;
    the block sweep also covers the others."""

    name: str
    preset: str
    overrides: dict
    datasets: tuple[str, ...]
    num_blocks: tuple[int, ...]  # the block sweep's B values on the main dataset
    other_num_blocks: tuple[int, ...]  # ... and on the other datasets
    num_samples: int  # samples per run for the quality score
    classifier_steps: int  # feature classifier training steps (cached per dataset and size)

    def config(self, **overrides) -> Config:
        """The preset with the scale's settings (and `num_samples` for the quality score), then `overrides`."""
        return get_config(self.preset, **{**self.overrides, "num_samples": self.num_samples, **overrides})


SCALES: dict[str, Scale] = {
    # For tests: seconds per run.
    "tiny": Scale("tiny", "shapes", dict(image_size=8, width=16, num_heads=2, num_layers=4, num_blocks=2,
                                         patch_size=4, batch_size=8, steps=3, warmup_steps=1, log_every=3,
                                         sample_steps=4, ema_decay=0.0),
                  datasets=("shapes",), num_blocks=(1, 2), other_num_blocks=(), num_samples=24,
                  classifier_steps=20),
    # A 2-core CPU: the whole set of experiments in about an hour on one core (experiments/README.md
    # gives the measurements this size was chosen from).
    "small": Scale("small", "shapes", dict(image_size=16, width=48, num_heads=2, num_layers=12, num_blocks=4,
                                           patch_size=4, batch_size=32, steps=600, warmup_steps=60,
                                           learning_rate=2e-3, log_every=100, sample_steps=24),
                   datasets=("shapes", "digits", "patterns"), num_blocks=(1, 2, 3, 4, 6, 12),
                   other_num_blocks=(1, 4, 12), num_samples=240, classifier_steps=1500),
    # `small` trained 3x longer, for the block sweep on shapes only (B = 1, 4, 12): do the trends of
    # `small` hold once the models are further from their initialisation? About 20 minutes on one core.
    "small_long": Scale("small_long", "shapes", dict(image_size=16, width=48, num_heads=2, num_layers=12,
                                                     num_blocks=4, patch_size=4, batch_size=32, steps=1800,
                                                     warmup_steps=180, learning_rate=2e-3, log_every=100,
                                                     sample_steps=24),
                        datasets=("shapes",), num_blocks=(1, 4, 12), other_num_blocks=(), num_samples=240,
                        classifier_steps=1500),
    # The paper's DiT-S/2 CIFAR-10 setting (L = 12, as in its block-count table) for a GPU/TPU.
    "paper": Scale("paper", "cifar10_dit_s", dict(num_layers=12, num_blocks=3, sample_steps=50),
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
    `overrides` the config fields it sets on top of the scale (training or sampling fields)."""

    name: str
    params: dict
    overrides: dict


@dataclasses.dataclass(frozen=True)
class Plot:
    """Metrics against `x`, one line per `series` value, one row of panels per `facet` value."""

    filename: str
    x: str
    metrics: tuple[str, ...]
    series: str | None = None
    facet: str | None = None
    logx: bool = False
    title: str = ""
    logy: tuple[str, ...] = ()  # metrics drawn on a log scale (e.g. a distance that spans decades)


@dataclasses.dataclass(frozen=True)
class SampleGrids:
    """The sample grid of each point (first seed) side by side along `x`, one row per `facet`."""

    filename: str
    x: str
    facet: str | None = None


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
        """Identifies what the run measures: its config (bookkeeping fields aside)."""
        return _digest(_identifying(self.config.to_dict(), _BOOKKEEPING_FIELDS))

    @property
    def train_key(self) -> str:
        """Identifies the trained parameters: the config without sampler settings."""
        return train_key(self.config)


def train_key(config: Config) -> str:
    return _digest(_identifying(config.to_dict(), SAMPLING_FIELDS + _BOOKKEEPING_FIELDS))


def _defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(Config)}


def _identifying(values: dict, skip: Sequence[str]) -> dict:
    """The fields of a config that are not at the `Config` default. Keys built from these stay the
    same when a new config field (at its default) is added, so finished runs stay valid."""
    defaults = _defaults()
    return {k: v for k, v in values.items() if k not in skip and not (k in defaults and v == defaults[k])}


def same_config(stored: dict, planned: dict, skip: Sequence[str] = ()) -> bool:
    """Whether two config dicts describe the same run: equal on every common field, and a field
    that only one of them has (added to or removed from `Config` since) is at its default."""
    defaults = _defaults()
    for k in (set(stored) | set(planned)) - set(skip):
        if k in stored and k in planned:
            if stored[k] != planned[k]:
                return False
        elif k not in defaults or stored.get(k, planned.get(k)) != defaults[k]:
            return False
    return True


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


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
            config = scale.config(**point.overrides)
        except ValueError as err:
            raise ValueError(f"{experiment.name}, point {point.name}: {err}") from None
        runs.extend(Run(experiment.name, scale.name, point, seed, config.replace(seed=seed)) for seed in seeds)
    return runs


# --------------------------------------------------------------------------------------------------
# Files


def write_json_atomic(path: str, value) -> None:
    """Write to a temporary file in the same directory, then rename: a reader sees all or nothing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_record(path: str, run: Run) -> dict | None:
    """The finished record of `run` at `path`, or None if missing, unreadable (e.g. truncated),
    unfinished or made from another config."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "quality" not in record or not isinstance(record.get("config"), dict):
        return None
    if record.get("point") != run.point.name or record.get("seed") != run.seed:
        return None
    return record if same_config(record["config"], run.config.to_dict(), _BOOKKEEPING_FIELDS) else None


# --------------------------------------------------------------------------------------------------
# One run


class _Caches:
    """What is shared by the runs of one process: classifiers, held-out splits, step memory."""

    def __init__(self, classifier_steps: int):
        self.classifier_settings = metrics.ClassifierSettings(steps=classifier_steps)
        self.classifiers: dict = {}
        self.references: dict = {}
        self.memory: dict = {}

    def classifier(self, config: Config) -> metrics.FeatureClassifier:
        key = (config.dataset, config.image_size)
        if key not in self.classifiers:
            self.classifiers[key] = metrics.FeatureClassifier(*key, self.classifier_settings)
        return self.classifiers[key]

    def reference(self, config: Config) -> np.ndarray:
        key = (config.dataset, config.image_size)
        if key not in self.references:
            self.references[key] = data.load_split(config.dataset, "test", config.image_size)[0]
        return self.references[key]


def train_or_load(config: Config, work_root: str) -> tuple[list, dict]:
    """The per-block EMA parameters of `config` and how they were trained: from `work_root` if a
    finished training of the same config is there, else trained now (and saved there)."""
    model = BlockModel.from_config(config)
    treedef = jax.tree.structure(model.abstract_params)
    directory = os.path.join(work_root, train_key(config))
    info_path, params_path = os.path.join(directory, "train.json"), os.path.join(directory, "params.npz")
    found = _find_training(config, work_root, directory)
    try:
        if found is None:
            raise FileNotFoundError(directory)
        with open(os.path.join(found, "train.json")) as f:
            info = json.load(f)
        with np.load(os.path.join(found, "params.npz")) as stored:
            leaves = [stored[f"leaf_{i}"] for i in range(len(stored.files))]
        per_block = treedef.num_leaves
        if len(leaves) != per_block * config.num_blocks:
            raise ValueError("parameter count mismatch")
        params = [jax.tree.unflatten(treedef, leaves[b * per_block:(b + 1) * per_block])
                  for b in range(config.num_blocks)]
        return params, {**info, "reused": True}
    except (OSError, ValueError, KeyError):
        pass
    start = time.perf_counter()
    result = training.train(config, None, progress=False, write_samples=False)
    wall = time.perf_counter() - start
    info = {"wall_s": wall, "block_steps": list(result.block_steps), "final_loss": list(result.final_loss),
            "steps_per_s": sum(result.block_steps) / wall, "train_key": train_key(config)}
    os.makedirs(directory, exist_ok=True)
    leaves = [np.asarray(leaf) for p in result.params for leaf in jax.tree.leaves(p)]
    tmp = params_path + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)})
    os.replace(tmp, params_path)
    write_json_atomic(info_path, {**info, "config": config.to_dict()})
    return list(result.params), {**info, "reused": False}


def _find_training(config: Config, work_root: str, preferred: str) -> str | None:
    """The directory under `work_root` holding a finished training of `config` (its key's directory
    first, then any whose train.json has the same config, e.g. one keyed before a field was added)."""
    skip = SAMPLING_FIELDS + _BOOKKEEPING_FIELDS
    candidates = [preferred] + sorted(os.path.join(work_root, d) for d in
                                      (os.listdir(work_root) if os.path.isdir(work_root) else ()))
    for directory in candidates:
        try:
            with open(os.path.join(directory, "train.json")) as f:
                stored = json.load(f)["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if os.path.exists(os.path.join(directory, "params.npz")) and same_config(stored, config.to_dict(), skip):
            return directory
    return None


def training_memory(config: Config, cache: dict | None = None) -> dict:
    """Bytes of the compiled training step (argument + output - alias + temp) and, for the
    interleaved schedule, of the other blocks' state that stays resident (bench.py's `total_peak`)."""
    key = train_key(config.replace(seed=0))
    if cache is not None and key in cache:
        return cache[key]
    trainer = training.BlockTrainer(config)
    resident = config.num_blocks if config.schedule == "interleaved" else 1
    mem = bench.memory_bytes(trainer, bench.compile_step(trainer), resident)
    if cache is not None:
        cache[key] = mem
    return mem


def sample_and_score(config: Config, params: list, classifier: metrics.FeatureClassifier,
                     reference: np.ndarray, grid_path: str | None = None) -> tuple[dict, dict]:
    """Draw `config.num_samples` samples with the config's sampler (noise seeded by `config.seed`,
    as `generate` does), time the compiled sampler, and score them against `reference`."""
    n = config.num_samples
    sampler, args = sampler_and_inputs(BlockModel.from_config(config), params, num_samples=n,
                                       num_steps=config.sample_steps, solver=config.solver, grid=config.grid,
                                       guidance=config.guidance, seed=config.seed)
    labels = None if args[2] is None else np.asarray(args[2])
    start = time.perf_counter()
    compiled = sampler.lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    images = np.asarray(jax.block_until_ready(compiled(*args)))
    sample_s = time.perf_counter() - start
    evals = evaluations_per_sample(config.solver, config.sample_steps)
    guided = bool(config.num_classes) and config.guidance != 1.0
    quality = {
        "frechet_distance": metrics.feature_frechet_distance(classifier, images, reference),
        "conditional_accuracy": None if labels is None else metrics.conditional_accuracy(classifier, images, labels),
        "num_samples": n, "num_reference": len(reference),
        "classifier": {"path": classifier.path, "held_out_accuracy": classifier.accuracy,
                       "steps": classifier.settings.steps},
        "finite": bool(np.isfinite(images).all()),
    }
    sampling = {"time_s": sample_s, "compile_s": compile_s, "num_samples": n, "solver": config.solver,
                "grid": config.grid, "steps": config.sample_steps, "guidance": config.guidance,
                "network_evals_per_sample": evals,
                "layer_evals_per_sample": evals * config.layers_per_block * (2 if guided else 1)}
    if grid_path:
        write_grid(grid_path, images, labels)
    return quality, sampling


def write_grid(path: str, images: np.ndarray, labels: np.ndarray | None, per_class: int | None = None) -> None:
    """A PNG with one row per class (the first `per_class` samples of each class)."""
    from PIL import Image

    if labels is None:
        rows, cols = [images[:24]], 8
    else:
        classes = np.unique(labels)
        per_class = per_class or max(3, 24 // len(classes))
        rows = [images[labels == c][:per_class] for c in classes]
        cols = per_class
    picked = np.concatenate(rows)
    grid = image_grid(picked, num_cols=cols).repeat(2, axis=0).repeat(2, axis=1)
    tmp = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(tmp)
    os.replace(tmp, path)


def _environment() -> dict:
    device = jax.devices()[0]
    try:
        commit = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"jax_version": jax.__version__, "device": device.device_kind, "platform": device.platform,
            "num_devices": jax.device_count(), "cpu_cores_available": cores, "git": commit}


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache, unless one is configured already. A compile of a small
    model takes about 10 s on a 2-core CPU; the memory measurement compiles the same step as
    training, and every seed of a point compiles the same sampler, so those become cache hits."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def execute(run: Run, work_root: str, caches: _Caches, grid_path: str | None, environment: dict) -> dict:
    """Train (or reuse) the run's model, measure it, and return its record."""
    params, train_info = train_or_load(run.config, work_root)
    memory = training_memory(run.config, caches.memory)
    quality, sampling = sample_and_score(run.config, params, caches.classifier(run.config),
                                         caches.reference(run.config), grid_path)
    return {
        "format": FORMAT_VERSION, "experiment": run.experiment, "scale": run.scale, "point": run.point.name,
        "params": run.point.params, "seed": run.seed, "run_key": run.key, "train_key": run.train_key,
        "quality": quality, "memory_bytes": memory, "train": train_info, "sampling": sampling,
        "config": run.config.to_dict(), **environment,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_sweep(experiment: Experiment, scale: Scale, seeds: Sequence[int], out_dir: str, work_root: str,
              progress: bool = True) -> list[dict]:
    """Run every missing run of the sweep (resumable) and return all records in plan order."""
    runs = plan(experiment, scale, seeds)
    enable_compilation_cache(os.path.join(work_root, "jax_cache"))
    runs_dir = os.path.join(out_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    caches = _Caches(scale.classifier_steps)
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
# Aggregation


@dataclasses.dataclass(frozen=True)
class Metric:
    label: str
    get: Callable[[dict], float | None]
    fmt: str


METRICS: dict[str, Metric] = {
    "frechet_distance": Metric("Frechet distance (classifier features)", lambda r: r["quality"]["frechet_distance"],
                               "{:.1f}"),
    "conditional_accuracy": Metric("conditional accuracy", lambda r: r["quality"]["conditional_accuracy"], "{:.3f}"),
    "train_memory_mib": Metric("training memory, as scheduled (MiB)",
                               lambda r: r["memory_bytes"]["total_peak"] / 2**20, "{:.1f}"),
    "step_memory_mib": Metric("training memory, one block resident (MiB)",
                              lambda r: r["memory_bytes"]["step_peak"] / 2**20, "{:.1f}"),
    "train_time_s": Metric("training wall time (s)", lambda r: r["train"]["wall_s"], "{:.1f}"),
    "sample_time_s": Metric("sampling time (s)", lambda r: r["sampling"]["time_s"], "{:.2f}"),
    "network_evals": Metric("network evaluations per sample", lambda r: r["sampling"]["network_evals_per_sample"],
                            "{:.0f}"),
    "final_loss": Metric("final loss (mean over blocks)", lambda r: float(np.mean(r["train"]["final_loss"])),
                         "{:.3f}"),
}


def summarize(values: Sequence[float]) -> dict:
    """mean and sample standard deviation (n - 1); std is 0 for a single value."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def aggregate(records: Sequence[dict], metric_names: Sequence[str] = tuple(METRICS)) -> list[dict]:
    """One row per point (in first-seen order): its params, seeds and mean/std of every metric."""
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r["point"], {"point": r["point"], "params": r["params"], "seeds": [], "_records": []})
        row["seeds"].append(r["seed"])
        row["_records"].append(r)
    out = []
    for row in rows.values():
        recs = row.pop("_records")
        for name in metric_names:
            values = [METRICS[name].get(r) for r in recs]
            values = [v for v in values if v is not None]
            row[name] = summarize(values) if values else None
        out.append(row)
    return out


def format_mean_std(summary: dict | None, fmt: str) -> str:
    if summary is None:
        return "-"
    return f"{fmt.format(summary['mean'])} ± {fmt.format(summary['std'])}"


def markdown_table(rows: Sequence[dict], metric_names: Sequence[str], hidden: Sequence[str] = ()) -> str:
    keys = [k for k in dict.fromkeys(k for row in rows for k in row["params"]) if k not in hidden]
    header = keys + ["seeds"] + [METRICS[m].label for m in metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(keys) + "---:|" + "---:|" * len(metric_names)]
    for row in rows:
        cells = [str(row["params"].get(k, "")) for k in keys] + [str(len(row["seeds"]))]
        cells += [format_mean_std(row[m], METRICS[m].fmt) for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(rows: Sequence[dict], spec: Plot, path: str, caption: str = "") -> None:
    """Mean with std error bars of each metric against `spec.x`; categorical x values are spaced
    evenly."""
    plt = _pyplot()
    facets = list(dict.fromkeys(r["params"].get(spec.facet) for r in rows)) if spec.facet else [None]
    fig, axes = plt.subplots(len(facets), len(spec.metrics), figsize=(4.2 * len(spec.metrics), 3.3 * len(facets)),
                             squeeze=False)
    xs_all = list(dict.fromkeys(r["params"][spec.x] for r in rows))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs_all)
    position = (lambda v: v) if numeric else (lambda v: xs_all.index(v))
    for i, facet in enumerate(facets):
        in_facet = [r for r in rows if spec.facet is None or r["params"].get(spec.facet) == facet]
        series = list(dict.fromkeys(r["params"].get(spec.series) for r in in_facet)) if spec.series else [None]
        for j, name in enumerate(spec.metrics):
            ax = axes[i, j]
            for k, s in enumerate(series):
                pts = [r for r in in_facet if (spec.series is None or r["params"].get(spec.series) == s)
                       and r[name] is not None]
                if not pts:
                    continue
                pts.sort(key=lambda r: position(r["params"][spec.x]))
                offset = 0 if numeric else (k - (len(series) - 1) / 2) * 0.08
                ax.errorbar([position(r["params"][spec.x]) + offset for r in pts], [r[name]["mean"] for r in pts],
                            yerr=[r[name]["std"] for r in pts], marker="o", capsize=3,
                            label=None if s is None else f"{spec.series}={s}")
            if spec.logx and numeric:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs_all, [str(v) for v in xs_all])
            elif not numeric:
                ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
            if name in spec.logy:
                ax.set_yscale("log")
            ax.set_xlabel(spec.x)
            ax.set_ylabel(METRICS[name].label, fontsize=8)
            ax.set_title(f"{spec.facet}={facet}" if spec.facet else METRICS[name].label, fontsize=9)
            ax.grid(alpha=0.3)
            if spec.series and len(series) > 1:
                ax.legend(fontsize=7)
    fig.suptitle((spec.title + ("\n" if caption else "") + caption).strip(), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sample_grids(records: Sequence[dict], spec: SampleGrids, runs_dir: str, path: str) -> None:
    """Each point's sample grid (first seed) side by side along `spec.x`, a row per facet."""
    from PIL import Image

    plt = _pyplot()
    first_seed = min(r["seed"] for r in records)
    chosen = [r for r in records if r["seed"] == first_seed]
    facets = list(dict.fromkeys(r["params"].get(spec.facet) for r in chosen)) if spec.facet else [None]
    xs = list(dict.fromkeys(r["params"][spec.x] for r in chosen))
    fig, axes = plt.subplots(len(facets), len(xs), figsize=(2.0 * len(xs), 2.4 * len(facets)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r in chosen:
        i = facets.index(r["params"].get(spec.facet)) if spec.facet else 0
        j = xs.index(r["params"][spec.x])
        png = os.path.join(runs_dir, f"{r['point']}_seed{r['seed']}.png")
        if os.path.exists(png):
            axes[i, j].imshow(np.asarray(Image.open(png)), cmap="gray", interpolation="nearest")
        title = f"{spec.x}={r['params'][spec.x]}"
        axes[i, j].set_title(title if not spec.facet else f"{facets[i]}, {title}", fontsize=8)
    fig.suptitle(f"samples (seed {first_seed}), one row per class", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(experiment: Experiment, records: Sequence[dict], out_dir: str) -> dict:
    """summary.json, table.md and the experiment's PNGs; returns the paths written."""
    rows = aggregate(records)
    table = markdown_table(rows, experiment.table_metrics, experiment.hidden_params)
    env = records[0] if records else {}
    caption = (f"{env.get('device', '?')}, jax {env.get('jax_version', '?')}, scale {env.get('scale', '?')}; "
               f"mean ± std over {sorted({r['seed'] for r in records})} seeds" if records else "")
    paths = {"summary": os.path.join(out_dir, "summary.json"), "table": os.path.join(out_dir, "table.md")}
    write_json_atomic(paths["summary"], {"experiment": experiment.name, "rows": rows})
    with open(paths["table"], "w") as f:
        f.write(f"<!-- {experiment.name}: {caption} -->\n{table}\n")
    for spec in experiment.plots:
        target = os.path.join(out_dir, spec.filename)
        if isinstance(spec, SampleGrids):
            plot_sample_grids(records, spec, os.path.join(out_dir, "runs"), target)
        else:
            plot_metrics(rows, spec, target, caption)
        paths[spec.filename] = target
    return paths


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


