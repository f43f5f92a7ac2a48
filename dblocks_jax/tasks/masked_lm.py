"""Masked-diffusion language model with DiffusionBlocks (MD4; paper sec. 4.3, Table 3).

MD4 (Shi et al., NeurIPS 2024) corrupts a sequence x by masking each symbol independently with
probability 1 - alpha_t, with alpha_t = (1 - 2 eps)(1 - t) + eps (`engine.masking`). Its
continuous-time negative ELBO (MD4 eq. 5) is

    -log p(x) <= integral_0^1 w(t) E_q[ sum_{i masked in z_t} -log p(x_i | z_t) ] dt + endpoint terms,

with w(t) = -alpha'_t / (1 - alpha_t) (about 1/t). DiffusionBlocks cuts [0, 1] into B bands of
equal probability (t_b = b/B for the linear schedule); block 0 owns the most masked band, as the
first block owns the noisiest sigma band. Each block is a whole `Transformer` trained alone on
the ELBO integrand restricted to its (widened) band, t drawn uniformly and stratified across the
batch, so the model's negative ELBO is the *sum* of the blocks' integrals over their own bands:
`masked_lm_eval` estimates each with stratified t and reports bits per character.

Losses are per symbol (the integrand divided by the sequence length), so the learning rate does
not depend on it. Sampling is MD4's ancestral unmasking on a grid t_0 = 1 > ... > t_K = 0 run
through the engine's chain (one key per step): a still-masked symbol is revealed with probability
(alpha_s - alpha_t) / (1 - alpha_t), its value drawn from the softmax of the block owning t.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dblocks_jax.engine.chain import level_grid, make_chain, stack_blocks
from dblocks_jax.engine.masking import LinearMasking
from dblocks_jax.evaluation.stats import describe
from dblocks_jax.models.transformer import Transformer
from dblocks_jax.tasks import flags
from dblocks_jax.tasks.base import Inference
from dblocks_jax.tasks.plugin import Flag, Preset, Request, at_least, one_int
from dblocks_jax.tasks.text_task import PYDOC_CPU, TextTask

# Shared by the presets: a 12-layer model (4 layers per block at B = 3, as the paper's) with rotary
# positions; 12 divides by B = 1, 2, 3 and 4, so the experiments compare those with equal blocks.
# The paper's text8 setting: 12 layers, width 768, 12 heads, sequence 256, batch 256, AdamW 3e-4,
# wd 0.03, 2000 warm-up steps, B = 3, gamma 0.05.
_MD4 = {"model.num_layers": 12, "model.num_blocks": 3, "partition.overlap": 0.05, "optim.weight_decay": 0.03,
        "optim.ema_decay": 0.0, "sampling.grid": "cosine", "model.positions": "rope"}
PRESETS = (
    Preset("pydoc_md4", "masked-diffusion LM, 12 layers, B = 3, on Python's bundled pydoc text (27 symbols): a "
                        "2-core CPU, minutes", {
        **_MD4, **PYDOC_CPU, "optim.steps": 1500, "text.eval_sequences": 0, "text.eval_draws": 8,
        "sampling.steps": 64}),
    Preset("text8_md4", "the paper's Table 3 setting: MD4, 12 layers, width 768, 12 heads, seq 256, B = 3 on "
                        "text8 (give its path: --set data.dataset=text8:PATH), for GPU/TPU", {
        **_MD4, "data.dataset": "text8:text8.zip", "data.batch_size": 256, "text.seq_len": 256,
        "model.width": 768, "model.num_heads": 12, "optim.learning_rate": 3e-4, "optim.warmup_steps": 2000,
        "optim.grad_clip": 1.0, "optim.steps": 1_000_000, "sampling.steps": 256, "sampling.num_samples": 16,
        "text.eval_sequences": 0, "run.log_every": 100, "run.checkpoint_every": 10_000}),
)
FLAGS = (
    flags.NUM_SAMPLES, flags.GRID, flags.BATCH_SIZE,
    Flag("--steps", ("sample",), "sampling.steps: unmasking steps", int, field="sampling.steps"),
    Flag("--steps", ("evaluate",), "unmasking steps of the samples (one value; default sampling.steps)"),
)


class MaskedLM(TextTask):
    name = "masked_lm"
    description = "masked-diffusion language model (MD4; paper Table 3): bits per character, samples"
    presets = PRESETS
    flags = FLAGS
    sample_formats = (".txt",)
    # Masking, not Gaussian noise: EDM's constants do not apply.
    unused_fields = TextTask.unused_fields + ("noise.sigma_min", "noise.sigma_max", "noise.sigma_data",
                                              "noise.p_mean", "noise.p_std")

    def __init__(self, config):
        super().__init__(config)
        self._chains: dict[tuple, object] = {}
        self.integrand = jax.jit(self._integrand)

    # -- the block and its loss -----------------------------------------------------------------------

    def make_law(self) -> LinearMasking:
        return LinearMasking(eps=self.config.text.mask_eps)

    def make_block(self, rngs: nnx.Rngs) -> Transformer:
        m = self.config.model
        return Transformer(vocab_size=self.vocab_size, seq_len=self.config.text.seq_len, width=m.width,
                           depth=m.layers_per_block, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                           positions=m.positions, dropout=m.dropout, **m.stack_options, rngs=rngs)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def draw(self, key, block, batch_spec) -> dict:
        """t from the block's widened band (stratified across the batch), the uniforms that decide
        which symbols are masked, and with dropout one key per example."""
        k_t, k_u, k_drop = jax.random.split(key, 3)
        n, length = batch_spec["tokens"].shape
        return {"t": self.partition.sample_level(k_t, block, (n,)),
                "u": jax.random.uniform(k_u, (n, length), jnp.float32), **self.dropout_draw(k_drop, n)}

    def loss(self, params, batch, draw, block) -> jax.Array:
        return self._integrand(params, batch["tokens"], draw["t"], draw["u"], self.block_depth(block),
                               self.dropout_keys(draw))

    def corrupt(self, tokens_BL: jax.Array, t_B: jax.Array, u_BL: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(z_t, masked): symbol i is masked iff u_i < 1 - alpha_t (probability 1 - alpha_t)."""
        masked_BL = u_BL < (1.0 - self.law.alpha(t_B))[:, None]
        return jnp.where(masked_BL, self.mask_id, tokens_BL), masked_BL

    def _integrand(self, params, tokens_BL, t_B, u_BL, depth=None, keys=None) -> jax.Array:
        """The ELBO integrand at t per example, in nats per symbol:
        w(t) sum_{masked i} CE(logits_i, x_i) / L (MD4 eq. 5, restricted to one t)."""
        z_BL, masked_BL = self.corrupt(tokens_BL, t_B, u_BL)
        logits_BLV = self.network(params)(z_BL, t_B, depth, keys)
        ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL)
        return self.law.elbo_weight(t_B) * jnp.sum(jnp.where(masked_BL, ce_BL, 0.0), axis=-1) / tokens_BL.shape[1]

    # -- sampling ---------------------------------------------------------------------------------------

    def grid(self, steps: int | None = None, grid: str | None = None) -> np.ndarray:
        s = self.config.sampling
        return level_grid(grid or s.grid, steps or s.steps, self.law)

    def chain(self, steps: int | None = None, grid: str | None = None, keep_path: bool = False):
        """The jitted ancestral sampler `run(stacked, z0, example_ids, key)` (-> tokens, or
        (tokens, path) with `keep_path`). Each example's randomness is its step key folded with its
        id, so a sample does not depend on the batch it is drawn in."""
        levels = self.grid(steps, grid)
        cache_key = (tuple(levels.tolist()), keep_path)
        if cache_key in self._chains:
            return self._chains[cache_key]

        def logits_at(params_at, z_BL, t, b):
            return self.network(params_at(b))(z_BL, jnp.full(z_BL.shape[:1], t, jnp.float32), self.block_depth(b))

        def step(params_at, z_BL, ids_B, t, s, b, b_next, key):
            alpha_t, alpha_s = self.law.alpha(t), self.law.alpha(s)
            reveal_p = (alpha_s - alpha_t) / (1.0 - alpha_t)
            keys_B = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids_B)
            k_reveal, k_token = jax.vmap(jax.random.split, out_axes=1)(keys_B)
            logits_BLV = logits_at(params_at, z_BL, t, b)
            reveal_BL = jax.vmap(lambda k: jax.random.uniform(k, z_BL.shape[1:]))(k_reveal) < reveal_p
            token_BL = jax.vmap(jax.random.categorical)(k_token, logits_BLV)
            return jnp.where((z_BL == self.mask_id) & reveal_BL, token_BL, z_BL)

        def read_out(params_at, z_BL, ids_B, t, b):
            # At t_K = 0 about eps of the symbols are still masked: they take the last block's argmax.
            return jnp.where(z_BL == self.mask_id, jnp.argmax(logits_at(params_at, z_BL, t, b), -1), z_BL)

        run = self._chains[cache_key] = make_chain(step, read_out, self.partition, levels, keep_path=keep_path)
        return run

    def sample(self, block_params: list, num_samples: int, *, seed: int = 0, steps: int | None = None,
               grid: str | None = None, batch_size: int = 64, keep_path: bool = False):
        """`num_samples` token sequences (N, L) int32 drawn by ancestral unmasking; with
        `keep_path`, also the states after every chain step (N, K, L), the mask id marking masks."""
        if len(block_params) != self.num_blocks:
            raise ValueError(f"got parameters for {len(block_params)} blocks; the partition has {self.num_blocks}")
        run, stacked = self.chain(steps, grid, keep_path), stack_blocks(block_params)
        key, length = jax.random.fold_in(jax.random.key(seed), 2), self.config.text.seq_len
        tokens, paths = [], []
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            z0 = jnp.full((count, length), self.mask_id, jnp.int32)
            out = run(stacked, z0, jnp.arange(start, start + count, dtype=jnp.int32), key)
            tokens.append(np.asarray(out[0] if keep_path else out))
            if keep_path:
                paths.append(np.asarray(out[1]).swapaxes(0, 1))
        return (np.concatenate(tokens), np.concatenate(paths)) if keep_path else np.concatenate(tokens)

    def decode(self, tokens) -> str:
        """Text of token ids; the mask id shows as '_'."""
        tokens = np.asarray(tokens)
        parts = np.split(tokens, np.flatnonzero(np.diff(tokens == self.mask_id)) + 1)
        return "".join("_" * len(p) if p[0] == self.mask_id else super(MaskedLM, self).decode(p)
                       for p in parts if len(p))

    def write_artifacts(self, workdir: str, block_params: list) -> None:
        """bpc.json (the held-out negative ELBO with run.seed's draws) and samples.txt."""
        from dblocks_jax.tasks.masked_lm_eval import score

        result = score(self, block_params, seeds=(self.config.run.seed,))
        with open(os.path.join(workdir, "bpc.json"), "w") as f:
            json.dump(result, f, indent=1)
        samples = self.sample(block_params, self.config.sampling.num_samples, seed=self.config.run.seed)
        with open(os.path.join(workdir, "samples.txt"), "w") as f:
            f.write("\n".join(self.decode(s) for s in samples) + "\n")

    def inference(self, block_params: list, *, batch: int, steps: int) -> Inference:
        """Ancestral unmasking of `batch` sequences in `steps` steps (and the read-out's call)."""
        z0 = jnp.full((batch, self.config.text.seq_len), self.mask_id, jnp.int32)
        args = (stack_blocks(block_params), z0, jnp.arange(batch, dtype=jnp.int32), jax.random.key(0))
        return Inference(self.chain(steps), args, batch, "samples", steps + 1)

    # -- the shell's hooks ----------------------------------------------------------------------------

    @classmethod
    def train_summary(cls, workdir: str) -> list[str]:
        path = os.path.join(workdir, "bpc.json")
        with open(path) as f:
            r = json.load(f)
        shares = " + ".join(f"{s['mean']:.3f}" for s in r["bpc_per_block"])
        return [f"held-out {r['bpc']['mean']:.4f} bits per character (blocks: {shares}; unigram floor "
                f"{r['unigram_bpc']:.3f}; {r['num_sequences']} windows of {r['seq_len']}) -> {path}; samples: "
                f"{os.path.join(workdir, 'samples.txt')}"]

    @classmethod
    def evaluate(cls, request: Request) -> dict:
        from dblocks_jax.tasks.masked_lm_eval import evaluate_run

        return evaluate_run(request, steps=at_least("--steps", one_int("--steps", request.option("steps"))))

    @classmethod
    def report(cls, result: dict) -> list[str]:
        fmt = describe
        lines = [f"held-out negative ELBO: {fmt(result['bpc'])} {result['unit']} over {len(result['seeds'])} "
                 f"seed(s) ({result['num_sequences']} windows of {result['seq_len']}); unigram floor "
                 f"{result['unigram_bpc']:.4f}"]
        for b, share in enumerate(result["bpc_per_block"]):
            lo, hi = result["band_edges"][b]
            lines.append(f"  block {b} (t in [{lo:.3f}, {hi:.3f}]): {fmt(share)}")
        lines.append(f"samples ({result['sample_steps']} steps, {result['sample_grid']} grid; word validity "
                     f"{result['word_validity']:.3f}, held-out text {result['held_out_word_validity']:.3f}):")
        return lines + [f"  {sample}" for sample in result["samples"][:4]]

    @classmethod
    def write_samples(cls, request: Request) -> list[str]:
        """One sample per line of the .txt output."""
        task, params, _ = request.load()
        s = task.config.sampling
        samples = task.sample(params, s.num_samples, seed=request.seed or 0,
                              batch_size=request.option("batch_size", 256))
        with open(request.output, "w") as f:
            f.write("\n".join(task.decode(x) for x in samples) + "\n")
        return [f"wrote {s.num_samples} samples ({s.steps} unmasking steps, {s.grid} grid) to {request.output}"]
