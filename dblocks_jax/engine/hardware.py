"""What the accelerator can do and what a compiled step asks of it: peak FLOP/s for MFU, the
attention kernel a step holds, the device's own memory counters.

Model FLOPs utilisation (MFU) = model FLOPs per step / (step time x peak FLOP/s). The peak is the
chip's dense bfloat16 matmul rate from its vendor's specification, for every compute dtype: a
float32 step (TF32 tensor cores on NVIDIA, multi-pass bfloat16 on TPU) is measured against the
same ceiling, so MFU says how much of the chip a configuration uses, not how close it is to its
own dtype's limit. `--peak-tflops` overrides the table (another chip, or a different convention).
"""

from __future__ import annotations

import jax

# Dense bfloat16 peak per device, TFLOP/s (vendor specifications, without sparsity; an H100 is the
# SXM part unless its name says PCIe or NVL). Matched as a case-insensitive substring of
# `device.device_kind`, first match wins: the more specific names first.
PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0),
    ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0), ("TPU v4", 275.0),
)


def peak_flops(device_kind: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s, where the number comes from) for a device kind; (None, ...) when unknown
    (a CPU, or a chip missing from the table): MFU is then not reported."""
    if override_tflops is not None:
        if not override_tflops > 0:
            raise ValueError(f"--peak-tflops={override_tflops}; allowed: a number > 0 (TFLOP/s)")
        return override_tflops * 1e12, "--peak-tflops"
    for name, tflops in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops * 1e12, f"table: {name} dense bfloat16"
    return None, f"no peak known for {device_kind!r} (pass --peak-tflops)"


def attention_kernel(lowered_text: str) -> str:
    """Which attention a lowered step holds: `cudnn` (cuDNN's fused flash attention custom call)
    or `xla` (XLA's own dot products and softmax)."""
    return "cudnn" if "__cudnn$fmha" in lowered_text else "xla"


def device_memory() -> dict:
    """The first local device's allocator counters (`peak_bytes_in_use`, `bytes_limit`, ...), or
    {} where the platform keeps none (the CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return {k: int(stats[k]) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in stats}
