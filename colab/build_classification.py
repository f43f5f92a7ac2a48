"""Writes colab/classification.ipynb from the cells below (nbformat 4, no outputs).

    python colab/build_classification.py

Edit the cells here, not in the .ipynb. The install cell and the notebook format are the
quickstart's (colab/build_quickstart.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import build_quickstart  # noqa: E402

INSTALL = build_quickstart.INSTALL_CELL  # installs the package on Colab, sets IN_COLAB and TINY

CELLS = [
    ("markdown", """# DiffusionBlocks for image classification

The paper's ViT experiment (Table 1) on the bundled `digits` set. A DiffusionBlocks classifier cuts a ViT
into `B = 3` blocks; each block learns to denoise the label's embedding for its own band of noise levels,
given the image (the noisy embedding takes the place of the CLS token). At inference the blocks run as a
short diffusion chain from pure noise to the label: by default one call per block, the compute of one
end-to-end forward pass.

This notebook trains the plain end-to-end ViT and DiffusionBlocks `B = 3` on digits, plots held-out
accuracy against the number of inference steps, and draws reliability diagrams (is the classifier's
confidence its accuracy?). A few minutes on a CPU (the B = 3 model trains in under 2 minutes on 2 cores);
`DBLOCKS_NOTEBOOK_TINY=1` runs tiny settings (CI)."""),
    INSTALL,
    ("code", """import jax
import matplotlib.pyplot as plt
import numpy as np

from dblocks_jax import get_config, make_task, train
from dblocks_jax.evaluation import calibration, plots
from dblocks_jax.tasks.image_classification_eval import held_out

print("JAX", jax.__version__, "on", jax.devices())
tiny = {"model.width": 16, "model.num_heads": 2, "optim.steps": 30, "data.batch_size": 16,
        "optim.warmup_steps": 2} if TINY else {}
configs = {
    "end-to-end ViT": get_config("digits_vit", {"classify.objective": "plain", "model.num_blocks": 1, **tiny}),
    "DiffusionBlocks B = 3": get_config("digits_vit", tiny),
}"""),
    ("markdown", """## Train both
Same six layers, same data and augmentation, same number of optimizer steps per block as the end-to-end
run takes in all (compute parity). Each block of the DiffusionBlocks model trains alone, with its own
optimizer state."""),
    ("code", """results = {}
for i, (name, config) in enumerate(configs.items()):
    print(name)
    results[name] = train(config, f"runs/classification_{i}", overwrite=True, progress=not TINY)
tasks = {name: make_task(config) for name, config in configs.items()}
images, labels = held_out(tasks["end-to-end ViT"])
print(f"{len(labels)} held-out digits")"""),
    ("markdown", """## Accuracy against inference steps
The diffusion chain can take more steps than blocks (each block then runs several times; fewer would skip
blocks). Two chain seeds per point; the end-to-end ViT makes one call."""),
    ("code", """steps = [3, 6] if TINY else [3, 4, 6, 12]  # at least one call per block
chain_seeds = [0, 1]
db = "DiffusionBlocks B = 3"
accuracy_by_steps = {}
for n in steps:
    accs = [np.mean(tasks[db].predict_logits(results[db].params, images, steps=n, seed=s).argmax(-1) == labels)
            for s in chain_seeds]
    accuracy_by_steps[n] = (float(np.mean(accs)), float(np.std(accs)))
e2e_logits = tasks["end-to-end ViT"].predict_logits(results["end-to-end ViT"].params, images)
e2e_accuracy = float(np.mean(e2e_logits.argmax(-1) == labels))
plt.figure(figsize=(5, 3.2))
plt.errorbar(steps, [accuracy_by_steps[n][0] for n in steps], yerr=[accuracy_by_steps[n][1] for n in steps],
             marker="o", capsize=3, label=db)
plt.axhline(e2e_accuracy, ls="--", color="k", label="end-to-end ViT (1 call)")
plt.xlabel("network calls at inference")
plt.ylabel("held-out accuracy")
plt.legend()
plt.show()
for n in steps:
    print(f"{n:>2} calls: {accuracy_by_steps[n][0]:.4f} ± {accuracy_by_steps[n][1]:.4f}")
print(f"end-to-end: {e2e_accuracy:.4f}")"""),
    ("markdown", """## Calibration
Expected calibration error (15 bins) and reliability diagrams at the default number of calls (`B`)."""),
    ("code", """scores, bins = {}, {}
fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6))
for ax, (name, task) in zip(axes, tasks.items()):
    logits = task.predict_logits(results[name].params, images, seed=0)
    scores[name] = calibration.classification_scores(logits, labels)
    bins[name] = calibration.reliability_bins(calibration.softmax(logits), labels)
    plots.plot_reliability(ax, bins[name], f"{name}\\nECE {scores[name]['ece']:.3f}")
axes[0].legend(loc="upper left", fontsize=8)
plt.tight_layout()
plt.show()
for name, s in scores.items():
    print(f"{name}: accuracy {s['accuracy']:.4f}, ECE {s['ece']:.4f}, NLL {s['nll']:.3f}")"""),
    ("markdown", """## Next
- `dblocks evaluate --workdir runs/classification_1 --steps 3,6,12` scores a run over several chain seeds.
- `python experiments/classification.py` compares plain, B = 1 diffusion and B = 2, 3, 4 with 3 seeds, and
  measures the released code's two defects (experiments/README.md)."""),
]


def notebook() -> dict:
    return build_quickstart.notebook(CELLS)


if __name__ == "__main__":
    build_quickstart.write("classification", notebook())
