import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session (and the child processes it starts): many tests
# train the same tiny configs, whose steps then compile once. A fresh directory per session, so a
# stale entry can never mask a change.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dblocks_test_jax_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Eight CPU devices for the block-parallel tests (must be set before JAX starts); everything else
# runs on the first one, as it would without the flag.
# Tests compile far more than they compute: the CPU backend's lowest optimisation level compiles
# about a quarter faster, and its older elemental emitters (instead of the fusion emitters) halve
# what is left (a tiny DiT train step: 3.3 s -> 1.5 s on 2 cores, jaxlib 0.10). Child processes
# get the same flags (`child_xla_flags`), so that results compared bitwise across processes come
# from the same compiler settings.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def child_xla_flags(devices: int) -> str:
    return f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}"


if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + child_xla_flags(8)).strip()

import shutil  # noqa: E402

import pytest  # noqa: E402

from dblocks_jax.config import config_class  # noqa: E402
from dblocks_jax.presets import get_config  # noqa: E402
from dblocks_jax.engine.settings import field_types  # noqa: E402
from dblocks_jax.tasks import task_names  # noqa: E402

_PATHS = {}
for _path in sorted({p for task in task_names() for p in field_types(config_class(task))}):
    _PATHS.setdefault(_path.rsplit(".", 1)[-1], []).append(_path)
# Short names for the tests: a field's last part where it is unique ("width" -> "model.width"),
# the section-qualified path otherwise.
SHORT = {name: paths[0] for name, paths in _PATHS.items() if len(paths) == 1}
SHORT.update(schedule="schedule.name", partition="partition.strategy", sample_steps="sampling.steps",
             num_samples="sampling.num_samples", steps="optim.steps", grid="sampling.grid",
             solver="sampling.solver")


def paths(**fields) -> dict:
    """{"section.field": value} from short test names (a dotted name passes through)."""
    return {SHORT.get(k, k): v for k, v in fields.items()}


def tiny_config(**fields):
    """A DiT small enough that a train step compiles and runs in well under a second on a CPU."""
    settings = dict(image_size=8, width=32, num_heads=2, num_layers=4, num_blocks=2, patch_size=2,
                    batch_size=16, steps=4, warmup_steps=2, log_every=2, num_samples=6, sample_steps=4)
    settings.update(fields)
    return get_config("shapes", paths(**settings))


def tiny_task(**fields):
    from dblocks_jax import make_task

    return make_task(tiny_config(**fields))


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def tiny():
    return tiny_config
