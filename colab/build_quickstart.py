"""Writes colab/quickstart.ipynb from the cells below (nbformat 4, no outputs).

    python colab/build_quickstart.py

Edit the cells here, not in the .ipynb, so that the notebook stays reviewable as code.
"""

import json
import os

CELLS = [
    ("markdown", """# DiffusionBlocks in JAX: quickstart

[DiffusionBlocks](https://arxiv.org/abs/2506.14202) (Shing, Koyama, Akiba, Sakana AI) cuts a network's
`L` layers into `B` blocks, gives each block its own band of noise levels and trains every block **alone**
as a denoiser for its band. Only one block's parameters, gradients, optimizer state and activations are
needed at a time, so training memory falls by about `B`.

This notebook trains `B = 4` blocks on the bundled `shapes` dataset, shows samples, compares training
memory with end-to-end backprop and scores sample quality. It runs top to bottom on a Colab GPU or TPU
runtime (about 10 minutes on a GPU; CPU works too, slower). With `DBLOCKS_NOTEBOOK_TINY=1` it runs tiny
settings in well under a minute (what CI does, so the notebook cannot rot)."""),
    ("code", """# Install the package when running on Colab (elsewhere, install it yourself: pip install -e .).
import os
import shutil
import subprocess
import sys

# The GitHub repository of this project: replace the placeholder with its URL if you forked it.
REPO_URL = "https://github.com/REPLACE-WITH-OWNER/dblocks-jax"

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    if "REPLACE-WITH-OWNER" in REPO_URL:
        raise SystemExit("Set REPO_URL above to the dblocks-jax repository you are using (its git URL).")
    # Keep Colab's accelerator: ask for the matching jax build together with the package.
    if shutil.which("nvidia-smi"):
        extra = ["jax[cuda12]"]
    elif os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ:
        extra = ["jax[tpu]"]
    else:
        extra = []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}", *extra], check=True)

TINY = os.environ.get("DBLOCKS_NOTEBOOK_TINY") == "1"  # CI: tiny settings, well under a minute
print("Colab:", IN_COLAB, "| tiny settings:", TINY)"""),
    ("code", """import jax
import matplotlib.pyplot as plt
import numpy as np

from dblocks_jax import data, get_config, make_task, train
from dblocks_jax.engine import bench
from dblocks_jax.engine.trainer import BlockTrainer
from dblocks_jax.evaluation import bench_report, image_quality

print("JAX", jax.__version__, "on", jax.devices())
# Keep compiled programs on disk: a rerun, and the memory bench below (which compiles the same training
# step as `train`), load them instead of compiling again.
jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join("runs", "jax_cache")))

if TINY:
    overrides = {"data.image_size": 8, "model.width": 16, "model.num_heads": 2, "model.num_layers": 4,
                 "model.patch_size": 2, "data.batch_size": 16, "optim.steps": 20, "optim.warmup_steps": 5,
                 "run.log_every": 10, "sampling.steps": 8, "sampling.num_samples": 24}
    classifier_settings = image_quality.ClassifierSettings(steps=30)
    eval_samples, eval_seeds = 48, (0, 1)
else:  # the `shapes` preset: 8 layers of width 96, 700 steps per block
    overrides = {}
    classifier_settings = image_quality.ClassifierSettings()
    eval_samples, eval_seeds = 512, (0, 1, 2)

config = get_config("shapes", {"model.num_blocks": 4, **overrides})  # {"section.field": value}
workdir = os.path.join("runs", "quickstart")
print(f"{config.model.num_layers} layers in {config.model.num_blocks} blocks of {config.model.layers_per_block}, "
      f"{config.optim.steps} steps per block")"""),
    ("markdown", """## Train `B = 4` blocks

The paper's interleaved schedule: each step trains one block, chosen at random, until every block has
taken `optim.steps` steps (the same number of layer evaluations as an end-to-end run of that many steps)."""),
    ("code", """result = train(config, workdir, overwrite=True)
print("final loss per block:", [round(x, 3) for x in result.final_loss])"""),
    ("markdown", """## Samples

`train` drew these at the end: Euler steps from noise (50 with the preset), classifier-free guidance 2.0;
each step runs only the block that owns its noise level. The grid reads class by class: circles, then
squares, then triangles."""),
    ("code", """grid = plt.imread(os.path.join(workdir, "samples.png"))
plt.figure(figsize=(5, 5))
plt.imshow(grid, cmap="gray")
plt.axis("off")
plt.title(f"B = {config.model.num_blocks}, {config.optim.steps} steps per block")
plt.show()"""),
    ("markdown", """## Training memory: end-to-end vs one block at a time

Read from the compiled training step (`memory_analysis()`: argument + output - alias + temp), which is
deterministic and needs no profiler. `db-sequential` is DiffusionBlocks with one block resident."""),
    ("code", """settings = bench.BenchSettings(num_blocks=(2, 4) if not TINY else (4,), modes=("e2e", "db-sequential"),
                               time_steps=0, count_flops=False)
memory_records = bench.run_bench(config, settings, progress=False)
print(bench_report.markdown_table(memory_records))

names = [f"{r['mode']}, B={r['num_blocks']}" for r in memory_records]
mib = [r["memory_bytes"]["total_peak"] / 2**20 for r in memory_records]
plt.figure(figsize=(6, 2.5))
plt.barh(names, mib)
plt.xlabel("training memory (MiB)")
plt.title(f"{config.model.num_layers} layers, batch {config.data.batch_size}, on {jax.devices()[0].platform}")
plt.show()
e2e = next(r for r in memory_records if r["mode"] == "e2e")["memory_bytes"]["total_peak"]
for r in memory_records:
    print(f"{r['mode']:>14} B={r['num_blocks']}: {r['memory_bytes']['total_peak'] / e2e:.2f} x end-to-end")"""),
    ("markdown", """## Quality score

The Frechet distance between samples and the held-out split in the feature space of a small classifier
trained on the dataset's own labels (lower is better), and the conditional accuracy: the share of samples
that this classifier assigns to the class they were drawn for (chance is 1/3). A freshly initialised
model of the same size is the baseline to beat. Mean ± std over sampling seeds."""),
    ("code", """task = make_task(config)
classifier = image_quality.FeatureClassifier(config.data.dataset, config.data.image_size, classifier_settings)
reference, _ = data.load_split(config.data.dataset, "test", config.data.image_size)
trainer = BlockTrainer(task)
untrained_params = [jax.device_get(trainer.init_state(b).ema) for b in range(config.model.num_blocks)]


def score(params):
    fds, accs = [], []
    for seed in eval_seeds:
        images, labels = task.samples(params, seed=seed, num_samples=eval_samples)
        fds.append(image_quality.feature_frechet_distance(classifier, images, reference))
        accs.append(image_quality.conditional_accuracy(classifier, images, labels))
    return {"frechet_distance": (np.mean(fds), np.std(fds, ddof=1)),
            "conditional_accuracy": (np.mean(accs), np.std(accs, ddof=1))}


scores = {"trained": score(result.params), "untrained": score(untrained_params)}
print(f"classifier held-out accuracy: {classifier.accuracy:.3f}")
print("| model | Frechet distance | conditional accuracy |")
print("| --- | ---: | ---: |")
for name, s in scores.items():
    (fd, fd_std), (acc, acc_std) = s["frechet_distance"], s["conditional_accuracy"]
    print(f"| {name} | {fd:.1f} ± {fd_std:.1f} | {acc:.3f} ± {acc_std:.3f} |")"""),
    ("markdown", """## Next

- `dblocks train --config shapes --num-blocks 1` trains the end-to-end baseline of the same code.
- `python experiments/blocks.py --scale small` sweeps the number of blocks with 3 seeds
  (experiments/README.md describes every experiment and compares it with the paper)."""),
]


# The cell that installs the package on Colab and sets IN_COLAB and TINY (other notebooks reuse it).
INSTALL_CELL = next(c for c in CELLS if c[1].startswith("# Install the package"))


def notebook(cells_source=None) -> dict:
    """The notebook of `cells_source` ((kind, source) pairs; default: this quickstart's)."""
    cells = []
    for kind, source in cells_source or CELLS:
        lines = source.splitlines(keepends=True)
        cell = {"cell_type": kind, "id": f"cell-{len(cells)}", "metadata": {}, "source": lines}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {"cells": cells, "metadata": {
        "accelerator": "GPU", "colab": {"provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def write(name: str, nb: dict) -> None:
    """colab/<name>.ipynb, as the tests compare it."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.ipynb")
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    write("quickstart", notebook())
