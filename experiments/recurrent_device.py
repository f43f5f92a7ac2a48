"""The paper's recurrent-depth setting (`lm1b_recurrent`: hidden 512, 8 heads, prelude/core/coda
2/4/2, sequence 256, batch 256) on a lent accelerator, in one prepared run: the train step of
Huginn's method (K ~ Poisson-log-normal with mean 32, backpropagation through 8 iterations) and of
DiffusionBlocks' (one core pass), in bfloat16 and float32: compiled memory, step time (median and
mean over steps: Huginn's K changes every step), tokens per second, training FLOPs per step (the
compiled step's cost analysis, `recurrent_lm_eval.training_flops`) and achieved FLOP/s.

    python experiments/recurrent_device.py            # on the device (~4 minutes)
    python experiments/recurrent_device.py --tiny     # CPU check of the script, under a minute

LM1B is not on the device machine (nothing can be downloaded there): the steps read stand-in
batches of the same shapes (`engine.bench.random_batch`); the record says so.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from dblocks_jax.config import config_class, parse_overrides  # noqa: E402
from dblocks_jax.presets import get_config, preset_task  # noqa: E402
from dblocks_jax.tasks.recurrent_lm_eval import training_flops  # noqa: E402
from experiments.common import step_cost, write_record  # noqa: E402

TINY = {"model.width": 32, "model.num_heads": 2, "text.seq_len": 32, "data.batch_size": 8, "generation.prompt_len": 8,
        "generation.gen_len": 8}
TINY_HUGINN = {"recurrent.mean_steps": 4.0, "recurrent.backprop_steps": 2}


def measure(config, time_steps: int) -> dict:
    cost, flops = step_cost(config, time_steps), training_flops(config)
    tokens = config.data.batch_size * (config.text.seq_len - 1)
    return {"method": config.recurrent.method, "dtype": config.model.dtype, **cost,
            "tokens_per_s": tokens / cost["step_mean_seconds"], "flops": flops,
            "achieved_tflops": flops["step"] / cost["step_mean_seconds"] / 1e12}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--tiny", action="store_true", help="tiny network: checks the script")
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.join("experiments", "results",
                                                                            "recurrent_device")))
    args = parser.parse_args(argv)
    base = {"data.dataset": "pydoc", **(TINY if args.tiny else {}),
            **parse_overrides(args.overrides, config_class(preset_task("lm1b_recurrent")))}
    record = {"device": str(jax.devices()[0]), "platform": jax.devices()[0].platform, "tiny": args.tiny,
              "data": "stand-in batches of lm1b_recurrent's shapes (lm1b is not on the device machine)", "steps": []}
    for method in ("diffusion", "huginn"):
        for dtype in ("bfloat16", "float32"):
            small = TINY_HUGINN if args.tiny and method == "huginn" else {}
            config = get_config("lm1b_recurrent", {**base, **small, "recurrent.method": method, "model.dtype": dtype})
            r = measure(config, 3 if args.tiny else 20)
            record["steps"].append(r)
            print(f"{method} {dtype}: {1e3 * r['step_mean_seconds']:.1f} ms/step (median "
                  f"{1e3 * r['step_seconds']:.1f}), {r['tokens_per_s']:,.0f} tokens/s, {r['flops']['step']:.3e} "
                  f"FLOPs/step, {r['achieved_tflops']:.1f} TFLOP/s, step peak {r['step_peak_bytes'] / 2**30:.2f} GiB",
                  flush=True)
    by = {(r["method"], r["dtype"]): r for r in record["steps"]}
    record["flops_ratio_huginn_over_db"] = by[("huginn", "float32")]["flops"]["step"] / \
        by[("diffusion", "float32")]["flops"]["step"]
    print(f"training FLOPs per step, Huginn / DiffusionBlocks: {record['flops_ratio_huginn_over_db']:.2f}")
    path = write_record(args.out, "recurrent_device", record)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
