"""Masked-diffusion LM (paper Table 3) at CPU scale: the end-to-end model (B = 1) against
DiffusionBlocks with B = 2, 3, 4, over several seeds, on Python's pydoc text (and any text file):
held-out bits per character (the negative ELBO), each block's share of it, compiled training
memory and time per step.

    python experiments/masked_lm.py                       # pydoc, seeds 0,1,2, 1500 steps per block
    python experiments/masked_lm.py --text FILE.txt       # another corpus too
    python experiments/masked_lm.py --seeds 0 --tiny      # a smoke run

Every variant has the preset's 12 layers (12 / B per block) and trains every block for the same
number of steps, so all variants spend the same training compute. Runs are kept under <out>/runs
and reused; records go to <out>/records.jsonl, the table to <out>/table.md, the per-block
contributions to <out>/<corpus>_bpc_per_block.png.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from dblocks_jax import runs  # noqa: E402
from dblocks_jax.presets import get_config  # noqa: E402
from dblocks_jax.tasks import make_task  # noqa: E402
from dblocks_jax.tasks.masked_lm_eval import held_out, negative_elbo, score  # noqa: E402
from experiments.common import (add_common_arguments, append_record, mean_std, read_json, read_records,  # noqa: E402
                                results_dir, step_cost, update_json)

VARIANTS = {"e2e_B1": 1, "db_B2": 2, "db_B3": 3, "db_B4": 4}
TINY = {"model.width": 16, "model.num_heads": 2, "model.num_layers": 12, "text.seq_len": 16, "data.batch_size": 8,
        "optim.warmup_steps": 2, "text.eval_sequences": 16, "text.eval_draws": 1, "sampling.steps": 4,
        "sampling.num_samples": 2}


def config_of(corpus: str, variant: str, steps: int, tiny: bool, seed: int = 0):
    overrides = {"model.num_blocks": VARIANTS[variant], "optim.steps": steps, "run.seed": seed,
                 **(TINY if tiny else {})}
    if corpus != "pydoc":
        overrides["data.dataset"] = f"textfile:{corpus}"
    return get_config("pydoc_md4", overrides)


def workdir_of(out: str, corpus: str, variant: str, steps: int, seed: int) -> str:
    return os.path.join(out, "runs", f"{label(corpus)}_{variant}_steps{steps}_seed{seed}")


def run_one(corpus: str, variant: str, seed: int, steps: int, out: str, tiny: bool) -> dict:
    config = config_of(corpus, variant, steps, tiny, seed)
    workdir = workdir_of(out, corpus, variant, steps, seed)
    start = time.perf_counter()
    result = runs.train(config, workdir, resume=True, progress=False, write_artifacts=False)
    train_s = time.perf_counter() - start
    task = make_task(config)
    scores = score(task, result.params, seeds=(seed,))
    samples = task.sample(result.params, 4, seed=seed)
    return {"corpus": label(corpus), "variant": variant, "seed": seed, "steps": steps, "train_seconds": train_s,
            "final_loss": result.final_loss, "bpc": scores["bpc"]["mean"],
            "bpc_per_block": [s["mean"] for s in scores["bpc_per_block"]], "unigram_bpc": scores["unigram_bpc"],
            "num_sequences": scores["num_sequences"], "draws": scores["draws_per_sequence"],
            "samples": [task.decode(s) for s in samples]}


def e2e_band_split(out: str, corpus: str, steps: int, seeds: list[int]) -> dict:
    """The end-to-end model's integral cut at the bands of B = 2, 3, 4 blocks (bits per character,
    the most masked band first, seed `seed`'s draws): where along t DiffusionBlocks wins or loses
    against it. Kept in <out>/e2e_bands.json."""
    path = os.path.join(out, "e2e_bands.json")
    for seed in seeds:
        key = f"{label(corpus)}/steps{steps}/seed{seed}"
        workdir = workdir_of(out, corpus, "e2e_B1", steps, seed)
        if key in read_json(path) or not os.path.exists(os.path.join(workdir, "checkpoints")):
            continue
        task, params, _ = runs.load_run(workdir)
        windows = held_out(task)
        split = {str(b): [x / math.log(2) for x in negative_elbo(task, params, windows, seed,
                                                                 edges=np.linspace(0.0, 1.0, b + 1))["per_band"]]
                 for b in (2, 3, 4)}
        update_json(path, key, split)
    return read_json(path)


def label(corpus: str) -> str:
    return "pydoc" if corpus == "pydoc" else os.path.splitext(os.path.basename(corpus))[0]


def report(records: list[dict], costs: dict, out: str, bands: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| corpus | variant | steps/block | seeds | BPC | per block (block 0 = most masked) | unigram | "
             "step peak MiB | all blocks resident MiB | step ms |", "|" + "---|" * 10]
    summary = {}
    for (corpus, steps) in sorted({(r["corpus"], r["steps"]) for r in records}):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for i, variant in enumerate(VARIANTS):
            rs = [r for r in records if (r["corpus"], r["steps"], r["variant"]) == (corpus, steps, variant)]
            if not rs:
                continue
            bpc = mean_std(r["bpc"] for r in rs)
            shares = [mean_std(r["bpc_per_block"][b] for r in rs) for b in range(VARIANTS[variant])]
            c = costs.get(f"{corpus}/{variant}", {})
            summary[f"{corpus}/{variant}/steps{steps}"] = {"bpc": bpc, "bpc_per_block": shares, "seeds": len(rs),
                                                           "unigram_bpc": rs[0]["unigram_bpc"], **c}
            lines.append(f"| {corpus} | {variant} | {steps} | {len(rs)} | {bpc[0]:.3f} ± {bpc[1]:.3f} | "
                         f"{' + '.join(f'{m:.3f}' for m, _ in shares)} | {rs[0]['unigram_bpc']:.3f} | "
                         f"{c.get('step_peak_bytes', 0) / 2**20:.1f} | "
                         f"{c.get('interleaved_total_bytes', 0) / 2**20:.1f} | {1e3 * c.get('step_seconds', 0):.1f} |")
            bottom = 0.0
            for b, (m, s) in enumerate(shares):  # each band's share, stacked from the most masked up
                ax.bar(i, m, bottom=bottom, yerr=s, capsize=2, color=plt.cm.viridis(b / 4), edgecolor="k", lw=0.5)
                ax.text(i, bottom + m / 2, f"{m:.2f}", ha="center", va="center", fontsize=6, color="w")
                bottom += m
        ax.axhline(records[0]["unigram_bpc"], ls="--", color="k", lw=1, label="unigram floor")
        ax.set_xticks(range(len(VARIANTS)), list(VARIANTS))
        ax.set(ylabel="held-out bits per character", title=f"{corpus}: BPC by band ({steps} steps per block)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"{corpus}_steps{steps}_bpc_per_block.png"), dpi=120)
        plt.close(fig)
    for (corpus, steps) in sorted({(r["corpus"], r["steps"]) for r in records}):
        splits = [v for k, v in (bands or {}).items() if k.startswith(f"{corpus}/steps{steps}/")]
        if splits:
            lines += ["", f"{corpus}, {steps} steps: the end-to-end model's integral on each variant's bands "
                          f"({len(splits)} seeds; compare with the blocks' shares above)", "",
                      "| bands of | e2e per band |", "|---|---|"]
            for b in ("2", "3", "4"):
                shares = [mean_std(s[b][j] for s in splits) for j in range(int(b))]
                lines.append(f"| B = {b} | {' + '.join(f'{m:.3f} ± {d:.3f}' for m, d in shares)} |")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    update_json(os.path.join(out, "summary.json"), "runs", summary)
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", action="append", default=[], help="also a UTF-8 text file (repeatable)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per block (the preset's)")
    add_common_arguments(parser, "masked_lm")
    args = parser.parse_args(argv)
    args.out = results_dir(args, "masked_lm")
    path, costs_path = os.path.join(args.out, "records.jsonl"), os.path.join(args.out, "costs.json")
    done = {(r["corpus"], r["variant"], r["seed"], r["steps"]) for r in read_records(path)}
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    for corpus in ["pydoc", *args.text]:
        for variant in variants:
            if f"{label(corpus)}/{variant}" not in read_json(costs_path):
                update_json(costs_path, f"{label(corpus)}/{variant}",
                            step_cost(config_of(corpus, variant, args.steps, args.tiny), 5 if args.tiny else 50))
        for seed in seeds:  # seeds outermost: an interrupted experiment has as many seeds of every variant
            for variant in variants:
                if (label(corpus), variant, seed, args.steps) in done:
                    continue
                record = run_one(corpus, variant, seed, args.steps, args.out, args.tiny)
                print(f"{record['corpus']} {variant} seed {seed}: {record['bpc']:.3f} bpc "
                      f"({record['train_seconds']:.0f} s)", flush=True)
                append_record(path, record)
    bands = {}
    for corpus in ["pydoc", *args.text]:
        bands.update(e2e_band_split(args.out, corpus, args.steps, seeds))
    report(read_records(path), read_json(costs_path), args.out, bands)


if __name__ == "__main__":
    main()
