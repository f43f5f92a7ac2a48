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
import optax
from flax import nnx

from dblocks_jax.engine.edm import EDM
from dblocks_jax.models.causal_lm import CausalLM, causal_mask
from dblocks_jax.models.vit import normalized_rows
from dblocks_jax.tasks.embedding_target import EmbeddingTarget
from dblocks_jax.tasks.text_task import TextTask

NOISY_SALT = 0x5A17  # folded into the dropout keys of the noisy stream


class AutoregressiveLM(EmbeddingTarget, TextTask):
    name = "autoregressive_lm"
    table_param = "target_embed"
    attention_width = 2  # a noisy token reads the clean stream's keys and its own
    # Generation runs its own chain (ar.steps calls per token, ar.bridge); nothing is masked,
    # augmented or class-conditioned.
    unused_fields = ("sampling.steps", "sampling.solver", "sampling.guidance", "sampling.s_churn", "data.augment",
                     "model.class_conditional", "model.label_dropout", "model.patch_size", "text.mask_eps",
                     "text.eval_draws")

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        cls.require_one_block_when_plain(config, "ar.objective", config.ar.objective)
        cls.require_generation_fits(config)

    def __init__(self, config):
        super().__init__(config)
        self.edm = self.law

    @functools.cached_property
    def sampler(self):
        """The jitted chain, scoring and generation functions (compiled once per shape)."""
        from dblocks_jax.tasks.autoregressive_lm_sampling import Sampler

        return Sampler(self)

    @property
    def plain(self) -> bool:
        return self.config.ar.objective == "plain"

    # -- the block and its loss ---------------------------------------------------------------------

    def make_law(self) -> EDM:
        return EDM(**dataclasses.asdict(self.config.noise))

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
        out = {"sigma": self.partition.sample_level(k_sigma, block, (n,)),
               "eps": jax.random.normal(k_eps, (n, length - 1, self.config.model.width), jnp.float32)}
        if self.config.model.dropout:
            out["dropout"] = jax.random.key_data(jax.random.split(k_drop, n))
        return out

    def loss(self, params, batch, draw, block) -> jax.Array:
        """Per sequence: the mean over positions 1..L-1 of CE(logits, x_i), times lambda(sigma) for
        the diffusion objective (positions 0..L-2 predict the next symbol for the plain one)."""
        tokens_BL, depth = batch["tokens"], self.block_depth(block)
        keys = jax.random.wrap_key_data(draw["dropout"]) if "dropout" in draw else None
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
