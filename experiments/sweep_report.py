"""Aggregation and reports of the paper-style sweeps (experiments/sweep.py): mean ± std per point,
markdown tables, summary JSON and PNG plots with error bars. Works on run records (dicts) only."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Callable, Sequence

import numpy as np


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


def write_json_atomic(path: str, value) -> None:
    """Write to a temporary file in the same directory, then rename: a reader sees all or nothing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def write_report(experiment, records: Sequence[dict], out_dir: str) -> dict:
    """summary.json, table.md and the PNGs of `experiment` (a `sweep.Experiment`: its name,
    table_metrics, hidden_params and plots); returns the paths written."""
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
