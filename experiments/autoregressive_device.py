"""The paper's autoregressive setting (`lm1b_ar`: 12 layers, width 768, 12 heads, sequence 256,
batch 256) on a lent accelerator, in one prepared run: the train step of the plain transformer
(B = 1) and of DiffusionBlocks (B = 4) in bfloat16 and float32 (compiled memory, step time,
tokens per second, MFU), then KV-cached generation speed of both (64 prompts of 32 bytes, 128 new
bytes each, at initialisation: speed does not depend on the weights).

    python experiments/autoregressive_device.py            # on the device (~5 minutes)
    python experiments/autoregressive_device.py --tiny     # CPU check of the script, under a minute

LM1B is not on the device machine (nothing can be downloaded there): the steps read Python's pydoc
text as bytes, which has the same shapes; the record says so.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dblocks_jax.config import config_class, parse_overrides  # noqa: E402
from dblocks_jax.engine import bench  # noqa: E402
from dblocks_jax.presets import get_config, preset_task  # noqa: E402
from dblocks_jax.tasks import make_task  # noqa: E402
from experiments.common import write_record  # noqa: E402

TINY = {"model.width": 32, "model.num_heads": 2, "model.num_layers": 4, "text.seq_len": 32, "data.batch_size": 8,
        "generation.prompt_len": 8, "generation.gen_len": 8}
MODELS = {"plain": {"ar.objective": "plain", "model.num_blocks": 1}, "db_B4": {"model.num_blocks": 4}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--tiny", action="store_true", help="tiny network: checks the script")
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.join("experiments", "results",
                                                                            "autoregressive_device")))
    args = parser.parse_args(argv)
    base = {"data.dataset": "pydoc", **(TINY if args.tiny else {}),
            **parse_overrides(args.overrides, config_class(preset_task("lm1b_ar")))}
    models = {**MODELS, "db_B4": {"model.num_blocks": 2}} if args.tiny else MODELS  # 4 tiny layers: B = 2
    record = {"device": str(jax.devices()[0]), "platform": jax.devices()[0].platform, "tiny": args.tiny,
              "data": "pydoc as bytes (lm1b is not on the device machine)", "steps": [], "generation": []}
    for name, model in models.items():
        for dtype in ("bfloat16", "float32"):
            config = get_config("lm1b_ar", {**base, **model, "model.dtype": dtype})
            settings = bench.BenchSettings(num_blocks=(config.model.num_blocks,), modes=(
                "e2e" if config.model.num_blocks == 1 else "db-sequential",), time_steps=3 if args.tiny else 10)
            for r in bench.run_bench(config, settings, progress=True):
                tokens = r["batch_size"] * config.text.seq_len
                record["steps"].append({"model": name, **{k: r.get(k) for k in (
                    "mode", "num_blocks", "dtype", "memory_bytes", "step_time_s", "flops_per_step", "mfu",
                    "compile_s", "params_per_block")}, "tokens_per_s": tokens / r["step_time_s"]})
                print(f"{name} {dtype}: {1e3 * r['step_time_s']:.1f} ms/step, {tokens / r['step_time_s']:,.0f} "
                      f"tokens/s, step peak {r['memory_bytes']['step_peak'] / 2**30:.2f} GiB, MFU {r.get('mfu')}",
                      flush=True)
        config = get_config("lm1b_ar", {**base, **model, "model.dtype": "bfloat16"})
        task = make_task(config)
        params = [task.init_params(jax.random.key(b)) for b in range(task.num_blocks)]
        prompts = np.random.default_rng(0).integers(0, task.vocab_size, (64, config.generation.prompt_len), np.int32)
        tokens, seconds = task.sampler.generate(params, prompts, config.generation.gen_len)
        record["generation"].append({"model": name, "prompts": 64, "new_tokens": config.generation.gen_len,
                                     "network_calls_per_token": None if task.plain else task.inference_steps(),
                                     "seconds": seconds, "tokens_per_s": tokens.size / seconds})
        print(f"{name} generation: {tokens.size / seconds:,.0f} tokens/s (KV cache, 64 prompts)", flush=True)
    path = write_record(args.out, "autoregressive_device", record)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
