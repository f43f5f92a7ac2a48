"""Scoring an autoregressive language model: held-out bits per character, generation quality and
speed (`dblocks evaluate` on an autoregressive_lm run).

Likelihood. The plain model's is exact: the mean next-token cross-entropy on held-out windows.
The DiffusionBlocks model predicts a token through a chain from random noise, so its predictive
distribution is p(x_i | x_<i) = E_eps[softmax(logits_K(eps))[x_i]], the read-out averaged over the
chain's starting noise (the Euler chain is deterministic given it). We estimate it with M draws
(`ar.mc_draws`, `--mc`): p_hat = mean_m p_m, scored as -log2 p_hat. That is the likelihood the
paper says it cannot give. log of a mean of M draws underestimates log p in expectation (Jensen),
so the bits reported are an upper bound that tightens as M grows; the report carries the
one-draw figure (the expected -log p_m, M = 1). The read-out at sigma_min is nearly one-hot, so
p_m is close to 1 when a chain lands on the true token and tiny otherwise: a token that no draw
hits costs tens of bits, and the delta method (var_m p_m / M p_hat^2) would call it certain (all
its draws agree). The standard error is therefore taken from the draws themselves: each token's
estimate from the first and from the second half of the draws, whose squared difference / 4
estimates the variance of the M-draw estimate; summed over tokens, square-rooted, divided by their
number. The spread over evaluation seeds is reported beside it. `ce_at_sigma_max` is the first
block's read-out at sigma_max, the best single predictor of generation quality reported by others.

Generation. Continuations of held-out prompts (`generation.prompt_len` symbols, `generation.gen_len`
new), drawn with `generation.temperature` and `generation.top_p`: word distinct-2/3, and with a
reference model (`--reference`:
a plain autoregressive run of this project on the same vocabulary), the perplexity of the
continuations under it (gen-PPL, per symbol) and, when the optional `mauve-text` package is
installed, MAUVE on the reference model's mean-pooled features (the paper used GPT-2's, which are
not available offline). Tokens per second: the compiled generation of all prompts, timed after a
warm-up call, on this machine.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from dblocks_jax.data import text
from dblocks_jax.engine.chain import stack_blocks
from dblocks_jax.engine.settings import leaves
from dblocks_jax.evaluation.stats import describe, summary
from dblocks_jax.evaluation.text_metrics import bits_per_character, distinct_n, held_out, write_continuations

SALT = 0xA5C


def likelihood(task, block_params: list, windows_NL: np.ndarray, seed: int, draws: int | None = None,
               batch_size: int = 128, steps: int | None = None, bridge: str | None = None) -> dict:
    """Nats per symbol over positions 1..L-1 of `windows_NL`: `nll` (-log of the Monte-Carlo
    predictive probability; exact for the plain model), `nll_se`, `nll_one_draw` and
    `ce_at_sigma_max` (diffusion only)."""
    draws = 1 if task.plain else (draws or task.config.ar.mc_draws)
    sampler, stacked = task.sampler, stack_blocks(block_params)
    key = jax.random.fold_in(jax.random.key(seed), SALT)
    log_p, one_draw, var, first = [], [], [], []
    for start in range(0, len(windows_NL), batch_size):
        part = jnp.asarray(windows_NL[start:start + batch_size])
        ids = jnp.arange(start, start + len(part), dtype=jnp.int32)
        logp_NTM, ce_NT = sampler.log_probs(stacked, part, ids, key, draws, steps, bridge)
        log_mean_NT = logsumexp(logp_NTM, -1) - math.log(draws)
        log_p.append(np.asarray(log_mean_NT).ravel())
        one_draw.append(np.asarray(logp_NTM.mean(-1)).ravel())
        # Each token's estimate from either half of the draws: (a - b)^2 / 2 estimates the variance of
        # a half-draws estimate, half of that the variance of the M-draws one.
        half = draws // 2
        a_NT = logsumexp(logp_NTM[..., :half], -1) - math.log(max(half, 1))
        b_NT = logsumexp(logp_NTM[..., half:2 * half], -1) - math.log(max(half, 1))
        var.append(np.asarray((a_NT - b_NT) ** 2 / 4).ravel() if half else np.full(log_mean_NT.size, np.nan))
        first.append(np.asarray(ce_NT).ravel())
    log_p, var = np.concatenate(log_p), np.concatenate(var)
    out = {"nll": float(-log_p.mean()), "nll_se": float(np.sqrt(var.sum()) / len(log_p)),
           "nll_one_draw": float(-np.concatenate(one_draw).mean()), "draws": draws, "tokens": int(len(log_p))}
    if not task.plain:
        out["ce_at_sigma_max"] = float(np.concatenate(first).mean())
    return out


def score(task, block_params: list, seeds=(0,), windows_NL: np.ndarray | None = None, draws: int | None = None,
          steps: int | None = None, bridge: str | None = None) -> dict:
    """Bits per character (mean +/- std over `seeds`' chain noise), its Monte-Carlo error, the
    one-draw figure, the cross-entropy at sigma_max and the unigram floor."""
    windows = held_out(task) if windows_NL is None else windows_NL
    runs = [likelihood(task, block_params, windows, seed, draws, steps=steps, bridge=bridge) for seed in seeds]
    scale = bits_per_character(task, windows) / math.log(2)
    result = {
        "bpc": summary([r["nll"] * scale for r in runs]),
        # Two draws at the least estimate the Monte-Carlo error (one half against the other).
        "bpc_mc_se": float(np.mean([r["nll_se"] for r in runs]) * scale) if runs[0]["draws"] > 1 else None,
        "bpc_one_draw": summary([r["nll_one_draw"] * scale for r in runs]),
        "unigram_bpc": text.unigram_bpc(task.corpus) * bits_per_character(task, windows),
        "objective": task.config.ar.objective, "mc_draws": runs[0]["draws"], "tokens": runs[0]["tokens"],
        "num_sequences": int(len(windows)), "seq_len": task.config.text.seq_len, "seeds": list(seeds),
    }
    if not task.plain:
        result.update({"ce_at_sigma_max": summary([r["ce_at_sigma_max"] * scale for r in runs]),
                       "bridge": bridge or task.config.ar.bridge, "steps": task.inference_steps(steps),
                       "band_edges": [list(task.partition.band(b)) for b in range(task.num_blocks)]})
    return result


def prompts(task, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompts (N, generation.prompt_len), the true continuations (N, generation.gen_len)) from
    held-out windows."""
    g = task.config.generation
    span = g.prompt_len + g.gen_len
    windows = text.sequences(task.corpus.test, span).astype(np.int32)
    if len(windows) < count:
        raise ValueError(f"the held-out text holds {len(windows)} windows of generation.prompt_len + "
                         f"generation.gen_len = {span} symbols; {count} prompts asked for")
    return windows[:count, :g.prompt_len], windows[:count, g.prompt_len:]


def continuations(task, block_params: list, count: int, seed: int = 0, prompts_NP: np.ndarray | None = None,
                  steps: int | None = None, bridge: str | None = None) -> dict:
    """`count` continuations of held-out prompts (or of `prompts_NP`): ids, text, tokens per second."""
    if prompts_NP is None:
        prompts_NP, _ = prompts(task, count)
    tokens, seconds = task.sampler.generate(block_params, prompts_NP, task.config.generation.gen_len, seed=seed,
                                            steps=steps, bridge=bridge)
    return {"prompt_ids": prompts_NP, "ids": tokens, "prompts": [task.decode(p) for p in prompts_NP],
            "continuations": [task.decode(c) for c in tokens], "tokens_per_s": tokens.size / seconds}


def generation_perplexity(reference, reference_params: list, prompts_NP: np.ndarray, continuations_NG: np.ndarray):
    """exp(mean cross-entropy per symbol) of the continuations given their prompts, under the
    plain reference model (`reference`: its task)."""
    windows = np.concatenate([prompts_NP, continuations_NG], axis=1)
    p, stacked = prompts_NP.shape[1], stack_blocks(reference_params)
    logp = [np.asarray(reference.sampler.log_probs(stacked, jnp.asarray(windows[s:s + 256]),
                                                   jnp.arange(len(windows[s:s + 256])), jax.random.key(0), 1)[0])
            for s in range(0, len(windows), 256)]
    return float(np.exp(-np.concatenate(logp)[:, p - 1:, 0].mean()))


def mauve_score(reference, reference_params: list, generated_NL: np.ndarray, human_NL: np.ndarray,
                prompt_len: int) -> dict:
    """MAUVE (Pillutla et al. 2021) between generated and held-out continuations (after the shared
    `prompt_len` symbols) on the reference model's mean-pooled clean-stream features, or why it was
    skipped."""
    try:
        import mauve  # the optional mauve-text package
    except ImportError:
        return {"mauve": None, "mauve_skipped": "the optional mauve-text package is not installed "
                                                "(pip install 'dblocks-jax[mauve]')"}
    stacked = stack_blocks(reference_params)

    def features(windows):
        h, _ = reference.sampler.contexts(stacked, jnp.asarray(windows), jnp.arange(windows.shape[1]))
        return np.asarray(h[0][:, prompt_len:].mean(1))  # the continuation's states, read in context

    out = mauve.compute_mauve(p_features=features(generated_NL), q_features=features(human_NL), verbose=False)
    return {"mauve": float(out.mauve), "mauve_features": "the reference model's mean-pooled final clean-stream "
                                                         "states (not GPT-2's: unavailable offline)"}


def check_reference(run, task, workdir: str):
    """The config of a `--reference` run, checked before any scoring: a plain autoregressive_lm run
    on `task`'s vocabulary that sees a prompt and its continuation."""
    try:
        config = run.reader.config(workdir)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"--reference {workdir}: {err}") from None
    g, need = task.config.generation, task.config.generation.prompt_len + task.config.generation.gen_len
    problems = [f"it is a {config.task} run" if config.task != "autoregressive_lm" else
                f"its ar.objective is {config.ar.objective}" if config.ar.objective != "plain" else "",
                f"its vocabulary is {config.text.vocabulary}, this run's {task.config.text.vocabulary}"
                if config.task == "autoregressive_lm" and config.text.vocabulary != task.config.text.vocabulary else "",
                f"its text.seq_len={config.text.seq_len} < generation.prompt_len + gen_len = {need}"
                if config.task == "autoregressive_lm" and config.text.seq_len < need else ""]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"--reference {workdir} must be a plain autoregressive_lm run on the same vocabulary that "
                         f"sees {g.prompt_len} + {g.gen_len} symbols: {'; '.join(problems)}")
    return config


def load_reference(run, workdir: str, config):
    """(task, blocks) of the checked reference run, with the request's overrides that its config
    has (the generation settings: its continuations share the prompts' length)."""
    known = leaves(config)
    reference, params, _ = run.reader.load(workdir, {k: v for k, v in run.overrides.items() if k in known})
    return reference, params


def evaluate_run(run, *, num_samples: int | None = None, steps: int | None = None, mc: int | None = None,
                 reference: str | None = None) -> dict:
    """`score` over the request's seeds, continuations of held-out prompts (first seed) with
    distinct-n and tokens per second, and with a `reference` run: gen-PPL, MAUVE (optional) and the
    reference's own generation speed and scores on the same prompts. `run`: the shell's `Request`."""
    task, params, block_steps = run.load()
    seeds = run.seeds
    ref_config = None if reference is None else check_reference(run, task, reference)
    result = score(task, params, seeds, draws=mc, steps=steps)
    count = num_samples or task.config.sampling.num_samples
    prompts_NP, truth_NG = prompts(task, count)
    gen = continuations(task, params, count, seed=seeds[0], prompts_NP=prompts_NP, steps=steps)
    truth = [task.decode(c) for c in truth_NG]
    g = task.config.generation
    result.update({
        "samples": [f"{p}|{c}" for p, c in zip(gen["prompts"], gen["continuations"])],
        "distinct_2": distinct_n(gen["continuations"], 2), "distinct_3": distinct_n(gen["continuations"], 3),
        "held_out_distinct_2": distinct_n(truth, 2), "held_out_distinct_3": distinct_n(truth, 3),
        "tokens_per_s": gen["tokens_per_s"], "num_prompts": count, "prompt_len": g.prompt_len,
        "gen_len": g.gen_len, "temperature": g.temperature, "top_p": g.top_p, "block_steps": block_steps,
        "untrained": run.untrained, "gen_ppl": None, "mauve": None})
    if reference is None:
        result["gen_ppl_skipped"] = "no --reference (a plain autoregressive run of this project) was given"
        return result
    ref_task, ref_params = load_reference(run, reference, ref_config)
    ref_gen = continuations(ref_task, ref_params, count, seed=seeds[0], prompts_NP=prompts_NP)
    human_NL, generated_NL = np.concatenate([prompts_NP, truth_NG], 1), np.concatenate([prompts_NP, gen["ids"]], 1)
    result.update({
        "reference": reference, "gen_ppl": generation_perplexity(ref_task, ref_params, prompts_NP, gen["ids"]),
        "held_out_gen_ppl": generation_perplexity(ref_task, ref_params, prompts_NP, truth_NG),
        "reference_gen_ppl": generation_perplexity(ref_task, ref_params, prompts_NP, ref_gen["ids"]),
        "reference_tokens_per_s": ref_gen["tokens_per_s"],
        "reference_distinct_2": distinct_n(ref_gen["continuations"], 2),
        "reference_distinct_3": distinct_n(ref_gen["continuations"], 3),
        **mauve_score(ref_task, ref_params, generated_NL, human_NL, g.prompt_len)})
    return result


def mc_error(result: dict) -> str:
    """The Monte-Carlo error of a result's likelihood, in words (none with one draw)."""
    se = result["bpc_mc_se"]
    return "one draw: no Monte-Carlo error estimate" if se is None else f"Monte-Carlo error {se:.4f}"


def report(result: dict) -> list[str]:
    """What `evaluate` prints for an autoregressive_lm result."""
    fmt = describe
    how = "exact" if result["objective"] == "plain" else (
        f"{result['mc_draws']} chain draws per symbol, {mc_error(result)}; one draw "
        f"{result['bpc_one_draw']['mean']:.4f}; CE at sigma_max {fmt(result['ce_at_sigma_max'])}")
    lines = [f"held-out {fmt(result['bpc'])} bits per character over {len(result['seeds'])} seed(s) ({how}); "
             f"unigram floor {result['unigram_bpc']:.4f}",
             f"generation: {result['tokens_per_s']:.0f} symbols/s; distinct-2 {result['distinct_2']:.3f}, distinct-3 "
             f"{result['distinct_3']:.3f} (held-out text {result['held_out_distinct_2']:.3f}, "
             f"{result['held_out_distinct_3']:.3f})"]
    if result["gen_ppl"] is not None:
        mauve = "n/a (" + result["mauve_skipped"] + ")" if result["mauve"] is None else f"{result['mauve']:.3f}"
        lines.append(f"gen-PPL under the reference {result['gen_ppl']:.3f} (held-out continuations "
                     f"{result['held_out_gen_ppl']:.3f}, the reference's own {result['reference_gen_ppl']:.3f}); "
                     f"reference generation {result['reference_tokens_per_s']:.0f} symbols/s; MAUVE {mauve}")
    return lines + [f"  {sample}" for sample in result["samples"][:4]]


def write_samples(request, generate=None, explain=None) -> list[str]:
    """`sample` for the tasks that continue a prompt: `sampling.num_samples` continuations of
    `--prompt` (or of as many held-out prompts), one per line of the .txt output. A prompt replaces
    `generation.prompt_len` with its own length. `generate(task, params, count, seed, prompts_NP)`
    draws them (default: this task's `continuations`), `explain(task)` says how."""
    from dblocks_jax.tasks.autoregressive_lm_sampling import prompt_ids

    prompt, ids, note, overrides = request.option("prompt"), None, "", {}
    if prompt is not None:  # prompt + new symbols <= text.seq_len, whatever generation.prompt_len says
        config = request.reader.config(request.workdirs)
        ids, note = prompt_ids(config, prompt)
        new, length = request.overrides.get("generation.gen_len", config.generation.gen_len), config.text.seq_len
        if len(ids) + new > length:
            raise ValueError(f"--prompt of {len(ids)} symbols plus {new} new ones (--length, default "
                             f"generation.gen_len) exceeds the trained context text.seq_len={length}; allowed: "
                             f"prompt + length <= {length}")
        overrides["generation.prompt_len"] = len(ids)
    task, params, _ = request.load(overrides)
    count, seed = task.config.sampling.num_samples, request.seed or 0
    prompts_NP = prompts(task, count)[0] if ids is None else np.tile(ids, (count, 1))
    if generate is None:
        out = continuations(task, params, count, seed=seed, prompts_NP=prompts_NP)
        how = "plain next-token model" if task.plain else (f"{task.inference_steps()} network calls per symbol, "
                                                           f"{task.config.ar.bridge} bridge")
    else:
        out, how = generate(task, params, count, seed, prompts_NP), explain(task)
    lines = write_continuations(request.output, out["prompts"], out["continuations"])
    g = task.config.generation
    return ([note] if note else []) + [f"  {line}" for line in lines[:8]] + [
        f"wrote {count} continuations of {g.gen_len} symbols ({how}; temperature {g.temperature}, top-p {g.top_p}; "
        f"{out['tokens_per_s']:.0f} symbols/s) to {os.path.abspath(request.output)}"]
