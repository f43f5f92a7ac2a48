"""`python -m dblocks_jax` and the `dblocks` console script. A Ctrl-C while the CLI's libraries load
is held until they have loaded (raised there, it can land in a callback of JAX's garbage-collection
hook, which swallows it, and the command would run on), then answered like one at any later
moment: one line and exit status 130."""

import os
import signal
import sys


def main() -> None:
    pending = []
    held = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not when SIGINT is ignored
    if held:
        signal.signal(signal.SIGINT, lambda *_: pending.append(True))
    try:
        from dblocks_jax.cli import run
    finally:
        if held:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        print("dblocks: interrupted; nothing was written", file=sys.stderr, flush=True)
        os._exit(130)
    run()


if __name__ == "__main__":
    main()
