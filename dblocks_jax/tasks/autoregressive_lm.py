"""Autoregressive language model with DiffusionBlocks (paper sec. 4.4, Table 4).

Each position predicts the next token's L2-normalised embedding e from a noisy copy
z = e + sigma eps, given the clean earlier tokens (`models.causal_lm`: a clean causal stream and a
noisy stream that reads it, Block Diffusion's mask with block size 1). Levels follow EDM's
log-normal law (`engine.edm`), cut into B equi-probable bands; block b trains alone on its band
with the per-example loss CE(logits(D(z, sigma)), x) lambda(sigma), sigma drawn once per sequence
(lambda = EDM's weight, eq. 8 of Karras et al. 2022, as in the classification task).

Generating a token runs a chain over the level grid sigma_max = s_0 > ... > s_{K-1} = sigma_min
(K network calls; K = B by default): at each of the first K - 1 levels the owning block gives
logits, a *bridge* turns them into D, and an Euler step moves z towards it; the call at sigma_min
gives the logits the token is drawn from. Bridges (`ar.bridge`): `soft` D = softmax(logits) @ E-hat
(the paper's), `normalised` the same rescaled to unit norm (a mixture of unit vectors is shorter
than 1, so the soft bridge shrinks the state towards 0), `hard` D = E-hat[argmax].

The clean stream never sees a noisy token, so every block keeps a cache of its keys and values;
a new token costs one pass of one position through every block (the network's depth once) plus
K calls of one position (`autoregressive_lm_sampling`).

`ar.objective = "plain"` trains the same network as an ordinary next-token transformer (B = 1),
the baseline, on the same data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dblocks_jax.engine.settings import ASSEMBLY, SAMPLING, Section, require, setting
from dblocks_jax.models.causal_lm import CausalLM, causal_mask
from dblocks_jax.models.vit import normalized_rows
from dblocks_jax.tasks import flags
from dblocks_jax.tasks.base import Inference
from dblocks_jax.tasks.edm_task import EDMTask
from dblocks_jax.tasks.embedding_target import EmbeddingTarget
from dblocks_jax.tasks.plugin import Flag, Preset, Request, one_int
from dblocks_jax.tasks.text_task import GENERATION_RENAMES, LM1B, PYDOC_CPU, GenerationConfig, TextConfig, TextTask

NOISY_SALT = 0x5A17  # folded into the dropout keys of the noisy stream
OBJECTIVES = ("diffusion", "plain")
BRIDGES = ("soft", "normalised", "hard")


@dataclasses.dataclass(frozen=True)
class ARConfig(Section):
    """`objective`: "diffusion" trains each block to denoise the next token's normalised embedding;
    "plain" is the ordinary next-token transformer (B = 1). `bridge` turns a block's logits into
    the state D the chain steps towards (see the module docstring)."""

    _path = "ar"
    objective: str = setting("diffusion", ASSEMBLY, ", ".join(OBJECTIVES))
    bridge: str = setting("soft", SAMPLING, ", ".join(BRIDGES))
    steps: int = setting(0, SAMPLING, "network calls per generated token (0: one per block, at least 2)")
    mc_draws: int = setting(8, SAMPLING, "chain starting noises per token for the Monte-Carlo likelihood")

    def check(self):
        require(self.objective in OBJECTIVES, self.field("objective"), self.objective, ", ".join(OBJECTIVES))
        require(self.bridge in BRIDGES, self.field("bridge"), self.bridge, ", ".join(BRIDGES))
        require(self.steps == 0 or self.steps >= 2, self.field("steps"), self.steps,
                "0 (one call per block) or an integer >= 2")
        require(self.mc_draws >= 1, self.field("mc_draws"), self.mc_draws, "an integer >= 1")


# The paper's Table 4 setting is 12 layers, width 768, 12 heads, sequence 256, batch 256, AdamW 3e-4,
# 2500 warm-up steps, B = 4, gamma 0.1 on LM1B (bytes here: no subword tokenizer ships offline). The
# CPU preset keeps 12 layers and B = 4 (3 layers a block).
_AR = {"model.num_layers": 12, "model.num_blocks": 4, "partition.overlap": 0.1, "optim.ema_decay": 0.0,
       "model.positions": "rope"}
PRESETS = (
    Preset("pydoc_ar", "autoregressive DiffusionBlocks LM, 12 layers, B = 4, on Python's bundled pydoc text: a "
                       "2-core CPU, minutes (--set ar.objective=plain --set model.num_blocks=1: the AR baseline)", {
        **_AR, **PYDOC_CPU, "optim.steps": 600, "text.eval_sequences": 256}),
    Preset("lm1b_ar", "the paper's Table 4 setting: 12 layers, width 768, 12 heads, seq 256, B = 4 on tfds:lm1b "
                      "(bytes), for GPU/TPU", {
        **_AR, **LM1B, "model.width": 768, "model.num_heads": 12, "optim.learning_rate": 3e-4,
        "optim.warmup_steps": 2500, "optim.grad_clip": 1.0, "optim.steps": 1_000_000}),
)
FLAGS = (
    flags.NUM_SAMPLES, flags.GRID, flags.PROMPT, flags.LENGTH, flags.REFERENCE,
    Flag("--mc", ("evaluate",), "ar.mc_draws: chain starting noises per symbol for the Monte-Carlo likelihood", int,
         field="ar.mc_draws"),
    Flag("--steps", ("sample",), "ar.steps: network calls per symbol", int, field="ar.steps"),
    Flag("--steps", ("evaluate",), "network calls per symbol (one value; default ar.steps)"),
)


class AutoregressiveLM(EmbeddingTarget, TextTask, EDMTask):
    name = "autoregressive_lm"
    description = "autoregressive DiffusionBlocks LM (paper Table 4): bits per character, gen-PPL, MAUVE"
    sections = (TextConfig, ARConfig, GenerationConfig)
    renamed_fields = GENERATION_RENAMES
    presets = PRESETS
    flags = FLAGS
    sample_formats = (".txt",)
    table_param = "target_embed"
    attention_width = 2  # a noisy token reads the clean stream's keys and its own
    # Generation runs its own chain (ar.steps calls per token, ar.bridge); nothing is masked.
    unused_fields = TextTask.unused_fields + ("sampling.steps", "text.mask_eps", "text.eval_draws")

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        a = config.ar
        cls.require_end_to_end(config, "ar.objective", a.objective)
        cls.require_chain_steps(config, "ar.steps", a.steps, a.objective)
        cls.require_generation_fits(config)

    @functools.cached_property
    def sampler(self):
        """The jitted chain, scoring and generation functions (compiled once per shape)."""
        from dblocks_jax.tasks.autoregressive_lm_sampling import Sampler

        return Sampler(self)

    @property
    def plain(self) -> bool:
        return self.plain_config(self.config)

    @staticmethod
    def plain_config(config) -> bool:
        return config.ar.objective == "plain"

    # -- the block and its loss ---------------------------------------------------------------------

    def make_block(self, rngs: nnx.Rngs) -> CausalLM:
        m = self.config.model
        return CausalLM(diffusion=not self.plain, vocab_size=self.vocab_size, seq_len=self.config.text.seq_len,
                        width=m.width, depth=m.layers_per_block, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                        positions=m.positions, dropout=m.dropout, **m.stack_options, rngs=rngs)

    def draw(self, key, block, batch_spec) -> dict:
        """One sigma per sequence from the block's (widened) band, the noise on the targets and, with
        dropout, one key per example."""
        k_sigma, k_eps, k_drop = jax.random.split(key, 3)
        n, length = batch_spec["tokens"].shape
        return {"sigma": self.partition.sample_level(k_sigma, block, (n,)),
                "eps": jax.random.normal(k_eps, (n, length - 1, self.config.model.width), jnp.float32),
                **self.dropout_draw(k_drop, n)}

    def loss(self, params, batch, draw, block) -> jax.Array:
        """Per sequence: the mean over positions 1..L-1 of CE(logits, x_i), times lambda(sigma) for
        the diffusion objective (positions 0..L-2 predict the next symbol for the plain one)."""
        tokens_BL, depth, keys = batch["tokens"], self.block_depth(block), self.dropout_keys(draw)
        net = self.network(params)
        inputs_BT, targets_BT = tokens_BL[:, :-1], tokens_BL[:, 1:]
        t = inputs_BT.shape[1]
        h_BTD, context = net.clean(inputs_BT, jnp.arange(t), depth, keys, output=self.plain)
        if self.plain:
            return optax.softmax_cross_entropy_with_integer_labels(net.plain_logits(h_BTD), targets_BT).mean(-1)
        sigma_B = draw["sigma"]
        z_BTD = net.table()[targets_BT] + sigma_B[:, None, None] * draw["eps"]
        noisy_keys = None if keys is None else jax.vmap(lambda k: jax.random.fold_in(k, NOISY_SALT))(keys)
        logits_BTV = net.denoised_logits(z_BTD, sigma_B, self.edm.scalings, jnp.arange(1, t + 1), context,
                                         causal_mask(t, 0, t), depth, noisy_keys)
        ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT).mean(-1)
        return ce_B * self.edm.loss_weight(sigma_B)

    # -- the chain ----------------------------------------------------------------------------------

    def configured_steps(self) -> int:
        return self.config.ar.steps

    def bridge(self, logits_NTV: jax.Array, table_VD: jax.Array, kind: str | None = None) -> jax.Array:
        """D from a block's logits (see the module docstring)."""
        kind = kind or self.config.ar.bridge
        if kind == "hard":
            return table_VD[jnp.argmax(logits_NTV, -1)]
        d_NTD = jax.nn.softmax(logits_NTV) @ table_VD
        return normalized_rows(d_NTD) if kind == "normalised" else d_NTD

    def write_artifacts(self, workdir: str, block_params: list) -> None:
        """bpc.json (held-out bits per character with run.seed's chain noise) and samples.txt
        (continuations of held-out prompts)."""
        from dblocks_jax.evaluation.text_metrics import write_continuations
        from dblocks_jax.tasks.autoregressive_lm_eval import continuations, score

        result = score(self, block_params, seeds=(self.config.run.seed,))
        with open(os.path.join(workdir, "bpc.json"), "w") as f:
            json.dump(result, f, indent=1)
        samples = continuations(self, block_params, self.config.sampling.num_samples, seed=self.config.run.seed)
        write_continuations(os.path.join(workdir, "samples.txt"), samples["prompts"], samples["continuations"])

    def inference(self, block_params: list, *, batch: int, steps: int) -> Inference:
        """Generation of the rest of a window after one symbol, for `batch` prompts, with `steps`
        network calls per symbol (plain: one)."""
        length = self.config.text.seq_len
        prompts_NP = np.zeros((batch, 1), np.int32)
        fn, args = self.sampler.generation(block_params, prompts_NP, length - 1, steps=None if self.plain else steps)
        return Inference(fn, args, batch * (length - 1), "symbols", 1 if self.plain else self.inference_steps(steps))

    # -- the shell's hooks ----------------------------------------------------------------------------

    @classmethod
    def workdir_suffix(cls, config) -> str:
        return "_ar_plain" if config.ar.objective == "plain" else "_ar"

    @classmethod
    def train_summary(cls, workdir: str) -> list[str]:
        from dblocks_jax.tasks.autoregressive_lm_eval import mc_error

        path = os.path.join(workdir, "bpc.json")
        with open(path) as f:
            r = json.load(f)
        detail = "exact" if r["objective"] == "plain" else (
            f"{r['mc_draws']} chain draws per symbol, {mc_error(r)}; CE at sigma_max "
            f"{r['ce_at_sigma_max']['mean']:.3f}")
        return [f"held-out {r['bpc']['mean']:.4f} bits per character ({detail}; unigram floor {r['unigram_bpc']:.3f}; "
                f"{r['num_sequences']} windows of {r['seq_len']}) -> {path}; samples: "
                f"{os.path.join(workdir, 'samples.txt')}"]

    @classmethod
    def evaluate(cls, request: Request) -> dict:
        from dblocks_jax.tasks.autoregressive_lm_eval import evaluate_run

        return evaluate_run(request, steps=one_int("--steps", request.option("steps")),
                            reference=request.option("reference"))

    @classmethod
    def report(cls, result: dict) -> list[str]:
        from dblocks_jax.tasks.autoregressive_lm_eval import report

        return report(result)

    @classmethod
    def write_samples(cls, request: Request) -> list[str]:
        from dblocks_jax.tasks.autoregressive_lm_eval import write_samples

        return write_samples(request)
