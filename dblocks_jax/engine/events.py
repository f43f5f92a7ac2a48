"""TensorBoard event files of a run (`run.tensorboard`), written with tensorboardX (no TensorFlow).

One writer per block, in `<workdir>/tensorboard/block_XXX`, with the block's own optimizer step as
the step axis: TensorBoard then overlays the blocks as runs of one tag, as `dblocks plot` does, and
a block's curve is comparable across schedules. A resumed block's writer starts with a purge at its
checkpoint's step + 1, so the steps the interrupted process logged past its checkpoint are dropped
by TensorBoard, and those trained again appear once. Run-level numbers (an evaluation) go to
`<workdir>/tensorboard` itself.
"""

from __future__ import annotations

import numbers
import os
import sys
import time
from typing import Any, Mapping

TAGS = ("loss", "lr", "grad_norm")  # of a metrics record, logged as train/<name>


def _unique() -> str:
    """A file-name suffix that orders two event files of one second (tensorboardX names a file by
    its second and host only: a resume in the same second would truncate the first file)."""
    return f".{time.time_ns():020d}.{os.getpid()}"


def event_dir(workdir: str, block: int | None = None) -> str:
    root = os.path.join(workdir, "tensorboard")
    return root if block is None else os.path.join(root, f"block_{block:03d}")


class BlockEvents:
    """Per-block scalar writers, opened on a block's first record."""

    def __init__(self, workdir: str, block_steps: Mapping[int, int] | None = None):
        self.workdir, self.start = workdir, dict(block_steps or {})
        self.writers: dict[int, Any] = {}

    def writer(self, block: int):
        if block not in self.writers:
            from tensorboardX import SummaryWriter

            self.writers[block] = SummaryWriter(event_dir(self.workdir, block), flush_secs=30,
                                                purge_step=self.start.get(block, 0) + 1, filename_suffix=_unique())
        return self.writers[block]

    def write(self, records: list[dict], steps_per_s: float) -> None:
        """A metrics record per block (its `block_step`), and the run's steps/s over the interval."""
        for r in records:
            w = self.writer(r["block"])
            for name in TAGS:
                w.add_scalar(f"train/{name}", r[name], r["block_step"])
            w.add_scalar("train/steps_per_s", steps_per_s, r["block_step"])

    def close(self) -> None:
        """Close every writer, each on its own: one that cannot flush does not keep the others open."""
        for block, w in self.writers.items():
            try:
                w.close()
            except OSError as err:
                print(f"note: TensorBoard events of block {block} not flushed: {err}", file=sys.stderr)
        self.writers = {}


def scalars_of(result: Mapping, prefix: str = "") -> dict[str, float]:
    """{tag: number} of a result dict: numbers as they are, a {"mean": ...} summary by its mean,
    nested dicts by their path; lists and text are left out."""
    out = {}
    for key, value in result.items():
        tag = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            out[tag] = float(value)
        elif isinstance(value, Mapping):
            if isinstance(value.get("mean"), numbers.Real):
                out[tag] = float(value["mean"])
            else:
                out.update(scalars_of(value, f"{tag}/"))
    return out


def write_result(workdir: str, name: str, result: Mapping, step: int) -> None:
    """The numbers of `result` as `<name>/<key>` scalars at `step` in the run's own event files."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(event_dir(workdir), filename_suffix=_unique()) as w:
        for tag, value in scalars_of(result).items():
            w.add_scalar(f"{name}/{tag}", value, step)
