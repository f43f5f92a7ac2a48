"""Training curves from run directories' `metrics.jsonl`: one line per block against the block's own
optimizer step, and runs that differ only in their seed drawn as one mean +/- std band.

The block step is the x-axis because DiffusionBlocks trains every block as its own model: block b's
k-th update is comparable across schedules (interleaved, sequential, parallel) and across B, where
the run's global step interleaves the blocks. Reads plain dicts (a run's config as `config.json`
holds it), so that it needs neither the config classes nor TensorBoard.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

IGNORED = ("run.seed",)  # runs that differ only here are seeds of one configuration
COORDINATES = ("step", "block", "block_step")  # a record's position, not a metric


def read_metrics(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl`; a missing or broken file is named."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a run directory that has logged a step")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ValueError(f"{path}, line {number}: not a JSON record") from None
    if not records:
        raise ValueError(f"{path} holds no record yet")
    return records


def metrics_of(records: Sequence[dict]) -> list[str]:
    """The numeric fields the records log (loss, grad_norm, lr, elapsed_s, ...)."""
    return sorted({k for r in records for k, v in r.items()
                   if k not in COORDINATES and isinstance(v, (int, float)) and not isinstance(v, bool)})


def block_curves(records: Sequence[dict], metric: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{block: (block steps, values)} of `metric`, in step order."""
    out: dict[int, dict[int, float]] = {}
    for r in records:
        if metric in r:
            out.setdefault(int(r["block"]), {})[int(r["block_step"])] = float(r[metric])
    return {b: (np.array(sorted(v)), np.array([v[k] for k in sorted(v)])) for b, v in sorted(out.items())}


def _flat(config: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def group_runs(configs: Mapping[str, Mapping]) -> dict[str, list[str]]:
    """{label: workdirs} of runs whose configs agree except in `IGNORED` (seeds of one
    configuration). A label names the fields where the groups differ (the directory's name when
    there is one group, or when they differ in too many fields to list)."""
    flat = {w: {k: v for k, v in _flat(c).items() if k not in IGNORED} for w, c in configs.items()}
    groups: list[tuple[dict, list[str]]] = []
    for w, c in flat.items():
        for seen, members in groups:
            if seen == c:
                members.append(w)
                break
        else:
            groups.append((c, [w]))
    keys = sorted({k for c, _ in groups for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k)) for c, _ in groups}) > 1]
    labels = {}
    for c, members in groups:
        label = ", ".join(f"{k}={c.get(k)}" for k in differing) if 0 < len(differing) <= 3 else \
            os.path.basename(os.path.normpath(members[0]))
        labels[label if label not in labels else f"{label} ({members[0]})"] = members
    return labels


def aligned(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values (seeds, steps)): the seeds' curves at the steps every seed logged."""
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    return common, np.stack([v[np.searchsorted(s, common)] for s, v in curves])


def band(values_ST: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sample std) over seeds at each step (std 0 for one seed)."""
    std = values_ST.std(axis=0, ddof=1) if len(values_ST) > 1 else np.zeros(values_ST.shape[1])
    return values_ST.mean(axis=0), std


def group_curves(records_by_run: Mapping[str, Sequence[dict]], groups: Mapping[str, list[str]],
                 metric: str) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """{label: {block: (steps, values (seeds, steps))}} of each group's seeds."""
    out = {}
    for label, members in groups.items():
        per_run = [block_curves(records_by_run[w], metric) for w in members]
        blocks = sorted(set.intersection(*(set(c) for c in per_run)))
        out[label] = {b: aligned([c[b] for c in per_run]) for b in blocks}
    return out


def save_curves(path: str, curves: Mapping[str, Mapping[int, tuple]], metric: str) -> None:
    """One panel per group, one line per block (its seeds' mean, in a band of +/- one std where
    the group has several), written to `path` (PNG, PDF or SVG by its extension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(curves), 3)
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, (label, by_block) in zip(axes.flat, curves.items()):
        n = 1
        for b, (steps, values_ST) in by_block.items():
            n, (mean, std) = len(values_ST), band(values_ST)
            (line,) = ax.plot(steps, mean, lw=1.2, label=f"block {b}")
            if n > 1:
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(f"{label}\n({n} seed{'s' if n > 1 else ''}{', mean +/- std' if n > 1 else ''})", fontsize=9)
        ax.set_xlabel("block step")
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
