"""The paper's CIFAR-100 ViT (Table 1 recipe, `cifar100_vit`) on a lent accelerator, for as many
epochs as fit in a time budget, in one prepared run: step time, memory and held-out accuracy per
epoch, written as JSON.

    python experiments/classification_device.py                 # on the device (budget 420 s of training)
    python experiments/classification_device.py --tiny          # CPU check of the script, ~1 minute

The device machine cannot download: with tfds:cifar100 not prepared in $TFDS_DATA_DIR the script
falls back to the bundled `patterns` set (32 x 32 RGB, 8 classes) with the same network and says
so in the record ("fallback"). The schedule fits the budget: the step is compiled and timed first,
then every block gets as many steps as the budget allows (cosine over those steps, warm-up 10 %).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from dblocks_jax import data, runs  # noqa: E402
from dblocks_jax.config import config_class, parse_overrides  # noqa: E402
from dblocks_jax.presets import get_config, preset_task  # noqa: E402
from dblocks_jax.engine import bench  # noqa: E402
from dblocks_jax.engine.trainer import BlockTrainer  # noqa: E402
from dblocks_jax.tasks import make_task  # noqa: E402
from dblocks_jax.tasks.image_classification_eval import held_out, score  # noqa: E402
from experiments.common import write_record  # noqa: E402

TINY = {"model.width": 16, "model.num_heads": 2, "model.num_layers": 3, "model.mlp_ratio": 2.0,
        "data.batch_size": 16}


def pick_dataset(wanted: str) -> tuple[str, str | None]:
    """`wanted` if it can be read here, else the bundled patterns set and the reason."""
    try:
        data.tfds_source(wanted, "train")
        data.tfds_source(wanted, "test")
        return wanted, None
    except ValueError as err:
        return "patterns", f"{wanted} unavailable ({str(err).splitlines()[0][:200]}); used the bundled patterns set"


def device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds of training (evaluation extra)")
    parser.add_argument("--dataset", default="tfds:cifar100")
    parser.add_argument("--num-blocks", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--eval-every", type=float, default=1.0, help="epochs between held-out evaluations")
    parser.add_argument("--tiny", action="store_true", help="tiny network, 10 s budget, evaluation every "
                                                            "quarter epoch: checks the script")
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.join("experiments", "results",
                                                                            "classification_device")))
    args = parser.parse_args(argv)
    budget = 10.0 if args.tiny else args.budget_s
    dataset, fallback = pick_dataset(args.dataset)
    overrides = {"data.dataset": dataset, "model.num_blocks": args.num_blocks, **(TINY if args.tiny else {}),
                 **parse_overrides(args.overrides, config_class(preset_task("cifar100_vit")))}
    if dataset == "patterns":
        overrides["data.augment"] = "crop_flip"
    config = get_config("cifar100_vit", overrides)
    task = make_task(config)
    trainer = BlockTrainer(task)
    compiled, compile_s, _ = bench.compile_step(trainer)
    memory = bench.memory_bytes(trainer, compiled, resident_blocks=task.num_blocks)
    step_s = statistics.median(bench.time_steps(trainer, compiled, bench.BenchSettings(time_steps=10)))
    train_size = data.split_size(dataset, "train") if not dataset.startswith("tfds:") else len(
        data.tfds_source(dataset, "train"))
    epoch_steps = max(1, train_size // config.data.batch_size)  # per block
    steps = max(1, int(budget / (step_s * task.num_blocks)))
    config = config.override({"optim.steps": steps, "optim.warmup_steps": max(1, steps // 10),
                              "run.checkpoint_every": 0})
    print(f"{dataset}: step {1e3 * step_s:.1f} ms, {steps} steps per block ({steps / epoch_steps:.2f} epochs) "
          f"in a {budget:.0f} s budget", flush=True)
    split = held_out(make_task(config))
    epochs, start = [], time.perf_counter()
    # Interleaved: after eval_every global steps every block has taken about that many epochs.
    eval_every = max(1, int((0.25 if args.tiny else args.eval_every) * epoch_steps * task.num_blocks))

    def on_step(t, block, resident):
        if (t + 1) % eval_every == 0 and len(resident) == task.num_blocks:
            params = [jax.device_get(resident[b].ema) for b in range(task.num_blocks)]
            s = score(task, params, steps=None, seeds=(0,), split=split)
            epochs.append({"epoch": (t + 1) / (epoch_steps * task.num_blocks), "seconds": time.perf_counter() - start,
                           **{m: s[m]["mean"] for m in ("accuracy", "top5", "ece", "nll") if s[m] is not None}})
            print(f"epoch {epochs[-1]['epoch']:.2f}: accuracy {epochs[-1]['accuracy']:.4f}", flush=True)

    result = runs.train(config, None, progress=False, on_step=on_step)
    final = score(task, result.params, steps=None, seeds=(0, 1, 2), split=split)
    record = {
        "device": str(jax.devices()[0]), "platform": jax.devices()[0].platform, "dataset": dataset,
        "fallback": fallback, "tiny": args.tiny, "num_blocks": task.num_blocks, "steps_per_block": steps,
        "epoch_steps": epoch_steps, "batch_size": config.data.batch_size, "compile_seconds": compile_s,
        "step_seconds_median": step_s, "training_seconds": time.perf_counter() - start,
        "compiled_memory_bytes": memory, "device_peak_bytes": device_peak_bytes(), "epochs": epochs,
        "final": {m: final[m] for m in ("accuracy", "top5", "ece", "nll")}, "overrides": overrides,
    }
    path = write_record(args.out, "classification_device", record)
    print(f"final accuracy {final['accuracy']['mean']:.4f} ± {final['accuracy']['std']:.4f}; wrote {path}")
    return record


if __name__ == "__main__":
    main()
