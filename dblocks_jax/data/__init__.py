"""Data sources. Image datasets (bundled and TFDS through Grain) live in `images`, their public
functions re-exported here; `augment` holds crop and flip; `text` holds the character corpora of
the language tasks (imported on their own: `from dblocks_jax.data import text`)."""

from dblocks_jax.data.images import (PATTERN_SOURCES, SPLIT_SIZES, Batches, DatasetInfo, dataset_info,
                                     dataset_names, load_split, make_shapes, resize, split_size, tfds_batches,
                                     tfds_source, train_batches)

__all__ = ["PATTERN_SOURCES", "SPLIT_SIZES", "Batches", "DatasetInfo", "dataset_info", "dataset_names", "load_split",
           "make_shapes", "resize", "split_size", "tfds_batches", "tfds_source", "train_batches"]
