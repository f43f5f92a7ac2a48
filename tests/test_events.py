"""TensorBoard event files (`run.tensorboard`): per block, the logged metrics at the block's steps;
a resumed run's files read as one curve with no step twice or missing; evaluation results beside
them. Read back through the TFRecord framing and tensorboardX's protos: no TensorBoard needed."""

import glob
import json
import os
import struct

import pytest
from conftest import tiny_config
from tensorboardX.proto.event_pb2 import Event, SessionLog

from dblocks_jax import runs
from dblocks_jax.engine import events


def read_scalars(directory: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of a directory's event files in name order, as TensorBoard reads them:
    a START session log at step s drops what earlier files logged at steps >= s."""
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {t: {s: v for s, v in by.items() if s < event.step} for t, by in scalars.items()}
            for value in event.summary.value:
                by_step = scalars.setdefault(value.tag, {})
                assert event.step not in by_step, (path, value.tag, event.step)  # never logged twice
                by_step[event.step] = value.simple_value
    return scalars


def logged(workdir: str, block: int) -> dict[int, dict]:
    return {r["block_step"]: r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
            if r["block"] == block}


class Stop(Exception):
    pass


def test_a_resumed_run_logs_every_block_step_once_as_metrics_jsonl_does(tmp_path):
    config = tiny_config(num_blocks=2, num_layers=2, steps=6, log_every=2, checkpoint_every=4,
                         schedule="sequential")
    workdir = str(tmp_path / "run")

    def stop(t, block, resident):
        if t + 1 == 11:  # block 1 at its step 5: logged at 2 and 4, checkpointed at 2 only (run step 8)
            raise Stop

    with pytest.raises(Stop):
        runs.train(config, workdir, progress=False, write_artifacts=False, on_step=stop)
    first = read_scalars(events.event_dir(workdir, 1))
    assert sorted(first["train/loss"]) == [2, 4]  # what the interrupted run wrote
    runs.train(config, workdir, resume=True, progress=False, write_artifacts=False)
    for b in range(2):
        scalars = read_scalars(events.event_dir(workdir, b))
        assert set(scalars) == {"train/loss", "train/lr", "train/grad_norm", "train/steps_per_s"}
        records = logged(workdir, b)
        assert sorted(records) == [2, 4, 6]
        for tag in ("loss", "lr", "grad_norm"):
            assert scalars[f"train/{tag}"] == pytest.approx({s: r[tag] for s, r in records.items()}, rel=1e-6)
        assert all(v > 0 for v in scalars["train/steps_per_s"].values())
    # Block 1's steps past its checkpoint were trained again: the new values replace the old ones.
    assert len(glob.glob(os.path.join(events.event_dir(workdir, 1), "events.out.tfevents.*"))) == 2

    off = str(tmp_path / "off")
    runs.train(config.override({"run.tensorboard": False}), off, progress=False, write_artifacts=False)
    assert not os.path.exists(events.event_dir(off))


def test_evaluation_numbers_go_beside_the_curves(tmp_path):
    result = {"task": "x", "bpc": {"mean": 1.5, "std": 0.1, "values": [1.4, 1.6]}, "steps": 8, "ok": True,
              "per_block": {"0": {"mean": 2.0}, "1": 3}, "samples": ["ab"]}
    assert events.scalars_of(result) == {"bpc": 1.5, "steps": 8.0, "per_block/0": 2.0, "per_block/1": 3.0}
    events.write_result(str(tmp_path), "eval", result, 40)
    assert read_scalars(events.event_dir(str(tmp_path))) == {
        "eval/bpc": {40: 1.5}, "eval/steps": {40: 8.0}, "eval/per_block/0": {40: 2.0}, "eval/per_block/1": {40: 3.0}}


def test_events_that_cannot_be_written_stop_with_a_note_not_the_training(tmp_path, monkeypatch, capsys):
    def refuse(self, records, steps_per_s):
        raise OSError("No space left on device")

    monkeypatch.setattr(events.BlockEvents, "write", refuse)
    config = tiny_config(num_blocks=2, num_layers=2, steps=4, log_every=2)
    result = runs.train(config, str(tmp_path / "run"), progress=False, write_artifacts=False)
    assert result.block_steps == [4, 4] and "note: TensorBoard events stopped (No space left" in capsys.readouterr().err
    assert max(logged(str(tmp_path / "run"), 1)) == 4  # metrics.jsonl went on to the end
