"""An exclusive lock on a run directory, so that two writers never mix in one run.

`train` (new, resumed or overwriting) and `assemble` (its output) hold `<workdir>/.lock` while they
write; readers (`sample`, `evaluate`) need none. The lock file holds the owner's pid, host and
command. It is taken with `O_CREAT | O_EXCL` (atomic on local and NFSv3+ file systems), so of two
processes that race, one wins. A lock left by a process that died on this host is detected
(`kill(pid, 0)` finds no such process) and taken over with a message; a lock held by a live
process, or by one on another host (whose liveness cannot be checked from here), refuses the
second writer at once, naming the owner.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another process is writing this run directory; the message names it."""


class NotWritableError(ValueError):
    """The run directory cannot be written (read-only file system, permissions, a file in the way)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """`with RunLock(workdir): ...` holds the directory's lock for the block's duration."""

    def __init__(self, workdir: str, command: str | None = None):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self.command = command or " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        self.held = False

    def acquire(self) -> "RunLock":
        try:
            self._acquire()
        except OSError as err:
            raise NotWritableError(f"{self.workdir} is not writable ({err.strerror or err}); choose another "
                                   f"--workdir") from None
        return self

    def _acquire(self) -> None:
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise NotWritableError(f"--workdir {self.workdir} is a file, not a directory")
        os.makedirs(self.workdir, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):  # at most one stale lock to take over, and one race lost
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read(self.path)
                pid, host = owner.get("pid"), owner.get("host")
                if isinstance(pid, int) and host == me["host"] and not _alive(pid):
                    # Rename, then check what was renamed: of two processes taking over the same stale
                    # lock, only one renames that file; the other renames nothing (or a live lock,
                    # which it puts back) and is refused on its next try.
                    aside = f"{self.path}.stale.{os.getpid()}"
                    try:
                        os.rename(self.path, aside)
                    except FileNotFoundError:
                        continue
                    if _read(aside).get("pid") != pid:
                        os.rename(aside, self.path)
                        continue
                    os.remove(aside)
                    print(f"{self.workdir}: taking over the lock of process {pid} on {host}, which is no longer "
                          f"running ({owner.get('command', '?')}, since {owner.get('since', '?')})", flush=True)
                    continue
                who = (f"process {pid} on {host} ({owner.get('command', '?')}, since {owner.get('since', '?')})"
                       if pid else f"an unreadable lock file {self.path}")
                raise RunLockedError(f"{self.workdir} is being written by {who}; wait for it to finish, use another "
                                     f"--workdir, or delete {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunLockedError(f"could not take the lock {self.path}: another process keeps re-creating it")

    def release(self) -> None:
        if self.held:
            self.held = False
            if _read(self.path).get("pid") == os.getpid():
                os.remove(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
