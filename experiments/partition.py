"""Partitioning: equi-probability bands vs bands uniform in log sigma, at B = 3 and 4.

    python experiments/partition.py --scale small|paper|tiny [--seeds 0,1,2]

Equal layer splits (L = 12: 4-4-4 and 3-3-3-3) under both partitions, and at L = 12 the paper's
uneven splits 3-6-3, 6-4-2 and 2-4-6 (`model.layer_split`) under equi-probability. Runs that train the
same model as the block sweep (equi-probability) reuse its trained parameters. Writes
experiments/results/partition/.
"""

import sweep

# The paper's uneven splits of L = 12 layers into B = 3 blocks (4-4-4 is the even one).
UNEVEN_SPLITS = ("3,6,3", "6,4,2", "2,4,6")


def points(scale: sweep.Scale) -> list[sweep.Point]:
    layers = scale.config().model.num_layers
    blocks = sweep.divisors_in((3, 4), layers) or (scale.config().model.num_blocks,)
    even = {b: "-".join([str(layers // b)] * b) for b in blocks}
    out = [sweep.Point(f"B{b}_{p}", {"B": b, "partition": p, "layers": even[b], "variant": f"{p} {even[b]}"},
                       {"model.num_blocks": b, "partition.strategy": p})
           for b in blocks for p in ("equiprobable", "uniform_log")]
    if layers == 12:  # the paper's uneven splits are of 12 layers
        out += [sweep.Point(f"B3_equiprobable_{split.replace(',', '-')}",
                            {"B": 3, "partition": "equiprobable", "layers": split.replace(",", "-"),
                             "variant": f"equiprobable {split.replace(',', '-')}"},
                            {"model.num_blocks": 3, "partition.strategy": "equiprobable",
                             "model.layer_split": split})
                for split in UNEVEN_SPLITS]
    return out


EXPERIMENT = sweep.Experiment(
    name="partition", description=__doc__.splitlines()[0], points=points,
    table_metrics=("frechet_distance", "conditional_accuracy", "final_loss", "train_time_s"),
    hidden_params=("variant",),
    plots=(
        sweep.Plot("quality_vs_partition.png", x="layers", metrics=("frechet_distance", "conditional_accuracy"),
                   series="partition", facet="B",
                   title="quality: equi-probability vs uniform-in-log-sigma bands, even and uneven layer splits"),
        sweep.SampleGrids("samples_vs_partition.png", x="variant", facet="B"),
    ),
)

if __name__ == "__main__":
    sweep.main(EXPERIMENT)
