"""Batches moved to the device ahead of the step that reads them.

`jax.device_put` is asynchronous: putting batch t+1 (and t+2) while step t runs overlaps the
host-to-device copy with compute, so the accelerator does not wait on the PCIe transfer of the
next batch. On a CPU device the copy is a memcpy and costs nothing worth measuring.

A prefetched stream has read ahead of what the loop consumed, so its position for a checkpoint
is the one recorded *before* the next unconsumed batch was drawn: a resume restarts exactly at
the batch the loop would have read next (bitwise resume depends on it).
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import jax

from dblocks_jax.engine import rundir


class DevicePrefetch:
    """An iterator over `stream`'s batches, `size` of them already on `device` (default: the
    first local device). `state()`/`restore()` speak for the batch the loop reads next."""

    def __init__(self, stream: Iterator, size: int = 2, device: Any = None, block: int = 0):
        if size < 1:
            raise ValueError(f"prefetch size {size}; allowed: an integer >= 1")
        self.stream, self.size, self.block = stream, size, block
        self.device = device if device is not None else jax.local_devices()[0]
        self.queue: collections.deque = collections.deque()  # (stream position before the batch, batch)

    def __iter__(self):
        return self

    def __next__(self):
        self._fill()
        if not self.queue:
            raise StopIteration
        batch = self.queue.popleft()[1]
        self._fill()  # `size` batches travel while the step that reads `batch` runs
        return batch

    def _fill(self) -> None:
        while len(self.queue) < self.size:
            position = rundir.stream_state(self.stream)
            try:
                batch = next(self.stream)
            except StopIteration:
                return
            self.queue.append((position, jax.device_put(batch, self.device)))

    def state(self) -> Any:
        """The stream's position at the next batch this iterator will return."""
        return self.queue[0][0] if self.queue else rundir.stream_state(self.stream)

    def restore(self, state: Any) -> None:
        self.queue.clear()
        rundir.restore_stream(self.stream, state, self.block)

    def close(self) -> None:
        """Drop the batches read ahead (their device memory), once the block is done: nothing reads
        the stream again, so it is not moved back (a Grain stream would restart its readers)."""
        self.queue.clear()
