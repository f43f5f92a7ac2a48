"""The FID InceptionV3: architecture, preprocessing, the torch-free weight readers and their errors,
and its place in `evaluate_run`. Random weights only (the real file is not available offline)."""

import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from unittest import mock

import chex
import jax
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from dblocks_jax import data
from dblocks_jax.evaluation import image_quality, inception, torch_weights
from dblocks_jax.tasks.image_generation_eval import evaluate_run
from dblocks_jax.tasks.plugin import Request


@pytest.fixture(scope="module")
def random_model():
    return inception.random_inception(0)


@pytest.fixture(scope="module")
def features(random_model):
    return inception.InceptionFeatures(random_model, batch_size=4)


@pytest.fixture(scope="module")
def shapes_images():
    return data.load_split("shapes", "test", 16)[0][:8]  # (8, 16, 16, 1) in [-1, 1]


@pytest.fixture(scope="module")
def fid_state_dict():
    """A full state dict in pytorch-fid's names and layouts with non-trivial BatchNorm statistics,
    plus the entries the real file also has and the loader must ignore."""
    rng = np.random.default_rng(3)
    sd = inception.state_dict(inception.random_inception(1))
    for key in list(sd):
        if key.endswith("bn.weight"):
            sd[key] = rng.uniform(0.5, 1.5, sd[key].shape).astype(np.float32)
            stem = key[: -len("weight")]
            sd[stem + "bias"] = rng.normal(0, 0.1, sd[key].shape).astype(np.float32)
            sd[stem + "running_mean"] = rng.normal(0, 0.1, sd[key].shape).astype(np.float32)
            sd[stem + "running_var"] = rng.uniform(0.5, 2.0, sd[key].shape).astype(np.float32)
            sd[stem + "num_batches_tracked"] = np.array(0, np.int64)
    sd["fc.weight"] = rng.normal(size=(1008, 2048)).astype(np.float32)
    sd["fc.bias"] = np.zeros(1008, np.float32)
    return sd


# ------------------------------------------------------------------------------------------------
# Writing PyTorch files without torch: the layout torch.save produces


class _FakeStorage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


def _fake_torch_modules():
    """Stand-ins for `torch` and `torch._utils` so that pickle writes the same global references
    as torch.save (torch._utils._rebuild_tensor_v2, torch.FloatStorage, ...)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    return {"torch": torch, "torch._utils": utils}


def _storage_name(array):
    return {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}[array.dtype]


def _tensors(state: dict) -> tuple[OrderedDict, list]:
    """Every array as a C-contiguous tensor on its own storage (keys '0', '1', ...)."""
    tensors, storages = OrderedDict(), []
    for i, (name, array) in enumerate(state.items()):
        array = np.ascontiguousarray(array)
        storage = _FakeStorage(str(i), array)
        strides = tuple(s // array.itemsize for s in array.strides)
        tensors[name] = _FakeTensor(storage, 0, tuple(array.shape), strides)
        storages.append(storage)
    return tensors, storages


def _pickle_with_storages(obj, file, persistent_id):
    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return persistent_id(o) if isinstance(o, _FakeStorage) else None

    with mock.patch.dict(sys.modules, _fake_torch_modules()):
        Pickler(file, protocol=2).dump(obj)


def write_torch_zip(path, state: dict, prefix: str = "archive", data_pkl: bytes | None = None):
    """torch.save's zip format: <prefix>/data.pkl with persistent ids ('storage', type, key,
    location, numel), raw storages in <prefix>/data/<key>, plus version and byteorder records."""
    tensors, storages = _tensors(state)
    if data_pkl is None:
        buffer = io.BytesIO()
        _pickle_with_storages(tensors, buffer, lambda s: ("storage", getattr(sys.modules["torch"], _storage_name(
            s.array)), s.key, "cpu", s.array.size))
        data_pkl = buffer.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", "little")
        for storage in storages:
            archive.writestr(f"{prefix}/data/{storage.key}", storage.array.astype("<" + storage.array.dtype.str[1:])
                             .tobytes())
        archive.writestr(f"{prefix}/version", "3\n")


def write_torch_legacy(path, state: dict):
    """torch.save's format before 1.6: magic, protocol, sys_info, the object (persistent ids with a
    sixth field, view metadata), the storage keys, then each storage as int64 numel + bytes."""
    tensors, storages = _tensors(state)
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                      "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(header, f, protocol=2)
        _pickle_with_storages(tensors, f, lambda s: ("storage", getattr(sys.modules["torch"], _storage_name(
            s.array)), s.key, "cpu", s.array.size, None))
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.array.size) + s.array.astype("<" + s.array.dtype.str[1:]).tobytes())


def _assert_model_holds(model, state: dict):
    got = inception.state_dict(model)
    expected = {k: v for k, v in state.items() if k in got}
    assert got.keys() == expected.keys()
    for key in got:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


# ------------------------------------------------------------------------------------------------
# The network


def test_architecture_is_inception_v3_up_to_pool3(random_model):
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(random_model, nnx.Param)))
    assert params == 21_785_568  # torchvision's InceptionV3 without AuxLogits and the fc classifier
    assert len(inception.state_dict(random_model)) == 94 * 5  # 94 conv + BatchNorm layers
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), np.float32)
    stem = lambda m, x: inception._max_pool_3x3(m.Conv2d_4a_3x3(m.Conv2d_3b_1x1(inception._max_pool_3x3(
        m.Conv2d_2b_3x3(m.Conv2d_2a_3x3(m.Conv2d_1a_3x3(x))), 2))), 2)
    m = random_model
    after_5d = jax.eval_shape(lambda x: m.Mixed_5d(m.Mixed_5c(m.Mixed_5b(stem(m, x)))), x)
    chex.assert_shape(after_5d, (2, 35, 35, 288))
    after_6e = jax.eval_shape(lambda h: m.Mixed_6e(m.Mixed_6d(m.Mixed_6c(m.Mixed_6b(m.Mixed_6a(h))))), after_5d)
    chex.assert_shape(after_6e, (2, 17, 17, 768))
    chex.assert_shape(jax.eval_shape(lambda h: m.Mixed_7c(m.Mixed_7b(m.Mixed_7a(h))), after_6e), (2, 8, 8, 2048))
    assert (m.Mixed_7b.pool, m.Mixed_7c.pool) == ("avg", "max")  # the TF graph's max-pool in the last block
    assert m.Conv2d_1a_3x3.bn.epsilon == 1e-3


def test_average_pool_counts_only_real_pixels():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    pooled = np.asarray(inception._avg_pool_3x3(x))[0, :, :, 0]
    assert pooled[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))  # 4 real pixels, not /9
    assert pooled[0, 1] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6]))
    assert pooled[1, 1] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))
    np.testing.assert_allclose(inception._avg_pool_3x3(np.ones((1, 5, 5, 2), np.float32)), 1.0)


def test_features_shape_finite_deterministic_and_image_dependent(features, shapes_images):
    out = features.features(shapes_images[:4])
    chex.assert_shape(out, (4, inception.FEATURE_DIM))
    chex.assert_tree_all_finite(out)
    assert out.dtype == np.float32 and out.std() > 0
    np.testing.assert_array_equal(out, features(shapes_images[:4]))
    # 6 images = a full batch of 4 and a padded one: the padding changes nothing
    np.testing.assert_array_equal(features.features(shapes_images[2:8])[:2], out[2:4])
    assert not np.allclose(out[0], out[1])


def test_grey_images_are_repeated_to_rgb(features, shapes_images):
    # the network only sees preprocess's output, so equal inputs there mean equal features
    # (compiling the network for a second input shape would cost seconds)
    grey = np.asarray(inception.preprocess(shapes_images[:2]))
    chex.assert_shape(grey, (2, 299, 299, 3))
    np.testing.assert_array_equal(grey, inception.preprocess(np.repeat(shapes_images[:2], 3, axis=-1)))
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    with pytest.raises(ValueError, match=r"got shape \(2, 16, 16, 2\)"):
        features.features(np.zeros((2, 16, 16, 2)))


def _torch_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """F.interpolate(mode='bilinear', align_corners=False) written out: source coordinate
    (i + 0.5) * in/out - 0.5, clamped at 0, linear between the two neighbours."""

    def axis(n_in):
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    (y0, y1, wy), (x0, x1, wx) = axis(images.shape[1]), axis(images.shape[2])
    rows = images[:, y0] * (1 - wy)[None, :, None, None] + images[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


@pytest.mark.parametrize("height,width", [(7, 5), (331, 310)])
def test_resize_to_299_is_pytorch_fid_bilinear(height, width):
    rng = np.random.default_rng(height)
    levels = rng.integers(0, 256, (2, height, width, 3)).astype(np.float32) / 127.5 - 1.0  # 8-bit images
    got = np.asarray(inception.preprocess(levels))
    chex.assert_shape(got, (2, 299, 299, 3))
    # float32 source coordinates near 300 round at ~3e-5 px; align_corners=True or an anti-aliasing
    # filter would differ by ~0.1 here (1/127.5 is one 8-bit level)
    np.testing.assert_allclose(got, _torch_bilinear(levels, 299), atol=1e-4)


def test_preprocess_clips_and_rounds_to_8_bit_levels():
    x = np.zeros((1, 299, 299, 3), np.float32)  # already 299: the resize is the identity
    x[0, 0, :6, 0] = [-3.0, -1.0, 0.0, 0.001, 0.9999, 1.7]
    got = np.asarray(inception.preprocess(x))[0, 0, :6, 0]
    np.testing.assert_allclose((got + 1.0) * 127.5, [0, 0, 128, 128, 255, 255], atol=1e-4)
    with pytest.raises(ValueError, match=r"\(N, H, W, 1 or 3\)"):
        inception.preprocess(np.zeros((2, 8, 8, 2), np.float32))


# ------------------------------------------------------------------------------------------------
# Loading weights


def _conv_bn_relu_reference(x, sd, name, stride, padding):
    """One ConvBN layer computed with numpy from the state dict's OIHW weights (cross-correlation,
    as torch's Conv2d), then inference BatchNorm with eps 1e-3 and ReLU."""
    w = sd[f"{name}.conv.weight"]  # (O, I, kh, kw)
    x = np.pad(x, ((0, 0), (padding[0], padding[0]), (padding[1], padding[1]), (0, 0)))
    kh, kw = w.shape[2:]
    out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, w.shape[0]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]  # (N, kh, kw, I)
            out[:, i, j] = np.einsum("nhwi,oihw->no", patch, w)
    bn = lambda k: sd[f"{name}.bn.{k}"]
    out = (out - bn("running_mean")) / np.sqrt(bn("running_var") + 1e-3) * bn("weight") + bn("bias")
    return np.maximum(out, 0.0)


def test_torch_zip_state_dict_round_trips_into_the_model(tmp_path, fid_state_dict, shapes_images):
    path = tmp_path / "weights.pth"
    write_torch_zip(path, fid_state_dict)
    loaded = inception.load_inception(str(path), batch_size=4)
    assert loaded.weights_path == str(path)
    model = nnx.merge(loaded.graphdef, loaded.state)
    _assert_model_holds(model, fid_state_dict)
    # The OIHW -> HWIO transpose and the BatchNorm mapping, checked against numpy on two layers:
    # the stem's stride-2 3x3 conv and a 1x7 conv with (0, 3) padding (a swapped kh/kw would fail).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    np.testing.assert_allclose(model.Conv2d_1a_3x3(x), _conv_bn_relu_reference(
        x, fid_state_dict, "Conv2d_1a_3x3", 2, (0, 0)), rtol=1e-4, atol=1e-4)
    h = rng.normal(size=(1, 5, 9, 128)).astype(np.float32)
    np.testing.assert_allclose(model.Mixed_6b.branch7x7_2(h), _conv_bn_relu_reference(
        h, fid_state_dict, "Mixed_6b.branch7x7_2", 1, (0, 3)), rtol=1e-4, atol=1e-4)
    # the same weights as an .npz give the same network, and the network changed
    npz = tmp_path / "weights.npz"
    np.savez(npz, **fid_state_dict)
    from_npz = inception.load_inception(str(npz), batch_size=4)
    chex.assert_trees_all_equal(from_npz.state, loaded.state)
    random_features = inception.InceptionFeatures(inception.random_inception(1), batch_size=4)
    assert not np.allclose(loaded.features(shapes_images[:4]), random_features.features(shapes_images[:4]))


def test_legacy_torch_format_and_strided_tensors_are_read_exactly(tmp_path, fid_state_dict):
    legacy = tmp_path / "legacy.pth"
    small = {k: fid_state_dict[k] for k in ("Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.num_batches_tracked",
                                            "fc.bias")}
    write_torch_legacy(legacy, small)
    got = torch_weights.read_state_dict(str(legacy))
    assert got.keys() == small.keys()
    for key in small:
        np.testing.assert_array_equal(got[key], small[key])
        assert got[key].dtype == small[key].dtype
    # a non-contiguous tensor at an offset into a shared storage (torch saves views like this)
    base = np.arange(30, dtype=np.float32)
    storage = _FakeStorage("0", base)
    view = OrderedDict(w=_FakeTensor(storage, 3, (3, 4), (1, 6)))  # w[i, j] = base[3 + i + 6 j]
    buffer = io.BytesIO()
    _pickle_with_storages(view, buffer, lambda s: ("storage", sys.modules["torch"].FloatStorage, s.key, "cpu", 30))
    path = tmp_path / "strided.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("strided/data.pkl", buffer.getvalue())
        archive.writestr("strided/data/0", base.tobytes())
    expected = np.array([[3 + i + 6 * j for j in range(4)] for i in range(3)], np.float32)
    np.testing.assert_array_equal(torch_weights.read_state_dict(str(path))["w"], expected)


# ------------------------------------------------------------------------------------------------
# Errors: each names the file and the fix


def test_no_weights_configured_says_where_to_get_them(monkeypatch):
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    with pytest.raises(ValueError, match=inception.WEIGHTS_ENV) as err:
        inception.load_inception()
    assert inception.WEIGHTS_FILE in str(err.value) and "--inception-weights" in str(err.value)


def test_missing_file_from_the_environment_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / inception.WEIGHTS_FILE
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        inception.load_inception()
    assert inception.WEIGHTS_URL in str(err.value)


@pytest.mark.parametrize("content", [b"not weights at all", b"\x80\x02truncated", "zip", "list"])
def test_unreadable_files_are_named(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif content == "list":  # a torch zip whose pickle is no state dict
        write_torch_zip(path, {}, data_pkl=pickle.dumps([1, 2], protocol=2))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path)) as err:
        inception.load_inception(str(path))
    assert inception.WEIGHTS_FILE in str(err.value)


def test_wrong_keys_and_shapes_are_listed_before_anything_is_assigned(tmp_path):
    path = tmp_path / "other_net.npz"
    np.savez(path, **{"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 5, 5), np.float32),
                      "classifier.weight": np.zeros((10, 2048), np.float32)})
    with pytest.raises(ValueError, match=str(path)) as err:
        inception.load_inception(str(path))
    message = str(err.value)
    assert "469 missing keys" in message and "Conv2d_1a_3x3.bn.running_var" in message
    assert "1 unexpected keys (classifier.weight)" in message
    assert "Conv2d_1a_3x3.conv.weight has shape (32, 3, 5, 5), expected (32, 3, 3, 3)" in message


def test_truncated_storage_is_named(tmp_path):
    path = tmp_path / "truncated.pth"
    write_torch_zip(path, {"fc.bias": np.zeros(8, np.float32)})
    with zipfile.ZipFile(path) as archive:
        records = {n: archive.read(n) for n in archive.namelist()}
    records["archive/data/0"] = records["archive/data/0"][:5]
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in records.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match=str(path)):
        torch_weights.read_state_dict(str(path))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pickle_that_calls_code_is_refused(tmp_path, layout):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = OrderedDict(x=_RunsShell(marker))
    if layout == "zip":
        write_torch_zip(path, {}, data_pkl=pickle.dumps(payload, protocol=2))
    else:
        with open(path, "wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load the global (os|posix).system") as err:
        torch_weights.read_state_dict(str(path))
    assert str(path) in str(err.value)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# In evaluate_run


def test_standard_fid_is_planned_for_tfds_datasets_only(monkeypatch):
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    weights, reason = image_quality.inception_plan("tfds:cifar10", None)
    assert weights is None and inception.WEIGHTS_ENV in reason and inception.WEIGHTS_FILE in reason
    weights, reason = image_quality.inception_plan("digits", None)
    assert weights is None and "bundled" in reason
    monkeypatch.setenv(inception.WEIGHTS_ENV, "/data/w.pth")
    assert image_quality.inception_plan("tfds:cifar10", None) == ("/data/w.pth", None)
    assert image_quality.inception_plan("digits", None)[0] is None  # the environment is not an explicit request
    assert image_quality.inception_plan("digits", "/x.npz") == ("/x.npz", None)


class _CheapFeatures:
    """Stands in for the 6-GFLOP network (and for the trained classifier): a fixed random
    projection of the pixels. The classifier's and InceptionV3's stand-ins use different
    projections, so the two distances differ and each can be checked on its own."""

    weights_path, path, accuracy = "/weights/cheap.npz", "/cache/cheap", 1.0

    def __init__(self, *args, projection_seed=0, **kwargs):
        self.projection_seed = projection_seed

    def features(self, images):
        flat = np.asarray(images, np.float64).reshape(len(images), -1)
        return flat @ np.random.default_rng(self.projection_seed).normal(size=(flat.shape[1], 8))

    def predict(self, images):
        return np.zeros(len(images), np.int32)


def _seeded_images(seed, num_samples, size=8):
    """What the stub task samples for a seed: uniform noise images."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (num_samples, size, size, 1)).astype(np.float32)


class StubReader:
    """A `RunReader` that hands out the stub run: its config, and a task whose sampler returns seeded
    noise images with balanced labels."""

    def __init__(self, run):
        self.run = run

    def config(self, workdirs, overrides=None):
        return self.run.config.override(dict(overrides or {}))

    def load(self, workdirs, overrides=None, untrained=False):
        task = types.SimpleNamespace(num_blocks=2, samples=lambda params, seed, num_samples: (
            _seeded_images(seed, num_samples), np.arange(num_samples) % 10))
        return task, [{}, {}], [0, 0]


@pytest.fixture
def cheap_run(monkeypatch):
    """evaluate_run's plumbing with the expensive parts stubbed: the run (through a stub reader), the
    classifier and InceptionV3."""
    from dblocks_jax.evaluation import image_quality

    run = types.SimpleNamespace(requested=[], config=tiny_config(dataset="digits", sample_steps=2))
    digits = data.load_split("digits", "test", 8)
    monkeypatch.setattr(data, "load_split", lambda name, split, size: digits)  # also for tfds: names
    monkeypatch.setattr(image_quality, "FeatureClassifier", _CheapFeatures)
    monkeypatch.setattr(inception, "load_inception",
                        lambda path: run.requested.append(path) or _CheapFeatures(projection_seed=1))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    run.reference = digits[0]
    run.request = lambda workdir, seeds: Request("evaluate", (workdir,), StubReader(run), seeds=seeds, untrained=True)
    return run


def test_evaluate_reports_fid_over_the_same_seeds(tmp_path, cheap_run):
    result = evaluate_run(cheap_run.request(str(tmp_path), (0, 1)), num_samples=30,
                          inception_weights="/weights/cheap.npz", progress=False)
    assert cheap_run.requested == ["/weights/cheap.npz"]
    fid = result["fid"]
    assert fid["weights"] == "/weights/cheap.npz" and fid["mean"] == pytest.approx(np.mean(fid["values"]))
    # Each seed's FID is that seed's samples against the held-out reference through the Inception
    # stand-in, computed here independently (a wrong seed, reference or extractor would differ).
    inception_features = _CheapFeatures(projection_seed=1)
    reference_stats = image_quality.gaussian_stats(inception_features.features(cheap_run.reference))
    expected = [image_quality.frechet_distance(*image_quality.gaussian_stats(
        inception_features.features(_seeded_images(seed, 30))), *reference_stats) for seed in (0, 1)]
    np.testing.assert_allclose(fid["values"], expected, rtol=1e-9)
    assert not np.allclose(fid["values"], result["frechet_distance"]["values"])  # not the classifier's
    assert result["fid_skipped"] is None and result["seeds"] == [0, 1] and result["num_samples"] == 30
    json.dumps(result)


def test_evaluate_skips_fid_for_bundled_datasets_unless_asked(tmp_path, cheap_run, monkeypatch):
    monkeypatch.setenv(inception.WEIGHTS_ENV, "/weights/cheap.npz")  # not an explicit request
    result = evaluate_run(cheap_run.request(str(tmp_path), (0,)), num_samples=30, progress=False)
    assert result["fid"] is None and "bundled" in result["fid_skipped"] and cheap_run.requested == []
    json.dumps(result)


def test_evaluate_on_tfds_uses_the_configured_weights_or_says_why_not(tmp_path, cheap_run, monkeypatch, capsys):
    cheap_run.config = cheap_run.config.override({"data.dataset": "tfds:mnist"})
    result = evaluate_run(cheap_run.request(str(tmp_path), (0,)), num_samples=30, progress=True)
    assert result["fid"] is None and inception.WEIGHTS_ENV in result["fid_skipped"]
    assert "standard FID skipped" in capsys.readouterr().out and cheap_run.requested == []
    monkeypatch.setenv(inception.WEIGHTS_ENV, "/weights/from_env.pth")
    result = evaluate_run(cheap_run.request(str(tmp_path), (0,)), num_samples=30, progress=False)
    assert cheap_run.requested == ["/weights/from_env.pth"] and len(result["fid"]["values"]) == 1


def test_evaluate_with_unloadable_weights_fails_before_sampling(tmp_path, monkeypatch):
    from dblocks_jax.evaluation import image_quality

    monkeypatch.setattr(image_quality, "FeatureClassifier", lambda *a, **k: pytest.fail("got past the weights"))
    run = types.SimpleNamespace(config=tiny_config(dataset="digits"))
    request = Request("evaluate", (str(tmp_path),), StubReader(run))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        evaluate_run(request, inception_weights=str(tmp_path / "missing.pth"), progress=False)
