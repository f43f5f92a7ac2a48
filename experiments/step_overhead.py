"""Where the fixed per-step cost of a DiffusionBlocks block goes (the shapes preset, one layer per block).

    python experiments/step_overhead.py

Times (median of 30 after warm-up) a full training step of a 1-layer block and its parts: the
block's own embeddings, head and loss with no transformer layer (forward and backward), the
optimizer + EMA + NaN guard on the block's state, and the dispatch of a jitted no-op that takes and
returns the same state. B x this fixed cost is what one end-to-end-equivalent DiffusionBlocks step
pays on top of end-to-end training.
"""

import copy
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dblocks_jax import data, get_config, make_task
from dblocks_jax.engine.trainer import BlockTrainer, spec_of
from dblocks_jax.models.dit import DiT


def median_ms(fn, repeats: int = 30) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    config = get_config("shapes", {"model.num_blocks": 8})  # 8 layers / 8 blocks: one layer per block
    task = make_task(config)
    trainer = BlockTrainer(task)
    images, labels = data.make_shapes(config.data.batch_size, config.data.image_size, seed=0)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}

    state = [trainer.init_state(0)]

    def full_step():
        state[0], step_metrics = trainer.train_step(state[0], batch, 0, 5)
        return step_metrics

    # The same block with no transformer layer: its embeddings, head and loss alone (the step's
    # draw of noise levels, noise and label dropout included, as in the full step).
    m = config.model
    no_layers = DiT(image_size=config.data.image_size, channels=task.info.channels, patch_size=m.patch_size,
                    width=m.width, depth=0, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                    num_classes=task.num_classes, **task.config.model.stack_options, rngs=nnx.Rngs(0))
    head_only = copy.copy(task)
    head_only.graphdef, params = nnx.split(no_layers, nnx.Param)
    spec = spec_of(batch)
    loss_grad = jax.jit(jax.value_and_grad(
        lambda p, key, batch: jnp.mean(head_only.loss(p, batch, head_only.draw(key, 0, spec), 0))))

    # The optimizer, EMA and NaN guard of one block (the step's own `apply_gradients`).
    update = jax.jit(lambda s, grads: trainer.apply_gradients(s, jnp.float32(0.0), grads, 5)[0], donate_argnums=0)
    grads = jax.tree.map(jnp.ones_like, trainer.init_state(1).params)
    update_state = [trainer.init_state(2)]

    def update_only():
        update_state[0] = update(update_state[0], grads)
        return update_state[0].params

    noop = jax.jit(lambda s, *args: s, donate_argnums=0)
    noop_state = [trainer.init_state(3)]

    def dispatch_only():
        noop_state[0] = noop(noop_state[0], batch, 0, 5)
        return noop_state[0]

    rows = [("full training step, 1 transformer layer", median_ms(full_step)),
            ("embeddings + head + loss, no layer (fwd + bwd)",
             median_ms(lambda: loss_grad(params, jax.random.key(0), batch))),
            ("optimizer + EMA + NaN guard", median_ms(update_only)),
            ("dispatch of the step's state (jitted no-op)", median_ms(dispatch_only))]
    print(f"device: {jax.devices()[0].device_kind}, shapes preset, batch {config.data.batch_size}, "
          f"{len(jax.tree.leaves(state[0]))} state leaves")
    print("| part | ms |\n| --- | ---: |")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
