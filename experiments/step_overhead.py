"""Where the fixed per-step cost of a DiffusionBlocks block goes (the shapes preset, one layer per block).

    python experiments/step_overhead.py

Times (median of 30 after warm-up) a full training step of a 1-layer block and its parts: the
block's own embeddings, head and loss with no transformer layer (forward and backward), the
optimizer + EMA + NaN guard on the block's state, and the dispatch of a jitted no-op that takes and
returns the same state. B x this fixed cost is what one end-to-end-equivalent DiffusionBlocks step
pays on top of end-to-end training.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dblocks_jax import data, get_config
from dblocks_jax.model import DiT
from dblocks_jax.training import BlockState, BlockTrainer, ema_decay_at


def median_ms(fn, repeats: int = 30) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    config = get_config("shapes", num_blocks=8)  # 8 layers / 8 blocks: one layer per block
    trainer = BlockTrainer(config)
    images, labels = (jnp.asarray(a) for a in data.make_shapes(config.batch_size, config.image_size, seed=0))
    info = config.dataset_info

    state = [trainer.init_state(0)]

    def full_step():
        state[0], step_metrics = trainer.train_step(state[0], images, labels, 0, 5)
        return step_metrics

    # The same block with no transformer layer: its embeddings, head and loss alone.
    no_layers = DiT(image_size=config.image_size, channels=info.channels, patch_size=config.patch_size,
                    width=config.width, depth=0, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                    num_classes=config.num_classes, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(no_layers, nnx.Param)
    head_only = dataclasses.replace(trainer.model, graphdef=graphdef, abstract_params=params)
    loss_grad = jax.jit(jax.value_and_grad(head_only.loss))

    def update(s: BlockState, grads):
        updates, opt_state = trainer.optimizer.update(grads, s.opt_state, s.params)
        new_params = optax.apply_updates(s.params, updates)
        decay = ema_decay_at(config.ema_decay, 5)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, s.ema, new_params)
        finite = jnp.isfinite(optax.global_norm(grads))
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), BlockState(new_params, opt_state, ema), s)

    update = jax.jit(update, donate_argnums=0)
    grads = jax.tree.map(jnp.ones_like, trainer.init_state(1).params)
    update_state = [trainer.init_state(2)]

    def update_only():
        update_state[0] = update(update_state[0], grads)
        return update_state[0].params

    noop = jax.jit(lambda s, *args: s, donate_argnums=0)
    noop_state = [trainer.init_state(3)]

    def dispatch_only():
        noop_state[0] = noop(noop_state[0], images, labels, 0, 5)
        return noop_state[0]

    rows = [("full training step, 1 transformer layer", median_ms(full_step)),
            ("embeddings + head + loss, no layer (fwd + bwd)",
             median_ms(lambda: loss_grad(params, jax.random.key(0), 0, images, labels))),
            ("optimizer + EMA + NaN guard", median_ms(update_only)),
            ("dispatch of the step's state (jitted no-op)", median_ms(dispatch_only))]
    print(f"device: {jax.devices()[0].device_kind}, shapes preset, batch {config.batch_size}, "
          f"{len(jax.tree.leaves(state[0]))} state leaves")
    print("| part | ms |\n| --- | ---: |")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
