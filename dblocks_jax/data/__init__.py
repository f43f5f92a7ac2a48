"""Data sources. Image datasets (bundled and TFDS through Grain) live in `images`; their public
functions are re-exported here."""

from dblocks_jax.data.images import (PATTERN_SOURCES, SPLIT_SIZES, Batches, DatasetInfo, dataset_info,
                                     dataset_names, load_split, make_shapes, resize, split_size, tfds_batches,
                                     tfds_source, train_batches)

__all__ = ["PATTERN_SOURCES", "SPLIT_SIZES", "Batches", "DatasetInfo", "dataset_info", "dataset_names", "load_split",
           "make_shapes", "resize", "split_size", "tfds_batches", "tfds_source", "train_batches"]
