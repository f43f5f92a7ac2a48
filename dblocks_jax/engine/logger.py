"""Training metrics: kept on the device between log intervals, checked for NaN/Inf, written to
metrics.jsonl and TensorBoard event files (`engine.events`), shown in a progress bar.

The host never waits for the device between log intervals: per-step (loss, gradient norm) pairs
stay on the device until a flush fetches them all in one transfer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from dblocks_jax.engine import distributed
from dblocks_jax.engine.events import BlockEvents
from dblocks_jax.engine.trainer import lr_schedule


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss or gradient is NaN or Inf; the message names the block and step."""


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line torn by a crash counts as past any resume point."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class MetricsLogger:
    def __init__(self, config, num_blocks: int, workdir: str | None, total: int, progress: bool, position: int = 0,
                 initial: int = 0, block_steps: dict[int, int] | None = None):
        self.config, self.num_blocks = config, num_blocks
        self.schedule, self.start = lr_schedule(config.optim), time.perf_counter()
        self.interval_start = self.start
        # `block_steps`: each block's steps at the start (a resume purges what was logged past them).
        self.events = BlockEvents(workdir, block_steps) if workdir and config.run.tensorboard else None
        name = "metrics.jsonl" if jax.process_count() == 1 else f"metrics.process{jax.process_index()}.jsonl"
        self.path = os.path.join(workdir, name) if workdir else None
        if self.path and os.path.exists(self.path):  # a resumed run: drop what was logged after its checkpoint
            with open(self.path) as f:
                kept = [line for line in f if _logged_step(line) <= position]
            with open(self.path, "w") as f:
                f.writelines(kept)
        self.pending: list[tuple[int, list[int], list[int], Any, Callable | None, int]] = []
        self.last_loss: dict[int, float] = {}
        self.bar = tqdm(total=total, initial=initial, unit="step", disable=not progress, dynamic_ncols=True,
                        mininterval=0.5, desc=f"{num_blocks} block(s), {config.schedule.name}")

    def set_block(self, b: int) -> None:
        if self.config.schedule.name == "sequential":
            self.bar.set_description(f"block {b + 1}/{self.num_blocks}")

    def record(self, step: int, blocks: list[int], block_steps: list[int], metrics: Any,
               fetch: Callable | None = None, count: int | None = None) -> None:
        """Keep (loss, gradient norm) of one step of `blocks`, still on the device. `fetch` turns
        the metrics into {position: (loss, grad_norm)} on the host (default: device_get of one
        block's scalars); `count` is the number of block steps for the progress bar."""
        self.pending.append((step, blocks, block_steps, metrics, fetch, count or len(blocks)))

    def _host_values(self) -> list[tuple[int, int, int, float, float]]:
        """(step, block, block step, loss, grad norm) of every pending block step, fetched from the
        device in one transfer (or, for parallel steps, one call of their `fetch`)."""
        plain = jax.device_get([e[3] for e in self.pending if e[4] is None])
        stacked = [e for e in self.pending if e[4] is not None]
        fetched = stacked[0][4]([e[3] for e in stacked]) if stacked else {}  # {position: [per entry]}
        out, k, j = [], 0, 0
        for step, blocks, block_steps, _, fetch, _ in self.pending:
            if fetch is None:
                rows = [plain[k]]
                k += 1
            else:
                rows = [fetched[i][j] for i in sorted(fetched)]
                j += 1
            out.extend((step, b, n, *row) for b, n, row in zip(blocks, block_steps, rows))
        return out

    def flush(self) -> None:
        if not self.pending:
            return
        entries = self._host_values()
        for step, block, block_step, loss, grad_norm in entries:
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                what = f"loss ({loss})" if not np.isfinite(loss) else f"gradient norm ({grad_norm}, loss {loss})"
                raise NonFiniteLossError(
                    f"non-finite {what} in block {block} at its step {block_step + 1} (global step {step + 1}); "
                    f"training stopped, that update was not applied and nothing was saved after it")
        per_block: dict[int, list] = {}
        for step, block, block_step, loss, grad_norm in entries:
            per_block.setdefault(block, []).append((step, block_step, float(loss), float(grad_norm)))
        records = []
        for block, rows in sorted(per_block.items()):
            self.last_loss[block] = float(np.mean([r[2] for r in rows]))
            step, block_step = rows[-1][:2]
            records.append({"step": step + 1, "block": block, "block_step": block_step + 1,
                            "loss": self.last_loss[block], "grad_norm": float(np.mean([r[3] for r in rows])),
                            "lr": float(jax.device_get(self.schedule(block_step))),  # explicit: no implicit sync
                            "elapsed_s": round(time.perf_counter() - self.start, 3)})
        if self.path:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        count, now = sum(e[5] for e in self.pending), time.perf_counter()
        if self.events is not None:
            try:
                self.events.write(records, count / max(now - self.interval_start, 1e-9))
            except OSError as err:  # the curves are a view: training and metrics.jsonl go on without them
                print(f"note: TensorBoard events stopped ({err}); metrics.jsonl has every record", file=sys.stderr)
                self.events.close()
                self.events = None
        self.interval_start = now
        self.bar.update(count)
        self.bar.set_postfix_str(" ".join(f"b{b}={v:.3f}" for b, v in sorted(self.last_loss.items())))
        self.pending.clear()

    def flush_everywhere(self) -> None:
        """Flush; in a multi-process run every process learns whether any stopped, so that none
        waits forever in the next collective."""
        error = None
        try:
            self.flush()
        except Exception as err:  # NonFiniteLossError, or a failed metrics write
            error = err
        distributed.raise_everywhere(error, lambda: NonFiniteLossError(
            "another process stopped (non-finite loss or error; see its log)"))

    def close(self) -> None:
        self.bar.close()
        if self.events is not None:
            self.events.close()
