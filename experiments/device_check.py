"""The accelerator check: one prepared run that measures what a lent GPU/TPU does with this code.

    python experiments/device_check.py --out $OUT        # on the device: <= 8 minutes on an H100
    python experiments/device_check.py --tiny            # the same code paths on CPU, under a minute
    python experiments/device_check.py --dtypes float32 --max-batch 8 --time-steps 3 --sample-repeats 1 \
        --train-steps 100                                # the CPU reference (2 cores: about 25 minutes)

Sections (`--sections` picks some):

1. `dit`: `cifar10_dit_s` at batch 128: e2e, DiffusionBlocks B = 3 (sequential), e2e + remat and
   DB + remat, in every `--dtypes`: compiled step peak next to the device's `peak_bytes_in_use`,
   step time, MFU, the attention kernel, compile time.
2. `block768`: a DiT-B/2 stack (width 768, 12 heads, 12 layers, 256 tokens) end to end: MFU per
   attention implementation, and XLA's FLOP count against the 6·P·T rule (within 20 %).
3. `sampler`: images per second of the 50-step Euler chain, e2e vs B = 3.
4. `parallel`: the parallel schedule on one device (mesh block = 1, data = 1) vs the sequential
   one: examples per second.
5. `language`: the masked-LM (`text8_md4`, B = 3) and autoregressive (`lm1b_ar`, B = 4) train
   steps, e2e and DB: tokens per second and MFU (on pydoc text: nothing can be downloaded there).
6. `training`: `shapes` trained for real with no implicit device-to-host transfer allowed; its
   loss must fall, or the script fails.

Writes device_<device>.json and device_<device>.md to `--out` after every section (a run cut short
keeps what it measured) and exits 1 if any section failed, naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dblocks_jax import runs  # noqa: E402
from dblocks_jax.engine import bench, hardware  # noqa: E402
from dblocks_jax.engine.parallel import ParallelTrainer, make_block_mesh  # noqa: E402
from dblocks_jax.engine.trainer import BlockTrainer  # noqa: E402
from dblocks_jax.models.layers import per_token_parameters  # noqa: E402
from dblocks_jax.presets import get_config  # noqa: E402
from dblocks_jax.tasks import make_task  # noqa: E402
from experiments import device_report  # noqa: E402

SECTIONS = ("dit", "block768", "sampler", "parallel", "language", "training")
MODES = ("e2e", "db-sequential", "e2e-remat", "db-remat")
# --tiny must finish in under a minute on a CPU, where a train step compiles in about 3 s: it runs
# every section's code with fewer compiled steps (the remat modes and the language FLOP counts are
# the same calls with other arguments; tests/test_bench.py covers them).
TINY_MODES = ("e2e", "db-sequential")
# Bundled stand-ins for data the device machine cannot download: only shapes matter to a step.
DIT = {"data.dataset": "patterns", "data.image_size": 32, "data.batch_size": 128, "model.num_blocks": 1}
DIT_B = {**DIT, "model.width": 768, "model.num_heads": 12, "model.num_layers": 12}
TINY_DIT = {"data.image_size": 8, "data.batch_size": 4, "model.width": 32, "model.num_heads": 2,
            "model.num_layers": 3}
# 64 tokens of width 128: the per-example work (adaLN, noise embedding) stays small next to the
# per-token matmuls, as in the full-size stack, so the 6·P·T check means the same thing.
TINY_DIT_B = {**TINY_DIT, "data.image_size": 16, "model.width": 128, "model.num_heads": 4, "model.num_layers": 2,
              "data.batch_size": 8}
TEXT = {"data.dataset": "pydoc", "model.num_blocks": 1}
LANGUAGE = (("text8_md4", 3, {}, {}),
            ("lm1b_ar", 4, {"text.vocabulary": "bytes"}, {"generation.prompt_len": 4, "generation.gen_len": 8}))
TINY_TEXT = {"model.width": 32, "model.num_heads": 2, "model.num_layers": 12, "text.seq_len": 16,
             "data.batch_size": 4}


def settings(args, **kw) -> bench.BenchSettings:
    return bench.BenchSettings(time_steps=args.time_steps, warmup_steps=1 if args.tiny else 2,
                               peak_tflops=args.peak_tflops, **kw)


def batch(args, preset_batch: int) -> int:
    return min(preset_batch, args.max_batch) if args.max_batch else preset_batch


def preset(args, name: str, full: dict, tiny: dict, dtype: str | None = None, **overrides):
    """Preset `name` with the section's overrides (`tiny` on top with --tiny), the compute dtype
    (default: the last of --dtypes) and the batch capped by --max-batch."""
    config = get_config(name, {**full, **(tiny if args.tiny else {}), "model.dtype": dtype or args.dtypes[-1],
                               **overrides})
    return config.override({"data.batch_size": batch(args, config.data.batch_size)})


def step_row(r: dict, tokens_per_example: int | None = None) -> dict:
    """The fields of a bench record the tables show."""
    row = {k: r.get(k) for k in ("mode", "num_blocks", "dtype", "attention", "batch_size", "step_time_s",
                                 "e2e_equivalent_time_s", "model_flops_per_step", "achieved_flops_per_s", "mfu",
                                 "compile_s", "device_peak_bytes_in_use", "device_peak_is_own",
                                 "params_per_block")}
    row["step_peak_bytes"] = r["memory_bytes"]["step_peak"]
    row["examples_per_s"] = r["batch_size"] / r["step_time_s"]
    if tokens_per_example:
        row["tokens_per_s"] = row["examples_per_s"] * tokens_per_example
    return row


def dit(args, flops: dict) -> dict:
    """Section 1: memory and time of the four modes, per dtype (smaller memory first, so that the
    device's process-wide peak counter is each mode's own: `device_report` marks the rest)."""
    rows = []
    for dtype in args.dtypes:
        config = preset(args, "cifar10_dit_s", DIT, TINY_DIT, dtype)
        s = settings(args, num_blocks=(3,), modes=TINY_MODES if args.tiny else MODES, count_flops=not args.tiny)
        records = bench.run_bench(config, s, flop_cache=flops)
        rows += [step_row(r) for r in records]
    return {"preset": "cifar10_dit_s", "steps": rows}


def block768(args, flops: dict) -> dict:
    """Section 2: MFU of a DiT-B-sized stack per attention kernel, and the FLOP count's check."""
    config = preset(args, "cifar10_dit_s", DIT_B, TINY_DIT_B)
    rows, skipped = [], {}
    for attention in ("xla", "cudnn"):
        if attention == "cudnn" and (jax.default_backend() != "gpu" or config.model.dtype == "float32"):
            skipped[attention] = "cuDNN flash attention needs a GPU and bfloat16"
            continue
        records = bench.run_bench(config.override({"model.attention": attention}),
                                  settings(args, num_blocks=(1,), modes=("e2e",)), flop_cache=flops)
        rows += [step_row(r) for r in records]
    task = make_task(config)
    tokens = config.data.batch_size * (config.data.image_size // config.model.patch_size) ** 2
    rule = 6 * per_token_parameters(task.abstract_params) * tokens
    counted = rows[0]["model_flops_per_step"]
    within = abs(counted / rule - 1) <= 0.2
    failures = [] if within else [f"XLA's count is {counted / rule:.3f} x the 6·P·T rule, not within 20 %"]
    failures += [f"attention={r['attention']} ran where cudnn was asked for" for r in rows[1:]
                 if r["attention"] != "cudnn"]
    model = config.to_dict()["model"]
    return {"config": {k: model[k] for k in ("width", "num_heads", "num_layers")}, "tokens_per_step": tokens,
            "rule_6PT_flops": rule, "counted_flops": counted, "counted_over_rule": counted / rule,
            "within_20_percent": within, "mfu_goal": 0.45, "steps": rows, "skipped": skipped,
            "failures": failures}


def sampler(args, flops: dict) -> dict:
    """Section 3: the chain's images per second, 50 Euler steps, e2e vs B = 3."""
    out = []
    for num_blocks in (1, 3):
        config = preset(args, "cifar10_dit_s", DIT, TINY_DIT, **{"model.num_blocks": num_blocks})
        s = settings(args, sample_steps=5 if args.tiny else 50, sample_batch=batch(args, 4 if args.tiny else 256),
                     sample_repeats=2 if args.tiny else args.sample_repeats)
        timing = bench.time_inference(make_task(config), s)
        out.append({"num_blocks": num_blocks, "dtype": config.model.dtype, **timing})
    return {"rows": out}


def parallel(args, flops: dict) -> dict:
    """Section 4: every block one step per call on one device (mesh 1 x 1) vs one block per call."""
    config = preset(args, "cifar10_dit_s", DIT, TINY_DIT, **{"model.num_blocks": 3})
    trainer = BlockTrainer(make_task(config))
    n, spec = config.data.batch_size, trainer.task.batch_spec(config.data.batch_size)
    host = bench.random_batch(spec, np.random.default_rng(0))
    par = ParallelTrainer(trainer, [0, 1, 2], make_block_mesh((1, 1)))
    states, stacked = par.init_states(par.block_ids), par.global_batch({b: host for b in range(3)})
    run_parallel = lambda s, i: par.train_step(s, stacked, i)
    state = trainer.init_state(0)
    run_sequential = lambda s, i: trainer.train_step(s, host, 0, i)
    out = {}
    for name, step, s, per_call in (("parallel", run_parallel, states, 3 * n),
                                    ("sequential", run_sequential, state, n)):
        times = []
        for i in range(2 + args.time_steps):
            start = time.perf_counter()
            s, metrics = step(s, i)
            jax.block_until_ready((s, metrics))
            if i >= 2:
                times.append(time.perf_counter() - start)
        t = statistics.median(times)
        out[name] = {"step_time_s": t, "examples_per_s": per_call / t, "block_steps_per_call": per_call // n}
    return {"batch_size": n, "num_blocks": 3, **out}


def language(args, flops: dict) -> dict:
    """Section 5: the language tasks' train steps, e2e and DiffusionBlocks."""
    rows = []
    for name, num_blocks, extra, tiny in LANGUAGE:
        config = preset(args, name, {**TEXT, **extra}, {**TINY_TEXT, **tiny})
        modes = ("db-sequential",) if args.tiny else ("e2e", "db-sequential")
        s = settings(args, num_blocks=(num_blocks,), modes=modes, count_flops=not args.tiny)
        for r in bench.run_bench(config, s, flop_cache=flops):
            rows.append({"preset": name, **step_row(r, config.text.seq_len)})
    return {"data": "pydoc (text8 and lm1b are not on the device machine; only shapes matter)", "steps": rows}


def training(args, flops: dict) -> dict:
    """Section 6: a real run on the bundled shapes; the loss of every block must fall. The loop runs
    with implicit device-to-host transfers disallowed: metrics leave the device only at flushes."""
    steps = 24 if args.tiny else args.train_steps
    overrides = {"optim.steps": steps, "optim.warmup_steps": max(1, steps // 10), "run.log_every": max(1, steps // 8),
                 "run.checkpoint_every": 0, "model.dtype": args.dtypes[-1]}
    if args.tiny:
        overrides.update({"model.width": 32, "model.num_heads": 2, "model.num_layers": 2, "model.num_blocks": 2,
                          "data.batch_size": 16})
    config = get_config("shapes", overrides)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        with jax.transfer_guard_device_to_host("disallow"):
            runs.train(config, workdir, progress=False, write_artifacts=False)
        seconds = time.perf_counter() - start
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f]
    blocks = {}
    for b in range(config.model.num_blocks):
        losses = [r["loss"] for r in lines if r["block"] == b]
        blocks[b] = {"first_interval_loss": losses[0], "last_interval_loss": losses[-1]}
    out = {"preset": "shapes", "num_blocks": config.model.num_blocks, "steps_per_block": steps,
           "dtype": make_task(config).config.model.dtype, "seconds": seconds, "blocks": blocks}
    stuck = [b for b, v in blocks.items() if not v["last_interval_loss"] < 0.9 * v["first_interval_loss"]]
    out["failures"] = [f"the loss of block {b} did not fall by 10 %: {blocks[b]}" for b in stuck]
    return out


FUNCTIONS = {"dit": dit, "block768": block768, "sampler": sampler, "parallel": parallel, "language": language,
             "training": training}


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, same code paths: checks the script on CPU")
    parser.add_argument("--out", default=os.path.join("experiments", "results"), help="directory of the results")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--dtypes", help="compute dtypes of section 1; the others use the last one (default: "
                                         "float32,bfloat16; with --tiny float32, as bfloat16 compiles slowly on "
                                         "a CPU and tests/test_accelerator.py covers it)")
    parser.add_argument("--time-steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--max-batch", type=int, default=0, help="cap every batch (0: the presets'); for a CPU")
    parser.add_argument("--train-steps", type=int, default=400, help="steps per block of section 6")
    parser.add_argument("--sample-repeats", type=int, default=3, help="timed runs of each sampler (section 3)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: engine.hardware)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.dtypes = [d.strip() for d in (args.dtypes or ("float32" if args.tiny else "float32,bfloat16")).split(",")
                   if d.strip()]
    for s in args.sections:
        if s not in SECTIONS:
            parser.error(f"--sections: unknown section {s!r}; allowed: {', '.join(SECTIONS)}")
    for d in args.dtypes:
        if d not in ("float32", "bfloat16"):
            parser.error(f"--dtypes: {d!r}; allowed: float32, bfloat16")
    if args.time_steps < 1 or args.max_batch < 0 or args.train_steps < 8 or args.sample_repeats < 1:
        parser.error("--time-steps >= 1, --max-batch >= 0, --train-steps >= 8 and --sample-repeats >= 1")
    hardware.peak_flops("", args.peak_tflops)  # a bad value fails here, before anything compiles
    if args.tiny:
        args.time_steps = 1
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    device = jax.devices()[0]
    slug = re.sub(r"[^a-z0-9]+", "_", device.device_kind.lower()).strip("_")
    name = f"device_{slug}" + ("_tiny" if args.tiny else "")
    peak, source = hardware.peak_flops(device.device_kind, args.peak_tflops)
    record = {"device": device.device_kind, "platform": device.platform, "device_count": jax.device_count(),
              "jax_version": jax.__version__, "tiny": args.tiny,
              "argv": list(argv if argv is not None else sys.argv[1:]),
              "peak_flops": peak, "peak_source": source, "sections": {}, "seconds": {}, "errors": {}}
    flops: dict = {}
    for section in args.sections:
        print(f"device_check: {section}", flush=True)
        start = time.perf_counter()
        try:
            record["sections"][section] = result = FUNCTIONS[section](args, flops)
            if result.get("failures"):  # measured, but short of what the section checks
                record["errors"][section] = "; ".join(result["failures"])
                print(f"device_check: section {section} FAILED: {record['errors'][section]}", flush=True)
        except Exception as err:  # one failed section must not cost the others their device time
            record["errors"][section] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}"
            print(f"device_check: section {section} FAILED: {type(err).__name__}: {err}", flush=True)
        record["seconds"][section] = round(time.perf_counter() - start, 2)
        record["device_memory"] = hardware.device_memory()
        device_report.write(record, args.out, name)
    print(device_report.markdown(record))
    if record["errors"]:
        raise SystemExit(f"device_check: failed sections: {', '.join(record['errors'])} (see {args.out}/{name}.json)")
    return record


if __name__ == "__main__":
    main()
