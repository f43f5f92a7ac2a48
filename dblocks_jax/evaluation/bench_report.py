"""Tables and charts of bench records (`dblocks bench --json`): markdown, PNG, JSON."""

from __future__ import annotations

import json
import os
from typing import Sequence

from dblocks_jax.engine.bench import MODES


def markdown_table(records: Sequence[dict]) -> str:
    """One row per mode and B: memory in MiB (and as a share of e2e), times where measured, MFU
    where the device's peak is known, compile time and the attention kernel."""
    e2e = next((r for r in records if r["mode"] == "e2e"), None)
    mib = lambda b: f"{b / 2**20:,.1f}"
    rows = ["| mode | B | step peak MiB | resident state MiB | total MiB | x e2e | analytic MiB | "
            "step ms | B x step ms | inference ms (K) | MFU | compile s | attention |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(records, key=lambda r: (MODES.index(r["mode"]), r["num_blocks"])):
        m = r["memory_bytes"]
        ratio = f"{m['total_peak'] / e2e['memory_bytes']['total_peak']:.3f}" if e2e else "-"
        step = f"{r['step_time_s'] * 1e3:.1f}" if "step_time_s" in r else "-"
        equiv = f"{r['e2e_equivalent_time_s'] * 1e3:.1f}" if "step_time_s" in r else "-"
        inference = r.get("inference") or r.get("sampler")  # "sampler": records written before version 0.3
        sampler = f"{inference['time_s'] * 1e3:.1f} ({inference['num_steps']})" if inference else "-"
        analytic = "-" if r["analytic_bytes"] is None else ("(fit)" if r.get("analytic_is_fit") else
                                                             mib(r["analytic_bytes"]))
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        rows.append(f"| {r['mode']} | {r['num_blocks']} | {mib(m['step_peak'])} | {mib(m['resident_state'])} | "
                    f"{mib(m['total_peak'])} | {ratio} | {analytic} | {step} | {equiv} | {sampler} | {mfu} | "
                    f"{r['compile_s']:.1f} | {r.get('attention', '-')} |")
    return "\n".join(rows)


def plot(records: Sequence[dict], path: str) -> None:
    """Memory vs B per mode, and (when timed) B x step time vs B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = any("step_time_s" in r for r in records)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4), squeeze=False)
    blocks = sorted({r["num_blocks"] for r in records if r["mode"].startswith("db")} | {1})
    for mode in MODES:
        rs = sorted((r for r in records if r["mode"] == mode), key=lambda r: r["num_blocks"])
        if not rs:
            continue
        if mode.startswith("e2e"):  # a horizontal reference line across B
            e2e_mib = rs[0]["memory_bytes"]["total_peak"] / 2**20
            axes[0, 0].plot(blocks, [e2e_mib] * len(blocks), "--", label=mode)
            if mode == "e2e":
                axes[0, 0].plot(blocks, [e2e_mib / b for b in blocks], ":", color="gray", label="e2e / B (ideal)")
            if timed and "step_time_s" in rs[0]:
                axes[0, 1].plot(blocks, [rs[0]["step_time_s"] * 1e3] * len(blocks), "--", label=mode)
            continue
        bs = [r["num_blocks"] for r in rs]
        axes[0, 0].plot(bs, [r["memory_bytes"]["total_peak"] / 2**20 for r in rs], "o-", label=mode)
        if timed and all("step_time_s" in r for r in rs):
            axes[0, 1].plot(bs, [r["e2e_equivalent_time_s"] * 1e3 for r in rs], "o-", label=f"{mode} (B x step)")
    axes[0, 0].set(xlabel="number of blocks B", ylabel="training memory (MiB)", title="compiled peak + resident state")
    axes[0, 0].set_yscale("log")
    if timed:
        axes[0, 1].set(xlabel="number of blocks B", ylabel="ms", title="time per end-to-end-equivalent step")
    device = records[0]["device"] if records else ""
    fig.suptitle(f"dblocks-jax bench on {device}, batch {records[0]['batch_size'] if records else ''}")
    for ax in axes.ravel():
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(records: Sequence[dict], json_path: str, md_path: str | None = None,
                  png_path: str | None = None) -> tuple[str, str]:
    """Write the JSON, and the markdown table and PNG chart (default: next to it, same stem)."""
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(list(records), f, indent=1)
    stem = os.path.splitext(json_path)[0]
    md_path, png_path = md_path or stem + ".md", png_path or stem + ".png"
    with open(md_path, "w") as f:
        f.write(markdown_table(records) + "\n")
    plot(records, png_path)
    return md_path, png_path
