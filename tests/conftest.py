import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Eight CPU devices for the block-parallel tests (must be set before JAX starts); everything else
# runs on the first one, as it would without the flag.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

from dblocks_jax.config import get_config  # noqa: E402


def tiny_config(**overrides):
    """A DiT small enough that a train step compiles and runs in well under a second on a CPU."""
    settings = dict(image_size=8, width=32, num_heads=2, num_layers=4, num_blocks=2, patch_size=2,
                    batch_size=16, steps=4, warmup_steps=2, log_every=2, num_samples=6, sample_steps=4)
    settings.update(overrides)
    return get_config("shapes", **settings)


@pytest.fixture
def tiny():
    return tiny_config
