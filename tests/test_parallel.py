"""Block-parallel training (schedule="parallel"): it equals training every block alone, its
compiled step communicates only within a block's data shards, and a mesh that does not fit the
devices is refused. Runs on the 8 CPU devices that conftest.py asks XLA for."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import child_xla_flags, tiny_config
from hlo_tools import collectives, replica_groups

from dblocks_jax import make_task, train
from dblocks_jax.engine import checkpoint, parallel
from dblocks_jax.engine.loop import _parallel_trainer
from dblocks_jax.engine.trainer import BlockTrainer


def assert_same_blocks(got, expected, atol=1e-5):
    """Parameters equal to float tolerance (the parallel step compiles to different fusions)."""
    for g, e in zip(got, expected):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=0), g, e)


@pytest.fixture(scope="module")
def alone():
    """Each block trained alone on one device (sequential schedule), for B = 8 and B = 4."""
    return {b: train(tiny_config(num_layers=8, num_blocks=b, steps=3, schedule="sequential"), progress=False).params
            for b in (8, 4)}


@pytest.mark.parametrize("num_blocks,block_shards,data_shards", [(8, 8, 1), (8, 4, 1), (4, 4, 2)])
def test_parallel_training_equals_each_block_trained_alone(alone, num_blocks, block_shards, data_shards):
    config = tiny_config(num_layers=8, num_blocks=num_blocks, steps=3, schedule="parallel",
                         block_shards=block_shards, data_shards=data_shards)
    result = train(config, progress=False)
    assert result.block_steps == [3] * num_blocks
    assert_same_blocks(result.params, alone[num_blocks])


def compiled_step_hlo(config) -> tuple[str, parallel.ParallelTrainer]:
    trainer = BlockTrainer(make_task(config))
    num_blocks = config.model.num_blocks
    pt = _parallel_trainer(trainer, list(range(num_blocks)))
    states = pt.init_states(pt.block_ids)
    d = config.data
    batch = {"image": np.zeros((d.batch_size, d.image_size, d.image_size, 1), np.float32),
             "label": np.zeros(d.batch_size, np.int32)}
    return pt.lower_step(states, pt.global_batch({b: batch for b in range(num_blocks)})).compile().as_text(), pt


def test_compiled_parallel_step_has_no_collective_across_blocks():
    hlo, _ = compiled_step_hlo(tiny_config(num_blocks=4, schedule="parallel", block_shards=4))
    assert collectives(hlo) == []  # data = 1: no communication at all

    hlo, pt = compiled_step_hlo(tiny_config(num_blocks=4, schedule="parallel", block_shards=4, data_shards=2))
    ops = collectives(hlo)
    assert ops, "data = 2 must average gradients over the data shards"
    # Replica groups hold positions in the mesh's device order: block row = position // data_shards.
    for op in ops:
        groups = replica_groups(op)
        assert all(len(g) == 2 and len({i // pt.data_shards for i in g}) == 1 for g in groups), op


def test_replica_group_formats_are_read():
    assert replica_groups("x = all-reduce(y), replica_groups={{0,1},{2,3}}") == [[0, 1], [2, 3]]
    assert replica_groups("x = all-reduce(y), replica_groups=[2,2]<=[2,2]T(1,0)") == [[0, 2], [1, 3]]


def test_mesh_that_does_not_fit_the_devices_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"block_shards=4 x data_shards=4 needs 16 devices; 8 available"):
        parallel.mesh_shape(4, 4, 4, 8)
    with pytest.raises(ValueError, match="data_shards=16 needs at least 16 devices; 8 available"):
        parallel.mesh_shape(4, 0, 16, 8)
    assert parallel.mesh_shape(8, 0, 1, 8) == (8, 1)
    assert parallel.mesh_shape(6, 0, 2, 8) == (3, 2)  # the largest divisor of B that fits
    with pytest.raises(ValueError, match="needs 16 devices; 8 available"):
        train(tiny_config(num_blocks=4, schedule="parallel", block_shards=4, data_shards=4), progress=False)
    with pytest.raises(ValueError, match="schedule.block_shards=3; allowed: 0 .* or a divisor of model.num_blocks=4"):
        tiny_config(num_blocks=4, schedule="parallel", block_shards=3)
    with pytest.raises(ValueError, match="schedule.name='sequential'; allowed: 'parallel' when"):
        tiny_config(num_blocks=4, schedule="sequential", data_shards=2)


def paths_of(config) -> dict:
    from dblocks_jax.engine.settings import leaves

    return {path: value for path, (value, _) in leaves(config).items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_two_blocks_like_one(tmp_path):
    config = tiny_config(steps=3, schedule="parallel", checkpoint_every=2)
    overrides = [f"--set={k}={v}" for k, v in paths_of(config).items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=child_xla_flags(1))
    port = free_port()
    command = [sys.executable, "-m", "dblocks_jax", "train", "--workdir", str(tmp_path), "--no-progress", *overrides]
    procs = [subprocess.Popen(command + [
                               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(k)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Each process trained its own block and wrote its own metrics; process 0 wrote the shared files
    # and, gathered at checkpoint time, every block's checkpoint.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["block_000", "block_001"]
    assert {"config.json", "metrics.process0.jsonl", "metrics.process1.jsonl"} <= set(os.listdir(tmp_path))
    trainer = BlockTrainer(make_task(config))
    got = [checkpoint.restore_block(str(tmp_path), b, trainer.abstract_state)[0].ema for b in range(2)]
    single = train(config.override({"schedule.name": "sequential"}), progress=False).params
    assert_same_blocks(got, single)
    assert json.load(open(tmp_path / "run.json"))["process_count"] == 2
