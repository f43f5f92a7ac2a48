"""Mean and spread over seeds: how every score of dblocks-jax is reported."""

from __future__ import annotations

import statistics
from typing import Sequence


def summary(values: Sequence[float]) -> dict:
    """Mean, sample std (0 for one value) and the values."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}
