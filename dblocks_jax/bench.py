"""What DiffusionBlocks saves: training memory, step time and sampling cost (DESIGN.md section 5).

Every mode is the same `BlockTrainer` and the same compiled sampler the real runs use, on the same
architecture, data shape and batch:

- `e2e`: end-to-end, B = 1.
- `e2e-remat`: end-to-end with `jax.checkpoint` around every transformer layer.
- `db-sequential`: one block resident (parameters, optimizer state, EMA, activations).
- `db-interleaved`: the paper's schedule: every block's state resident, one block's activations.
- `db-remat`: DiffusionBlocks (sequential) with checkpointed layers.

Memory comes from the compiled step's `memory_analysis()` (deterministic, no device needed):
step peak = argument + output - alias + temp. State that stays resident outside the step (the
other blocks under `db-interleaved`) is added to give the mode's total. Times are medians over
repeated calls after a warm-up; they are machine-dependent and never asserted in tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.config import Config
from dblocks_jax.model import BlockModel
from dblocks_jax.sampling import _model_sampler, evaluations_per_sample
from dblocks_jax.training import BlockTrainer

MODES = ("e2e", "e2e-remat", "db-sequential", "db-interleaved", "db-remat")

# Dense peak matmul throughput per device kind and dtype, for model FLOPs utilisation. float32
# matmuls on these GPUs run on TF32 tensor cores under JAX's default precision.
PEAK_FLOPS = {
    ("NVIDIA H100 80GB HBM3", "bfloat16"): 989e12, ("NVIDIA H100 80GB HBM3", "float32"): 494.5e12,
    ("NVIDIA H200", "bfloat16"): 989e12, ("NVIDIA H200", "float32"): 494.5e12,
}


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    num_blocks: tuple[int, ...] = (1, 2, 4)
    modes: tuple[str, ...] = MODES
    time_steps: int = 20  # timed training steps per mode and B (0: memory only)
    warmup_steps: int = 2
    sample_steps: int = 0  # sampler steps K to time (0: skip the sampler)
    sample_batch: int = 16
    sample_repeats: int = 3


def mode_config(config: Config, mode: str, num_blocks: int) -> Config:
    """The config a mode runs: e2e modes are B = 1 of the same model; remat modes checkpoint layers."""
    if mode not in MODES:
        raise ValueError(f"unknown bench mode {mode!r}; allowed: {', '.join(MODES)}")
    return config.replace(num_blocks=1 if mode.startswith("e2e") else num_blocks,
                          remat=mode.endswith("remat"),
                          schedule="interleaved" if mode == "db-interleaved" else "sequential")


def plan_runs(config: Config, settings: BenchSettings) -> list[tuple[str, Config]]:
    """Every (mode, config) to measure, validated before anything compiles. e2e modes run once."""
    if not settings.num_blocks or not settings.modes:
        raise ValueError("bench needs at least one mode and one number of blocks")
    runs, seen = [], set()
    for mode in settings.modes:
        for b in settings.num_blocks:
            cfg = mode_config(config, mode, b)
            if (mode, cfg.num_blocks) not in seen:
                seen.add((mode, cfg.num_blocks))
                runs.append((mode, cfg))
    return runs


def batch_shapes(config: Config):
    info = config.dataset_info
    images = jax.ShapeDtypeStruct((config.batch_size, config.image_size, config.image_size, info.channels),
                                  jnp.float32)
    return images, jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)


def compile_step(trainer: BlockTrainer):
    """The train step compiled for abstract inputs: nothing is allocated."""
    return trainer.train_step.lower(trainer.abstract_state, *batch_shapes(trainer.config), 0, 0).compile()


def step_memory(compiled) -> dict[str, int]:
    ma = compiled.memory_analysis()
    mem = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    mem["step_peak"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
    return mem


def memory_bytes(trainer: BlockTrainer, compiled, resident_blocks: int) -> dict[str, int]:
    """The compiled step's memory plus the state of the blocks resident beside the trained one
    (`resident_state` for all of them, `total_peak` = step peak + the other blocks' state)."""
    mem = step_memory(compiled)
    mem["resident_state"] = trainer.state_bytes * resident_blocks
    mem["total_peak"] = mem["step_peak"] + trainer.state_bytes * (resident_blocks - 1)
    return mem


def step_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def time_steps(trainer: BlockTrainer, settings: BenchSettings) -> list[float]:
    """Wall time of `time_steps` real training steps of block 0 after `warmup_steps`."""
    config = trainer.config
    images_shape, labels_shape = batch_shapes(config)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, images_shape.shape), jnp.float32)
    labels = jnp.asarray(rng.integers(0, max(config.dataset_info.num_classes, 1), labels_shape.shape), jnp.int32)
    state = trainer.init_state(0)
    times = []
    for i in range(settings.warmup_steps + settings.time_steps):
        start = time.perf_counter()
        state, step_metrics = trainer.train_step(state, images, labels, 0, i)
        jax.block_until_ready((state, step_metrics))
        if i >= settings.warmup_steps:
            times.append(time.perf_counter() - start)
    return times


def time_sampler(config: Config, settings: BenchSettings) -> dict:
    """Wall time of drawing `sample_batch` images with K Euler steps (one pass per step, no guidance)."""
    model = BlockModel.from_config(config)
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), config.num_blocks))
    sampler = _model_sampler(model, 1.0, settings.sample_steps, "euler", "equiprobable")  # guidance 1: one pass
    info = config.dataset_info
    noise = jax.random.normal(jax.random.key(1), (settings.sample_batch, config.image_size, config.image_size,
                                                  info.channels))
    labels = jnp.zeros((settings.sample_batch,), jnp.int32)
    jax.block_until_ready(sampler(params, noise, labels))  # compile
    times = []
    for _ in range(settings.sample_repeats):
        start = time.perf_counter()
        jax.block_until_ready(sampler(params, noise, labels))
        times.append(time.perf_counter() - start)
    evals = evaluations_per_sample("euler", settings.sample_steps)
    return {"num_steps": settings.sample_steps, "batch": settings.sample_batch, "time_s": statistics.median(times),
            "layer_evals_per_sample": evals * config.layers_per_block}


def analytic_bytes(mode: str, config: Config, param_bytes: int, state_bytes: int, act_per_layer: float) -> int:
    """The memory model of DESIGN.md section 4 from the parameter count, per resident block:
    state (params + 2 Adam moments + EMA here) + gradients + activations of L/B layers, or of about
    one layer when layers are checkpointed. `act_per_layer` is A, fitted once on the e2e step."""
    layers = 1 if mode.endswith("remat") else config.layers_per_block
    others = (config.num_blocks - 1) * state_bytes if mode == "db-interleaved" else 0
    return int(state_bytes + param_bytes + act_per_layer * layers + others)


def run_bench(config: Config, settings: BenchSettings = BenchSettings(), progress: bool = True) -> list[dict]:
    """Measure every mode and B of `settings` on `config`; one JSON-ready record each.

    Every step is compiled (and its memory read) first; the timed runs then go in ascending order of
    compiled memory, so that the device's process-wide `peak_bytes_in_use` (which cannot be reset)
    read after each mode is that mode's own peak on GPU/TPU.
    """
    device = jax.devices()[0]
    measured = []
    for mode, cfg in plan_runs(config, settings):
        if progress:
            print(f"bench: compiling {mode} B={cfg.num_blocks}", flush=True)
        trainer = BlockTrainer(cfg)
        compiled = compile_step(trainer)
        mem = memory_bytes(trainer, compiled, resident_blocks=cfg.num_blocks if mode == "db-interleaved" else 1)
        record = {
            "mode": mode, "num_blocks": cfg.num_blocks, "num_layers": cfg.num_layers,
            "layers_per_block": cfg.layers_per_block, "batch_size": cfg.batch_size, "dtype": cfg.dtype,
            "device": device.device_kind, "platform": device.platform, "jax_version": jax.__version__,
            "params_per_block": sum(x.size for x in jax.tree.leaves(trainer.model.abstract_params)),
            "memory_bytes": mem, "flops_per_step": step_flops(compiled), "config": cfg.to_dict(),
        }
        measured.append((record, trainer))

    add_model_flops(config, measured)
    for record, trainer in sorted(measured, key=lambda m: m[0]["memory_bytes"]["total_peak"]):
        cfg = trainer.config
        if settings.time_steps:
            if progress:
                print(f"bench: timing {record['mode']} B={cfg.num_blocks}", flush=True)
            resident = [trainer.init_state(b) for b in range(1, cfg.num_blocks)] \
                if record["mode"] == "db-interleaved" else []  # the other blocks, as in real training
            times = time_steps(trainer, settings)
            del resident
            step = statistics.median(times)
            record.update(step_time_s=step, step_times_s=times, e2e_equivalent_time_s=step * cfg.num_blocks)
            peak = PEAK_FLOPS.get((device.device_kind, cfg.dtype))
            if record["flops_per_step"]:
                record["achieved_flops_per_s"] = record["flops_per_step"] / step  # hardware FLOPs, recompute included
                record["mfu"] = record["model_flops_per_step"] / step / peak if peak else None
            record["device_peak_bytes_in_use"] = (device.memory_stats() or {}).get("peak_bytes_in_use")
        if settings.sample_steps and record["mode"] in ("e2e", "db-sequential"):
            record["sampler"] = time_sampler(cfg, settings)

    records = [record for record, _ in measured]
    add_analytic(records, [trainer for _, trainer in measured])
    return records


def add_model_flops(config: Config, measured: list) -> None:
    """`model_flops_per_step`: the FLOPs of the step without rematerialisation, so that MFU counts
    useful work only (a remat mode's own `flops_per_step` includes the recomputed forward)."""
    flops = {(r["mode"], r["num_blocks"]): r["flops_per_step"] for r, _ in measured}
    for record, _ in measured:
        if not record["mode"].endswith("remat"):
            record["model_flops_per_step"] = record["flops_per_step"]
            continue
        twin = "e2e" if record["mode"] == "e2e-remat" else "db-sequential"
        if (twin, record["num_blocks"]) not in flops:
            trainer = BlockTrainer(mode_config(config, twin, record["num_blocks"]))
            flops[(twin, record["num_blocks"])] = step_flops(compile_step(trainer))
        record["model_flops_per_step"] = flops[(twin, record["num_blocks"])]


def add_analytic(records: list[dict], trainers: list[BlockTrainer]) -> None:
    """Fill `analytic_bytes`: A per layer is fitted once on the e2e step (None without an e2e run)."""
    e2e = next(((r, t) for r, t in zip(records, trainers) if r["mode"] == "e2e"), None)
    act_per_layer = None
    if e2e:
        r, t = e2e
        act_per_layer = (r["memory_bytes"]["step_peak"] - t.state_bytes - param_bytes(t)) / r["num_layers"]
    for r, t in zip(records, trainers):
        r["analytic_bytes"] = None if act_per_layer is None else analytic_bytes(
            r["mode"], t.config, param_bytes(t), t.state_bytes, act_per_layer)
        r["analytic_is_fit"] = r["mode"] == "e2e" or (r["mode"] != "e2e-remat" and r["num_blocks"] == 1
                                                      and not r["mode"].endswith("remat"))


def param_bytes(trainer: BlockTrainer) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.model.abstract_params))


def markdown_table(records: Sequence[dict]) -> str:
    """One row per mode and B: memory in MiB (and as a share of e2e), times where measured."""
    e2e = next((r for r in records if r["mode"] == "e2e"), None)
    mib = lambda b: f"{b / 2**20:,.1f}"
    rows = ["| mode | B | step peak MiB | resident state MiB | total MiB | x e2e | analytic MiB | "
            "step ms | B x step ms | sampler ms (K) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: (MODES.index(r["mode"]), r["num_blocks"])):
        m = r["memory_bytes"]
        ratio = f"{m['total_peak'] / e2e['memory_bytes']['total_peak']:.3f}" if e2e else "-"
        step = f"{r['step_time_s'] * 1e3:.1f}" if "step_time_s" in r else "-"
        equiv = f"{r['e2e_equivalent_time_s'] * 1e3:.1f}" if "step_time_s" in r else "-"
        sampler = f"{r['sampler']['time_s'] * 1e3:.1f} ({r['sampler']['num_steps']})" if "sampler" in r else "-"
        analytic = "-" if r["analytic_bytes"] is None else ("(fit)" if r.get("analytic_is_fit") else
                                                             mib(r["analytic_bytes"]))
        rows.append(f"| {r['mode']} | {r['num_blocks']} | {mib(m['step_peak'])} | {mib(m['resident_state'])} | "
                    f"{mib(m['total_peak'])} | {ratio} | {analytic} | {step} | {equiv} | {sampler} |")
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


def write_results(records: Sequence[dict], json_path: str) -> tuple[str, str]:
    """Write the JSON, and the markdown table and PNG chart next to it."""
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(list(records), f, indent=1)
    stem = os.path.splitext(json_path)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(records) + "\n")
    plot(records, stem + ".png")
    return stem + ".md", stem + ".png"
