"""Recurrent depth (paper Table 5) at CPU scale: Huginn's training (K ~ Poisson-log-normal, mean 32,
backpropagation through the last 8 iterations) against DiffusionBlocks' (one core pass on a noisy
target state, B = 1), on Python's pydoc text, over several seeds: held-out bits per character
against the test-time depth K, generation quality at K = 32 (gen-PPL under the seed's plain
autoregressive model of experiments/autoregressive.py, distinct-2), training FLOPs (the compiled
step's cost analysis), memory (XLA's memory analysis) and time per step.

    python experiments/recurrent_depth.py                 # seeds 0,1,2, 600 steps
    python experiments/recurrent_depth.py --seeds 0 --tiny

Variants: `db` (the preset: `token` target, noise law centred at ln sigma = 3.5), `db_edm_law`
(the same under EDM's image law, p_mean -1.2) and `db_prelude` (the `prelude` target) at S steps;
`huginn` at S steps (equal steps: about 8x DiffusionBlocks' FLOPs) and `huginn_equal_compute` at
S x FLOPs(db) / FLOPs(huginn) steps (equal training compute; its warm-up shortened in
proportion). Runs are kept under <out>/runs and reused; records go to <out>/records.jsonl, the table
to <out>/table.md, the curves to <out>/recurrent_depth.png.
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
from dblocks_jax.tasks import autoregressive_lm_sampling, recurrent_lm  # noqa: E402,F401
from dblocks_jax.tasks.autoregressive_lm_eval import generation_perplexity, prompts  # noqa: E402
from dblocks_jax.tasks.recurrent_lm_eval import (STEPS, bpc_by_steps, continuations, equal_compute,  # noqa: E402
                                                 training_flops)
from experiments import autoregressive  # noqa: E402
from experiments.common import (add_common_arguments, append_record, mean_std, read_json, read_records,  # noqa: E402
                                results_dir, step_cost, update_json)

VARIANTS = {"db": {}, "db_edm_law": {"noise.p_mean": -1.2}, "db_prelude": {"recurrent.target": "prelude"},
            "huginn": {"recurrent.method": "huginn"}, "huginn_equal_compute": {"recurrent.method": "huginn"}}
TINY = {"model.width": 16, "model.num_heads": 2, "text.seq_len": 16, "data.batch_size": 8, "optim.warmup_steps": 2,
        "text.eval_sequences": 8, "recurrent.mc_draws": 2, "generation.prompt_len": 4, "generation.gen_len": 4}
TINY_HUGINN = {"recurrent.mean_steps": 4.0, "recurrent.backprop_steps": 2}
TINY_STEPS = (1, 2, 4)


def config_of(variant: str, steps: int, tiny: bool, seed: int = 0, costs: dict | None = None):
    """The variant's config at `steps`; `huginn_equal_compute` gets as many steps as `db`'s buy at
    the FLOPs per step in `costs` (`recurrent_lm_eval.equal_compute`)."""
    huginn = VARIANTS[variant].get("recurrent.method") == "huginn"
    small = {**TINY, **(TINY_HUGINN if huginn else {})} if tiny else {}
    config = get_config("pydoc_recurrent", {**VARIANTS[variant], "optim.steps": steps, "run.seed": seed, **small})
    if variant == "huginn_equal_compute":
        flops = (costs["db"]["flops"]["step"], costs["huginn"]["flops"]["step"])
        config = equal_compute(config_of("db", steps, tiny, seed), config, flops)
    return config


def reference_run(out: str, steps: int, seed: int, tiny: bool) -> str:
    """The seed's plain autoregressive run (experiments/autoregressive.py's, trained here if absent)."""
    base = os.path.join(os.path.dirname(out), "autoregressive") if not tiny else out
    workdir = autoregressive.workdir_of(base, "ar", steps, seed)
    if not os.path.exists(os.path.join(workdir, "run.json")):
        runs.train(autoregressive.config_of("ar", steps, tiny, seed), workdir, resume=True, progress=False,
                   write_artifacts=False)
    return workdir


def run_one(variant: str, seed: int, steps: int, out: str, tiny: bool, num_prompts: int, ar_steps: int,
            costs: dict) -> dict:
    config = config_of(variant, steps, tiny, seed, costs)
    steps = config.optim.steps
    workdir = os.path.join(out, "runs", f"pydoc_{variant}_steps{steps}_seed{seed}")
    start = time.perf_counter()
    result = runs.train(config, workdir, resume=True, progress=False, write_artifacts=False)
    train_s = time.perf_counter() - start
    task, params = make_task(config), result.params[0]
    depths = TINY_STEPS if tiny else STEPS
    reference, ref_params, _ = runs.load_run(reference_run(out, ar_steps, seed, tiny))
    prompts_NP, truth_NG = prompts(task, num_prompts)
    gens = {k: continuations(task, params, num_prompts, k, seed=seed, prompts_NP=prompts_NP) for k in depths}
    gen = gens[depths[-1]]
    gen_ppl = {str(k): generation_perplexity(reference, ref_params, prompts_NP, g["ids"]) for k, g in gens.items()}
    return {"variant": variant, "seed": seed, "steps": steps, "train_seconds": train_s,
            "final_loss": result.final_loss, "bpc_by_steps": bpc_by_steps(task, params, depths, seeds=(seed,)),
            "gen_ppl_by_steps": gen_ppl, "gen_ppl": gen_ppl[str(depths[-1])],
            "distinct_2_by_steps": {str(k): distinct_n(g["continuations"], 2) for k, g in gens.items()},
            "tokens_per_s_by_steps": {str(k): g["tokens_per_s"] for k, g in gens.items()},
            "gen_steps": depths[-1],
            "held_out_gen_ppl": generation_perplexity(reference, ref_params, prompts_NP, truth_NG),
            "distinct_2": distinct_n(gen["continuations"], 2), "tokens_per_s": gen["tokens_per_s"],
            "samples": [f"{p}|{c}" for p, c in zip(gen["prompts"][:4], gen["continuations"][:4])]}


def report(records: list[dict], costs: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({int(k) for r in records for k in r["bpc_by_steps"]})
    pm = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}"
    lines = ["| variant | steps | seeds | " + " | ".join(f"BPC K={k}" for k in depths) +
             " | train s | FLOPs/step | step peak MiB | step ms |", "|" + "---|" * (len(depths) + 7)]
    gen_lines = ["| variant | " + " | ".join(f"gen-PPL K={k}" for k in depths) + f" | distinct-2 K={depths[-1]} |",
                 "|" + "---|" * (len(depths) + 2)]
    summary = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant in VARIANTS:
        rs = [r for r in records if r["variant"] == variant]
        if not rs:
            continue
        c = costs.get(variant, {})
        by_k = lambda key, field=None: {k: mean_std(r[key][str(k)][field]["mean"] if field else r[key][str(k)]
                                                    for r in rs) for k in depths}
        stat = {"bpc_by_steps": by_k("bpc_by_steps", "bpc"), "bpc_one_draw_by_steps": by_k("bpc_by_steps",
                                                                                             "bpc_one_draw"),
                "gen_ppl_by_steps": by_k("gen_ppl_by_steps"), "distinct_2_by_steps": by_k("distinct_2_by_steps"),
                "seeds": len(rs), "steps": rs[0]["steps"],
                "train_seconds": mean_std([r["train_seconds"] for r in rs if r["train_seconds"] > 1] or [0.0]),
                "held_out_gen_ppl": mean_std(r["held_out_gen_ppl"] for r in rs), **c}
        summary[variant] = stat
        lines.append(f"| {variant} | {rs[0]['steps']} | {len(rs)} | " +
                     " | ".join(pm(stat["bpc_by_steps"][k]) for k in depths) +
                     f" | {stat['train_seconds'][0]:.0f} | {c.get('flops', {}).get('step', 0):.3g} | "
                     f"{c.get('step_peak_bytes', 0) / 2**20:.0f} | {1e3 * c.get('step_seconds', 0):.0f} |")
        gen_lines.append(f"| {variant} | " + " | ".join(pm(stat["gen_ppl_by_steps"][k]) for k in depths) +
                         f" | {stat['distinct_2_by_steps'][depths[-1]][0]:.3f} |")
        for ax, key in zip(axes, ("bpc_by_steps", "gen_ppl_by_steps")):
            ax.errorbar(depths, [stat[key][k][0] for k in depths], yerr=[stat[key][k][1] for k in depths],
                        marker="o", capsize=2, label=f"{variant} ({rs[0]['steps']} steps)")
    held = np.mean([r["held_out_gen_ppl"] for r in records])
    lines += ["", *gen_lines, "", f"gen-PPL of the held-out continuations under the plain AR models: {held:.3f}",
              "Bits per character: the mixture predictive over recurrent.mc_draws starting noises, for every method "
              "and K (see tasks/recurrent_lm_eval.py)."]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    update_json(os.path.join(out, "summary.json"), "variants", summary)
    print("\n".join(lines))
    for ax, label in zip(axes, ("held-out bits per character", "gen-PPL under the plain AR model")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("test-time core iterations K")
        ax.set_ylabel(label)
    axes[1].axhline(held, color="gray", linestyle=":", label="held-out text")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle("recurrent depth on pydoc, mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "recurrent_depth.png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only rewrite the table and plot from the records")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of db, db_prelude and huginn")
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts for the generation metrics")
    add_common_arguments(parser, "recurrent_depth")
    args = parser.parse_args(argv)
    args.out = results_dir(args, "recurrent_depth")
    steps = 4 if args.tiny else args.steps
    ar_steps = 3 if args.tiny else get_config("pydoc_ar").optim.steps
    num_prompts = 2 if args.tiny else args.prompts
    path, costs_path = os.path.join(args.out, "records.jsonl"), os.path.join(args.out, "costs.json")
    if args.report:
        return report(read_records(path), read_json(costs_path), args.out)
    for variant in ("db", "huginn"):  # the FLOPs ratio sets the equal-compute steps
        if variant not in read_json(costs_path):
            config = config_of(variant, steps, args.tiny)
            update_json(costs_path, variant, {**step_cost(config, 3 if args.tiny else 20),
                                              "flops": training_flops(config)})
    costs = read_json(costs_path)
    ratio = costs["db"]["flops"]["step"] / costs["huginn"]["flops"]["step"]
    steps_of = {v: config_of(v, steps, args.tiny, costs=costs).optim.steps for v in VARIANTS}
    update_json(costs_path, "huginn_equal_compute", {**costs["huginn"], "flops_ratio_db_over_huginn": ratio})
    for variant in ("db_edm_law", "db_prelude"):
        if variant not in costs:
            update_json(costs_path, variant, step_cost(config_of(variant, steps, args.tiny), 3 if args.tiny else 20))
    done = {(r["variant"], r["seed"], r["steps"]) for r in read_records(path)}
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    for seed in seeds:  # seeds outermost: an interrupted experiment has as many seeds of every variant
        for variant in variants:
            if (variant, seed, steps_of[variant]) in done:
                continue
            record = run_one(variant, seed, steps, args.out, args.tiny, num_prompts, ar_steps, read_json(costs_path))
            k = record["bpc_by_steps"]
            print(f"{variant} seed {seed} ({steps_of[variant]} steps, {record['train_seconds']:.0f} s): bpc by K " +
                  ", ".join(f"{kk}: {v['bpc']['mean']:.3f}" for kk, v in k.items()) +
                  f"; gen-PPL {record['gen_ppl']:.3f}", flush=True)
            append_record(path, record)
    report(read_records(path), read_json(costs_path), args.out)


if __name__ == "__main__":
    main()
