"""The accelerator path on the CPU: precision, attention kernel, prefetch, host transfers, FLOPs
and MFU bookkeeping."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from jax._src.array import ArrayImpl

from dblocks_jax import make_task
from dblocks_jax.engine import bench, hardware, loop, precision
from dblocks_jax.engine.prefetch import DevicePrefetch
from dblocks_jax.engine.trainer import BlockTrainer
from dblocks_jax.models.layers import attend, per_token_parameters


def test_auto_precision_is_float32_on_cpu_and_bfloat16_on_accelerators(tmp_path):
    assert [precision.resolve("auto", b) for b in ("cpu", "gpu", "tpu")] == ["float32", "bfloat16", "bfloat16"]
    assert precision.resolve("bfloat16", "cpu") == "bfloat16"
    assert tiny_config().model.dtype == "auto"
    task = make_task(tiny_config())
    assert task.config.model.dtype == "float32"  # the run directory records what ran
    with pytest.raises(ValueError, match=r"model.dtype='fp16'; allowed: auto, float32, bfloat16"):
        tiny_config(dtype="fp16")
    with pytest.raises(ValueError, match=r"model.attention='flash'; allowed: auto, xla, cudnn"):
        tiny_config(attention="flash")


def _active(params, key):
    """Parameters with every zero-initialised gate and head moved off zero: a fresh DiT is the
    identity (adaLN-Zero) and its loss would not depend on the compute dtype at all."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    moved = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, moved)


def test_bfloat16_loss_is_within_one_percent_of_float32():
    f32, bf16 = (make_task(tiny_config(num_blocks=1, num_layers=2, dtype=d)) for d in ("float32", "bfloat16"))
    params = _active(f32.init_params(jax.random.key(0)), jax.random.key(1))
    batch = bench.random_batch(f32.batch_spec(16), np.random.default_rng(0))
    draw = f32.draw(jax.random.key(2), 0, f32.batch_spec(16))
    loss32, loss16 = (jax.jit(lambda p, t=t: jnp.mean(t.loss(p, batch, draw, 0)))(params) for t in (f32, bf16))
    assert loss16.dtype == jnp.float32  # the loss itself is float32 whatever the compute dtype
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    gap = abs(float(loss16) - float(loss32)) / float(loss32)
    assert 0 < gap < 0.01, (float(loss32), float(loss16))  # bfloat16 did run, and stayed close


def test_bfloat16_training_descends(tmp_path):
    config = tiny_config(num_blocks=1, num_layers=2, dtype="bfloat16", steps=24, warmup_steps=2, log_every=6,
                         learning_rate=3e-3)
    result = loop.train(make_task(config), str(tmp_path), progress=False, write_artifacts=False)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(result.params))
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    assert json.load(open(tmp_path / "config.json"))["model"]["dtype"] == "bfloat16"


def test_attention_implementations_agree_and_cudnn_is_refused_off_gpu():
    q, k, v = (jax.random.normal(key, (2, 6, 2, 8)) for key in jax.random.split(jax.random.key(0), 3))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None]
    reference = jax.nn.dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_allclose(attend(q, k, v, mask, "auto"), reference, rtol=1e-6)  # auto on a CPU: XLA
    with pytest.raises(Exception, match="(?i)cudnn|gpu|cuda"):  # explicit cuDNN is never replaced silently
        attend(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), None, "cudnn")
    with pytest.raises(ValueError, match="allowed: auto, xla, cudnn"):
        attend(q, k, v, None, "flash")
    assert hardware.attention_kernel('stablehlo.custom_call @"__cudnn$fmhaSoftmax"(%0)') == "cudnn"
    assert hardware.attention_kernel("stablehlo.dot_general") == "xla"


def test_peak_table_and_override():
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert hardware.peak_flops("NVIDIA H200")[0] == 989e12
    assert hardware.peak_flops("NVIDIA A100-SXM4-40GB")[0] == 312e12
    assert [hardware.peak_flops(k)[0] for k in ("TPU v4", "TPU v5 lite", "TPU v5p", "TPU v5")] == [
        275e12, 197e12, 459e12, 459e12]
    assert hardware.peak_flops("cpu") == (None, "no peak known for 'cpu' (pass --peak-tflops)")
    assert hardware.peak_flops("cpu", 0.5) == (0.5e12, "--peak-tflops")
    with pytest.raises(ValueError, match="--peak-tflops=-1.0; allowed: a number > 0"):
        hardware.peak_flops("cpu", -1.0)


def test_counted_flops_agree_with_six_p_t_on_a_transformer_stack():
    """XLA's count of a DiT train step against 6·P·T (P: the stack's per-token weights). Attention,
    adaLN, norms and the optimizer are the few percent the rule leaves out; a count that missed
    the scanned layers (one body for four) would be far below."""
    config = tiny_config(num_blocks=1, num_layers=4, width=128, num_heads=4, batch_size=16)
    task = make_task(config)
    tokens = 16 * (8 // 2) ** 2
    rule = 6 * per_token_parameters(task.abstract_params) * tokens
    assert per_token_parameters(task.abstract_params) == 4 * 12 * 128 * 128 + 4 * (3 + 1 + 4 + 1) * 128
    counted = bench.counted_flops(config)
    assert 0.95 < counted / rule < 1.2, counted / rule


class _Numbers:
    """A resumable stream of numbered batches."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        self.i += 1
        return {"x": np.full((2,), self.i, np.float32)}

    def state(self):
        return {"i": self.i}

    def restore(self, state):
        self.i = state["i"]


def test_prefetch_reads_ahead_on_the_device_and_resumes_at_the_next_unread_batch():
    stream = _Numbers()
    prefetch = DevicePrefetch(stream, size=3)
    first = next(prefetch)
    assert isinstance(first["x"], jax.Array) and float(first["x"][0]) == 1
    assert stream.i == 4  # three batches wait on the device
    position = prefetch.state()
    assert position == {"i": 1}  # a checkpoint now resumes at batch 2, not at batch 5
    following = [float(next(prefetch)["x"][0]) for _ in range(3)]
    prefetch.restore(position)
    assert [float(next(prefetch)["x"][0]) for _ in range(3)] == following == [2, 3, 4]
    prefetch.close()  # the block is done: the read-ahead is dropped
    assert not prefetch.queue and prefetch.state() == {"i": stream.i} == {"i": 7}
    with pytest.raises(ValueError, match="allowed: an integer >= 1"):
        DevicePrefetch(stream, size=0)


def test_metrics_leave_the_device_only_at_log_intervals(monkeypatch):
    """Every device-to-host read of a jax.Array's value is counted, and whether `jax.device_get`
    made it. On a GPU/TPU the transfer guard refuses implicit reads; the CPU shares memory with
    its 'device', so the guard never fires there and the count is what the test checks."""
    reads, explicit, original_value, original_get = [], [], ArrayImpl._value, jax.device_get

    def device_get(tree):
        explicit.append(True)
        try:
            return original_get(tree)
        finally:
            explicit.pop()

    monkeypatch.setattr(jax, "device_get", device_get)
    monkeypatch.setattr(ArrayImpl, "_value", property(lambda self: (reads.append(bool(explicit)),
                                                                    original_value.fget(self))[1]))
    seen = []
    config = tiny_config(num_blocks=1, num_layers=2, steps=12, log_every=4, checkpoint_every=0)
    with jax.transfer_guard_device_to_host("disallow"):
        loop.train(make_task(config), progress=False, write_artifacts=False,
                   on_step=lambda t, b, resident: seen.append(len(reads)))
    # on_step(t) runs after step t, before that step's flush: reads may only appear across a flush.
    grew = [t for t in range(1, 12) if seen[t] != seen[t - 1]]
    assert grew == [4, 8], seen
    assert seen[0] == 0  # nothing before the first flush, compiles included (no key captured as a constant)
    assert seen[4] - seen[3] == 2 * 4 + 1  # (loss, gradient norm) of each step of the interval, and the lr logged
    assert all(reads)  # every read explicit: none that a GPU's transfer guard would refuse
