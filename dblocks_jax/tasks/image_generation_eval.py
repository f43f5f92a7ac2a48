"""Evaluation of an image-generation run (`dblocks evaluate`): the Frechet distance of its samples
to the held-out split in the feature space of a classifier trained on the dataset, their
conditional accuracy, and, for TFDS datasets with InceptionV3 weights configured, the standard FID
(Heusel et al. 2017) on the same samples. Mean and std over sampling seeds."""

from __future__ import annotations

import dataclasses
import os

from dblocks_jax import data
from dblocks_jax.evaluation import image_quality, inception
from dblocks_jax.evaluation.stats import summary


def evaluate_run(run, *, num_samples: int | None = None,
                 classifier_settings: image_quality.ClassifierSettings | None = None,
                 inception_weights: str | None = None, progress: bool = True) -> dict:
    """Score a run over its sampling seeds. `run`: the shell's `Request` (its run directory, seeds,
    overrides; `untrained` scores freshly initialised blocks of the same config instead, the
    baseline to beat). Standard FID is added under "fid" for TFDS datasets when weights are
    configured (`image_quality.inception_plan`); otherwise "fid" is null and "fid_skipped" says
    why. Weights that are configured but cannot be loaded are an error, raised before sampling."""
    classifier_settings = classifier_settings or image_quality.ClassifierSettings()
    seeds, untrained = run.seeds, run.untrained
    config = run.reader.config(run.workdirs, run.overrides)
    dataset, size = config.data.dataset, config.data.image_size
    weights, fid_skipped = image_quality.inception_plan(dataset, inception_weights)
    extractor = inception.load_inception(weights) if weights else None
    if progress and fid_skipped and dataset.startswith("tfds:"):
        print(f"evaluate: standard FID skipped: {fid_skipped}", flush=True)
    reference, _ = data.load_split(dataset, "test", size)
    num_samples = num_samples or len(reference)
    classifier = image_quality.FeatureClassifier(dataset, size, classifier_settings)
    task, params, steps = run.load()
    reference_stats = None
    if extractor is not None:
        if progress:
            print(f"evaluate: InceptionV3 features of {len(reference)} held-out images "
                  f"(about 6 GFLOP each: slow without an accelerator)", flush=True)
        reference_stats = image_quality.gaussian_stats(extractor.features(reference))
    fds, accs, fids = [], [], []
    for seed in seeds:
        if progress:
            print(f"evaluate: sampling {num_samples} images with seed {seed}", flush=True)
        images, labels = task.samples(params, seed=seed, num_samples=num_samples)
        fds.append(image_quality.feature_frechet_distance(classifier, images, reference))
        if labels is not None:
            accs.append(image_quality.conditional_accuracy(classifier, images, labels))
        if extractor is not None:
            fids.append(image_quality.inception_fid(extractor, images, reference_stats))
    s = config.sampling
    return {
        "workdir": os.path.abspath(run.workdir), "dataset": dataset, "image_size": size,
        "num_blocks": task.num_blocks, "untrained": untrained, "checkpoint_steps": steps, "num_samples": num_samples,
        "num_reference": len(reference), "seeds": list(seeds),
        "sampler": {"solver": s.solver, "grid": s.grid, "steps": s.steps, "guidance": s.guidance},
        "frechet_distance": summary(fds),
        "conditional_accuracy": summary(accs) if accs else None,
        "classifier": {"path": classifier.path, "held_out_accuracy": classifier.accuracy,
                       "feature_dim": image_quality.FEATURE_DIM, **dataclasses.asdict(classifier_settings)},
        "fid": None if extractor is None else {
            **summary(fids), "weights": extractor.weights_path, "feature_dim": inception.FEATURE_DIM,
            "reference": f"test split at {size}x{size}, resized to {inception.INPUT_SIZE}x{inception.INPUT_SIZE}"},
        "fid_skipped": fid_skipped,
    }
