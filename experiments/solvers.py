"""Solvers: Euler vs Heun at equal network evaluations, on both sigma grids, against the budget.

    python experiments/solvers.py --scale small|paper|tiny [--seeds 0,1,2]

Sampling only: every point samples the model that the block sweep trains at the scale's default B
(its trained parameters are reused; they are trained here if missing). Euler with 2K steps and
Heun with K steps both cost 2K + 1 evaluations of D. Writes experiments/results/solvers/.
"""

import sweep

HEUN_STEPS = {"tiny": (2, 4), "small": (3, 6, 12, 24), "paper": (5, 10, 25, 50)}


def points(scale: sweep.Scale) -> list[sweep.Point]:
    out = []
    for grid in ("equiprobable", "karras"):
        for k in HEUN_STEPS.get(scale.name, HEUN_STEPS["small"]):
            evals = 2 * k + 1
            for solver, steps in (("euler", 2 * k), ("heun", k)):
                out.append(sweep.Point(f"{grid}_{solver}_K{steps}",
                                       {"grid": grid, "solver": solver, "steps": steps, "evals": evals},
                                       {"sampling.grid": grid, "sampling.solver": solver, "sampling.steps": steps}))
    return out


EXPERIMENT = sweep.Experiment(
    name="solvers", description=__doc__.splitlines()[0], points=points,
    table_metrics=("frechet_distance", "conditional_accuracy", "network_evals", "sample_time_s"),
    plots=(
        sweep.Plot("quality_vs_evals.png", x="evals", metrics=("frechet_distance", "conditional_accuracy"),
                   series="solver", facet="grid", logx=True, logy=("frechet_distance",),
                   title="sample quality vs network evaluations per sample (Euler 2K steps, Heun K steps)"),
    ),
)

if __name__ == "__main__":
    sweep.main(EXPERIMENT)
