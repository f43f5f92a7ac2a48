"""Schedules: interleaved (the paper's, every block resident) vs sequential (one block at a time).

    python experiments/schedules.py --scale small|paper|tiny [--seeds 0,1,2]

Equal compute: every block trains N steps under both schedules. The noise and data of a block step
depend only on (seed, block, block step), so both schedules train the same trajectories and the
quality should agree; memory should not. Interleaved points reuse the block sweep's trained
parameters. Writes experiments/results/schedules/.
"""

import sweep


def points(scale: sweep.Scale) -> list[sweep.Point]:
    b = scale.config().model.num_blocks
    return [sweep.Point(f"B{b}_{s}", {"B": b, "schedule": s}, {"schedule.name": s})
            for s in ("interleaved", "sequential")]


EXPERIMENT = sweep.Experiment(
    name="schedules", description=__doc__.splitlines()[0], points=points,
    table_metrics=("frechet_distance", "conditional_accuracy", "train_memory_mib", "train_time_s", "final_loss"),
    plots=(
        sweep.Plot("schedules.png", x="schedule",
                   metrics=("frechet_distance", "conditional_accuracy", "train_memory_mib", "train_time_s"),
                   title="interleaved vs sequential at equal compute"),
    ),
)

if __name__ == "__main__":
    sweep.main(EXPERIMENT)
