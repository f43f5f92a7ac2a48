"""One run of a paper-style sweep (experiments/sweep.py): which configs count as the same, the
cache of trained parameters, and the measurements (training memory, samples and their quality).

Configs are compared by the roles their fields declare (`dblocks_jax.engine.settings`): the
trained parameters depend on the assembly and identity fields (`train_key`), a run's record on
those and the sampling fields; free fields (logging, checkpoint cadence, device layout) count in
neither. A stored config may be this version's nested one or the flat config of a dblocks-jax 0.1
record (`config_values`); a field that only one side knows counts as equal when it is at its
default.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from typing import Any, Sequence

import jax
import numpy as np
from sweep_report import write_json_atomic

from dblocks_jax import data
from dblocks_jax.config import Config, config_class, flat_to_nested, upgrade
from dblocks_jax.engine import bench
from dblocks_jax.engine.settings import SAMPLING, TRAINING_ROLES, defaults, leaves, values_with_roles
from dblocks_jax.engine.solvers import evaluations_per_sample
from dblocks_jax.engine.trainer import BlockTrainer
from dblocks_jax.evaluation import image_quality
from dblocks_jax.evaluation.plots import image_grid
from dblocks_jax.presets import default_preset, get_config
from dblocks_jax.runs import train
from dblocks_jax.tasks import make_task, task_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMAT_VERSION = 2  # of a run record; 1: dblocks-jax 0.1 (its "config" is the flat 0.1 config)
# Layout of the cached trained parameters, part of every train key: 1 was dblocks-jax 0.1 (one
# parameter tree per layer), 2 is a scanned layer stack (other shapes, other leaf counts).
PARAMS_FORMAT = 2
TRAIN_ROLES = TRAINING_ROLES  # what the trained parameters depend on
RUN_ROLES = (*TRAINING_ROLES, SAMPLING)  # what a run measures; FREE fields (bookkeeping) are in neither


# --------------------------------------------------------------------------------------------------
# Comparing configs: nested (this version) or flat (records of dblocks-jax 0.1)


def _defaults() -> dict[str, tuple[Any, str]]:
    """{path: (default value, role)} of every field of every task's config (a field is the same
    field in every task that has it). The single `Config` of version 0.2 defaulted to the first
    task on the default preset's data; they count as defaults here too, so that the keys of those
    runs stay what they were."""
    out = {p: (v, f.metadata.get("role")) for task in task_names()
           for p, (v, f) in defaults(config_class(task)).items()}
    out["task"] = (task_names()[0], out["task"][1])
    out["data.dataset"] = (get_config(default_preset()).data.dataset, out["data.dataset"][1])
    return out


def identifying(config: Config, roles: Sequence[str]) -> dict:
    """The fields with one of `roles` that are not at the `Config` default. Keys built from these
    stay the same when a new field (at its default) is added, so finished runs stay valid."""
    defaults = _defaults()
    return {p: v for p, v in values_with_roles(config, roles).items() if v != defaults[p][0]}


def train_key(config: Config) -> str:
    return _digest({"params_format": PARAMS_FORMAT, **identifying(config, TRAIN_ROLES)})


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def config_values(config: Config | dict) -> dict[str, Any]:
    """{path: value} of a config: a `Config`, its `to_dict()` (nested sections), or the flat dict
    of a dblocks-jax 0.1 record (`flat_to_nested`; a name it does not know is kept as it is, so
    that it can never match)."""
    if isinstance(config, Config):
        return {p: v for p, (v, _) in leaves(config).items()}
    if "format" not in config:  # flat 0.1 config
        out = {}
        for name, value in config.items():
            out.update(flat_to_nested({name: value}) or {name: value})
        return out
    if config.get("format") == 2:  # version 0.2: every task's sections, model.family
        config = upgrade(config, config_class(config["task"]).task_class)[0]
    out: dict[str, Any] = {}

    def walk(values: dict, prefix: str) -> None:
        for name, value in values.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            elif not (prefix == "" and name == "format"):
                out[f"{prefix}{name}"] = value

    walk(config, "")
    return out


def same_config(stored: Config | dict, planned: Config | dict, roles: Sequence[str] = RUN_ROLES) -> bool:
    """Whether two configs describe the same run on the fields with one of `roles`: equal on every
    common field, and a field that only one of them has (added to or removed from `Config` since)
    is at its default. Either side may be a `Config`, its nested dict or a flat 0.1 dict. A field
    unknown to `Config` has no role and no default: it never matches."""
    defaults = _defaults()
    a, b = config_values(stored), config_values(planned)
    for path in set(a) | set(b):
        default, role = defaults.get(path, (None, None))
        if role is not None and role not in roles:
            continue
        if path in a and path in b:
            if a[path] != b[path] and not (path == "model.dtype" and "auto" in (a[path], b[path])):
                return False  # (`auto` is whatever dtype the machine that ran it chose: it matches both)
        elif path not in defaults or a.get(path, b.get(path)) != default:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# One run


class Caches:
    """What is shared by the runs of one process: classifiers, held-out splits, step memory."""

    def __init__(self, classifier_steps: int):
        self.classifier_settings = image_quality.ClassifierSettings(steps=classifier_steps)
        self.classifiers: dict = {}
        self.references: dict = {}
        self.memory: dict = {}

    def classifier(self, config: Config) -> image_quality.FeatureClassifier:
        key = (config.data.dataset, config.data.image_size)
        if key not in self.classifiers:
            self.classifiers[key] = image_quality.FeatureClassifier(*key, self.classifier_settings)
        return self.classifiers[key]

    def reference(self, config: Config) -> np.ndarray:
        key = (config.data.dataset, config.data.image_size)
        if key not in self.references:
            self.references[key] = data.load_split(config.data.dataset, "test", config.data.image_size)[0]
        return self.references[key]


def train_or_load(config: Config, work_root: str) -> tuple[list, dict]:
    """The per-block EMA parameters of `config` and how they were trained: from `work_root` if a
    finished training of the same config (and parameter layout) is there, else trained now (and
    saved there)."""
    abstract = make_task(config).abstract_params
    treedef, specs = jax.tree.structure(abstract), jax.tree.leaves(abstract)
    num_blocks = config.model.num_blocks
    directory = os.path.join(work_root, train_key(config))
    info_path, params_path = os.path.join(directory, "train.json"), os.path.join(directory, "params.npz")
    found = _find_training(config, work_root, directory)
    if found is not None:
        try:
            with open(os.path.join(found, "train.json")) as f:
                info = {k: v for k, v in json.load(f).items() if k not in ("config", "params_format")}
            with np.load(os.path.join(found, "params.npz")) as stored:
                stored_leaves = [stored[f"leaf_{i}"] for i in range(len(stored.files))]
            per_block = len(specs)
            if len(stored_leaves) != per_block * num_blocks or any(
                    leaf.shape != specs[i % per_block].shape for i, leaf in enumerate(stored_leaves)):
                raise ValueError("parameter layout mismatch")
            params = [jax.tree.unflatten(treedef, stored_leaves[b * per_block:(b + 1) * per_block])
                      for b in range(num_blocks)]
            return params, {**info, "reused": True}
        except (OSError, ValueError, KeyError):
            pass
    start = time.perf_counter()
    result = train(config, None, progress=False, write_artifacts=False)
    wall = time.perf_counter() - start
    info = {"wall_s": wall, "block_steps": list(result.block_steps), "final_loss": list(result.final_loss),
            "steps_per_s": sum(result.block_steps) / wall, "train_key": train_key(config)}
    os.makedirs(directory, exist_ok=True)
    flat = [np.asarray(leaf) for p in result.params for leaf in jax.tree.leaves(p)]
    tmp = params_path + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **{f"leaf_{i}": leaf for i, leaf in enumerate(flat)})
    os.replace(tmp, params_path)
    write_json_atomic(info_path, {**info, "params_format": PARAMS_FORMAT, "config": config.to_dict()})
    return list(result.params), {**info, "reused": False}


def _find_training(config: Config, work_root: str, preferred: str) -> str | None:
    """The directory under `work_root` holding a finished training of `config` in this parameter
    layout (its key's directory first, then any whose train.json has the same training config,
    e.g. one keyed before a field was added)."""
    candidates = [preferred] + sorted(os.path.join(work_root, d) for d in
                                      (os.listdir(work_root) if os.path.isdir(work_root) else ()))
    for directory in candidates:
        try:
            with open(os.path.join(directory, "train.json")) as f:
                stored = json.load(f)
            if stored.get("params_format") != PARAMS_FORMAT or not isinstance(stored["config"], dict):
                continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if os.path.exists(os.path.join(directory, "params.npz")) and same_config(stored["config"], config,
                                                                                 TRAIN_ROLES):
            return directory
    return None


def training_memory(config: Config, cache: dict | None = None) -> dict:
    """Bytes of the compiled training step (argument + output - alias + temp) and, for the
    interleaved schedule, of the other blocks' state that stays resident (`total_peak`)."""
    key = train_key(config.override({"run.seed": 0}))
    if cache is not None and key in cache:
        return cache[key]
    trainer = BlockTrainer(make_task(config))
    resident = config.model.num_blocks if config.schedule.name == "interleaved" else 1
    mem = bench.memory_bytes(trainer, bench.compile_step(trainer)[0], resident)
    if cache is not None:
        cache[key] = mem
    return mem


def sample_and_score(config: Config, params: list, classifier: image_quality.FeatureClassifier,
                     reference: np.ndarray, grid_path: str | None = None) -> tuple[dict, dict]:
    """Draw `sampling.num_samples` samples with the config's sampler (noise seeded by `run.seed`,
    as `generate` does), time the compiled sampler, and score them against `reference`."""
    s, n = config.sampling, config.sampling.num_samples
    task = make_task(config)
    sampler, args = task.sampler_and_inputs(params, num_samples=n, seed=config.run.seed, sampling=s)
    labels = None if args[2] is None else np.asarray(args[2])
    start = time.perf_counter()
    compiled = sampler.lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    images = np.asarray(jax.block_until_ready(compiled(*args)))
    sample_s = time.perf_counter() - start
    evals = evaluations_per_sample(s.solver, s.steps)
    guided = bool(task.num_classes) and s.guidance != 1.0
    quality = {
        "frechet_distance": image_quality.feature_frechet_distance(classifier, images, reference),
        "conditional_accuracy": None if labels is None else image_quality.conditional_accuracy(classifier, images,
                                                                                               labels),
        "num_samples": n, "num_reference": len(reference),
        "classifier": {"path": classifier.path, "held_out_accuracy": classifier.accuracy,
                       "steps": classifier.settings.steps},
        "finite": bool(np.isfinite(images).all()),
    }
    sampling = {"time_s": sample_s, "compile_s": compile_s, "num_samples": n, "solver": s.solver, "grid": s.grid,
                "steps": s.steps, "guidance": s.guidance, "network_evals_per_sample": evals,
                "layer_evals_per_sample": evals * config.model.layers_per_block * (2 if guided else 1)}
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


def execute(run, work_root: str, caches: Caches, grid_path: str | None, environment: dict) -> dict:
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
