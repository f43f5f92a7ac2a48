"""colab/quickstart.ipynb runs top to bottom on tiny settings (DBLOCKS_NOTEBOOK_TINY=1), so it cannot rot.

The code cells are executed in order in one namespace, as a kernel would; no Jupyter needed.
"""

import importlib.util
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "quickstart.ipynb")


def test_notebook_is_current_nbformat_4():
    with open(NOTEBOOK) as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4
    assert all(c["cell_type"] in ("markdown", "code") and isinstance(c["source"], list) for c in nb["cells"])
    assert all(c["outputs"] == [] for c in nb["cells"] if c["cell_type"] == "code")
    # The committed notebook is what colab/build_quickstart.py writes.
    spec = importlib.util.spec_from_file_location("build", os.path.join(ROOT, "colab", "build_quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.notebook() == nb


def test_notebook_runs_top_to_bottom_on_tiny_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("DBLOCKS_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("DBLOCKS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    with open(NOTEBOOK) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        exec(compile(source, f"quickstart.ipynb, code cell {i}", "exec"), namespace)

    assert namespace["TINY"] and not namespace["IN_COLAB"]
    assert namespace["result"].block_steps == [namespace["config"].steps] * 4
    assert (tmp_path / "runs" / "quickstart" / "samples.png").exists()
    assert namespace["grid"].ndim >= 2 and namespace["grid"].size > 0
    records = {r["mode"]: r for r in namespace["memory_records"]}
    assert records["db-sequential"]["memory_bytes"]["total_peak"] < records["e2e"]["memory_bytes"]["total_peak"]
    scores = namespace["scores"]
    for name in ("trained", "untrained"):
        fd, acc = scores[name]["frechet_distance"], scores[name]["conditional_accuracy"]
        assert np.isfinite(fd).all() and 0.0 <= acc[0] <= 1.0
