"""The autoregressive model's chain, its teacher-forced predictive distribution and KV-cached
generation (`tasks.autoregressive_lm` has the method).

Blocks are stacked on a leading axis (`engine.chain.stack_blocks`) and so are their clean-stream
caches: `contexts` runs the clean stream of every block at once (a vmap over the block axis), and
a chain step reads only the owning block's slice, through the engine's `make_chain` (the cache,
its mask and the positions are the chain's opaque conditioning).

Randomness is per example: when generating, the starting noise of new token i of example n comes
from fold_in(fold_in(key, n), i); when scoring, draw m of window n takes its noise for every
position from fold_in(fold_in(fold_in(key, m), n), 0). Either way an output does not depend on the
batch it was computed in.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.engine.chain import block_slice, make_chain, stack_blocks
from dblocks_jax.models.causal_lm import causal_mask

SCORE_SALT, GENERATE_SALT = 0x5C0, 0x6E7


def pick(logits_NV: jax.Array, keys_N: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """Tokens (N,) from logits: argmax at temperature 0; else a draw from softmax(logits / T)
    restricted to the smallest set of tokens whose probability reaches `top_p` (nucleus sampling,
    Holtzman et al. 2020)."""
    if temperature == 0:
        return jnp.argmax(logits_NV, -1).astype(jnp.int32)
    logits_NV = logits_NV / temperature
    if top_p < 1.0:
        sorted_NV = jnp.sort(logits_NV, -1)[:, ::-1]
        probs_NV = jax.nn.softmax(sorted_NV, -1)
        before_NV = jnp.cumsum(probs_NV, -1) - probs_NV  # mass of the more likely tokens
        cutoff_N = jnp.min(jnp.where(before_NV < top_p, sorted_NV, jnp.inf), -1)
        logits_NV = jnp.where(logits_NV >= cutoff_N[:, None], logits_NV, -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys_N, logits_NV).astype(jnp.int32)


def example_keys(key: jax.Array, ids_N: jax.Array, position) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), position))(ids_N)


class Sampler:
    """Jitted functions of one task, compiled once per shape and chain."""

    def __init__(self, task):
        self.task = task
        self._chains: dict[tuple, object] = {}
        self._jit: dict[tuple, object] = {}

    # -- pieces -------------------------------------------------------------------------------------

    def contexts(self, stacked, tokens_NT: jax.Array, positions_T: jax.Array, cache=None, mask_TS=None):
        """Every block's clean stream over `tokens_NT`: (h (blocks, N, T, D), kv (blocks, ...)); h is
        None for the diffusion objective."""
        task = self.task

        def one(params, b, block_cache):  # h only for the plain model (the diffusion blocks read kv alone)
            return task.network(params).clean(tokens_NT, positions_T, task.block_depth(b), context=block_cache,
                                              mask_TS=mask_TS, output=task.plain)

        return jax.vmap(one)(stacked, jnp.arange(task.num_blocks), cache)

    def chain(self, steps: int | None = None, bridge: str | None = None):
        """`run(stacked, z0_NTD, cond, key) -> read-out logits (N, T, V)`; cond = {"kv": every
        block's clean keys and values, "mask": (T, S), "positions": (T,)}."""
        task = self.task
        grid = task.grid(steps)
        key = (tuple(grid.tolist()), bridge or task.config.ar.bridge)
        if key in self._chains:
            return self._chains[key]

        def logits_at(params_at, z_NTD, cond, t, b):
            sigma_N = jnp.full(z_NTD.shape[:1], t, jnp.float32)
            return task.network(params_at(b)).denoised_logits(
                z_NTD, sigma_N, task.edm.scalings, cond["positions"], block_slice(cond["kv"], b), cond["mask"],
                task.block_depth(b))

        def step(params_at, z_NTD, cond, t, t_next, b, b_next, _):
            # D in the table of the block that reads the state next (blocks learn their tables apart).
            d_NTD = task.bridge(logits_at(params_at, z_NTD, cond, t, b), task.network(params_at(b_next)).table(),
                                key[1])
            return task.euler_step(z_NTD, d_NTD, t, t_next)

        run = self._chains[key] = make_chain(step, logits_at, task.partition, grid)  # read-out: the logits
        return run

    def start_noise(self, keys_N: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """The chain's starting states sigma_max eps (N, *shape), one key per example."""
        return self.task.edm.sigma_max * jax.vmap(lambda k: jax.random.normal(k, shape))(keys_N)

    # -- teacher-forced scoring -----------------------------------------------------------------------

    def log_probs(self, stacked, windows_NL: jax.Array, ids_N: jax.Array, key: jax.Array, draws: int,
                  steps: int | None = None, bridge: str | None = None):
        """For positions 1..L-1 of each window: (log p(x_i | x_<i) per draw of the chain's starting
        noise (N, T, draws), the first block's cross-entropy at sigma_max (N, T)); the plain model:
        its exact log-probabilities (N, T, 1) and zeros."""
        cache_key = ("score", windows_NL.shape, draws, steps, bridge)
        if cache_key not in self._jit:
            if not self.task.plain:
                self.chain(steps, bridge)  # built outside the trace: its grid arrays are constants
            self._jit[cache_key] = jax.jit(lambda s, w, i, k: self._log_probs(s, w, i, k, draws, steps, bridge))
        return self._jit[cache_key](stacked, windows_NL, ids_N, key)

    def _log_probs(self, stacked, windows_NL, ids_N, key, draws, steps, bridge):
        task = self.task
        inputs_NT, targets_NT = windows_NL[:, :-1], windows_NL[:, 1:]
        t = inputs_NT.shape[1]
        h, kv = self.contexts(stacked, inputs_NT, jnp.arange(t))
        true = lambda logits: jnp.take_along_axis(jax.nn.log_softmax(logits), targets_NT[..., None], -1)[..., 0]
        if task.plain:
            return true(task.network(block_slice(stacked, 0)).plain_logits(h[0]))[..., None], jnp.zeros((0,))
        cond = {"kv": kv, "mask": causal_mask(t, 0, t), "positions": jnp.arange(1, t + 1)}
        run, width, sigma_max = self.chain(steps, bridge), task.config.model.width, task.edm.sigma_max

        def start(m):  # the draw's starting noise: one key per (window, draw)
            return self.start_noise(example_keys(jax.random.fold_in(key, m), ids_N, 0), (t, width))

        logp_MNT = jax.lax.map(lambda m: true(run(stacked, start(m), cond, key)), jnp.arange(draws))
        first = task.network(block_slice(stacked, 0)).denoised_logits(
            start(0), jnp.full((len(ids_N),), sigma_max, jnp.float32), task.edm.scalings, cond["positions"],
            block_slice(kv, 0), cond["mask"], task.block_depth(0))
        return jnp.moveaxis(logp_MNT, 0, -1), -true(first)

    # -- generation -----------------------------------------------------------------------------------

    def generation(self, block_params: list, prompts_NP: np.ndarray, new_tokens: int, *, seed: int = 0,
                   first_id: int = 0, steps: int | None = None, bridge: str | None = None) -> tuple:
        """(fn, args), unrun: `fn(*args)` generates `new_tokens` symbols after each prompt and returns
        (tokens (N, new_tokens), logits (N, new_tokens, V)); jitted once per shape and setting. The
        prompts' ids are first_id..first_id+N-1 (per-example randomness)."""
        task = self.task
        n, p = prompts_NP.shape
        if p < 1:
            raise ValueError("empty prompt: generation needs at least one symbol of context")
        if p + new_tokens > task.config.text.seq_len:
            raise ValueError(f"a prompt of {p} symbols plus {new_tokens} new ones exceeds the trained context "
                             f"text.seq_len={task.config.text.seq_len}; allowed: prompt + new <= "
                             f"{task.config.text.seq_len} (positions beyond it were never trained)")
        if new_tokens < 1:
            raise ValueError(f"new tokens={new_tokens}; allowed: an integer >= 1")
        if prompts_NP.min() < 0 or prompts_NP.max() >= task.vocab_size:
            raise ValueError(f"prompt ids must lie in 0..{task.vocab_size - 1} (the {task.config.text.vocabulary} "
                             f"vocabulary)")
        args = (stack_blocks(block_params), jnp.asarray(prompts_NP, jnp.int32),
                jnp.arange(first_id, first_id + n, dtype=jnp.int32),
                jax.random.fold_in(jax.random.key(seed), GENERATE_SALT))
        cache_key = ("generate", n, p, new_tokens, steps, bridge)
        if cache_key not in self._jit:
            if not task.plain:
                self.chain(steps, bridge)  # built outside the trace: its grid arrays are constants
            self._jit[cache_key] = jax.jit(lambda s, x, i, k: self._generate(s, x, i, k, new_tokens, steps, bridge))
        return self._jit[cache_key], args

    def generate(self, block_params: list, prompts_NP: np.ndarray, new_tokens: int, *, seed: int = 0,
                 first_id: int = 0, steps: int | None = None, bridge: str | None = None,
                 return_logits: bool = False):
        """(continuations (N, new_tokens) int32, seconds the compiled generation took), and with
        `return_logits` the logits each token was drawn from (N, new_tokens, V); see `generation`."""
        fresh = len(self._jit)
        fn, args = self.generation(block_params, prompts_NP, new_tokens, seed=seed, first_id=first_id, steps=steps,
                                   bridge=bridge)
        if len(self._jit) > fresh:
            # Compiled and run once, on first use only, outside the timing: a first execution carries
            # one-time costs (about 15 ms on the CPU) that would dominate a short generation's time.
            jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        tokens, logits = fn(*args)
        tokens = np.asarray(tokens)
        seconds = time.perf_counter() - start
        return (tokens, seconds, np.asarray(logits)) if return_logits else (tokens, seconds)

    def _generate(self, stacked, prompts_NP, ids_N, key, new_tokens, steps, bridge):
        task = self.task
        g = task.config.generation
        n, p = prompts_NP.shape
        size = p + new_tokens
        h, kv = self.contexts(stacked, prompts_NP, jnp.arange(p))
        pad = lambda x: jnp.pad(x, [(0, 0)] * 3 + [(0, size - p)] + [(0, 0)] * (x.ndim - 4))
        cache = jax.tree.map(pad, kv)  # (blocks, layers, N, size, heads, head size)
        run = None if task.plain else self.chain(steps, bridge)
        head = task.network(block_slice(stacked, 0))

        def body(carry, i):
            cache, h_last_ND = carry
            position = p + i
            keys_N = example_keys(key, ids_N, position)
            if task.plain:
                logits_NV = head.plain_logits(h_last_ND[:, None])[:, 0]
            else:
                z0 = self.start_noise(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys_N),
                                      (1, task.config.model.width))
                cond = {"kv": cache, "mask": (jnp.arange(size) < position)[None], "positions": position[None]}
                logits_NV = run(stacked, z0, cond, key)[:, 0]
            token_N = pick(logits_NV, keys_N, g.temperature, g.top_p)
            mask = jnp.concatenate([jnp.arange(size) < position, jnp.ones((1,), bool)])[None]
            h_new, kv_new = self.contexts(stacked, token_N[:, None], position[None], cache, mask)
            cache = jax.tree.map(lambda c, x: jax.lax.dynamic_update_slice_in_dim(c, x.astype(c.dtype), position, 3),
                                 cache, kv_new)
            return (cache, None if h_new is None else h_new[0, :, 0]), (token_N, logits_NV)

        h_last = None if h is None else h[0, :, -1]
        _, (tokens_GN, logits_GNV) = jax.lax.scan(body, (cache, h_last), jnp.arange(new_tokens))
        return tokens_GN.T, jnp.swapaxes(logits_GNV, 0, 1)


def prompt_ids(config, prompt: str) -> tuple[np.ndarray, str]:
    """A prompt as ids in the vocabulary of a run's `config`, and a note of what was mapped (text8:
    lowercased, every other character a space; bytes: UTF-8, nothing lost). Refuses an empty prompt."""
    from dblocks_jax.data import text

    vocabulary = config.text.vocabulary
    if not prompt:
        raise ValueError("--prompt is empty: generation needs at least one symbol of context")
    ids = text.encode(prompt, vocabulary).astype(np.int32)
    if not len(ids):
        raise ValueError(f"--prompt {prompt!r} holds no symbol of the {vocabulary} vocabulary")
    kept = text.decode(ids, vocabulary)
    note = "" if kept == prompt else f"prompt mapped to the {vocabulary} vocabulary: {prompt!r} -> {kept!r}"
    return ids, note
