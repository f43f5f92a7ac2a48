"""experiments/device_check.py --tiny: every section of the prepared accelerator run, on the CPU."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import device_check  # noqa: E402


def test_device_check_tiny_runs_every_section_and_writes_its_table(tmp_path):
    record = device_check.main(["--tiny", "--out", str(tmp_path)])
    assert record["errors"] == {} and set(record["sections"]) == set(device_check.SECTIONS)
    written = json.load(open(tmp_path / "device_cpu_tiny.json"))
    assert written["sections"].keys() == record["sections"].keys()
    table = open(tmp_path / "device_cpu_tiny.md").read()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6."):
        assert heading in table
    s = record["sections"]
    by_mode = {(r["mode"], r["dtype"]): r for r in s["dit"]["steps"]}
    assert set(by_mode) == {(m, "float32") for m in device_check.TINY_MODES}
    # B = 3 holds a third of the layers: its compiled step is smaller.
    assert by_mode[("db-sequential", "float32")]["step_peak_bytes"] < by_mode[("e2e", "float32")]["step_peak_bytes"]
    assert all(r["attention"] == "xla" and r["step_time_s"] > 0 for r in s["dit"]["steps"])
    assert s["block768"]["within_20_percent"] and s["block768"]["skipped"] == {
        "cudnn": "cuDNN flash attention needs a GPU and bfloat16"}
    e2e, db = s["sampler"]["rows"]
    assert e2e["layer_evals_per_unit"] == 3 * db["layer_evals_per_unit"]
    assert all(s["parallel"][k]["examples_per_s"] > 0 for k in ("parallel", "sequential"))
    assert {r["preset"] for r in s["language"]["steps"]} == {"text8_md4", "lm1b_ar"}
    assert all(b["last_interval_loss"] < b["first_interval_loss"] for b in s["training"]["blocks"].values())


def test_device_check_refuses_bad_arguments_before_compiling(capsys):
    for argv, message in ((["--sections", "dit,fast"], "unknown section 'fast'"),
                          (["--dtypes", "float16"], "'float16'; allowed: float32, bfloat16")):
        with pytest.raises(SystemExit) as exit_:
            device_check.main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
