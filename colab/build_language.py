"""Writes colab/language.ipynb from the cells below (nbformat 4, no outputs).

    python colab/build_language.py

Edit the cells here, not in the .ipynb. The install cell and the notebook format are the
quickstart's (colab/build_quickstart.py). The next language tasks (autoregressive, recurrent
depth) add their sections here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import build_quickstart  # noqa: E402

INSTALL = build_quickstart.INSTALL_CELL  # installs the package on Colab, sets IN_COLAB and TINY

CELLS = [
    ("markdown", """# DiffusionBlocks for language: masked diffusion (MD4)

The paper's Table 3 experiment at notebook scale. A masked-diffusion language model (MD4) learns to fill in
masked characters: at time `t` every character is masked with probability about `t`, and the model predicts
the masked ones. DiffusionBlocks cuts the 12-layer transformer into `B = 3` blocks; block 0 learns only the
most masked third of `t` (`t` in [2/3, 1]), block 2 only the least masked. Each block trains alone.

The likelihood is the negative ELBO, a sum over the blocks: each block's integral over its own band of `t`.
This notebook trains `pydoc_md4` (Python's own documentation text, bundled with every Python), reports bits
per character and each block's share, and shows a sample being unmasked step by step. Some minutes on a CPU;
`DBLOCKS_NOTEBOOK_TINY=1` runs tiny settings (CI)."""),
    INSTALL,
    ("code", """import jax
import matplotlib.pyplot as plt
import numpy as np

from dblocks_jax import get_config, make_task, train
from dblocks_jax.tasks.masked_lm_eval import score

print("JAX", jax.__version__, "on", jax.devices())
tiny = {"model.width": 16, "model.num_heads": 2, "text.seq_len": 32, "optim.steps": 30, "data.batch_size": 8,
        "optim.warmup_steps": 2, "text.eval_sequences": 32, "text.eval_draws": 2,
        "sampling.num_samples": 2} if TINY else {}
config = get_config("pydoc_md4", tiny)
task = make_task(config)
task.check_data()
print(f"{len(task.corpus.train):,} training and {len(task.corpus.test):,} held-out characters")"""),
    ("markdown", """## Train
Every block takes `optim.steps` steps on its own band, as an end-to-end model would take in all: the same
training compute. Block `b` never sees the others."""),
    ("code", """result = train(config, "runs/language_md4", overwrite=True, progress=not TINY)
print("final loss per block:", [round(x, 3) for x in result.final_loss])"""),
    ("markdown", """## Bits per character, block by block
Two evaluation seeds (draws of `t` and of the masks). The unigram floor is what a model that ignores the
context scores; each block's bar is its band's share of the negative ELBO."""),
    ("code", """scores = score(task, result.params, seeds=(0, 1))
shares = [s["mean"] for s in scores["bpc_per_block"]]
print(f"held-out: {scores['bpc']['mean']:.3f} ± {scores['bpc']['std']:.3f} bits per character "
      f"(unigram floor {scores['unigram_bpc']:.3f})")
plt.figure(figsize=(5, 3.2))
edges = scores["band_edges"]
plt.bar([f"block {b}\\nt in [{lo:.2f}, {hi:.2f}]" for b, (lo, hi) in enumerate(edges)], shares)
plt.ylabel("bits per character")
plt.title("each block's share of the negative ELBO")
plt.tight_layout()
plt.show()"""),
    ("markdown", """## A sample, unmasked step by step
Ancestral unmasking from `t = 1` (all masked, shown as `_`) to `t = 0`: at every step a masked character is
revealed with probability `(alpha_s - alpha_t) / (1 - alpha_t)`, drawn from the block that owns `t`."""),
    ("code", """steps = 16
tokens, path = task.sample(result.params, 1, seed=0, steps=steps, keep_path=True)
grid = task.grid(steps)
owner = task.partition.block_of(grid[:-1])  # the block that takes step i (it owns t_i)
for i in range(0, steps, 2 if TINY else 1):
    print(f"t={grid[i + 1]:.3f} (step by block {owner[i]}): {task.decode(path[0, i])}")
print("final:", task.decode(tokens[0]))"""),
    ("markdown", """## Next
- `dblocks evaluate --workdir runs/language_md4 --seeds 0,1,2` scores a run over several seeds and writes samples;
  `dblocks sample --workdir runs/language_md4 --out samples.txt` writes text.
- `python experiments/masked_lm.py` compares the end-to-end model with B = 2, 3, 4 over 3 seeds
  (experiments/README.md)."""),
]


def notebook() -> dict:
    return build_quickstart.notebook(CELLS)


if __name__ == "__main__":
    build_quickstart.write("language", notebook())
