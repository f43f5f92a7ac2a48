"""Compute precision: float32 or bfloat16 matmuls over float32 parameters.

Mixed precision as the accelerators want it (docs/architecture.md, "The accelerator path"):
parameters, gradients, optimizer state and EMA stay float32; a network computes its matmuls and
activations in its compute dtype;
the loss, EDM's scalings c_skip/c_out/c_in/λ(σ) and every softmax stay float32 (the tasks cast
logits up before the cross-entropy, `engine.edm` works in float32, and
`jax.nn.dot_product_attention` takes its softmax in float32 whatever its inputs are).

`auto` picks by platform: bfloat16 on GPU and TPU, where the tensor cores run bfloat16 at twice
or more the float32 rate, float32 on CPU, which has no bfloat16 matmul units (there bfloat16
is emulated and slower). A task resolves `auto` when it is built, so a run directory's
config.json records the dtype that was actually used.
"""

from __future__ import annotations

import jax

DTYPES = ("auto", "float32", "bfloat16")


def platform_dtype(backend: str | None = None) -> str:
    """The compute dtype `auto` means on `backend` (default: JAX's default backend)."""
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


def resolved(config):
    """`config` with `model.dtype=auto` replaced by this platform's dtype: what runs, and what a
    run directory (or an experiment's record) stores."""
    if config.model.dtype != "auto":
        return config
    return config.override({"model.dtype": platform_dtype()})


def resolve(dtype: str, backend: str | None = None) -> str:
    """`dtype` with `auto` replaced by the platform's choice."""
    if dtype not in DTYPES:
        raise ValueError(f"invalid compute dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return platform_dtype(backend) if dtype == "auto" else dtype
