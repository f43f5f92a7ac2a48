"""Overlap: the training band of each block widened by gamma in {0, 0.05, 0.1, 0.2} (log space).

    python experiments/overlap.py --scale small|paper|tiny [--seeds 0,1,2]

At the scale's default B (4 at `small`, 3 at `paper`). gamma = 0.05 is the default, so that point
reuses the block sweep's trained parameters. Writes experiments/results/overlap/.
"""

import sweep

GAMMAS = (0.0, 0.05, 0.1, 0.2)


def points(scale: sweep.Scale) -> list[sweep.Point]:
    b = scale.config().model.num_blocks
    return [sweep.Point(f"B{b}_gamma{g:g}", {"B": b, "gamma": g}, {"partition.overlap": g}) for g in GAMMAS]


EXPERIMENT = sweep.Experiment(
    name="overlap", description=__doc__.splitlines()[0], points=points,
    table_metrics=("frechet_distance", "conditional_accuracy", "final_loss", "train_time_s"),
    plots=(
        sweep.Plot("quality_vs_gamma.png", x="gamma", metrics=("frechet_distance", "conditional_accuracy"),
                   title="sample quality vs band overlap gamma"),
        sweep.SampleGrids("samples_vs_gamma.png", x="gamma"),
    ),
)

if __name__ == "__main__":
    sweep.main(EXPERIMENT)
