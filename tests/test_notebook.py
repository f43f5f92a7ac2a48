"""colab/quickstart.ipynb runs top to bottom on tiny settings (DBLOCKS_NOTEBOOK_TINY=1), so it cannot rot.

The code cells are executed in order in one namespace, as a kernel would; no Jupyter needed.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

from dblocks_jax import runs
from dblocks_jax.tasks.image_generation_eval import evaluate_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "quickstart.ipynb")
NOTEBOOKS = {"quickstart": "build_quickstart.py", "classification": "build_classification.py",
             "language": "build_language.py"}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_current_nbformat_4(name):
    with open(os.path.join(ROOT, "colab", f"{name}.ipynb")) as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4
    assert all(c["cell_type"] in ("markdown", "code") and isinstance(c["source"], list) for c in nb["cells"])
    assert all(c["outputs"] == [] for c in nb["cells"] if c["cell_type"] == "code")
    # The committed notebook is what its colab/build_*.py writes.
    spec = importlib.util.spec_from_file_location(f"build_{name}", os.path.join(ROOT, "colab", NOTEBOOKS[name]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.notebook() == nb


def run_notebook(name: str, tmp_path, monkeypatch) -> dict:
    """Execute the notebook's code cells in order in one namespace, on tiny settings."""
    monkeypatch.setenv("DBLOCKS_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("DBLOCKS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    with open(os.path.join(ROOT, "colab", f"{name}.ipynb")) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        exec(compile(source, f"{name}.ipynb, code cell {i}", "exec"), namespace)
    return namespace


def test_classification_notebook_runs_top_to_bottom_on_tiny_settings(tmp_path, monkeypatch):
    from dblocks_jax.tasks.image_classification_eval import score

    namespace = run_notebook("classification", tmp_path, monkeypatch)
    assert namespace["TINY"] and not namespace["IN_COLAB"]
    db = "DiffusionBlocks B = 3"
    assert namespace["results"][db].block_steps == [30, 30, 30]
    assert sorted(namespace["accuracy_by_steps"]) == [3, 6]
    labels = namespace["labels"]
    assert int(namespace["bins"][db]["count"].sum()) == len(labels) == 297
    # The notebook's scores are those `dblocks evaluate` computes on its own code path.
    task, params = namespace["tasks"][db], namespace["results"][db].params
    reference = score(task, params, steps=None, seeds=(0,))
    for metric in ("accuracy", "ece", "nll"):
        assert namespace["scores"][db][metric] == pytest.approx(reference[metric]["mean"], rel=1e-6)
    assert namespace["accuracy_by_steps"][3][0] == pytest.approx(
        np.mean([score(task, params, steps=3, seeds=(s,))["accuracy"]["mean"] for s in (0, 1)]), rel=1e-6)


def test_language_notebook_runs_top_to_bottom_on_tiny_settings(tmp_path, monkeypatch):
    from dblocks_jax.tasks.masked_lm_eval import score

    namespace = run_notebook("language", tmp_path, monkeypatch)
    assert namespace["TINY"] and namespace["result"].block_steps == [30, 30, 30]
    task, params = namespace["task"], namespace["result"].params
    # The notebook's numbers are `evaluate`'s, on its own code path.
    reference = score(task, params, seeds=(0, 1))
    assert namespace["scores"]["bpc"]["mean"] == pytest.approx(reference["bpc"]["mean"], rel=1e-6)
    assert namespace["shares"] == pytest.approx([s["mean"] for s in reference["bpc_per_block"]], rel=1e-6)
    path, tokens = namespace["path"], namespace["tokens"]
    assert path.shape == (1, 16, 32) and (path[0, 0] == task.mask_id).mean() > 0.5
    assert not (tokens == task.mask_id).any() and (tmp_path / "runs" / "language_md4" / "samples.txt").exists()
    # The autoregressive section: both models scored as `evaluate` scores them, both continue the prompt.
    from dblocks_jax.tasks.autoregressive_lm_eval import score as ar_score

    for name, (ar_task, ar_params, scores) in namespace["ar"].items():
        assert scores["bpc"]["mean"] == pytest.approx(ar_score(ar_task, ar_params, seeds=(0,))["bpc"]["mean"],
                                                      rel=1e-6)
        out = namespace["generations"][name]
        assert out["prompts"][0] == "the function " and all(len(c) == 12 for c in out["continuations"])
    assert "ce_at_sigma_max" in namespace["ar"]["DiffusionBlocks"][2]
    # The recurrent-depth section: equal compute from the compiled FLOPs, the curve as `evaluate` computes it.
    from dblocks_jax.evaluation.text_metrics import held_out
    from dblocks_jax.tasks.recurrent_lm_eval import bpc

    flops, configs = namespace["flops"], namespace["rec_configs"]
    assert configs["Huginn"].optim.steps == max(1, round(20 * flops["DiffusionBlocks"] / flops["Huginn"]))
    for name, (rec_task, rec_params, by_k) in namespace["recurrent"].items():
        assert sorted(by_k, key=int) == ["1", "2"]
        assert by_k["2"]["bpc"]["mean"] == pytest.approx(bpc(rec_task, rec_params, held_out(rec_task), 2)["bpc"],
                                                         rel=1e-6)


def test_notebook_runs_top_to_bottom_on_tiny_settings(tmp_path, monkeypatch):
    namespace = run_notebook("quickstart", tmp_path, monkeypatch)

    assert namespace["TINY"] and not namespace["IN_COLAB"]
    config = namespace["config"]
    assert namespace["result"].block_steps == [config.optim.steps] * 4
    workdir = tmp_path / "runs" / "quickstart"
    assert (workdir / "samples.png").exists()
    assert namespace["grid"].ndim >= 2 and namespace["grid"].size > 0
    records = {r["mode"]: r for r in namespace["memory_records"]}
    assert records["db-sequential"]["memory_bytes"]["total_peak"] < records["e2e"]["memory_bytes"]["total_peak"]

    # The scores are those of the run the notebook trained (read back from its checkpoints) and of
    # fresh blocks of the same config, as `dblocks evaluate` computes them on its own code path: same
    # seeds, sample count and classifier. (At these tiny settings the trained model does not beat
    # the untrained one reliably, so that comparison is not asserted.)
    scores = namespace["scores"]
    for name, untrained in (("trained", False), ("untrained", True)):
        request = runs.request("evaluate", str(workdir), seeds=tuple(namespace["eval_seeds"]), untrained=untrained)
        reference = evaluate_run(request, num_samples=namespace["eval_samples"],
                                 classifier_settings=namespace["classifier_settings"], progress=False)
        for metric in ("frechet_distance", "conditional_accuracy"):
            mean, std = scores[name][metric]
            assert mean == pytest.approx(reference[metric]["mean"], rel=1e-6), (name, metric)
            assert std == pytest.approx(reference[metric]["std"], rel=1e-6, abs=1e-12), (name, metric)
    assert scores["trained"]["frechet_distance"] != scores["untrained"]["frechet_distance"]
