import json

import numpy as np
import pytest

from dblocks_jax import data


def test_shapes_are_deterministic_labelled_and_scaled():
    images, labels = data.make_shapes(300, 16, seed=3)
    again, again_labels = data.make_shapes(300, 16, seed=3)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert images.shape == (300, 16, 16, 1) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() <= 1.0
    assert set(np.unique(labels)) == {0, 1, 2}
    assert not np.array_equal(images, data.make_shapes(300, 16, seed=4)[0])


def test_shape_classes_differ_in_their_geometry():
    images, labels = data.make_shapes(3000, 32, seed=0)
    foreground = images[..., 0] > -0.9
    # Fill ratio of the bounding box: square ~1, circle ~pi/4, triangle ~1/2.
    fill = []
    for mask in foreground:
        rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
        fill.append(mask.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)))
    fill = np.array(fill)
    means = [fill[labels == c].mean() for c in range(3)]
    assert means[1] > means[0] > means[2], means  # square > circle > triangle


def test_splits_differ_and_batches_are_deterministic_and_resumable():
    train_images, _ = data.load_split("shapes", "train", 8)
    test_images, _ = data.load_split("shapes", "test", 8)
    assert len(train_images) == data.SPLIT_SIZES["train"] and len(test_images) == data.SPLIT_SIZES["test"]
    assert not np.array_equal(train_images[:10], test_images[:10])

    images, labels = data.make_shapes(40, 8, seed=0)
    stream = data.Batches(images, labels, 16, seed=(1, 2))
    first = [next(stream) for _ in range(4)]  # crosses an epoch boundary (40 // 16 = 2 per epoch)
    state = stream.state()
    rest = [next(stream) for _ in range(3)]
    resumed = data.Batches(images, labels, 16, seed=(1, 2))
    resumed.restore(state)
    for a, b in zip(rest, [next(resumed) for _ in range(3)]):
        np.testing.assert_array_equal(a["image"], b["image"])
    replay = data.Batches(images, labels, 16, seed=(1, 2))
    np.testing.assert_array_equal(first[0]["label"], next(replay)["label"])
    assert not np.array_equal(first[0]["image"], first[2]["image"])  # reshuffled each epoch


@pytest.mark.parametrize("name,channels,classes", [("digits", 1, 10), ("patterns", 3, 8)])
def test_bundled_real_datasets_are_deterministic_balanced_and_resizable(name, channels, classes):
    images, labels = data.load_split(name, "train", 16)
    again, _ = data.load_split(name, "train", 16)
    np.testing.assert_array_equal(images, again)
    assert images.shape[1:] == (16, 16, channels) and images.dtype == np.float32
    assert -1.0 <= images.min() < -0.5 and 0.5 < images.max() <= 1.0
    counts = np.bincount(labels, minlength=classes)
    assert len(counts) == classes and counts.min() > 0.8 * counts.mean()
    test_images, _ = data.load_split(name, "test", 8)
    assert test_images.shape[1:] == (8, 8, channels)
    info = data.dataset_info(name)
    assert (info.channels, info.num_classes) == (channels, classes)


def test_any_preset_can_swap_in_another_dataset():
    from dblocks_jax import get_config, make_task

    task = make_task(get_config("shapes", {"data.dataset": "patterns"}))
    assert task.image_shape == (16, 16, 3) and task.num_classes == 8


def test_tfds_datasets_train_and_load_through_grain_with_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    from conftest import tiny_config

    from dblocks_jax import train

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=64):
        images, labels = data.load_split("tfds:mnist", "test", 8)
        assert images.shape == (64, 8, 8, 1) and images.dtype == np.float32
        assert -1.0 <= images.min() and images.max() <= 1.0 and labels.dtype == np.int32
        stream = data.tfds_batches("tfds:mnist", 8, 16, seed=(0, 1))
        first = [next(stream) for _ in range(5)]  # crosses an epoch (64 // 16 = 4 batches)
        assert first[0]["image"].shape == (16, 8, 8, 1) and first[0]["label"].shape == (16,)
        again = data.tfds_batches("tfds:mnist", 8, 16, seed=(0, 1))
        np.testing.assert_array_equal(first[0]["image"], next(again)["image"])
        other = data.tfds_batches("tfds:mnist", 8, 16, seed=(0, 2))
        assert not np.array_equal(first[0]["image"], next(other)["image"])
        state = json.loads(json.dumps(stream.get_state()))  # what a checkpoint record stores
        expected = next(stream)["label"]
        stream.set_state(state)
        np.testing.assert_array_equal(next(stream)["label"], expected)
        result = train(tiny_config(dataset="tfds:mnist", image_size=8, steps=2), progress=False)
        assert result.block_steps == [2, 2]


def test_unprepared_tfds_dataset_fails_at_once_without_downloading(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_network)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"TFDS dataset 'mnist' is not prepared in .*tfds build mnist"):
        data.load_split("tfds:mnist", "train", 28)


def test_unknown_tfds_dataset_is_refused_before_anything_compiles(monkeypatch):
    """Validation does no I/O (any tfds:<name> passes it); the task reads the dataset's metadata
    when it is built, before the trainer exists, and names the dataset."""
    from dblocks_jax import get_config, make_task
    from dblocks_jax.engine import trainer

    monkeypatch.setattr(trainer, "BlockTrainer", lambda *a: pytest.fail("got to the trainer"))
    config = get_config("shapes", {"data.dataset": "tfds:no_such_dataset"})
    with pytest.raises(ValueError, match="unknown dataset 'tfds:no_such_dataset'"):
        make_task(config)
    assert make_task(get_config("shapes", {"data.dataset": "tfds:fashion_mnist"})).num_classes == 10


def test_crop_and_flip_move_pixels_and_augmented_streams_resume():
    from dblocks_jax.data import augment

    images = np.arange(2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1) / 128.0 - 0.5
    many = np.repeat(images, 16, axis=0)
    flipped = augment.random_flip(many, np.random.default_rng(3))
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, many)]
    kept = [np.array_equal(f, i) for f, i in zip(flipped, many)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 8 <= sum(mirrored) <= 24 and any(kept)
    cropped = augment.random_crop(images, np.random.default_rng(0), pad=1)
    for c, i in zip(cropped, images):  # a shifted window of the image padded with black (-1)
        padded = np.pad(i, ((1, 1), (1, 1), (0, 0)), constant_values=-1.0)
        assert any(np.array_equal(c, padded[y:y + 8, x:x + 8]) for y in range(3) for x in range(3))
    shifts = augment.random_crop(np.repeat(images[:1], 64, axis=0), np.random.default_rng(1), pad=1)
    assert len({s.tobytes() for s in shifts}) == 9  # every offset of a pad-1 crop is drawn

    stream = data.train_batches("digits", 8, 16, seed=(0, 1), augment="crop")
    plain = data.train_batches("digits", 8, 16, seed=(0, 1))
    first, unaugmented = next(stream), next(plain)
    np.testing.assert_array_equal(first["label"], unaugmented["label"])  # same order, other pixels
    assert not np.array_equal(first["image"], unaugmented["image"])
    state = stream.state()
    expected = next(stream)["image"]
    stream.restore(state)
    np.testing.assert_array_equal(next(stream)["image"], expected)
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        data.train_batches("digits", 8, 16, seed=0, augment="mixup")


def test_tfds_stream_augments_in_the_grain_pipeline_deterministically(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=32):
        plain = next(data.tfds_batches("tfds:cifar10", 8, 8, seed=(0, 1)))
        a, b = (next(data.tfds_batches("tfds:cifar10", 8, 8, seed=(0, 1), augment="crop_flip")) for _ in range(2))
        stream = data.tfds_batches("tfds:cifar10", 8, 8, seed=(0, 1), augment="crop_flip")
        next(stream)
        state = json.loads(json.dumps(stream.get_state()))
        expected = next(stream)["image"]
        stream.set_state(state)
        np.testing.assert_array_equal(next(stream)["image"], expected)  # the augmentation resumes too
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], plain["label"])
    assert not np.array_equal(a["image"], plain["image"])
