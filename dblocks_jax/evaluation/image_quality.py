"""Sample quality in a feature space: the Frechet distance between Gaussian fits of features (FID,
Heusel et al. 2017, when the features are InceptionV3's pool3), and conditional accuracy.

InceptionV3 features (standard FID) mean nothing on 16x16 shapes or 8x8 digits. A small classifier
trained on the dataset's own labels ranks what matters there: held-out real data above blurred
data above noise (tests/test_metrics.py checks this on every bundled dataset). Its penultimate layer
is the feature space of `feature_frechet_distance`, and its predictions give `conditional_accuracy`
(the share of class-conditioned samples it assigns to the requested class). The classifier is
trained once per (dataset, image size), deterministically, and cached as an orbax checkpoint with
its held-out accuracy, so every evaluation of a dataset scores with the same network.

For TFDS datasets (CIFAR-10: the paper's setting) the standard FID comes from
`dblocks_jax.evaluation.inception` when the pretrained weights are configured (`inception_plan`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import scipy.linalg
from flax import nnx

from dblocks_jax import data
from dblocks_jax.evaluation import inception

FEATURE_DIM = 64
_IMAGINARY_TOLERANCE = 1e-3  # relative to the features' scale; see frechet_distance


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)), the Frechet (2-Wasserstein) distance between
    two Gaussians (the FID formula of Heusel et al. 2017), in float64.

    For covariances that are positive semi-definite, C1 C2 is similar to C1^(1/2) C2 C1^(1/2) and
    has real, non-negative eigenvalues, so its square root has a real trace; rounding (singular
    sample covariances, fewer samples than dimensions) leaves small imaginary parts that are
    dropped. A large imaginary part means an input is not a covariance (a negative eigenvalue, a
    non-symmetric or corrupted matrix): dropping it would report a meaningless distance, so, as
    pytorch-fid does, it is an error. "Large" is relative to the features' scale: the largest
    imaginary part on the diagonal of the square root may be at most 1e-3 times the mean magnitude
    of its real diagonal (and at least 1e-3 absolute, pytorch-fid's tolerance)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference FID code does
        eps = np.eye(len(cov1)) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    if np.iscomplexobj(covmean):
        diagonal = np.diagonal(covmean)
        imaginary = float(np.abs(diagonal.imag).max())
        tolerance = _IMAGINARY_TOLERANCE * max(1.0, float(np.abs(diagonal.real).mean()))
        if not imaginary <= tolerance:
            raise ValueError(f"the square root of C1 C2 has an imaginary component of {imaginary:.3g} on its "
                             f"diagonal (tolerance {tolerance:.3g}): the covariances are not positive "
                             f"semi-definite, so the Frechet distance is undefined")
        covmean = covmean.real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (N, D) features in float64: the Gaussian fit that FID compares."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


class Classifier(nnx.Module):
    """A small CNN; `features` (the penultimate layer) is the space the Frechet distance uses."""

    def __init__(self, channels: int, num_classes: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, 32, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=(2, 2), rngs=rngs)
        self.conv3 = nnx.Conv(64, 64, (3, 3), strides=(2, 2), rngs=rngs)
        self.dense = nnx.Linear(64, FEATURE_DIM, rngs=rngs)
        self.head = nnx.Linear(FEATURE_DIM, num_classes, rngs=rngs)

    def features(self, x):
        x = nnx.gelu(self.conv3(nnx.gelu(self.conv2(nnx.gelu(self.conv1(x))))))
        return nnx.gelu(self.dense(x.mean(axis=(1, 2))))

    def __call__(self, x):
        return self.head(self.features(x))


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    steps: int = 1500
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0


def cache_dir() -> str:
    """Where trained classifiers are kept: $DBLOCKS_CACHE, else ~/.cache/dblocks_jax."""
    return os.environ.get("DBLOCKS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dblocks_jax"))


class FeatureClassifier:
    """A trained classifier for one (dataset, image size): `features`, `predict`, `accuracy`."""

    def __init__(self, dataset: str, image_size: int, settings: ClassifierSettings = ClassifierSettings()):
        self.dataset, self.image_size, self.settings = dataset, image_size, settings
        info = data.dataset_info(dataset)
        abstract = nnx.eval_shape(lambda: Classifier(info.channels, info.num_classes, rngs=nnx.Rngs(0)))
        self.graphdef, abstract_params = nnx.split(abstract, nnx.Param)
        tag = f"{dataset.replace(':', '_')}_{image_size}px_s{settings.steps}_seed{settings.seed}"
        self.path = os.path.join(cache_dir(), "classifiers", tag)
        meta_path = os.path.join(self.path, "meta.json")
        if os.path.exists(meta_path):
            try:
                self.params = ocp.StandardCheckpointer().restore(
                    os.path.join(self.path, "params"), jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params))
                with open(meta_path) as f:
                    self.accuracy = json.load(f)["held_out_accuracy"]
            except Exception as err:
                raise ValueError(f"cannot load the cached classifier in {self.path} ({err}); delete that "
                                 f"directory to retrain it") from err
        else:
            self.params, self.accuracy = self._train(info)
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save(os.path.join(self.path, "params"), self.params, force=True)
            checkpointer.wait_until_finished()
            with open(meta_path, "w") as f:
                json.dump({"dataset": dataset, "image_size": image_size, "held_out_accuracy": self.accuracy,
                           **dataclasses.asdict(settings)}, f, indent=1)
        self._features = jax.jit(lambda p, x: nnx.merge(self.graphdef, p).features(x))
        self._logits = jax.jit(lambda p, x: nnx.merge(self.graphdef, p)(x))

    def _train(self, info) -> tuple:
        s = self.settings
        images, labels = data.load_split(self.dataset, "train", self.image_size)
        graphdef = self.graphdef
        params = nnx.split(Classifier(info.channels, info.num_classes, rngs=nnx.Rngs(s.seed)), nnx.Param)[1]
        tx = optax.adam(optax.cosine_decay_schedule(s.learning_rate, s.steps))
        opt_state = tx.init(params)

        @jax.jit
        def step(params, opt_state, x, y):
            def loss_fn(p):
                logits = nnx.merge(graphdef, p)(x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            grads = jax.grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        batches = data.Batches(images, labels, min(s.batch_size, len(images)), seed=(s.seed, 7))
        for _ in range(s.steps):
            batch = next(batches)
            params, opt_state = step(params, opt_state, batch["image"], batch["label"])
        test_images, test_labels = data.load_split(self.dataset, "test", self.image_size)
        logits = _batched(lambda x: nnx.merge(graphdef, params)(x), test_images)
        return params, float(np.mean(np.argmax(logits, -1) == test_labels))

    def features(self, images: np.ndarray) -> np.ndarray:
        return _batched(lambda x: self._features(self.params, x), images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(_batched(lambda x: self._logits(self.params, x), images), axis=-1)


def _batched(fn, images: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([np.asarray(fn(jnp.asarray(images[i:i + batch], jnp.float32)))
                           for i in range(0, len(images), batch)])


def feature_frechet_distance(classifier: FeatureClassifier, images: np.ndarray, reference: np.ndarray) -> float:
    """The Frechet distance of `images` to `reference` in the classifier's feature space: FID's
    formula with features that mean something at this dataset's size."""
    return frechet_distance(*gaussian_stats(classifier.features(images)),
                            *gaussian_stats(classifier.features(reference)))


def conditional_accuracy(classifier: FeatureClassifier, images: np.ndarray, requested: np.ndarray) -> float:
    """The share of `images` the classifier assigns to the `requested` class: whether conditioning
    works, which a distance between the pooled image distributions cannot tell."""
    return float(np.mean(classifier.predict(images) == np.asarray(requested)))


def inception_fid(extractor: inception.InceptionFeatures, images: np.ndarray, reference_stats: tuple) -> float:
    """Standard FID of `images` against precomputed `gaussian_stats` of the reference's pool3
    features (computed once per evaluation: the reference is the costly half when it is large)."""
    return frechet_distance(*gaussian_stats(extractor.features(images)), *reference_stats)


def inception_plan(dataset: str, inception_weights: str | None) -> tuple[str | None, str | None]:
    """(weights file to use, None) or (None, why standard FID is skipped).

    An explicit `inception_weights` is used for any dataset; otherwise TFDS datasets use
    $DBLOCKS_INCEPTION_WEIGHTS when set, and bundled datasets (8-32 px toys, where Inception features
    mean nothing) are skipped."""
    if inception_weights:
        return inception_weights, None
    if not dataset.startswith("tfds:"):
        return None, (f"bundled dataset {dataset!r}: InceptionV3 features mean nothing at this size "
                      f"(pass inception_weights to compute standard FID anyway)")
    if os.environ.get(inception.WEIGHTS_ENV):
        return os.environ[inception.WEIGHTS_ENV], None
    return None, f"no InceptionV3 weights configured: {inception.HOW_TO_GET}"
