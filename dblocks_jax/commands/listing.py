"""`dblocks list`: the registered tasks with their presets, and with --fields every config field."""

from __future__ import annotations

import argparse

from dblocks_jax import presets as presets_lib


def run_list(args: argparse.Namespace) -> None:
    print(presets_lib.describe_presets())
    if args.fields:
        print()
        print(presets_lib.describe_fields())
