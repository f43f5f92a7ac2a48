"""Named presets: a task's settings for a machine (`dblocks list`), each a set of overrides of
`Config`'s defaults, and `get_config` to build one with further overrides."""

from __future__ import annotations

import dataclasses
from typing import Any

from dblocks_jax.config import TASKS, Config


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: dict

    @property
    def config(self) -> Config:
        return Config().override(self.overrides)

    @property
    def task(self) -> str:
        return self.overrides.get("task", Config.task)


# The classification presets' shared part: a small ViT for the bundled sets, and the paper's recipe
# (DESIGN sec. 9: 12 layers, patch 4, width 128, 4 heads, MLP 3072, dropout 0.1, B = 3, gamma 0.05,
# AdamW 5e-4, wd 0.01, clip 1, batch 128, cosine with 10 warm-up epochs, 500 epochs of 50k images:
# 390 steps per epoch; every block takes that many steps, as the end-to-end run would).
_VIT = {"task": "image_classification", "model.family": "vit", "model.num_layers": 6, "model.num_blocks": 3,
        "model.width": 64, "model.num_heads": 4, "model.mlp_ratio": 2.0, "data.batch_size": 64,
        "optim.learning_rate": 1e-3, "optim.weight_decay": 0.01, "optim.warmup_steps": 100, "optim.steps": 2500,
        "optim.ema_decay": 0.0, "run.log_every": 50}
_PAPER_VIT = {"task": "image_classification", "model.family": "vit", "data.image_size": 32,
              "data.augment": "crop_flip", "data.batch_size": 128, "model.num_layers": 12, "model.num_blocks": 3,
              "model.width": 128, "model.num_heads": 4, "model.patch_size": 4, "model.mlp_ratio": 24.0,
              "model.dropout": 0.1, "partition.overlap": 0.05, "optim.learning_rate": 5e-4,
              "optim.weight_decay": 0.01, "optim.grad_clip": 1.0, "optim.warmup_steps": 3_900,
              "optim.steps": 195_000, "optim.ema_decay": 0.0, "run.log_every": 100, "run.checkpoint_every": 3_900}

# Masked-diffusion LM (DESIGN sec. 10). The CPU preset: a 12-layer model (4 layers per block at
# B = 3, as the paper's) narrow enough for a 2-core CPU; 12 divides by B = 1, 2, 3 and 4, so the
# experiments compare those with equal blocks. The paper's text8 setting: 12 layers, width 768,
# 12 heads, sequence 256, batch 256, AdamW 3e-4, wd 0.03, 2000 warm-up steps, B = 3, gamma 0.05.
_MD4 = {"task": "masked_lm", "model.family": "transformer", "model.num_layers": 12, "model.num_blocks": 3,
        "partition.overlap": 0.05, "optim.weight_decay": 0.03, "optim.ema_decay": 0.0, "sampling.grid": "cosine",
        "model.positions": "rope"}

# Autoregressive DiffusionBlocks LM (DESIGN sec. 11): the paper's Table 4 setting is 12 layers, width 768,
# 12 heads, sequence 256, batch 256, AdamW 3e-4, 2500 warm-up steps, B = 4, gamma 0.1 on LM1B (bytes
# here: no subword tokenizer ships offline). The CPU preset keeps 12 layers and B = 4 (3 layers a block).
_AR = {"task": "autoregressive_lm", "model.family": "transformer", "model.num_layers": 12, "model.num_blocks": 4,
       "partition.overlap": 0.1, "optim.ema_decay": 0.0, "model.positions": "rope"}

# Recurrent depth (DESIGN sec. 12): the paper's Table 5 model is Huginn's layout at hidden 512, 8 heads,
# prelude/core/coda 2/4/2 layers on LM1B. The CPU preset keeps the layout at width 64 and the AR
# presets' data, so that a plain autoregressive run of pydoc_ar can score its generations.
# The noise law is centred at ln sigma = 3.5, not EDM's image value -1.2: at B = 1 the core sees the
# whole law, and below sigma ~ 2 the next token can be read from z (docs/architecture.md).
_RECURRENT = {"task": "recurrent_lm", "model.family": "transformer", "model.num_layers": 8, "model.num_blocks": 1,
              "model.positions": "rope", "optim.ema_decay": 0.0, "noise.p_mean": 3.5}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("shapes", "tiny DiT, B = 4, on the embedded shapes dataset: trains on a 2-core CPU in minutes", {}),
    Preset("cifar10_dit_s", "the paper's DiT-S/2 CIFAR-10 setting (12 layers, width 384, B = 3), for GPU/TPU", {
        "data.dataset": "tfds:cifar10", "data.image_size": 32, "data.batch_size": 512,
        "model.num_layers": 12, "model.num_blocks": 3, "model.width": 384, "model.num_heads": 6,
        "model.patch_size": 2, "optim.learning_rate": 1e-4, "optim.warmup_steps": 0, "optim.steps": 400_000,
        "optim.ema_decay": 0.9999, "sampling.guidance": 2.0, "run.log_every": 100}),
    Preset("digits_vit", "ViT classifier, B = 3, on the bundled 8x8 digits (at 16x16): a 2-core CPU, minutes",
           {**_VIT, "data.dataset": "digits", "data.image_size": 16, "data.augment": "crop", "model.patch_size": 4}),
    Preset("patterns_vit", "ViT classifier, B = 3, on the bundled photo/texture patterns (8 classes, 32x32)",
           {**_VIT, "data.dataset": "patterns", "data.image_size": 32, "data.augment": "crop_flip",
            "model.patch_size": 8, "optim.steps": 1500}),
    Preset("cifar10_vit", "the paper's CIFAR ViT recipe (12 layers, width 128, B = 3) on tfds:cifar10, for GPU/TPU",
           {**_PAPER_VIT, "data.dataset": "tfds:cifar10"}),
    Preset("cifar100_vit", "the paper's Table 1 recipe: ViT 12 layers, width 128, patch 4, B = 3, 500 epochs on "
                           "tfds:cifar100, for GPU/TPU", {**_PAPER_VIT, "data.dataset": "tfds:cifar100"}),
    Preset("pydoc_md4", "masked-diffusion LM, 12 layers, B = 3, on Python's bundled pydoc text (27 symbols): a "
                        "2-core CPU, minutes", {
        **_MD4, "data.dataset": "pydoc", "data.batch_size": 32, "text.seq_len": 64, "model.width": 64,
        "model.num_heads": 4, "optim.learning_rate": 2e-3, "optim.warmup_steps": 100, "optim.steps": 1500,
        "text.eval_sequences": 0, "text.eval_draws": 8, "sampling.steps": 64, "sampling.num_samples": 8,
        "run.log_every": 50}),
    Preset("text8_md4", "the paper's Table 3 setting: MD4, 12 layers, width 768, 12 heads, seq 256, B = 3 on "
                        "text8 (give its path: --set data.dataset=text8:PATH), for GPU/TPU", {
        **_MD4, "data.dataset": "text8:text8.zip", "data.batch_size": 256, "text.seq_len": 256,
        "model.width": 768, "model.num_heads": 12, "optim.learning_rate": 3e-4, "optim.warmup_steps": 2000,
        "optim.grad_clip": 1.0, "optim.steps": 1_000_000, "sampling.steps": 256, "sampling.num_samples": 16,
        "text.eval_sequences": 0, "run.log_every": 100, "run.checkpoint_every": 10_000}),
    Preset("pydoc_ar", "autoregressive DiffusionBlocks LM, 12 layers, B = 4, on Python's bundled pydoc text: a "
                       "2-core CPU, minutes (--set ar.objective=plain --set model.num_blocks=1: the AR baseline)", {
        **_AR, "data.dataset": "pydoc", "data.batch_size": 32, "text.seq_len": 64, "model.width": 64,
        "model.num_heads": 4, "optim.learning_rate": 2e-3, "optim.warmup_steps": 100, "optim.steps": 600,
        "text.eval_sequences": 256, "sampling.num_samples": 8, "run.log_every": 50}),
    Preset("pydoc_recurrent", "recurrent-depth LM (prelude 2, core 4 iterated, coda 2) trained with DiffusionBlocks "
                              "(B = 1) on Python's bundled pydoc text: a 2-core CPU, minutes (--set "
                              "recurrent.method=huginn: the Huginn baseline)", {
        **_RECURRENT, "data.dataset": "pydoc", "data.batch_size": 32, "text.seq_len": 64, "model.width": 64,
        "model.num_heads": 4, "optim.learning_rate": 2e-3, "optim.warmup_steps": 100, "optim.steps": 1200,
        "text.eval_sequences": 256, "sampling.num_samples": 8, "run.log_every": 50}),
    Preset("lm1b_recurrent", "the paper's Table 5 setting: hidden 512, 8 heads, prelude/core/coda 2/4/2 on tfds:lm1b "
                             "(bytes), for GPU/TPU", {
        **_RECURRENT, "data.dataset": "tfds:lm1b", "text.vocabulary": "bytes", "data.batch_size": 256,
        "text.seq_len": 256, "model.width": 512, "model.num_heads": 8, "optim.learning_rate": 3e-4,
        "optim.warmup_steps": 2500, "optim.steps": 250_000, "ar.gen_len": 128, "ar.prompt_len": 32,
        "sampling.num_samples": 64, "text.eval_sequences": 2048, "run.log_every": 100,
        "run.checkpoint_every": 10_000}),
    Preset("lm1b_ar", "the paper's Table 4 setting: 12 layers, width 768, 12 heads, seq 256, B = 4 on tfds:lm1b "
                      "(bytes), for GPU/TPU", {
        **_AR, "data.dataset": "tfds:lm1b", "text.vocabulary": "bytes", "data.batch_size": 256,
        "text.seq_len": 256, "model.width": 768, "model.num_heads": 12, "optim.learning_rate": 3e-4,
        "optim.warmup_steps": 2500, "optim.grad_clip": 1.0, "optim.steps": 1_000_000, "ar.gen_len": 128,
        "ar.prompt_len": 32, "sampling.num_samples": 64, "text.eval_sequences": 2048, "run.log_every": 100,
        "run.checkpoint_every": 10_000}),
)}


def get_config(name: str, overrides: dict[str, Any] | None = None, **kw: Any) -> Config:
    """The preset called `name` with {path: value} `overrides` applied (and validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown config preset {name!r}; allowed: {', '.join(sorted(PRESETS))}")
    return Config().override({**PRESETS[name].overrides, **(overrides or {}), **kw})


def describe_presets() -> str:
    """The presets grouped by task, one line each (`dblocks list`)."""
    lines = []
    for task in TASKS:
        lines.append(f"{task}:")
        lines.extend(f"  {p.name:<16} {p.description}" for p in PRESETS.values() if p.task == task)
    return "\n".join(lines)
