"""Flags several tasks declare alike (each task lists the ones it takes in `Task.flags`)."""

from __future__ import annotations

from dblocks_jax.engine.chain import GRIDS
from dblocks_jax.tasks.plugin import Flag

NUM_SAMPLES = Flag("--num-samples", ("sample", "evaluate"), "sampling.num_samples: how many to draw", int,
                   field="sampling.num_samples")
GRID = Flag("--grid", ("sample",), "sampling.grid: the chain's levels", choices=GRIDS, field="sampling.grid")
BATCH_SIZE = Flag("--batch-size", ("sample",), "samples drawn at once (default 256; any --num-samples fits)", int,
                  least=1)
# The tasks that continue a prompt (the autoregressive and the recurrent-depth LMs).
PROMPT = Flag("--prompt", ("sample",), "the text to continue (default: held-out prompts)")
LENGTH = Flag("--length", ("sample",), "generation.gen_len: symbols to generate", int, field="generation.gen_len")
REFERENCE = Flag("--reference", ("evaluate",), "a plain autoregressive_lm run (same vocabulary) that scores the "
                                               "generations (gen-PPL, MAUVE features)", metavar="WORKDIR")
