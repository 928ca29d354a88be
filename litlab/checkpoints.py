"""Checkpoints that never lose a user's work, and a lock that keeps two runs out of one workdir.

Orbax writes each checkpoint into a temporary directory and renames it to its step number when
complete, so a run killed mid-save leaves the previous checkpoints intact. On restore, a latest
checkpoint that cannot be read (truncated files, a disk that filled up) is skipped with a warning
and the one before it is used. The data stream position is the step itself (the mixture schedule
is a pure function of the step), so the train state is all that needs saving.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
import warnings
from pathlib import Path

import orbax.checkpoint as ocp


class WorkdirBusy(RuntimeError):
    pass


class WorkdirNotWritable(ValueError):
    pass


def write_atomic(path: str | Path, text: str) -> None:
    """Writes a file whole or not at all: a kill mid-write leaves the previous file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_writable(directory: str | Path, what: str) -> None:
    """Fails before any work if `directory` cannot be created or written (a probe file, so it
    also holds for root, whom permission bits do not stop, and for read-only mounts)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise WorkdirNotWritable(f"{what} {directory} is not writable ({e.strerror or e}); choose a "
                                 "writable folder or fix its permissions.") from None


@contextlib.contextmanager
def workdir_lock(workdir: str | Path):
    """Holds an exclusive lock on `workdir` for the duration of a run.

    The OS releases a flock when its process dies, SIGKILL included, so a crashed run never
    leaves a stale lock behind.
    """
    workdir = Path(workdir)
    check_writable(workdir, "workdir")
    path = workdir / ".lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "unknown"
        f.close()
        raise WorkdirBusy(f"workdir {workdir} is in use by another litlab run ({owner}); wait for it to "
                          "finish or pass a different --workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class Checkpointer:
    """Step-numbered orbax checkpoints under `workdir/checkpoints`, keeping the last `keep`."""

    def __init__(self, workdir: str | Path, *, keep: int = 2):
        self.directory = Path(workdir).resolve() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True))

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, abstract_state):
        """(state, step) from the newest readable checkpoint, or (None, None) if there is none.

        An unreadable checkpoint is moved to `checkpoints.corrupt/` (never deleted), so training
        can save that step again when it gets there, instead of failing on every rerun.
        """
        for step in reversed(self.steps()):
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
                return state, step
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                aside = self.directory.with_name("checkpoints.corrupt") / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(exist_ok=True)
                os.replace(self.directory / str(step), aside)
                self.manager.reload()
                self._warn_unreadable(step, e, f" It was moved to {aside}.")
        return None, None

    def restore_params(self, abstract_params):
        """(params as numpy, step) from the newest readable checkpoint, without rebuilding the
        optimizer: evaluation and prompting need only the parameters."""
        import jax
        import numpy as np

        reader = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False))
        item = {"params": abstract_params}
        args = ocp.args.PyTreeRestore(item=item, partial_restore=True, restore_args=jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item))
        try:
            for step in reversed(self.steps()):
                try:
                    return reader.restore(step, args=args)["params"], step
                except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                    self._warn_unreadable(step, e)
            return None, None
        finally:
            reader.close()

    def _warn_unreadable(self, step: int, e: Exception, note: str = "") -> None:
        warnings.warn(f"checkpoint {self.directory / str(step)} could not be restored "
                      f"({type(e).__name__}: {str(e)[:200]}); falling back to the previous one.{note}", stacklevel=3)

    def close(self) -> None:
        self.manager.close()
