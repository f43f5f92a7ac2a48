"""Compile time of a DiT training step versus depth: scanned layers (now) against unrolled (before).

    python experiments/compile_time.py --old /tmp/old_dblocks \
        --json experiments/results/compile_time/cpu.json --md experiments/results/compile_time/cpu.md

For each depth, times `jax.jit(jax.value_and_grad(loss)).lower(...)` and `.compile()` of a simple
loss (the mean square of the DiT output) at the cifar10_dit_s size (32x32x3 images, patch 2,
width 384, 6 heads, MLP ratio 4, 10 classes, batch 128), with abstract parameters (nothing is
initialised or run). `dblocks_jax.models.DiT` applies its layers with one `lax.scan`, so XLA sees
one copy of the layer whatever the depth; `--old PATH`, a checkout of the code from before that
change (e.g. `git worktree add /tmp/old_dblocks <commit>`), adds the unrolled `dblocks_jax.model.DiT`,
whose program holds `depth` copies. Every measurement runs in its own process, so the two packages
never meet and no in-memory compilation cache is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = dict(image_size=32, channels=3, patch_size=2, width=384, num_heads=6, mlp_ratio=4.0, num_classes=10)
BATCH = 128


def worker(impl: str, path: str, depth: int) -> dict:
    """One measurement, in this (fresh) process: the DiT of the checkout at `path`."""
    import resource
    import time

    sys.path.insert(0, path)
    import jax
    import jax.numpy as jnp
    from flax import nnx

    if impl == "old":
        from dblocks_jax.model import DiT
    else:
        from dblocks_jax.models import DiT

    abstract = nnx.eval_shape(lambda: DiT(**SIZE, depth=depth, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    size, channels = SIZE["image_size"], SIZE["channels"]
    x = jax.ShapeDtypeStruct((BATCH, size, size, channels), jnp.float32)
    c_noise = jax.ShapeDtypeStruct((BATCH,), jnp.float32)
    labels = jax.ShapeDtypeStruct((BATCH,), jnp.int32)

    def loss(p, x, c_noise, labels):
        return jnp.mean(nnx.merge(graphdef, p)(x, c_noise, labels) ** 2)

    def cpu_s():  # CPU time of this process, all threads: robust to other load on the machine
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    start = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss)).lower(params, x, c_noise, labels)
    lowered_at, cpu_at = time.perf_counter(), cpu_s()
    compiled = lowered.compile()
    compiled_at, compile_cpu_s = time.perf_counter(), cpu_s() - cpu_at
    hlo = compiled.as_text()
    return dict(impl=impl, depth=depth, lower_s=lowered_at - start, compile_s=compiled_at - lowered_at,
                compile_cpu_s=compile_cpu_s, hlo_chars=len(hlo), hlo_fusions=hlo.count("fusion("),
                jax=jax.__version__, device=str(jax.devices()[0].device_kind))


def measure(impl: str, path: str, depth: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run([sys.executable, __file__, "--worker", impl, "--path", path, "--depth", str(depth)],
                         env=env, cwd="/", capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{impl} depth {depth} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(records: list[dict], depths: list[int], impls: list[str]) -> str:
    def best(impl, depth, field):  # the fastest of the repeats
        return min(r[field] for r in records if (r["impl"], r["depth"]) == (impl, depth))

    head = "| depth | " + " | ".join(f"{i} compile s" for i in impls) + " | " + \
        " | ".join(f"{i} compile CPU s" for i in impls) + " |"
    lines = [head, "|" + " --- |" * (2 * len(impls) + 1)]
    for d in depths:
        lines.append(f"| {d} | " + " | ".join(f"{best(i, d, 'compile_s'):.1f}" for i in impls) + " | "
                     + " | ".join(f"{best(i, d, 'compile_cpu_s'):.1f}" for i in impls) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="1,2,4,8,12")
    parser.add_argument("--old", help="checkout of the code with the unrolled dblocks_jax.model.DiT")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per point; the table shows the fastest")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--md", help="write the markdown table here")
    parser.add_argument("--worker", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.path, args.depth)))
        return

    depths = [int(d) for d in args.depths.split(",")]
    impls = (["old"] if args.old else []) + ["new"]
    paths = {"old": str(pathlib.Path(args.old).resolve()) if args.old else None, "new": str(REPO)}
    records = []
    for depth in depths:
        for _ in range(args.repeats):
            for impl in impls:
                record = measure(impl, paths[impl], depth)
                print(f"{impl} depth {depth}: lower {record['lower_s']:.2f} s, compile {record['compile_s']:.2f} s "
                      f"({record['compile_cpu_s']:.2f} s CPU)",
                      file=sys.stderr, flush=True)
                records.append(record)
    text = table(records, depths, impls)
    print(text)
    meta = dict(size=SIZE, batch=BATCH, cpu_count=os.cpu_count(), machine=platform.machine(),
                python=platform.python_version(), step="jax.jit(jax.value_and_grad(mean(DiT(x)**2)))",
                records=records)
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(meta, indent=1) + "\n")
    if args.md:
        note = (f"Compile time (s) of a DiT training step (value_and_grad) at the cifar10_dit_s size, batch {BATCH}, "
                f"on {meta['records'][0]['device']} ({os.cpu_count()} cores); fastest of {args.repeats}. "
                "old: unrolled layers; new: scanned LayerStack. Wall-clock seconds, and the CPU seconds of "
                "the compiling process (all its threads), which other load on the machine disturbs less.\n\n")
        pathlib.Path(args.md).write_text(note + text + "\n")


if __name__ == "__main__":
    main()
