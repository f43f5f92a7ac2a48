"""Evaluation of an image-classification run (`dblocks evaluate`): top-1 (and top-5 with more than
10 classes) accuracy, expected calibration error (15 bins) and negative log-likelihood on the
held-out split, mean and std over the chain's seeds, for each number of inference steps asked."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dblocks_jax import data
from dblocks_jax.evaluation import calibration
from dblocks_jax.evaluation.stats import summary

METRICS = ("accuracy", "top5", "ece", "nll")


def held_out(task) -> tuple[np.ndarray, np.ndarray]:
    """The test split of the task's dataset, at its image size."""
    return data.load_split(task.config.data.dataset, "test", task.config.data.image_size)


def score(task, block_params: list, *, steps: int | None, seeds: Sequence[int], split=None,
          official_table: bool | None = None) -> dict:
    """Scores of the held-out split (or `split` = (images, labels)) at `steps` network calls, over
    the chain's `seeds`; "reliability" holds the first seed's calibration bins."""
    images, labels = split if split is not None else held_out(task)
    runs, bins = [], None
    for seed in seeds:
        logits = task.predict_logits(block_params, images, steps=steps, seed=seed, official_table=official_table)
        runs.append(calibration.classification_scores(logits, labels))
        if bins is None:
            bins = {k: v.tolist() for k, v in calibration.reliability_bins(calibration.softmax(logits), labels).items()}
    out = {"steps": 1 if task.plain else task.inference_steps(steps), "num_examples": len(labels),
           "seeds": list(seeds), "reliability": bins}
    for metric in METRICS:
        values = [r[metric] for r in runs]
        out[metric] = None if values[0] is None else summary(values)
    return out


def table_agreement(task, block_params: list) -> dict | None:
    """How far the blocks' label tables drifted apart (they start equal): the mean cosine between
    consecutive blocks' rows, and the mean L2 norm of the raw rows (what the released code's
    inference mixes without normalising)."""
    if task.plain:
        return None
    tables = [np.asarray(p["label_embed"][...], np.float64) for p in block_params]
    unit = [t / np.linalg.norm(t, axis=-1, keepdims=True) for t in tables]
    cosines = [float(np.mean(np.sum(a * b, axis=-1))) for a, b in zip(unit, unit[1:])]
    return {"consecutive_cosine": cosines, "raw_row_norm": [float(np.linalg.norm(t, axis=-1).mean()) for t in tables]}


def evaluate_run(run, *, steps: Sequence[int | None] = (None,), progress: bool = True,
                 reliability_png: str | None = None) -> dict:
    """Score a run (or, with the request's `untrained`, fresh blocks of its config) for each entry
    of `steps` (None: the config's default), over the request's chain seeds. `run`: the shell's
    `Request`. `reliability_png`: also draw the reliability diagram of every entry there."""
    task, params, block_steps = run.load()
    seeds, workdir = run.seeds, run.workdir
    if task.plain and tuple(steps) != (None,):
        raise ValueError(f"{workdir} holds a plain classifier: it makes one network call, so inference steps "
                         f"{list(steps)} do not apply")
    for n in steps:
        if n is not None:
            task.inference_steps(n)  # every entry checked before any is scored
    split = held_out(task)
    results = []
    for n in steps:
        if progress:
            calls = 1 if task.plain else task.inference_steps(n)
            print(f"evaluate: {len(split[1])} held-out images, {calls} network call(s), seeds "
                  f"{','.join(map(str, seeds))}", flush=True)
        results.append(score(task, params, steps=n, seeds=seeds, split=split))
    c = task.config
    out = {"workdir": os.path.abspath(workdir), "task": task.name, "dataset": c.data.dataset,
           "objective": c.classify.objective, "num_blocks": task.num_blocks, "untrained": run.untrained,
           "checkpoint_steps": block_steps, "official_weight": c.classify.official_weight,
           "official_table": c.classify.official_table, "grid": c.sampling.grid, "seeds": list(seeds),
           "num_classes": task.num_classes, "table_agreement": table_agreement(task, params), "by_steps": results,
           "reliability_png": reliability_png}
    first = results[0]
    out.update({m: first[m] for m in METRICS})  # the first entry's scores at the top level
    if reliability_png:
        from dblocks_jax.evaluation.plots import save_reliability_diagram

        save_reliability_diagram(reliability_png, {f"{r['steps']} call(s), ECE {r['ece']['mean']:.3f}":
                                                   r["reliability"] for r in results},
                                 title=f"{c.data.dataset}, B = {task.num_blocks}, {c.classify.objective}")
    return out
