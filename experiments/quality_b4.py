"""B = 4 DiffusionBlocks on every bundled dataset against an untrained model of the same size.

    python experiments/quality_b4.py [--runs runs/quality] [--num-samples 512] [--seeds 0,1,2]

For each dataset: trains the `shapes` preset with `data.dataset=<name>` (700 steps per block) unless
<runs>/<name>_B4 already holds a run, then evaluates the trained blocks and freshly initialised
blocks of the same config. Writes experiments/results/quality/<name>_B4_{trained,untrained}.json
and prints the markdown table quoted in the README.
"""

import argparse
import json
import os

from dblocks_jax import data, evaluate, get_config, train

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "quality")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=os.path.join("runs", "quality"))
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    os.makedirs(RESULTS, exist_ok=True)
    rows = []
    for name in data.dataset_names():
        workdir = os.path.join(args.runs, f"{name}_B4")
        if not os.path.isdir(os.path.join(workdir, "checkpoints")):
            train(get_config("shapes", {"data.dataset": name}), workdir)
        scores = {}
        for label, untrained in (("trained", False), ("untrained", True)):
            result = evaluate(workdir, seeds=seeds, num_samples=args.num_samples, untrained=untrained)
            with open(os.path.join(RESULTS, f"{name}_B4_{label}.json"), "w") as f:
                json.dump(result, f, indent=1)
            scores[label] = result
        rows.append((name, scores))

    print("| dataset | classifier accuracy (held out) | Frechet distance, trained | untrained "
          "| conditional accuracy, trained | untrained |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, s in rows:
        fd = {k: v["frechet_distance"] for k, v in s.items()}
        acc = {k: v["conditional_accuracy"] for k, v in s.items()}
        print(f"| {name} | {s['trained']['classifier']['held_out_accuracy']:.3f} "
              f"| {fd['trained']['mean']:.2f} ± {fd['trained']['std']:.2f} "
              f"| {fd['untrained']['mean']:.1f} ± {fd['untrained']['std']:.1f} "
              f"| {acc['trained']['mean']:.3f} ± {acc['trained']['std']:.3f} "
              f"| {acc['untrained']['mean']:.3f} ± {acc['untrained']['std']:.3f} |")


if __name__ == "__main__":
    main()
