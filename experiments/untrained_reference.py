"""The quality score of untrained models at a sweep scale: the floor every trained point must beat.

    python experiments/untrained_reference.py [--scale small] [--seeds 0,1,2]

For each dataset of the scale: freshly initialised B = 4 blocks of the scale's architecture, scored
exactly like a sweep run (same number of samples, sampler and classifier). A fresh block returns
D = c_skip z (adaLN-Zero), so the sampler's output is what the noise schedule alone makes of the
starting noise. Writes experiments/results/blocks/untrained_<scale>.json and prints a table.
"""

import argparse
import os

import jax
import sweep

from dblocks_jax import make_task
from dblocks_jax.engine.trainer import BlockTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small", choices=sorted(sweep.SCALES))
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    scale = sweep.get_scale(args.scale)
    seeds = [int(s) for s in args.seeds.split(",")]
    caches = sweep.Caches(scale.classifier_steps)
    rows, all_records = [], []
    for dataset in scale.datasets:
        records = []
        for seed in seeds:
            config = scale.config({"data.dataset": dataset, "run.seed": seed})
            trainer = BlockTrainer(make_task(config))
            params = [jax.device_get(trainer.init_state(b).ema) for b in range(config.model.num_blocks)]
            quality, sampling = sweep.sample_and_score(config, params, caches.classifier(config),
                                                       caches.reference(config))
            records.append({"point": dataset, "params": {"dataset": dataset, "B": config.model.num_blocks},
                            "seed": seed, "quality": quality, "sampling": sampling,
                            "config": trainer.config.to_dict()})  # the dtype that ran
        rows.extend(sweep.aggregate(records, ("frechet_distance", "conditional_accuracy")))
        all_records.extend(records)
    path = os.path.join(sweep.default_out_dir("blocks", "small"), f"untrained_{scale.name}.json")
    sweep.write_json_atomic(path, {"scale": scale.name, "rows": rows, "records": all_records})
    print(sweep.markdown_table(rows, ("frechet_distance", "conditional_accuracy")))


if __name__ == "__main__":
    main()
