"""Reading compiled HLO text in tests: which collectives a program has and between which devices."""

import re

import numpy as np

_COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter",
                "collective-broadcast", "ragged-all-to-all")


def collectives(hlo_text: str) -> list[str]:
    """The collective operations in a compiled module's HLO text: one line per op."""
    return [line.strip() for line in hlo_text.splitlines()
            if any(f" {op}(" in line or f" {op}-start(" in line for op in _COLLECTIVES)]


def replica_groups(line: str) -> list[list[int]]:
    """The device groups of one collective HLO line, in either printed form: explicit
    `{{0,1},{2,3}}` or iota `[G,S]<=[dims]T(perm)`."""
    explicit = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", line)
    if explicit:
        return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", explicit.group(1))]
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if not iota:
        raise ValueError(f"cannot read replica_groups in: {line}")
    groups, size = int(iota.group(1)), int(iota.group(2))
    dims = [int(x) for x in iota.group(3).split(",")]
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    if iota.group(4):
        ids = ids.transpose([int(x) for x in iota.group(4).split(",")])
    return ids.reshape(groups, size).tolist()
