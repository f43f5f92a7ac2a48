"""The method, task-free: level laws, partitions, blocks and their optimizer states, schedules,
shard_map parallelism, run directories, checkpoints, the chain and benchmarks. Nothing here knows
what a task's data is (tests/test_boundary.py keeps it so)."""
