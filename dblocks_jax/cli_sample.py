"""The `dblocks sample` command: draws from a trained run, as images (image_generation: a PNG
grid, an .npz, or an .npy written batch by batch) or as text (masked_lm: one sample per line;
autoregressive_lm and recurrent_lm: continuations of a prompt, or of held-out prompts)."""

from __future__ import annotations

import argparse

from dblocks_jax.cli import check_output, check_seed, sampling_overrides


def run_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from dblocks_jax import runs
    from dblocks_jax.evaluation.plots import save_image_grid

    if not args.out.endswith((".png", ".npz", ".npy", ".txt")):
        raise ValueError(f"--out must end in .png, .npz or .npy (image_generation) or .txt (language tasks), got "
                         f"{args.out!r}")
    check_output("--out", args.out)
    check_seed("--seed", args.seed)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}; allowed: an integer >= 1")
    overrides = sampling_overrides(args)
    task_name = runs.read_run_config(args.workdir).task
    if task_name in ("autoregressive_lm", "recurrent_lm"):
        return _sample_continuations(args, overrides, task_name)
    if args.prompt is not None or args.length is not None:
        raise ValueError(f"--prompt and --length are for autoregressive_lm and recurrent_lm runs; {args.workdir[0]} "
                         f"holds a {task_name} run")
    if task_name == "masked_lm":
        return _sample_text(args, overrides)
    if task_name != "image_generation":
        raise ValueError(f"sample draws images from an image_generation run or text from a masked_lm run; "
                         f"{args.workdir[0]} holds a run of task {task_name} (score it with `dblocks evaluate`)")
    if not args.out.endswith((".png", ".npz", ".npy")):
        raise ValueError(f"--out must end in .png, .npz or .npy for an image_generation run, got {args.out!r}")
    task, params, _ = runs.load_run(args.workdir, overrides)
    s = task.config.sampling
    labels = None
    if args.class_label is not None:
        if not 0 <= args.class_label < task.num_classes:
            raise ValueError(f"--class {args.class_label}; allowed: 0..{task.num_classes - 1} for this run "
                             f"(model.class_conditional: {task.config.model.class_conditional})")
        labels = np.full(s.num_samples, args.class_label, np.int32)
    batches = task.sample_batches(params, labels=labels, seed=args.seed, batch_size=args.batch_size)
    if args.out.endswith(".npy"):  # streamed: written batch by batch, never all in memory
        out = np.lib.format.open_memmap(args.out, mode="w+", dtype=np.float32,
                                        shape=(s.num_samples, *task.image_shape))
        start = 0
        for images, _ in batches:
            out[start:start + len(images)] = images
            start += len(images)
        out.flush()
    else:
        parts = list(batches)
        images = np.concatenate([p[0] for p in parts])
        labels = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        if args.out.endswith(".png"):
            save_image_grid(args.out, images)
        else:
            np.savez(args.out, images=images, labels=labels if labels is not None else np.zeros(0, np.int32))
    print(f"wrote {s.num_samples} samples ({s.solver}, {s.steps} steps, {s.grid} grid, guidance {s.guidance}) "
          f"to {args.out}")


def _check_text_flags(args: argparse.Namespace, takes: str) -> None:
    """A language run writes .txt and refuses the image flags, saying what it takes instead."""
    if not args.out.endswith(".txt"):
        raise ValueError(f"--out must end in .txt for a text run, got {args.out!r}")
    unused = [f for f, v in (("--class", args.class_label), ("--guidance", args.guidance), ("--solver", args.solver))
              if v is not None]
    if unused:
        raise ValueError(f"{', '.join(unused)}: for image_generation runs; {takes}")


def _sample_text(args: argparse.Namespace, overrides: dict) -> None:
    """`sample` for a masked_lm run: one sample per line of --out FILE.txt."""
    from dblocks_jax import runs

    _check_text_flags(args, "a masked_lm run samples by ancestral unmasking (it takes --num-samples, --steps, "
                            "--grid, --seed)")
    task, params, _ = runs.load_run(args.workdir, overrides)
    s = task.config.sampling
    samples = task.sample(params, s.num_samples, seed=args.seed or 0, batch_size=args.batch_size)
    with open(args.out, "w") as f:
        f.write("\n".join(task.decode(x) for x in samples) + "\n")
    print(f"wrote {s.num_samples} samples ({s.steps} unmasking steps, {s.grid} grid) to {args.out}")


def _sample_continuations(args: argparse.Namespace, overrides: dict, task_name: str) -> None:
    """`sample` for an autoregressive_lm or recurrent_lm run: --num-samples continuations of --prompt
    (or of as many held-out prompts), one per line of --out FILE.txt, printed too."""
    import numpy as np

    from dblocks_jax import runs
    from dblocks_jax.evaluation.text_metrics import write_continuations
    from dblocks_jax.tasks import recurrent_lm_eval
    from dblocks_jax.tasks.autoregressive_lm_eval import continuations, prompts
    from dblocks_jax.tasks.autoregressive_lm_sampling import prompt_ids

    recurrent = task_name == "recurrent_lm"
    steps_are = "core iterations K" if recurrent else "network calls per symbol"
    _check_text_flags(args, f"a {task_name} run takes --prompt, --length, --num-samples, --steps ({steps_are}), "
                            f"--grid, --seed")
    if "sampling.steps" in overrides:
        overrides["recurrent.steps" if recurrent else "ar.steps"] = overrides.pop("sampling.steps")
    if args.length is not None:
        if args.length < 1:
            raise ValueError(f"--length {args.length}; allowed: an integer >= 1")
        overrides["ar.gen_len"] = args.length
    task, params, _ = runs.load_run(args.workdir, overrides)
    count = task.config.sampling.num_samples
    if args.prompt is None:
        prompts_NP, _ = prompts(task, count)
    else:
        ids, note = prompt_ids(task, args.prompt)
        if note:
            print(note)
        prompts_NP = np.tile(ids, (count, 1))
    if recurrent:
        k = task.config.recurrent.steps
        out = recurrent_lm_eval.continuations(task, params[0], count, k, seed=args.seed or 0, prompts_NP=prompts_NP)
    else:
        out = continuations(task, params, count, seed=args.seed or 0, prompts_NP=prompts_NP)
    lines = write_continuations(args.out, out["prompts"], out["continuations"])
    for line in lines[:8]:
        print(f"  {line}")
    a = task.config.ar
    if recurrent:
        how = f"{task.config.recurrent.method}, K = {task.config.recurrent.steps} core iterations per symbol"
    else:
        how = "plain next-token model" if task.plain else f"{task.inference_steps()} network calls per symbol, " \
                                                           f"{a.bridge} bridge"
    print(f"wrote {count} continuations of {a.gen_len} symbols ({how}; temperature {a.temperature}, top-p "
          f"{a.top_p}; {out['tokens_per_s']:.0f} symbols/s) to {args.out}")
