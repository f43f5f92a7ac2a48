"""Overlap: the training band of each block widened by gamma in {0, 0.05, 0.1, 0.2} (log space).

    python experiments/overlap.py --scale small|paper|tiny [--seeds 0,1,2]

At the scale's default B (4 at `small`, 3 at `paper`). gamma = 0.05 is the default, so that point
reuses the block sweep's trained parameters. Writes experiments/results/overlap/.
"""

from dblocks_jax import sweeps

GAMMAS = (0.0, 0.05, 0.1, 0.2)


def points(scale: sweeps.Scale) -> list[sweeps.Point]:
    b = scale.config().num_blocks
    return [sweeps.Point(f"B{b}_gamma{g:g}", {"B": b, "gamma": g}, {"overlap": g}) for g in GAMMAS]


EXPERIMENT = sweeps.Experiment(
    name="overlap", description=__doc__.splitlines()[0], points=points,
    table_metrics=("frechet_distance", "conditional_accuracy", "final_loss", "train_time_s"),
    plots=(
        sweeps.Plot("quality_vs_gamma.png", x="gamma", metrics=("frechet_distance", "conditional_accuracy"),
                    title="sample quality vs band overlap gamma"),
        sweeps.SampleGrids("samples_vs_gamma.png", x="gamma"),
    ),
)

if __name__ == "__main__":
    sweeps.main(EXPERIMENT)
