"""Writes colab/language.ipynb from the cells below (nbformat 4, no outputs).

    python colab/build_language.py

Edit the cells here, not in the .ipynb. The install cell and the notebook format are the
quickstart's (colab/build_quickstart.py).
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
tiny = {"model.width": 16, "model.num_heads": 2, "model.num_layers": 3, "text.seq_len": 32, "optim.steps": 30,
        "data.batch_size": 8, "optim.warmup_steps": 2, "text.eval_sequences": 32, "text.eval_draws": 2,
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
    ("markdown", """# Autoregressive DiffusionBlocks (paper Table 4)
Each position predicts the *next* character's embedding from a noisy copy, given the clean characters before
it. Block 0 owns the noisiest band of sigma, block 3 the cleanest; generating a character runs a chain of one
call per block, from pure noise to the read-out, while the prefix's keys and values stay cached. The baseline
is the same network trained as a plain next-character transformer. The plain model's likelihood is exact;
DiffusionBlocks' is the chain's predictive probability averaged over its starting noise (Monte Carlo)."""),
    ("code", """from dblocks_jax.tasks.autoregressive_lm_eval import continuations, score as ar_score
from dblocks_jax.tasks.autoregressive_lm_sampling import prompt_ids

ar_tiny = {"model.width": 16, "model.num_heads": 2, "model.num_layers": 2, "text.seq_len": 32, "optim.steps": 20,
           "data.batch_size": 8, "optim.warmup_steps": 2, "text.eval_sequences": 16, "ar.mc_draws": 2,
           "generation.gen_len": 12} if TINY else {}
ar_models = {"plain AR": {"ar.objective": "plain", "model.num_blocks": 1},
             "DiffusionBlocks": {"model.num_blocks": 2} if TINY else {}}
ar = {}
for name, overrides in ar_models.items():
    ar_config = get_config("pydoc_ar", {**ar_tiny, **overrides})
    ar_task = make_task(ar_config)
    ar_result = train(ar_config, f"runs/language_ar_{ar_config.ar.objective}", overwrite=True,
                      progress=not TINY, write_artifacts=False)
    ar[name] = (ar_task, ar_result.params, ar_score(ar_task, ar_result.params, seeds=(0,)))
    s = ar[name][2]
    extra = f", CE at sigma_max {s['ce_at_sigma_max']['mean']:.3f}" if "ce_at_sigma_max" in s else " (exact)"
    print(f"{name}: {s['bpc']['mean']:.3f} bits per character{extra}; unigram floor {s['unigram_bpc']:.3f}")"""),
    ("markdown", """## Prompted generation, DB vs AR
The same prompt continued by both models; symbols per second are those of the compiled, KV-cached generation
on this machine."""),
    ("code", """prompt = "The function "
ids, note = prompt_ids(ar["plain AR"][0].config, prompt)
print(note or f"prompt: {prompt!r}")
generations = {}
for name, (ar_task, params, _) in ar.items():
    out = continuations(ar_task, params, 3, seed=0, prompts_NP=np.tile(ids, (3, 1)))
    generations[name] = out
    print(f"{name} ({out['tokens_per_s']:,.0f} symbols/s):")
    for text in out["continuations"]:
        print(f"   {out['prompts'][0]}|{text}")"""),
    ("markdown", """# Recurrent depth (paper Table 5)
A recurrent-depth model (Huginn's layout: prelude, one core block applied K times to a state, coda) can
think longer at test time by iterating its core more. Huginn trains it by running K ~ 32 iterations from
noise and backpropagating through the last 8; DiffusionBlocks trains the core as a denoiser, *one* core
pass per step on a noisy copy of a target state, and at test time runs K Euler steps of the same core.
Both below get the same training compute, measured from the compiled steps: DiffusionBlocks takes the
preset's steps, Huginn as many as the same FLOPs buy. The curve is held-out bits per character against K
(both methods' predictions depend on a starting noise: the likelihood mixes `recurrent.mc_draws` of them)."""),
    ("code", """from dblocks_jax.tasks.recurrent_lm_eval import bpc_by_steps, equal_compute, training_flops

rec_tiny = {"model.width": 16, "model.num_heads": 2, "model.num_layers": 3, "recurrent.prelude": 1,
            "recurrent.core": 1, "recurrent.coda": 1, "text.seq_len": 32, "optim.steps": 20, "data.batch_size": 8,
            "optim.warmup_steps": 2, "text.eval_sequences": 8, "recurrent.mc_draws": 2,
            "generation.gen_len": 8} if TINY else {}
huginn_tiny = {"recurrent.mean_steps": 4.0, "recurrent.backprop_steps": 2} if TINY else {}
depths = (1, 2) if TINY else (1, 2, 4, 8, 16, 32)
rec_configs = {"DiffusionBlocks": get_config("pydoc_recurrent", rec_tiny),
               "Huginn": get_config("pydoc_recurrent", {**rec_tiny, **huginn_tiny, "recurrent.method": "huginn"})}
flops = {name: training_flops(c)["step"] for name, c in rec_configs.items()}
rec_configs["Huginn"] = equal_compute(rec_configs["DiffusionBlocks"], rec_configs["Huginn"],
                                      (flops["DiffusionBlocks"], flops["Huginn"]))
print(f"training FLOPs per step: Huginn {flops['Huginn']:.3g}, DiffusionBlocks {flops['DiffusionBlocks']:.3g} "
      f"({flops['Huginn'] / flops['DiffusionBlocks']:.1f}x): Huginn gets {rec_configs['Huginn'].optim.steps} steps")
recurrent = {}
for name, rec_config in rec_configs.items():
    rec_task = make_task(rec_config)
    rec_result = train(rec_config, f"runs/language_recurrent_{rec_config.recurrent.method}", overwrite=True,
                       progress=not TINY, write_artifacts=False)
    recurrent[name] = (rec_task, rec_result.params[0], bpc_by_steps(rec_task, rec_result.params[0], depths))
    print(f"{name}: {rec_config.optim.steps} steps; bits per character by K:",
          {k: round(v["bpc"]["mean"], 3) for k, v in recurrent[name][2].items()})
plt.figure(figsize=(5, 3.2))
for name, (_, _, by_k) in recurrent.items():
    plt.plot(depths, [by_k[str(k)]["bpc"]["mean"] for k in depths], marker="o", label=name)
plt.xscale("log", base=2)
plt.xlabel("test-time core iterations K")
plt.ylabel("held-out bits per character")
plt.title("equal training compute")
plt.legend()
plt.tight_layout()
plt.show()"""),
    ("markdown", """## Next
- `dblocks evaluate --workdir runs/language_md4 --seeds 0,1,2` scores a run over several seeds and writes samples;
  `dblocks sample --workdir runs/language_md4 --out samples.txt` writes text.
- `dblocks evaluate --workdir runs/language_ar_diffusion --reference runs/language_ar_plain` adds gen-PPL
  under the plain model; `dblocks sample --workdir runs/language_ar_diffusion --prompt "def " --out c.txt`.
- `python experiments/masked_lm.py` compares the end-to-end model with B = 2, 3, 4 over 3 seeds;
  `python experiments/autoregressive.py` the plain model with B = 2, 4 and three bridges;
  `python experiments/recurrent_depth.py` the recurrent-depth curves at equal steps and equal compute over 3
  seeds (experiments/README.md).
- `dblocks evaluate --workdir runs/language_recurrent_diffusion --steps 1,2,4,8,16,32` writes `bpc_by_steps`
  and the training FLOPs; `dblocks sample --workdir runs/language_recurrent_diffusion --steps 8 --out c.txt`."""),
]


def notebook() -> dict:
    return build_quickstart.notebook(CELLS)


if __name__ == "__main__":
    build_quickstart.write("language", notebook())
