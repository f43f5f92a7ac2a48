"""What DiffusionBlocks saves: training memory, step time, compile time and sampling cost.

Every mode is the same `BlockTrainer` and the same compiled chain the real runs use, on the same
task, architecture, data shape and batch:

- `e2e`: end-to-end, B = 1.
- `e2e-remat`: end-to-end with `jax.checkpoint` around every layer.
- `db-sequential`: one block resident (parameters, optimizer state, EMA, activations).
- `db-interleaved`: the paper's schedule: every block's state resident, one block's activations.
- `db-remat`: DiffusionBlocks (sequential) with checkpointed layers.

Memory comes from the compiled step's `memory_analysis()` (deterministic, no device needed):
step peak = argument + output - alias + temp. State that stays resident outside the step (the
other blocks under `db-interleaved`) is added to give the mode's total. Times are medians over
repeated calls after a warm-up; they are machine-dependent and never asserted in tests. The
engine does not know tasks: it asks the config's task class (`type(config).task_class`, or the
one passed) for each mode's config (`bench_variant`), the FLOP-counting twin (`flop_twin`) and its
inference (`Task.inference`), which every mode's record times when `sample_steps` is set.

Each record also holds what an accelerator run needs read (docs/architecture.md, "The
accelerator path"): FLOPs per step from XLA's cost analysis of the compiled step, achieved FLOP/s
and MFU against the device's peak
(`engine.hardware`), the compile time of the step (and of the inference), the attention kernel
the step holds, and the device's own `peak_bytes_in_use` next to the compiled estimate.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.engine import hardware
from dblocks_jax.engine.trainer import BlockTrainer

MODES = ("e2e", "e2e-remat", "db-sequential", "db-interleaved", "db-remat")
INFERENCE_MODES = ("e2e", "db-sequential")  # the modes whose record times the task's inference


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    num_blocks: tuple[int, ...] = (1, 2, 4)
    modes: tuple[str, ...] = MODES
    time_steps: int = 20  # timed training steps per mode and B (0: memory only)
    warmup_steps: int = 2
    sample_steps: int = 0  # chain steps K of the task's inference to time (0: skip inference)
    sample_batch: int = 16
    sample_repeats: int = 3
    count_flops: bool = True  # compile each mode's unrolled twin for XLA's FLOP count (False: memory only, faster)
    peak_tflops: float | None = None  # the device's peak for MFU (None: engine.hardware's table)


def task_class_of(config, task_class: type | None = None) -> type:
    """The task class a bench asks: the one given, else the config's own."""
    return task_class or type(config).task_class


def mode_config(config, mode: str, num_blocks: int, task_class: type | None = None):
    """The config a mode runs: e2e modes are B = 1 of the same model, remat modes checkpoint layers
    (the task's `bench_variant`); the schedule is the engine's own section."""
    if mode not in MODES:
        raise ValueError(f"unknown bench mode {mode!r}; allowed: {', '.join(MODES)}")
    b = 1 if mode.startswith("e2e") else num_blocks
    try:
        config = config.override({"schedule.name": "interleaved" if mode == "db-interleaved" else "sequential",
                                  "schedule.block_shards": 0, "schedule.data_shards": 1})
        return task_class_of(config, task_class).bench_variant(config, num_blocks=b, remat=mode.endswith("remat"))
    except ValueError as err:
        raise ValueError(f"bench mode {mode} with B={b}: {err}") from None


def plan_runs(config, settings: BenchSettings, task_class: type | None = None) -> list[tuple[str, object]]:
    """Every (mode, config) to measure, validated before anything compiles. e2e modes run once."""
    if not settings.num_blocks or not settings.modes:
        raise ValueError("bench needs at least one mode and one number of blocks")
    runs, seen = [], set()
    for mode in settings.modes:
        for b in settings.num_blocks:
            cfg = mode_config(config, mode, b, task_class)
            if (mode, cfg.model.num_blocks) not in seen:
                seen.add((mode, cfg.model.num_blocks))
                runs.append((mode, cfg))
                if settings.sample_steps and mode in INFERENCE_MODES:
                    task_class_of(cfg, task_class).check_inference(cfg, settings.sample_steps)
    return runs


class CompiledStep(NamedTuple):
    executable: object
    seconds: float  # tracing + lowering + XLA compilation
    attention: str  # the attention kernel the step holds (`hardware.attention_kernel`)


def compile_step(trainer: BlockTrainer) -> CompiledStep:
    """The train step compiled for abstract inputs (nothing is allocated), its compile time and
    the attention kernel it holds."""
    start = time.perf_counter()
    batch = trainer.task.batch_spec(trainer.config.data.batch_size)
    lowered = trainer.train_step.lower(trainer.abstract_state, batch, 0, 0)
    compiled = lowered.compile()
    return CompiledStep(compiled, time.perf_counter() - start, hardware.attention_kernel(lowered.as_text()))


def random_batch(spec, rng: np.random.Generator):
    """Stand-in data of the batch's shapes: floats uniform in [-1, 1], integers zero."""
    return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-1, 1, s.shape) if jnp.issubdtype(s.dtype, jnp.floating)
                                              else np.zeros(s.shape), s.dtype), spec)


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


def counted_flops(config, task_class: type | None = None, compiled=None, cache: dict | None = None,
                  attention: str = "xla") -> float | None:
    """FLOPs of one train step from XLA's cost analysis. A scanned layer stack's loop body is
    counted once whatever its trip count, and a cuDNN attention kernel (a custom call) not at all,
    so such a step is counted on the task's `flop_twin` (unrolled layers, XLA attention, float32:
    same parameters and math; compiled, never run). A step that needs no twin is counted as
    compiled (a bfloat16 one then includes its converts). `cache` keeps the twins' counts: modes
    that differ only in their schedule or dtype compile the same twin."""
    if compiled is not None and not config.model.scan_layers and attention == "xla":
        return step_flops(compiled)
    task_class = task_class_of(config, task_class)
    twin = task_class.flop_twin(config.override({"schedule.name": "sequential"}))
    key = (task_class, twin.to_json())
    if cache is None or key not in cache:
        flops = step_flops(compile_step(BlockTrainer(task_class(twin)))[0])
        if cache is None:
            return flops
        cache[key] = flops
    return cache[key]


def step_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def time_steps(trainer: BlockTrainer, compiled, settings: BenchSettings) -> list[float]:
    """Wall time of `time_steps` real training steps of block 0 after `warmup_steps`, run by the
    executable the memory was read from (no second compilation)."""
    batch = random_batch(trainer.task.batch_spec(trainer.config.data.batch_size), np.random.default_rng(0))
    state = trainer.init_state(0)
    times = []
    for i in range(settings.warmup_steps + settings.time_steps):
        start = time.perf_counter()
        state, step_metrics = compiled(state, batch, 0, i)
        jax.block_until_ready((state, step_metrics))
        if i >= settings.warmup_steps:
            times.append(time.perf_counter() - start)
    return times


def time_inference(task, settings: BenchSettings) -> dict | None:
    """Wall time of the task's inference (`Task.inference`) on `sample_batch` examples with K =
    `sample_steps` chain steps, fresh parameters; None when the task declares none."""
    params = [task.init_params(k) for k in jax.random.split(jax.random.key(0), task.num_blocks)]
    inference = task.inference(params, batch=settings.sample_batch, steps=settings.sample_steps)
    if inference is None:
        return None
    start = time.perf_counter()
    jax.block_until_ready(inference.fn(*inference.args))  # compile (and one run)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(settings.sample_repeats):
        start = time.perf_counter()
        jax.block_until_ready(inference.fn(*inference.args))
        times.append(time.perf_counter() - start)
    time_s = statistics.median(times)
    return {"num_steps": settings.sample_steps, "batch": settings.sample_batch, "unit": inference.unit,
            "count": inference.count, "time_s": time_s, "per_s": inference.count / time_s,
            "compile_and_first_run_s": compile_s, "network_calls_per_unit": inference.network_calls,
            "layer_evals_per_unit": inference.network_calls * task.layers_per_block}


def analytic_bytes(mode: str, task, param_bytes: int, state_bytes: int, act_per_layer: float) -> int:
    """The memory model 4P + A per layer (Adam: parameters, gradients, two moments; A the
    activations) from the parameter count, per resident block: state (params + 2 Adam moments + EMA
    here) + gradients + activations of L/B layers, or of about one layer when layers are
    checkpointed. `act_per_layer` is A, fitted once on the e2e step."""
    layers = 1 if mode.endswith("remat") else task.layers_per_block
    others = (task.num_blocks - 1) * state_bytes if mode == "db-interleaved" else 0
    return int(state_bytes + param_bytes + act_per_layer * layers + others)


def run_bench(config, settings: BenchSettings = BenchSettings(), progress: bool = True,
              flop_cache: dict | None = None, task_class: type | None = None) -> list[dict]:
    """Measure every mode and B of `settings` on `config`; one JSON-ready record each.

    Every step is compiled (and its memory read) first; the timed runs then go in ascending order of
    compiled memory, so that the device's process-wide `peak_bytes_in_use` (which cannot be reset)
    read after each mode is that mode's own peak on GPU/TPU. `flop_cache` shares FLOP counts
    between calls (the same model in another dtype). `task_class`: the config's own by default.
    """
    task_class = task_class_of(config, task_class)
    device = jax.devices()[0]
    peak, peak_source = hardware.peak_flops(device.device_kind, settings.peak_tflops)
    measured, flop_cache = [], {} if flop_cache is None else flop_cache
    for mode, cfg in plan_runs(config, settings, task_class):
        num_blocks = cfg.model.num_blocks
        if progress:
            print(f"bench: compiling {mode} B={num_blocks}", flush=True)
        trainer = BlockTrainer(task_class(cfg))
        compiled, compile_s, attention = compile_step(trainer)
        mem = memory_bytes(trainer, compiled, resident_blocks=num_blocks if mode == "db-interleaved" else 1)
        record = {
            "mode": mode, "task": cfg.task, "num_blocks": num_blocks, "num_layers": trainer.task.num_layers,
            "layers_per_block": trainer.task.layers_per_block, "batch_size": cfg.data.batch_size,
            "dtype": trainer.config.model.dtype, "attention": attention, "device": device.device_kind,
            "platform": device.platform, "jax_version": jax.__version__, "compile_s": compile_s,
            "peak_flops": peak, "peak_source": peak_source,
            "params_per_block": sum(x.size for x in jax.tree.leaves(trainer.task.abstract_params)),
            "memory_bytes": mem,
            "flops_per_step": counted_flops(cfg, task_class, compiled, flop_cache, attention)
            if settings.count_flops else None,
            "config": trainer.config.to_dict(),
        }
        measured.append((record, trainer, compiled))

    if settings.count_flops:
        add_model_flops(config, task_class, measured, flop_cache)
    for record, trainer, compiled in sorted(measured, key=lambda m: m[0]["memory_bytes"]["total_peak"]):
        num_blocks = trainer.task.num_blocks
        if settings.time_steps:
            if progress:
                print(f"bench: timing {record['mode']} B={num_blocks}", flush=True)
            before = hardware.device_memory().get("peak_bytes_in_use")
            resident = [trainer.init_state(b) for b in range(1, num_blocks)] \
                if record["mode"] == "db-interleaved" else []  # the other blocks, as in real training
            times = time_steps(trainer, compiled, settings)
            del resident
            step = statistics.median(times)
            record.update(step_time_s=step, step_times_s=times, e2e_equivalent_time_s=step * num_blocks)
            if record["flops_per_step"]:
                record["achieved_flops_per_s"] = record["flops_per_step"] / step  # hardware FLOPs, recompute included
                record["mfu"] = record["model_flops_per_step"] / step / peak if peak else None
            after = hardware.device_memory().get("peak_bytes_in_use")
            # The counter is process-wide and never falls: a reading is this mode's own only if it grew.
            record["device_peak_bytes_in_use"] = after
            record["device_peak_is_own"] = after is not None and (before is None or after > before)
        if settings.sample_steps and record["mode"] in INFERENCE_MODES:
            record["inference"] = time_inference(trainer.task, settings)
            if record["inference"] is None:
                record["inference_skipped"] = f"task {record['task']} declares no inference (Task.inference)"
                if progress:
                    print(f"bench: {record['inference_skipped']}", flush=True)

    records = [record for record, _, _ in measured]
    add_analytic(records, [trainer for _, trainer, _ in measured])
    return records


def add_model_flops(config, task_class: type, measured: list, flop_cache: dict | None = None) -> None:
    """`model_flops_per_step`: the FLOPs of the step without rematerialisation, so that MFU counts
    useful work only (a remat mode's own `flops_per_step` includes the recomputed forward)."""
    flops = {(r["mode"], r["num_blocks"]): r["flops_per_step"] for r, _, _ in measured}
    for record, _, _ in measured:
        if not record["mode"].endswith("remat"):
            record["model_flops_per_step"] = record["flops_per_step"]
            continue
        twin = "e2e" if record["mode"] == "e2e-remat" else "db-sequential"
        if (twin, record["num_blocks"]) not in flops:
            flops[(twin, record["num_blocks"])] = counted_flops(
                mode_config(config, twin, record["num_blocks"], task_class), task_class, cache=flop_cache)
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
            r["mode"], t.task, param_bytes(t), t.state_bytes, act_per_layer)
        r["analytic_is_fit"] = r["mode"] == "e2e" or (r["mode"] != "e2e-remat" and r["num_blocks"] == 1
                                                      and not r["mode"].endswith("remat"))


def param_bytes(trainer: BlockTrainer) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.task.abstract_params))


