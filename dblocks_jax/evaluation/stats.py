"""Mean and spread over seeds: how every score of dblocks-jax is reported."""

from __future__ import annotations

import statistics
from typing import Sequence


def summary(values: Sequence[float]) -> dict:
    """Mean, sample std (0 for one value: `describe` says "one seed" instead) and the values."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def describe(s: dict | None, digits: int = 4) -> str:
    """A `summary` as text: "mean +/- std", or "mean (one seed: no spread)" for a single value."""
    if s is None:
        return "n/a"
    if len(s.get("values", ())) == 1:
        return f"{s['mean']:.{digits}f} (one seed: no spread)"
    return f"{s['mean']:.{digits}f} +/- {s['std']:.{digits}f}"
