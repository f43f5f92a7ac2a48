"""The paper's text8 MD4 model (`text8_md4`: 12 layers, width 768, 12 heads, sequence 256, batch
256) on a lent accelerator, in one prepared run: the train step end to end (B = 1) and as
DiffusionBlocks (B = 3) in bfloat16 and float32 (compiled memory, step time, tokens per second,
MFU), then B = 3 in bfloat16 trained for a time budget and scored (bits per character).

    python experiments/masked_lm_device.py                # on the device (~6 minutes)
    python experiments/masked_lm_device.py --tiny         # CPU check of the script, under a minute

text8 is not on the device machine (nothing can be downloaded there): the run trains on what the
repository carries, Python's pydoc text with text8's 27-symbol mapping, and says so in the record.
The numbers that transfer are the step's cost; the bits per character are pydoc's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from dblocks_jax import runs  # noqa: E402
from dblocks_jax.config import config_class, parse_overrides  # noqa: E402
from dblocks_jax.presets import get_config, preset_task  # noqa: E402
from dblocks_jax.engine import bench  # noqa: E402
from dblocks_jax.tasks import make_task  # noqa: E402
from dblocks_jax.tasks.masked_lm_eval import score  # noqa: E402
from experiments.common import write_record  # noqa: E402

TINY = {"model.width": 32, "model.num_heads": 2, "model.num_layers": 3, "text.seq_len": 32, "data.batch_size": 8,
        "text.eval_sequences": 16, "text.eval_draws": 1}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=180.0, help="seconds of B = 3 bfloat16 training")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--tiny", action="store_true", help="tiny network, 5 s budget: checks the script")
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.join("experiments", "results",
                                                                            "masked_lm_device")))
    args = parser.parse_args(argv)
    budget = 5.0 if args.tiny else args.budget_s
    base = {"data.dataset": "pydoc", "text.eval_sequences": 512, "text.eval_draws": 2,
            **(TINY if args.tiny else {}), **parse_overrides(args.overrides, config_class(preset_task("text8_md4")))}
    record = {"device": str(jax.devices()[0]), "platform": jax.devices()[0].platform, "tiny": args.tiny,
              "data": "pydoc (text8 is not on the device machine)", "steps": []}
    num_blocks = (1, 3)
    for dtype in ("bfloat16", "float32"):
        config = get_config("text8_md4", {**base, "model.dtype": dtype, "model.num_blocks": 1})
        settings = bench.BenchSettings(num_blocks=num_blocks, modes=("e2e", "db-sequential"),
                                       time_steps=3 if args.tiny else 10)
        for r in bench.run_bench(config, settings, progress=True):
            tokens = r["batch_size"] * config.text.seq_len
            record["steps"].append({k: r.get(k) for k in (
                "mode", "num_blocks", "dtype", "memory_bytes", "step_time_s", "flops_per_step", "model_flops_per_step",
                "mfu", "compile_s", "params_per_block", "device_peak_bytes_in_use")}
                | {"tokens_per_s": tokens / r["step_time_s"],
                   "e2e_equivalent_tokens_per_s": tokens / r["e2e_equivalent_time_s"]})
            print(f"{dtype} {r['mode']} B={r['num_blocks']}: {1e3 * r['step_time_s']:.1f} ms/step, "
                  f"{tokens / r['step_time_s']:,.0f} tokens/s, step peak "
                  f"{r['memory_bytes']['step_peak'] / 2**30:.2f} GiB, MFU {r.get('mfu')}", flush=True)

    # B = 3 in bfloat16 for the budget: steps per block from the measured step time.
    step_s = next(s["step_time_s"] for s in record["steps"]
                  if (s["mode"], s["num_blocks"], s["dtype"]) == ("db-sequential", 3, "bfloat16"))
    steps = max(2, int(budget / (3 * step_s)))
    config = get_config("text8_md4", {**base, "model.dtype": "bfloat16", "optim.steps": steps,
                                      "optim.warmup_steps": max(1, min(2000, steps // 10)),
                                      "run.checkpoint_every": 0, "sampling.num_samples": 4})
    start = time.perf_counter()
    result = runs.train(config, None, progress=False)
    train_s = time.perf_counter() - start
    task = make_task(config)
    scores = score(task, result.params, seeds=(0, 1))
    record["training"] = {"num_blocks": 3, "steps_per_block": steps, "seconds": train_s,
                          "final_loss": result.final_loss, "bpc": scores["bpc"],
                          "bpc_per_block": scores["bpc_per_block"], "unigram_bpc": scores["unigram_bpc"],
                          "samples": [task.decode(s) for s in task.sample(result.params, 4, seed=0)]}
    path = write_record(args.out, "masked_lm_device", record)
    print(f"B = 3 bfloat16, {steps} steps per block in {train_s:.0f} s: {scores['bpc']['mean']:.3f} bits per "
          f"character on held-out pydoc (unigram {scores['unigram_bpc']:.3f}); wrote {path}")
    return record


if __name__ == "__main__":
    main()
