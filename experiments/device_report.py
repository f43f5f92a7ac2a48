"""The Markdown and JSON of `device_check.py`'s record: one short table per section."""

from __future__ import annotations

import json
import os

GIB = 2**30


def _f(value, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def _steps_table(rows: list[dict], first: tuple[str, ...] = ()) -> list[str]:
    """One row per measured train step. The device's peak is process-wide and only grows: a reading
    that did not grow during the row's own steps is shown in brackets (it belongs to an earlier
    measurement, and this step's peak is at most that)."""
    head = [*first, "mode", "B", "dtype", "attention", "batch", "step ms", "B x step ms", "examples/s", "tokens/s",
            "TFLOP/s", "MFU", "compile s", "compiled peak GiB", "device peak GiB"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        device = r.get("device_peak_bytes_in_use")
        shown = _f(device, ".2f", 1 / GIB)
        if device is not None and not r.get("device_peak_is_own"):
            shown = f"({shown})"
        cells = [*(str(r.get(k, "")) for k in first), r["mode"], str(r["num_blocks"]), r["dtype"], r["attention"],
                 str(r["batch_size"]), _f(r["step_time_s"], ".1f", 1e3), _f(r["e2e_equivalent_time_s"], ".1f", 1e3),
                 _f(r["examples_per_s"], ",.1f"), _f(r.get("tokens_per_s"), ",.0f"),
                 _f(r.get("achieved_flops_per_s"), ".3f", 1e-12), _f(r["mfu"], ".1%"),
                 _f(r["compile_s"], ".1f"), _f(r["step_peak_bytes"], ".3f", 1 / GIB), shown]
        out.append("| " + " | ".join(cells) + " |")
    return out


def markdown(record: dict) -> str:
    s = record["sections"]
    peak = record.get("peak_flops")
    lines = [f"# Device check: {record['device']} ({record['platform']}, JAX {record['jax_version']})", "",
             f"Peak for MFU: {_f(peak, ',.0f', 1e-12)} TFLOP/s ({record['peak_source']}). "
             f"Seconds per section: {record['seconds']}." + (" **Tiny shapes: checks the script only.**"
                                                             if record["tiny"] else ""), ""]
    if "dit" in s:
        lines += ["## 1. cifar10_dit_s: e2e vs DiffusionBlocks B = 3, with and without remat", ""]
        lines += _steps_table(s["dit"]["steps"]) + [""]
    if "block768" in s:
        b = s["block768"]
        lines += [f"## 2. Width-768, 12-head stack ({b['config']}): MFU (goal {b['mfu_goal']:.0%})", "",
                  f"XLA counts {b['counted_flops']:.3e} FLOPs per step; the 6·P·T rule gives "
                  f"{b['rule_6PT_flops']:.3e} "
                  f"(ratio {b['counted_over_rule']:.3f}, within 20 %: {b['within_20_percent']}). "
                  f"Skipped: {b['skipped'] or 'nothing'}.", ""]
        lines += _steps_table(b["steps"]) + [""]
    if "sampler" in s:
        lines += ["## 3. Sampler: Euler chain", "", "| B | dtype | steps | batch | images/s | ms per batch | "
                  "layer evals per image | compile + first run s |", "|---|---|---|---|---|---|---|---|"]
        # per_s / layer_evals_per_unit; the older names in records written before version 0.3
        lines += [f"| {r['num_blocks']} | {r['dtype']} | {r['num_steps']} | {r['batch']} | "
                  f"{r.get('per_s', r.get('samples_per_s')):,.1f} | {r['time_s'] * 1e3:.1f} | "
                  f"{r.get('layer_evals_per_unit', r.get('layer_evals_per_sample'))} | "
                  f"{r['compile_and_first_run_s']:.1f} |" for r in s["sampler"]["rows"]] + [""]
    if "parallel" in s:
        p = s["parallel"]
        lines += [f"## 4. Schedules on one device (B = {p['num_blocks']}, batch {p['batch_size']} per block)", "",
                  "| schedule | block steps per call | ms per call | examples/s |", "|---|---|---|---|"]
        lines += [f"| {k} | {p[k]['block_steps_per_call']} | {p[k]['step_time_s'] * 1e3:.1f} | "
                  f"{p[k]['examples_per_s']:,.1f} |" for k in ("parallel", "sequential")] + [""]
    if "language" in s:
        lines += ["## 5. Language train steps", "", s["language"]["data"], ""]
        lines += _steps_table(s["language"]["steps"], first=("preset",)) + [""]
    if "training" in s:
        t = s["training"]
        lines += [f"## 6. Real training: {t['preset']}, B = {t['num_blocks']}, {t['steps_per_block']} steps per block, "
                  f"{t['dtype']}, {t['seconds']:.1f} s", "", "| block | loss, first interval | loss, last interval |",
                  "|---|---|---|"]
        lines += [f"| {b} | {v['first_interval_loss']:.4f} | {v['last_interval_loss']:.4f} |"
                  for b, v in t["blocks"].items()] + [""]
    for section, error in record["errors"].items():
        lines += [f"**Section {section} failed**: `{error.splitlines()[0]}`", ""]
    return "\n".join(lines)


def write(record: dict, out: str, name: str) -> tuple[str, str]:
    """<out>/<name>.json and <out>/<name>.md (rewritten after every section)."""
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, name)
    with open(stem + ".json", "w") as f:
        json.dump(record, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown(record) + "\n")
    return stem + ".json", stem + ".md"
