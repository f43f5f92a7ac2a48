"""Scoring a masked-diffusion language model: bits per character from the negative ELBO, each
block's share of it, the unigram floor, and samples.

The model's negative ELBO per symbol (MD4 eq. 5, `tasks.masked_lm`) is

    sum over blocks b of  integral over b's own band [lo_b, hi_b] of f(t) dt  +  prior  +  reconstruction,

with f(t) = w(t) E[sum_{masked i} CE_i] / L evaluated by the block that owns t. Each band's
integral is (hi_b - lo_b) times the mean of f over t drawn uniformly in the band, stratified
across the held-out windows (window n gets a t in the n-th of N equal slices, in a shuffled order),
with fresh masks. The 1/t weight makes the estimate noisy: at small t few symbols are masked and
each weighs much (the variance of one draw grows like 1 / (L t)), so every window is scored at
`text.eval_draws` values of t per band, and the spread over seeds is reported.

The endpoint terms are tiny for eps = 1e-4 but counted: the prior term is
KL(q(z_1 | x) || p(z_1)) = alpha_1 ln V per symbol for a prior that masks with probability
1 - alpha_1 and otherwise draws a uniform symbol; the reconstruction term -log p(x | z_0) is
(1 - alpha_0) times the cross-entropy of a symbol masked at t = 0 (one random position per window,
estimated with the lowest block; O(eps^2) terms dropped).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from dblocks_jax.data import text
from dblocks_jax.evaluation.stats import summary
from dblocks_jax.evaluation.text_metrics import bits_per_character, held_out, training_words, word_validity

SALT = 0xB9C  # folded into an evaluation seed: the draws of t and of the masks


def negative_elbo(task, block_params: list, windows_NL: np.ndarray, seed: int, draws: int | None = None,
                  batch_size: int = 256, edges: np.ndarray | None = None) -> dict:
    """The negative ELBO of `windows_NL` in nats per symbol: `per_block` (each block's integral over
    its own band, network order), `prior`, `reconstruction` and their `total`. Every window is
    scored at `draws` times t per band (`text.eval_draws` when None). `edges` (ascending, from 0 to
    1) splits the integral into other bands, each scored by the block owning it (e.g. an end-to-end
    model's integral over the bands of a B = 3 partition): `per_band` then holds those pieces."""
    rng = np.random.default_rng([seed, SALT])
    windows_NL = np.repeat(windows_NL, draws or task.config.text.eval_draws, axis=0)
    n, length = windows_NL.shape
    bands = [task.partition.band(b) for b in range(task.num_blocks)] if edges is None else \
        [(float(lo), float(hi)) for lo, hi in zip(edges[-2::-1], edges[:0:-1])]  # the most masked first
    per_band = np.zeros(len(bands))
    for j, (lo, hi) in enumerate(bands):
        t_N = (lo + (hi - lo) * (rng.permutation(n) + rng.random(n)) / n).astype(np.float32)
        t_N = np.clip(t_N, np.nextafter(np.float32(lo), np.float32(1)), np.float32(hi))  # inside (lo, hi]
        u_NL = rng.random((n, length), dtype=np.float32)
        owner = task.partition.block_of(t_N)
        if len(set(owner.tolist())) != 1 or (edges is None and owner[0] != j):  # one block per band: its owner
            raise AssertionError(f"levels drawn in the band {lo, hi} are owned by blocks {sorted(set(owner.tolist()))}")
        b = int(owner[0])
        per_band[j] = (hi - lo) * _batched(task, block_params[b], b, windows_NL, t_N, u_NL, batch_size).mean()
    alpha_0, alpha_1 = float(task.law.alpha(0.0)), float(task.law.alpha(1.0))
    prior = alpha_1 * math.log(task.vocab_size)
    reconstruction = (1.0 - alpha_0) * _masked_at_zero(task, block_params[-1], windows_NL, rng, batch_size)
    return {"per_block" if edges is None else "per_band": per_band.tolist(), "prior": prior,
            "reconstruction": reconstruction, "total": float(per_band.sum() + prior + reconstruction)}


def _batched(task, params, block: int, windows, t, u, batch_size: int) -> np.ndarray:
    depth = task.block_depth(block)
    return np.concatenate([np.asarray(task.integrand(params, jnp.asarray(windows[s:s + batch_size]),
                                                     jnp.asarray(t[s:s + batch_size]),
                                                     jnp.asarray(u[s:s + batch_size]), depth))
                           for s in range(0, len(windows), batch_size)])


def _masked_at_zero(task, params, windows_NL, rng, batch_size: int) -> float:
    """Mean cross-entropy (nats) of one symbol masked at t = 0, the rest visible."""
    n, length = windows_NL.shape
    u_NL = np.ones((n, length), np.float32)
    u_NL[np.arange(n), rng.integers(0, length, n)] = 0.0  # u = 0 < 1 - alpha_0: masked
    # The integrand at t = 0 is w(0) CE / L with w(0) = (1 - 2 eps) / (1 - alpha_0).
    f_N = _batched(task, params, task.num_blocks - 1, windows_NL, np.zeros(n, np.float32), u_NL, batch_size)
    return float(f_N.mean() * length / float(task.law.elbo_weight(0.0)))


def score(task, block_params: list, seeds=(0,), windows_NL: np.ndarray | None = None,
          draws: int | None = None) -> dict:
    """BPC (mean +/- std over `seeds`' draws of t and masks), each block's share, the endpoint
    terms and the unigram floor of the held-out text."""
    windows = held_out(task) if windows_NL is None else windows_NL
    runs = [negative_elbo(task, block_params, windows, seed, draws) for seed in seeds]
    per_character = bits_per_character(task, windows)
    scale = per_character / math.log(2)  # nats per symbol -> bits per character
    unit = "bits per character" if per_character == 1.0 else "bits per character (from bits per byte)"
    return {
        "bpc": summary([r["total"] * scale for r in runs]),
        "bpc_per_block": [summary([r["per_block"][b] * scale for r in runs]) for b in range(task.num_blocks)],
        "bpc_endpoints": summary([(r["prior"] + r["reconstruction"]) * scale for r in runs]),
        "bits_per_symbol": summary([r["total"] / math.log(2) for r in runs]),
        "unigram_bpc": text.unigram_bpc(task.corpus) * per_character,
        "unit": unit, "vocabulary": task.config.text.vocabulary, "num_sequences": int(len(windows)),
        "draws_per_sequence": draws or task.config.text.eval_draws,
        "seq_len": task.config.text.seq_len, "seeds": list(seeds),
        "band_edges": [list(task.partition.band(b)) for b in range(task.num_blocks)],
    }


def evaluate_run(run, *, num_samples: int | None = None, steps: int | None = None) -> dict:
    """`score` over the run's seeds, plus samples (drawn with the first seed) and their word
    validity next to the held-out text's own. `run`: the shell's `Request` (its run, seeds,
    overrides, `untrained`)."""
    task, params, block_steps = run.load()
    seeds = run.seeds
    result = score(task, params, seeds)
    count = num_samples or task.config.sampling.num_samples
    samples = [task.decode(s) for s in task.sample(params, count, seed=seeds[0], steps=steps)]
    reference = [task.decode(w) for w in held_out(task, count)]
    known = training_words(task.corpus)  # decoded once (text8: 90M symbols)
    result.update({"samples": samples, "word_validity": word_validity(samples, known),
                   "held_out_word_validity": word_validity(reference, known),
                   "sample_steps": steps or task.config.sampling.steps, "sample_grid": task.config.sampling.grid,
                   "block_steps": block_steps, "untrained": run.untrained})
    return result
