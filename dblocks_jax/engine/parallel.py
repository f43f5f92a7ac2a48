"""Block-parallel training (schedule.name="parallel"): the blocks' states are
stacked along a leading axis and sharded over the mesh axis 'block'; inside `jax.shard_map` each
device trains its own block(s), one after the other, on their own batches. The axis 'data' splits
every block's batch: gradients and losses are averaged over 'data' only, so nothing ever crosses
'block' (tests/test_parallel.py reads the compiled HLO to check it).

Every block step uses the same key, the same noise draw and the same batch as in the single-device
schedules, so a block trained here equals, to float tolerance, the same block trained alone.
Works unchanged across hosts: the mesh spans every process's devices, each process feeds the
batches of the blocks it holds and saves the blocks it owns.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dblocks_jax.engine.trainer import spec_of

BLOCK, DATA = "block", "data"


def mesh_shape(num_blocks: int, block_shards: int, data_shards: int, num_devices: int) -> tuple[int, int]:
    """(block, data) shape of the mesh: `block_shards` devices split the blocks (0: the largest
    divisor of num_blocks that fits next to `data_shards`), refused with the numbers when the
    devices are too few."""
    if data_shards > num_devices:
        raise ValueError(f"data_shards={data_shards} needs at least {data_shards} devices; "
                         f"{num_devices} available (jax.devices())")
    if block_shards:
        if num_blocks % block_shards:
            raise ValueError(f"block_shards={block_shards} does not divide the {num_blocks} blocks being trained")
        if block_shards * data_shards > num_devices:
            raise ValueError(f"a mesh of block_shards={block_shards} x data_shards={data_shards} needs "
                             f"{block_shards * data_shards} devices; {num_devices} available (jax.devices()); "
                             f"lower block_shards or data_shards")
        return block_shards, data_shards
    block = max(d for d in range(1, num_blocks + 1) if num_blocks % d == 0 and d * data_shards <= num_devices)
    return block, data_shards


def make_block_mesh(shape: tuple[int, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A ('block', 'data') mesh over the first block x data devices. Auto axes: shard_map gets
    its specs from `in_specs`, not from the inputs' types."""
    devices = list(devices if devices is not None else jax.devices())[:shape[0] * shape[1]]
    return jax.make_mesh(shape, (BLOCK, DATA), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


class ParallelTrainer:
    """The stacked states of `blocks` (a leading axis, sharded over 'block') and the compiled
    parallel step, built from one `BlockTrainer` so that the per-block math is shared."""

    def __init__(self, trainer, blocks: Sequence[int], mesh: Mesh):
        self.trainer, self.blocks, self.mesh = trainer, list(blocks), mesh
        self.block_shards, self.data_shards = mesh.shape[BLOCK], mesh.shape[DATA]
        self.per_shard = len(self.blocks) // self.block_shards
        self.state_sharding = NamedSharding(mesh, P(BLOCK))
        # With one data shard the batch is not split at all: then nothing in the step varies over
        # 'data', and no collective is needed (nor emitted).
        batch_spec = P(BLOCK, DATA) if self.data_shards > 1 else P(BLOCK)
        self.batch_sharding = NamedSharding(mesh, batch_spec)
        self.block_ids = jax.make_array_from_callback(
            (len(self.blocks),), self.state_sharding, lambda i: np.asarray(self.blocks, np.int32)[i])
        self.init_states = jax.jit(jax.shard_map(self._init_local, mesh=mesh, in_specs=P(BLOCK), out_specs=P(BLOCK)))
        specs = (P(BLOCK), batch_spec, P(BLOCK), P())
        self._step = jax.jit(jax.shard_map(self._step_local, mesh=mesh, in_specs=specs, out_specs=(P(BLOCK), P(BLOCK))),
                             donate_argnums=0)
        me = jax.process_index()
        # Positions (into `blocks`) of the blocks this process holds a replica of: it reads their data.
        self.local_positions = [i for i in range(len(self.blocks))
                                if any(d.process_index == me for d in mesh.devices[i // self.per_shard])]

    # -- compiled pieces -------------------------------------------------------------------------

    def _init_local(self, ids):
        return jax.lax.map(self.trainer.init_block, ids)

    def _step_local(self, states, batch, ids, block_step):
        def one(args):
            state, block_batch, b = args
            return self._block_step(state, block_batch, b, block_step)

        return jax.lax.map(one, (states, batch, ids))

    def _block_step(self, state, batch, block, block_step):
        """One block's step on this device's slice of its batch. The step's randomness is drawn
        for the whole batch from the block step's key and sliced, so every data shard sees its
        part of exactly the single-device draw."""
        trainer = self.trainer
        local = spec_of(batch)
        full = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] * self.data_shards,) + x.shape[1:], x.dtype),
                            local)
        draw = trainer.task.draw(trainer.step_key(block, block_step), block, full)
        if self.data_shards > 1:
            n = jax.tree.leaves(local)[0].shape[0]
            start = jax.lax.axis_index(DATA) * n
            draw = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, n), draw)
        loss, grads = trainer.loss_and_grad(state.params, batch, draw, block)
        if self.data_shards > 1:  # the only collectives: within one block's data shards
            # The parameters are invariant over 'data' while each shard's loss varies over it, so
            # shard_map's autodiff already sums the shards' gradients (the transpose of the implicit
            # broadcast is a psum over 'data'): dividing by the shard count gives the gradient of
            # the mean loss over the whole batch, what a single device computes.
            loss = jax.lax.pmean(loss, DATA)
            grads = jax.tree.map(lambda g: g / self.data_shards, grads)
        return trainer.apply_gradients(state, loss, grads, block_step)

    def train_step(self, states, batch, block_step: int):
        """One step of every block; returns the new states and per-block (loss, gradient norm)."""
        return self._step(states, batch, self.block_ids, jnp.int32(block_step))

    def lower_step(self, states, batch):
        return self._step.lower(states, batch, self.block_ids, jnp.int32(0))

    # -- host side -------------------------------------------------------------------------------

    def global_batch(self, batches: dict[int, Any]) -> Any:
        """Stack per-block batches {block: batch pytree} into (blocks, batch, ...) arrays sharded
        over ('block', 'data'); only the blocks at `local_positions` are needed here."""
        first = batches[self.blocks[self.local_positions[0]]]
        flat = {b: jax.tree.leaves(batch) for b, batch in batches.items()}

        def build(k: int, leaf) -> jax.Array:
            shape = (len(self.blocks),) + np.shape(leaf)

            def shard(index):
                rows = range(*index[0].indices(len(self.blocks)))
                return np.stack([flat[self.blocks[i]][k] for i in rows])[(slice(None),) + tuple(index[1:])]

            return jax.make_array_from_callback(shape, self.batch_sharding, shard)

        leaves, treedef = jax.tree.flatten(first)
        return jax.tree.unflatten(treedef, [build(k, leaf) for k, leaf in enumerate(leaves)])

    def local_rows(self, tree) -> dict[int, Any]:
        """{position: that block's slice of `tree`} on the host, for every position this process
        holds; reads one replica per block, in a single transfer (no communication)."""
        leaves, treedef = jax.tree.flatten(tree)
        shards = [{shard.index[0].start or 0: shard.data for shard in leaf.addressable_shards} for leaf in leaves]
        host = jax.device_get(shards)  # one replica per (leaf, block row), all at once
        rows = [{start + k: block for start, data in leaf.items() for k, block in enumerate(np.asarray(data))}
                for leaf in host]
        return {i: jax.tree.unflatten(treedef, [leaf[i] for leaf in rows]) for i in self.local_positions}

    def gather_rows(self, tree) -> dict[int, Any]:
        """Every block's slice of `tree`, on every process. A collective across processes, used only
        at checkpoint time of multi-process runs (the training step never communicates)."""
        from jax.experimental import multihost_utils

        full = multihost_utils.process_allgather(tree, tiled=True)
        return {i: jax.tree.map(lambda x, i=i: np.asarray(x[i]), full) for i in range(len(self.blocks))}

    def stack_states(self, states: dict[int, Any], abstract_state) -> Any:
        """The sharded stacked state from host states {position: state} of every local position
        (what a resume restores)."""
        def leaf(path_index: int, abstract):
            def shard(index):
                rows = range(*index[0].indices(len(self.blocks)))
                return np.stack([flat[i][path_index] for i in rows])

            shape = (len(self.blocks),) + tuple(abstract.shape)
            return jax.make_array_from_callback(shape, self.state_sharding, shard)

        flat = {i: jax.tree.leaves(s) for i, s in states.items()}
        abstract_leaves, treedef = jax.tree.flatten(abstract_state)
        return jax.tree.unflatten(treedef, [leaf(k, a) for k, a in enumerate(abstract_leaves)])
