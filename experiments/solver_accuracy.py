"""Sampler accuracy against the exact probability-flow ODE solution on Gaussian data.

    python experiments/solver_accuracy.py

Prints a markdown table of RMS errors for Euler and Heun on both sigma grids at equal numbers of
network evaluations (Heun with K steps costs 2K + 1 evaluations, Euler with 2K steps 2K + 1).
"""

from dblocks_jax.engine.reference import solver_error
from dblocks_jax.engine.solvers import evaluations_per_sample


def main() -> None:
    print("| D evaluations | grid | Euler (2K steps) | Heun (K steps) |")
    print("| ---: | --- | ---: | ---: |")
    for k in (8, 16, 32, 64, 128):
        for grid in ("equiprobable", "karras"):
            euler, heun = solver_error("euler", 2 * k, grid), solver_error("heun", k, grid)
            print(f"| {evaluations_per_sample('heun', k)} | {grid} | {euler:.2e} | {heun:.2e} |")


if __name__ == "__main__":
    main()
