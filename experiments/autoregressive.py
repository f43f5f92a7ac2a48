"""Autoregressive LM (paper Table 4) at CPU scale: the plain next-token transformer against
DiffusionBlocks with B = 2 and 4 (gamma 0.1) and three bridges, over several seeds, on Python's
pydoc text: held-out bits per character (the plain model's exact cross-entropy; the DB model's
Monte-Carlo predictive), cross-entropy at sigma_max, generation perplexity under the seed's plain
model, distinct-n, generation speed, compiled training memory and step time.

    python experiments/autoregressive.py                 # seeds 0,1,2 at the pydoc_ar preset's steps
    python experiments/autoregressive.py --seeds 0 --tiny

All variants have the preset's 12 layers (12 / B per block) and every block takes the same number
of steps. A DB block step runs two streams (clean and noisy), so at equal steps DiffusionBlocks
spends about twice the plain model's training FLOPs; the wall time of each run is recorded. Runs are
kept under <out>/runs and reused; records go to <out>/records.jsonl, the table to <out>/table.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from dblocks_jax import runs  # noqa: E402
from dblocks_jax.evaluation.text_metrics import distinct_n  # noqa: E402
from dblocks_jax.presets import get_config  # noqa: E402
from dblocks_jax.tasks import make_task  # noqa: E402
# Imported now, not on first use, so that edits made while an experiment runs cannot mix versions.
from dblocks_jax.tasks import autoregressive_lm_sampling  # noqa: E402,F401
from dblocks_jax.tasks.autoregressive_lm_eval import continuations, generation_perplexity, prompts, score  # noqa
from experiments.common import (add_common_arguments, append_record, mean_std, read_json, read_records,  # noqa: E402
                                results_dir, step_cost, update_json)

VARIANTS = {"ar": {"ar.objective": "plain", "model.num_blocks": 1}, "db_B2": {"model.num_blocks": 2},
            "db_B4": {"model.num_blocks": 4}}
BRIDGES = ("soft", "normalised", "hard")
TINY = {"model.width": 16, "model.num_heads": 2, "model.num_layers": 4, "text.seq_len": 16, "data.batch_size": 8,
        "optim.warmup_steps": 2, "text.eval_sequences": 8, "ar.mc_draws": 2, "generation.prompt_len": 4,
        "generation.gen_len": 4}
TINY_VARIANTS = {"db_B4": {"model.num_blocks": 2}}  # 4 layers: B = 2 stands in for B = 4


def config_of(variant: str, steps: int, tiny: bool, seed: int = 0):
    overrides = {**VARIANTS[variant], "optim.steps": steps, "run.seed": seed, **(TINY if tiny else {})}
    if tiny:
        overrides.update(TINY_VARIANTS.get(variant, {}))
    return get_config("pydoc_ar", overrides)


def workdir_of(out: str, variant: str, steps: int, seed: int) -> str:
    return os.path.join(out, "runs", f"pydoc_{variant}_steps{steps}_seed{seed}")


def run_one(variant: str, seed: int, steps: int, out: str, tiny: bool, num_prompts: int, mc: list[int]) -> dict:
    config = config_of(variant, steps, tiny, seed)
    start = time.perf_counter()
    result = runs.train(config, workdir_of(out, variant, steps, seed), resume=True, progress=False,
                        write_artifacts=False)
    train_s = time.perf_counter() - start
    task = make_task(config)
    reference, ref_params = task, result.params
    if variant != "ar":
        reference, ref_params, _ = runs.load_run(workdir_of(out, "ar", steps, seed))
    prompts_NP, truth_NG = prompts(task, num_prompts)
    record = {"variant": variant, "seed": seed, "steps": steps, "train_seconds": train_s,
              "final_loss": result.final_loss,
              "held_out_gen_ppl": generation_perplexity(reference, ref_params, prompts_NP, truth_NG),
              "held_out_distinct_2": distinct_n([task.decode(c) for c in truth_NG], 2), "by_bridge": {}}
    for bridge in (("plain",) if task.plain else BRIDGES):
        b = None if task.plain else bridge
        scores = score(task, result.params, seeds=(seed,), draws=mc[0], bridge=b)
        gen = continuations(task, result.params, num_prompts, seed=seed, prompts_NP=prompts_NP, bridge=b)
        entry = {"bpc": scores["bpc"]["mean"], "bpc_mc_se": scores["bpc_mc_se"],
                 "bpc_one_draw": scores["bpc_one_draw"]["mean"], "unigram_bpc": scores["unigram_bpc"],
                 "gen_ppl": generation_perplexity(reference, ref_params, prompts_NP, gen["ids"]),
                 "distinct_2": distinct_n(gen["continuations"], 2), "distinct_3": distinct_n(gen["continuations"], 3),
                 "tokens_per_s": gen["tokens_per_s"], "samples": [f"{p}|{c}" for p, c in
                                                                  zip(gen["prompts"][:4], gen["continuations"][:4])]}
        if not task.plain:
            entry["ce_at_sigma_max"] = scores["ce_at_sigma_max"]["mean"]
            entry["bpc_by_draws"] = {str(m): score(task, result.params, seeds=(seed,), draws=m, bridge=b)["bpc"]["mean"]
                                     for m in mc[1:]}
            entry["bpc_by_draws"][str(mc[0])] = entry["bpc"]
        record["by_bridge"][bridge] = entry
    return record


def report(records: list[dict], costs: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| variant | bridge | seeds | BPC (MC) | CE at σ_max | gen-PPL | distinct-2 | symbols/s | "
             "train s | step peak MiB | step ms |", "|" + "---|" * 11]
    summary, rows = {}, []
    for steps in sorted({r["steps"] for r in records}):
        for variant in VARIANTS:
            rs = [r for r in records if (r["variant"], r["steps"]) == (variant, steps)]
            if not rs:
                continue
            c = costs.get(variant, {})
            for bridge in rs[0]["by_bridge"]:
                es = [r["by_bridge"][bridge] for r in rs]
                stat = {k: mean_std(e[k] for e in es) for k in ("bpc", "gen_ppl", "distinct_2", "tokens_per_s")}
                if "ce_at_sigma_max" in es[0]:
                    stat["ce_at_sigma_max"] = mean_std(e["ce_at_sigma_max"] for e in es)
                    stat["bpc_by_draws"] = {m: mean_std(e["bpc_by_draws"][m] for e in es)
                                            for m in es[0]["bpc_by_draws"]}
                # Resumed runs (trained by an earlier, interrupted invocation) report ~0 s: left out.
                stat["train_seconds"] = mean_std([r["train_seconds"] for r in rs if r["train_seconds"] > 1] or [0.0])
                summary[f"{variant}/{bridge}/steps{steps}"] = {**stat, "seeds": len(rs), **c}
                rows.append((f"{variant}/{bridge}", stat))
                fmt = lambda k: f"{stat[k][0]:.3f} ± {stat[k][1]:.3f}" if k in stat else "–"
                lines.append(f"| {variant} | {bridge} | {len(rs)} | {fmt('bpc')} | {fmt('ce_at_sigma_max')} | "
                             f"{fmt('gen_ppl')} | {fmt('distinct_2')} | "
                             f"{stat['tokens_per_s'][0]:.0f} | {stat['train_seconds'][0]:.0f} | "
                             f"{c.get('step_peak_bytes', 0) / 2**20:.1f} | {1e3 * c.get('step_seconds', 0):.1f} |")
    held = [r["held_out_gen_ppl"] for r in records if r["variant"] == "ar"]
    if held:
        lines += ["", f"gen-PPL of the held-out continuations themselves under the plain model: "
                      f"{np.mean(held):.3f} ± {np.std(held, ddof=1) if len(held) > 1 else 0:.3f}"]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    update_json(os.path.join(out, "summary.json"), "runs", summary)
    print("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "ce_at_sigma_max", "held-out bits per character"),
                           (axes[1], "gen_ppl", "gen-PPL under the plain model")):
        for i, (name, stat) in enumerate(rows):
            if key == "ce_at_sigma_max":
                value = stat.get(key, stat["bpc"])  # the plain model: its exact cross-entropy
            else:
                value = stat[key]
            ax.bar(i, value[0], yerr=value[1], capsize=2, color="C0" if name.startswith("ar") else "C1")
        ax.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=40, ha="right", fontsize=7)
        ax.set_title(title + (" (DB: CE at σ_max)" if key == "ce_at_sigma_max" else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "autoregressive.png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, help="optimizer steps per block (default: the preset's)")
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts for the generation metrics")
    parser.add_argument("--mc", default="8,32", help="chain draws for the likelihood (the first is the headline)")
    add_common_arguments(parser, "autoregressive")
    args = parser.parse_args(argv)
    args.out = results_dir(args, "autoregressive")
    steps = args.steps or (3 if args.tiny else get_config("pydoc_ar").optim.steps)
    num_prompts, mc = (2 if args.tiny else args.prompts), [int(m) for m in args.mc.split(",")]
    path, costs_path = os.path.join(args.out, "records.jsonl"), os.path.join(args.out, "costs.json")
    done = {(r["variant"], r["seed"], r["steps"]) for r in read_records(path)}
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    if variants[0] != "ar" and "ar" in variants:
        variants = ["ar"] + [v for v in variants if v != "ar"]  # the plain model scores the others' generations
    for variant in variants:
        if variant not in read_json(costs_path):
            update_json(costs_path, variant, step_cost(config_of(variant, steps, args.tiny), 5 if args.tiny else 30))
    for seed in seeds:  # seeds outermost: an interrupted experiment has as many seeds of every variant
        for variant in variants:
            if (variant, seed, steps) in done:
                continue
            record = run_one(variant, seed, steps, args.out, args.tiny, num_prompts, mc)
            first = next(iter(record["by_bridge"].values()))
            print(f"{variant} seed {seed}: {first['bpc']:.3f} bpc, gen-PPL {first['gen_ppl']:.3f} "
                  f"({record['train_seconds']:.0f} s)", flush=True)
            append_record(path, record)
    report(read_records(path), read_json(costs_path), args.out)


if __name__ == "__main__":
    main()
