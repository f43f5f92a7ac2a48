"""Number of blocks: quality, training memory, training time and sampling time against B.

    python experiments/blocks.py --scale small|paper|tiny [--seeds 0,1,2]

Same architecture (`model.num_layers` of the scale) and the same compute for every B: end-to-end trains
N steps, each of the B blocks trains N steps of L/B layers. B = 1 is the end-to-end baseline. At
the `small` scale (L = 12) all of B = 1, 2, 3, 4, 6, 12 run on `shapes`, and B = 1, 4, 12 on
`digits` and `patterns`. Writes experiments/results/blocks/.
"""

import sweep


def points(scale: sweep.Scale) -> list[sweep.Point]:
    layers = scale.config().model.num_layers
    out = []
    for i, dataset in enumerate(scale.datasets):
        for b in sweep.divisors_in(scale.num_blocks if i == 0 else scale.other_num_blocks, layers):
            out.append(sweep.Point(f"{dataset.replace(':', '_')}_B{b}", {"dataset": dataset, "B": b},
                                   {"data.dataset": dataset, "model.num_blocks": b}))
    return out


EXPERIMENT = sweep.Experiment(
    name="blocks", description=__doc__.splitlines()[0], points=points,
    table_metrics=("frechet_distance", "conditional_accuracy", "train_memory_mib", "step_memory_mib",
                   "train_time_s", "sample_time_s", "final_loss"),
    plots=(
        sweep.Plot("quality_vs_B.png", x="B", metrics=("frechet_distance", "conditional_accuracy"),
                   facet="dataset", logx=True, title="sample quality vs number of blocks (equal compute)"),
        sweep.Plot("memory_vs_B.png", x="B", metrics=("train_memory_mib", "step_memory_mib"), series="dataset",
                   logx=True, title="training memory of the compiled step vs number of blocks"),
        sweep.Plot("time_vs_B.png", x="B", metrics=("train_time_s", "sample_time_s"), series="dataset",
                   logx=True, title="training wall time (all blocks) and sampling time vs number of blocks"),
        sweep.SampleGrids("samples_vs_B.png", x="B", facet="dataset"),
    ),
)

if __name__ == "__main__":
    sweep.main(EXPERIMENT)
