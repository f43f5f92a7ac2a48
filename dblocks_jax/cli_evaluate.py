"""The `dblocks evaluate` command: scores a run with its task's evaluation (generation: Frechet
distance, conditional accuracy, FID; classification: accuracy, ECE, NLL against inference steps;
masked_lm: bits per character and each block's share, samples; autoregressive_lm: bits per character
from the Monte-Carlo predictive, generation quality and speed; recurrent_lm: bits per character
against test-time depth, training FLOPs, generations) and writes them as JSON."""

from __future__ import annotations

import argparse
import json
import os

from dblocks_jax.cli import _flags, _int_list, check_output, check_seed, sampling_overrides


def run_evaluate(args: argparse.Namespace) -> None:
    from dblocks_jax.runs import read_run_config

    steps = _int_list("--steps", args.steps) if args.steps else (None,)
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num-samples {args.num_samples}; allowed: an integer >= 1")
    default_name = "evaluation_untrained.json" if args.untrained else "evaluation.json"
    path = args.json or os.path.join(args.workdir, default_name)
    check_output("--json", path)
    seeds = _int_list("--seeds", args.seeds)
    for seed in seeds:
        check_seed("--seeds", seed)
    overrides = sampling_overrides(argparse.Namespace(overrides=args.overrides))
    task = read_run_config(args.workdir).task
    foreign = [flag for flag, value in (("--mc", args.mc), ("--reference", args.reference)) if value is not None]
    if foreign and task not in ("autoregressive_lm", "recurrent_lm"):
        raise ValueError(f"{', '.join(foreign)}: for autoregressive_lm and recurrent_lm runs; {args.workdir} is a "
                         f"{task} run")
    if task == "image_classification":
        result = _evaluate_classification(args, path, seeds, steps, overrides)
    elif task == "masked_lm":
        result = _evaluate_language(args, seeds, steps, overrides)
    elif task == "autoregressive_lm":
        result = _evaluate_autoregressive(args, seeds, steps, overrides)
    elif task == "recurrent_lm":
        result = _evaluate_recurrent(args, seeds, steps, overrides)
    else:
        if len(steps) > 1:
            raise ValueError(f"--steps {args.steps}: one value for task {task} (several are for classification)")
        overrides.update(_flags(args, {"guidance": "sampling.guidance"}))
        if steps[0] is not None:
            overrides["sampling.steps"] = steps[0]
        result = _evaluate_generation(args, seeds, overrides)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


def _evaluate_classification(args, path: str, seeds, steps, overrides) -> dict:
    from dblocks_jax.tasks.image_classification_eval import evaluate_run

    unused = [flag for flag, value in (("--num-samples", args.num_samples), ("--guidance", args.guidance),
                                       ("--inception-weights", args.inception_weights)) if value is not None]
    if unused:
        raise ValueError(f"{', '.join(unused)}: for image generation runs; {args.workdir} is an image_classification "
                         f"run (it takes --steps, --seeds and sampling-role --set fields)")
    diagram = os.path.splitext(path)[0] + "_reliability.png"
    result = evaluate_run(args.workdir, seeds=seeds, steps=steps, overrides=overrides, untrained=args.untrained,
                          reliability_png=diagram)
    fmt = lambda s: "n/a" if s is None else f"{s['mean']:.4f} +/- {s['std']:.4f}"
    for r in result["by_steps"]:
        top5 = f", top-5 {fmt(r['top5'])}" if r["top5"] else ""
        print(f"{r['steps']:>3} network call(s): accuracy {fmt(r['accuracy'])}{top5}, ECE {fmt(r['ece'])}, "
              f"NLL {fmt(r['nll'])} ({r['num_examples']} held-out images, {len(seeds)} seed(s))")
    print(f"reliability diagram: {diagram}")
    return result


def _evaluate_language(args, seeds, steps, overrides) -> dict:
    from dblocks_jax.tasks.masked_lm_eval import evaluate_run

    unused = [flag for flag, value in (("--guidance", args.guidance), ("--inception-weights", args.inception_weights))
              if value is not None]
    if unused or len(steps) > 1:
        raise ValueError(f"{', '.join(unused) or '--steps with several values'}: not for a masked_lm run "
                         f"({args.workdir} takes --seeds, --num-samples, one --steps and sampling-role --set fields)")
    result = evaluate_run(args.workdir, seeds=seeds, overrides=overrides, untrained=args.untrained,
                          num_samples=args.num_samples, steps=steps[0])
    fmt = lambda s: f"{s['mean']:.4f} +/- {s['std']:.4f}"
    print(f"held-out negative ELBO: {fmt(result['bpc'])} {result['unit']} over {len(seeds)} seed(s) "
          f"({result['num_sequences']} windows of {result['seq_len']}); unigram floor {result['unigram_bpc']:.4f}")
    for b, share in enumerate(result["bpc_per_block"]):
        lo, hi = result["band_edges"][b]
        print(f"  block {b} (t in [{lo:.3f}, {hi:.3f}]): {fmt(share)}")
    print(f"samples ({result['sample_steps']} steps, {result['sample_grid']} grid; word validity "
          f"{result['word_validity']:.3f}, held-out text {result['held_out_word_validity']:.3f}):")
    for sample in result["samples"][:4]:
        print(f"  {sample}")
    return result


def _evaluate_autoregressive(args, seeds, steps, overrides) -> dict:
    from dblocks_jax.tasks.autoregressive_lm_eval import evaluate_run

    unused = [flag for flag, value in (("--guidance", args.guidance), ("--inception-weights", args.inception_weights))
              if value is not None]
    if unused or len(steps) > 1:
        raise ValueError(f"{', '.join(unused) or '--steps with several values'}: not for an autoregressive_lm run "
                         f"({args.workdir} takes --seeds, --mc, --reference, --num-samples, one --steps and "
                         f"sampling-role --set fields)")
    if args.mc is not None and args.mc < 1:
        raise ValueError(f"--mc {args.mc}; allowed: an integer >= 1")
    result = evaluate_run(args.workdir, seeds=seeds, overrides=overrides, untrained=args.untrained,
                          num_samples=args.num_samples, steps=steps[0], mc=args.mc, reference=args.reference)
    fmt = lambda s: f"{s['mean']:.4f} +/- {s['std']:.4f}"
    how = "exact" if result["objective"] == "plain" else (
        f"{result['mc_draws']} chain draws per symbol, Monte-Carlo error {result['bpc_mc_se']:.4f}; one draw "
        f"{result['bpc_one_draw']['mean']:.4f}; CE at sigma_max {fmt(result['ce_at_sigma_max'])}")
    print(f"held-out {fmt(result['bpc'])} bits per character over {len(seeds)} seed(s) ({how}); unigram floor "
          f"{result['unigram_bpc']:.4f}")
    print(f"generation: {result['tokens_per_s']:.0f} symbols/s; distinct-2 {result['distinct_2']:.3f}, distinct-3 "
          f"{result['distinct_3']:.3f} (held-out text {result['held_out_distinct_2']:.3f}, "
          f"{result['held_out_distinct_3']:.3f})")
    if result["gen_ppl"] is not None:
        mauve = "n/a (" + result["mauve_skipped"] + ")" if result["mauve"] is None else f"{result['mauve']:.3f}"
        print(f"gen-PPL under the reference {result['gen_ppl']:.3f} (held-out continuations "
              f"{result['held_out_gen_ppl']:.3f}, the reference's own {result['reference_gen_ppl']:.3f}); reference "
              f"generation {result['reference_tokens_per_s']:.0f} symbols/s; MAUVE {mauve}")
    for sample in result["samples"][:4]:
        print(f"  {sample}")
    return result


def _evaluate_recurrent(args, seeds, steps, overrides) -> dict:
    from dblocks_jax.tasks.recurrent_lm_eval import STEPS, evaluate_run

    unused = [flag for flag, value in (("--guidance", args.guidance), ("--inception-weights", args.inception_weights))
              if value is not None]
    if unused:
        raise ValueError(f"{', '.join(unused)}: not for a recurrent_lm run ({args.workdir} takes --steps K1,K2,..., "
                         f"--seeds, --mc, --reference, --num-samples and sampling-role --set fields)")
    if args.mc is not None:
        if args.mc < 1:
            raise ValueError(f"--mc {args.mc}; allowed: an integer >= 1")
        overrides["recurrent.mc_draws"] = args.mc
    if steps != (None,) and min(steps) < 1:
        raise ValueError(f"--steps {args.steps}; allowed: integers >= 1 (core iterations)")
    result = evaluate_run(args.workdir, seeds=seeds, steps=STEPS if steps == (None,) else steps, overrides=overrides,
                          untrained=args.untrained, num_samples=args.num_samples, reference=args.reference)
    fmt = lambda s: f"{s['mean']:.4f} +/- {s['std']:.4f}"
    for k, r in result["bpc_by_steps"].items():
        print(f"K = {k:>3}: held-out {fmt(r['bpc'])} bits per character (mixture of {r['draws']} starting noises; "
              f"one draw {fmt(r['bpc_one_draw'])})")
    f = result["training_flops"]
    print(f"training FLOPs per step ({result['method']}): {f['step']:.3e} (of which {f['free_iterations']:.1f} "
          f"iterations without gradient, {f['iteration']:.3e} each)")
    mauve = result.get("mauve_skipped", "") if result["mauve"] is None else f"{result['mauve']:.3f}"
    ppl = "" if result["gen_ppl"] is None else f"; gen-PPL under the reference {result['gen_ppl']:.3f} " \
                                               f"(held-out continuations {result['held_out_gen_ppl']:.3f}); " \
                                               f"MAUVE {mauve}"
    print(f"generation at K = {result['sample_steps']}: {result['tokens_per_s']:.0f} symbols/s, distinct-2 "
          f"{result['distinct_2']:.3f} (held-out {result['held_out_distinct_2']:.3f}){ppl}")
    for sample in result["samples"][:4]:
        print(f"  {sample}")
    return result


def _evaluate_generation(args, seeds, overrides) -> dict:
    from dblocks_jax.tasks.image_generation_eval import evaluate_run

    result = evaluate_run(args.workdir, seeds=seeds, num_samples=args.num_samples,
                          overrides=overrides, untrained=args.untrained, inception_weights=args.inception_weights)
    fd, acc = result["frechet_distance"], result["conditional_accuracy"]
    print(f"Frechet distance (classifier features, {result['num_samples']} samples vs {result['num_reference']} "
          f"held-out): {fd['mean']:.3f} +/- {fd['std']:.3f} over {len(result['seeds'])} seeds")
    if acc:
        print(f"conditional accuracy: {acc['mean']:.3f} +/- {acc['std']:.3f} "
              f"(classifier's own held-out accuracy: {result['classifier']['held_out_accuracy']:.3f})")
    fid = result["fid"]
    if fid:
        print(f"FID (InceptionV3 pool3, {result['num_samples']} samples vs {result['num_reference']} held-out): "
              f"{fid['mean']:.2f} +/- {fid['std']:.2f} over {len(result['seeds'])} seeds (weights: {fid['weights']})")
    elif result["dataset"].startswith("tfds:"):
        print(f"FID not computed: {result['fid_skipped']}")
    return result
