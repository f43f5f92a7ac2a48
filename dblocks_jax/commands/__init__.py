"""The subcommands of `dblocks` (train, sample, evaluate, bench, assemble, list), one module each,
called by `dblocks_jax.cli` once it has parsed the arguments. None of them names a task: they ask
the run's task (its hooks and flags) through the registry."""
