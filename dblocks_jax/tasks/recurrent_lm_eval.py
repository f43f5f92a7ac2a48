"""Scoring a recurrent-depth language model against its test-time depth K (`dblocks evaluate
--steps 1,2,4,...` on a recurrent_lm run), its generations, and its training FLOPs.

`bpc_by_steps`: held-out next-token cross-entropy in bits per character for each K. Both methods'
K-step logits depend on a starting noise (Huginn's s_0, the chain's z_0), so the model's
predictive is the mixture over it, estimated with `recurrent.mc_draws` draws for every method and
every K alike: `bpc` = -log2 of the mean of the M draws' probabilities (by Jensen an upper bound
in bits that tightens with M), `bpc_one_draw` the mean of -log2 p_m (what one draw scores). A
DiffusionBlocks chain of K >= 2 calls ends on a sample of the clean state, so its draws differ
most; K = 1 is one call at sigma_max, where D is an estimate of the state from the context alone.

`training_flops`: FLOPs of one training step from the compiled step's cost analysis (XLA's count
of the unrolled program). Huginn's step has a random number of iterations without gradient, in a
while loop whose body XLA counts once: they are counted apart, as E[K - k] times the compiled
FLOPs of one iteration (E from 200,000 draws of K's law, `poisson_lognormal_steps`), added to the
rest of the step.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.engine import bench
from dblocks_jax.evaluation.stats import describe, summary
from dblocks_jax.evaluation.text_metrics import bits_per_character, distinct_n, held_out, write_continuations
from dblocks_jax.tasks.autoregressive_lm_eval import (check_reference, generation_perplexity, load_reference,
                                                      mauve_score, prompts)
from dblocks_jax.tasks.autoregressive_lm_sampling import pick
from dblocks_jax.tasks.recurrent_depth import mixture, poisson_lognormal_steps

STEPS = (1, 2, 4, 8, 16, 32)
SALT, GENERATE_SALT = 0x8EC, 0x9E7


def bpc(task, params, windows_NL: np.ndarray, steps: int, seed: int = 0, draws: int | None = None,
        batch_size: int = 128) -> dict:
    """Bits per character of the K = `steps` model on `windows_NL` (positions 1..L-1): `bpc` (the
    mixture predictive over `draws` starting noises, default recurrent.mc_draws) and
    `bpc_one_draw`, from the same draws."""
    draws = draws or task.config.recurrent.mc_draws
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), SALT), steps)
    mixed, single = [], []
    for start in range(0, len(windows_NL), batch_size):
        logp_MNT = task.draw_log_probs(params, windows_NL[start:start + batch_size], steps,
                                       jax.random.fold_in(key, start), draws)
        mixed.append(np.asarray(mixture(logp_MNT)).ravel())
        single.append(np.asarray(logp_MNT.mean(0)).ravel())
    scale = bits_per_character(task, windows_NL) / math.log(2)
    return {"bpc": float(-np.concatenate(mixed).mean() * scale),
            "bpc_one_draw": float(-np.concatenate(single).mean() * scale), "draws": draws}


def bpc_by_steps(task, params, steps=STEPS, seeds=(0,), windows_NL: np.ndarray | None = None) -> dict:
    """{K: {"bpc": mean/std over seeds, "bpc_one_draw": ..., "draws": M}} on the held-out windows."""
    windows = held_out(task) if windows_NL is None else windows_NL
    out = {}
    for k in steps:
        runs = [bpc(task, params, windows, k, seed) for seed in seeds]
        out[str(k)] = {"bpc": summary([r["bpc"] for r in runs]),
                       "bpc_one_draw": summary([r["bpc_one_draw"] for r in runs]), "draws": runs[0]["draws"]}
    return out


def generate(task, params, prompts_NP: np.ndarray, new_tokens: int, steps: int, seed: int = 0):
    """(continuations (N, new_tokens) int32, seconds of the compiled generation). Each new symbol
    runs the K-step model over the whole window (positions past the text are masked out by
    causality; no cache: the core's states change with every iteration)."""
    n, p = prompts_NP.shape
    length = task.config.text.seq_len
    if p < 1 or new_tokens < 1 or p + new_tokens > length:
        raise ValueError(f"prompt of {p} symbols + {new_tokens} new: allowed: prompt >= 1, new >= 1, prompt + new <= "
                         f"text.seq_len={length}")
    g, predict = task.config.generation, task.predictor(steps)
    cache_key = ("generate", n, p, new_tokens, steps)
    args = (params, jnp.asarray(prompts_NP, jnp.int32), jax.random.fold_in(jax.random.key(seed), GENERATE_SALT))
    if cache_key not in task._predictors:
        def run(params, prompts_NP, key):
            window_NL = jnp.zeros((n, length), jnp.int32).at[:, :p].set(prompts_NP)

            def body(window_NL, i):
                position = p - 1 + i  # its logits predict the symbol at position + 1
                k_noise, k_pick = jax.random.split(jax.random.fold_in(key, i))
                logits_NV = predict(params, window_NL[:, :-1], k_noise)[:, position]
                token_N = pick(logits_NV, jax.random.split(k_pick, n), g.temperature, g.top_p)
                return window_NL.at[:, position + 1].set(token_N), None

            window_NL, _ = jax.lax.scan(body, window_NL, jnp.arange(new_tokens))
            return window_NL[:, p:p + new_tokens]

        task._predictors[cache_key] = jax.jit(run)
        jax.block_until_ready(task._predictors[cache_key](*args))  # compiled and run once, outside the timing
    start = time.perf_counter()
    tokens = np.asarray(task._predictors[cache_key](*args))
    return tokens, time.perf_counter() - start


def continuations(task, params, count: int, steps: int, seed: int = 0, prompts_NP: np.ndarray | None = None) -> dict:
    if prompts_NP is None:
        prompts_NP, _ = prompts(task, count)
    tokens, seconds = generate(task, params, prompts_NP, task.config.generation.gen_len, steps, seed)
    return {"ids": tokens, "prompts": [task.decode(p) for p in prompts_NP],
            "continuations": [task.decode(c) for c in tokens], "tokens_per_s": tokens.size / seconds}


def expected_free_iterations(config, draws: int = 200_000) -> float:
    """E[K - min(K, backprop_steps)] under Huginn's law of K (0 for the diffusion method)."""
    r = config.recurrent
    if r.method == "diffusion":
        return 0.0
    keys = jax.random.split(jax.random.key(0), draws)
    k = np.asarray(jax.vmap(lambda key: poisson_lognormal_steps(key, r.mean_steps, r.steps_sigma))(keys))
    return float(np.mean(k - np.minimum(k, r.backprop_steps)))


@functools.cache
def without_free_iterations(task_cls: type) -> type:
    """The task class whose step leaves out Huginn's iterations without gradient (counted apart)."""
    return type(f"{task_cls.__name__}WithoutFreeIterations", (task_cls,), {"free_iterations": False})


def training_flops(config) -> dict:
    """FLOPs of one training step (see the module docstring): {"step": expected total, "counted":
    the compiled step without its free iterations, "iteration": one core iteration forward,
    "free_iterations": their expected number}."""
    task_cls = type(config).task_class
    counted = bench.counted_flops(config, without_free_iterations(task_cls))
    free = expected_free_iterations(config)
    out = {"counted": counted, "free_iterations": free, "iteration": 0.0, "step": counted}
    if free:
        n, length, width = config.data.batch_size, config.text.seq_len - 1, config.model.width
        state = jax.ShapeDtypeStruct((n, length, width), jnp.float32)
        # One iteration is one pass of the core's layers: a scanned stack is counted on its unrolled twin.
        unrolled = task_cls(task_cls.flop_twin(config))  # as bench.counted_flops counts
        one = jax.jit(lambda p, s, e: unrolled.network(p).iterate(s, e)).lower(unrolled.abstract_params, state, state)
        out["iteration"] = bench.step_flops(one.compile())
        out["step"] = counted + free * out["iteration"]
    return out


def equal_compute(db_config, huginn_config, flops: tuple[float, float] | None = None):
    """`huginn_config` with as many steps as `db_config`'s steps buy at the FLOPs per step of both
    (`flops` = (DiffusionBlocks', Huginn's), else `training_flops` of both), its warm-up shortened
    in proportion (the same learning-rate schedule shape)."""
    db_flops, huginn_flops = flops or (training_flops(db_config)["step"], training_flops(huginn_config)["step"])
    db_steps = db_config.optim.steps
    steps = max(1, round(db_steps * db_flops / huginn_flops))
    warmup = min(steps, max(1, round(huginn_config.optim.warmup_steps * steps / db_steps)))
    return huginn_config.override({"optim.steps": steps, "optim.warmup_steps": warmup})


def write_run_artifacts(task, workdir: str, params_list: list) -> None:
    """bpc.json (K = recurrent.steps and K = 1, run.seed's noise) and samples.txt."""
    import json
    import os

    params, seed, k = params_list[0], task.config.run.seed, task.config.recurrent.steps
    result = bpc_by_steps(task, params, sorted({1, k}), seeds=(seed,))
    with open(os.path.join(workdir, "bpc.json"), "w") as f:
        json.dump({"method": task.config.recurrent.method, "bpc_by_steps": result}, f, indent=1)
    samples = continuations(task, params, task.config.sampling.num_samples, k, seed=seed)
    write_continuations(os.path.join(workdir, "samples.txt"), samples["prompts"], samples["continuations"])


def evaluate_run(run, *, steps=STEPS, num_samples: int | None = None, reference: str | None = None) -> dict:
    """`bpc_by_steps` over the request's seeds, continuations at K = recurrent.steps (distinct-n,
    symbols/s, gen-PPL and, with the optional mauve-text package, MAUVE under a plain
    autoregressive `reference` run) and the training FLOPs per step. `run`: the shell's `Request`."""
    task, params_list, block_steps = run.load()
    seeds = run.seeds
    ref_config = None if reference is None else check_reference(run, task, reference)
    params, r = params_list[0], task.config.recurrent
    count = num_samples or task.config.sampling.num_samples
    prompts_NP, truth_NG = prompts(task, count)
    gen = continuations(task, params, count, r.steps, seed=seeds[0], prompts_NP=prompts_NP)
    truth = [task.decode(c) for c in truth_NG]
    result = {"method": r.method, "target": r.target if task.diffusion else None,
              "bpc_by_steps": bpc_by_steps(task, params, steps, seeds), "seeds": list(seeds),
              "num_sequences": int(len(held_out(task))), "training_flops": training_flops(task.config),
              "sample_steps": r.steps, "samples": [f"{p}|{c}" for p, c in zip(gen["prompts"], gen["continuations"])],
              "distinct_2": distinct_n(gen["continuations"], 2), "held_out_distinct_2": distinct_n(truth, 2),
              "tokens_per_s": gen["tokens_per_s"], "block_steps": block_steps, "untrained": run.untrained,
              "gen_ppl": None, "mauve": None}
    if reference is None:
        result["gen_ppl_skipped"] = "no --reference (a plain autoregressive run of this project) was given"
        return result
    ref_task, ref_params = load_reference(run, reference, ref_config)
    result.update({"reference": reference,
                   "gen_ppl": generation_perplexity(ref_task, ref_params, prompts_NP, gen["ids"]),
                   "held_out_gen_ppl": generation_perplexity(ref_task, ref_params, prompts_NP, truth_NG),
                   **mauve_score(ref_task, ref_params, np.concatenate([prompts_NP, gen["ids"]], 1),
                                 np.concatenate([prompts_NP, truth_NG], 1), task.config.generation.prompt_len)})
    return result


def report(result: dict) -> list[str]:
    """What `evaluate` prints for a recurrent_lm result."""
    fmt = describe
    lines = [f"K = {k:>3}: held-out {fmt(r['bpc'])} bits per character (mixture of {r['draws']} starting noises; "
             f"one draw {fmt(r['bpc_one_draw'])})" for k, r in result["bpc_by_steps"].items()]
    f = result["training_flops"]
    lines.append(f"training FLOPs per step ({result['method']}): {f['step']:.3e} (of which "
                 f"{f['free_iterations']:.1f} iterations without gradient, {f['iteration']:.3e} each)")
    mauve = result.get("mauve_skipped", "") if result["mauve"] is None else f"{result['mauve']:.3f}"
    ppl = "" if result["gen_ppl"] is None else (f"; gen-PPL under the reference {result['gen_ppl']:.3f} (held-out "
                                                f"continuations {result['held_out_gen_ppl']:.3f}); MAUVE {mauve}")
    lines.append(f"generation at K = {result['sample_steps']}: {result['tokens_per_s']:.0f} symbols/s, distinct-2 "
                 f"{result['distinct_2']:.3f} (held-out {result['held_out_distinct_2']:.3f}){ppl}")
    return lines + [f"  {sample}" for sample in result["samples"][:4]]
