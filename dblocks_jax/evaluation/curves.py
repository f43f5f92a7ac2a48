"""Training curves from run directories' `metrics.jsonl`: one line per block against the block's own
optimizer step, and runs that differ only in their seed drawn as one mean +/- std band.

The block step is the x-axis because DiffusionBlocks trains every block as its own model: block b's
k-th update is comparable across schedules (interleaved, sequential, parallel) and across B, where
the run's global step interleaves the blocks. Works on plain dicts (the fields that define a run's
training, and its records), so that it needs no TensorBoard.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Mapping, Sequence

import numpy as np

COORDINATES = ("step", "block", "block_step")  # a record's position, not a metric


def _record(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and all(k in value for k in COORDINATES) else None


def read_metrics(workdir: str) -> tuple[list[dict], list[str]]:
    """(records, notes) of a run's `metrics.jsonl` (of every process's `metrics.process*.jsonl` in a
    multi-process run). A last line cut short (a run writing or killed as it wrote) is skipped
    with a note; a broken line elsewhere, or no file, is an error naming the file."""
    paths = [os.path.join(workdir, "metrics.jsonl")]
    if not os.path.exists(paths[0]):
        paths = sorted(glob.glob(os.path.join(workdir, "metrics.process*.jsonl")))
    if not paths:
        raise FileNotFoundError(f"{workdir}/metrics.jsonl not found: {workdir} is not a run directory that has logged "
                                f"a step")
    records, notes = [], []
    for path in paths:
        with open(path) as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
        for i, (number, line) in enumerate(lines):
            record = _record(line)
            if record is not None:
                records.append(record)
            elif i == len(lines) - 1:
                notes.append(f"{path}, line {number}: skipped a last record cut short")
            else:
                raise ValueError(f"{path}, line {number}: not a metrics record (a JSON object with "
                                 f"{', '.join(COORDINATES)})")
    if not records:
        raise ValueError(f"{paths[0]} holds no record yet")
    return records, notes


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


def group_runs(trainings: Mapping[str, Mapping]) -> dict[str, list[str]]:
    """{label: runs} of the runs whose `trainings` ({run: {field: value}}, the fields that define
    its training but for the seed) agree: seeds of one configuration. A label names the fields
    where the groups differ (the first run's directory name when there is one group, or when they
    differ in more fields than fit)."""
    groups: list[tuple[dict, list[str]]] = []
    for w, c in trainings.items():
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
    """{label: {block: (steps, values (seeds, steps))}} of each group's seeds: every block any seed
    logged, over the seeds that logged it (`values` has a row per such seed)."""
    out = {}
    for label, members in groups.items():
        per_run = [block_curves(records_by_run[w], metric) for w in members]
        blocks = sorted(set().union(*per_run))
        out[label] = {b: aligned([c[b] for c in per_run if b in c]) for b in blocks}
    return out


def save_curves(path: str, curves: Mapping[str, Mapping[int, tuple]], metric: str, seeds: Mapping[str, int]) -> None:
    """One panel per group, one line per block (its seeds' mean, in a band of +/- one std where
    the group has several), written to `path` (PNG, PDF or SVG by its extension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(curves), 3)
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False, sharey=True)
    colors = plt.get_cmap("tab20" if max((len(c) for c in curves.values()), default=0) > 10 else "tab10").colors
    for ax, (label, by_block) in zip(axes.flat, curves.items()):
        for b, (steps, values_ST) in by_block.items():
            (mean, std), color = band(values_ST), colors[b % len(colors)]
            ax.plot(steps, mean, lw=1.2, color=color, label=f"block {b}")
            if len(values_ST) > 1:
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        n = seeds[label]
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
