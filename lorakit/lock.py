"""One run per output folder: `<output_dir>/.lorakit.lock` holds the owner's pid and host.

Two runs writing into one folder interleave metrics.jsonl and overwrite each other's adapters,
so a second run is refused (exit 2) with the owner's pid, host and start time. A lock whose pid
is dead on this host (a killed run) is taken over with a warning; a lock from another host is
never guessed stale (its pid means nothing here): the message says how to remove it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from .errors import UserError
from .io import clean_stale_temporaries, make_dir

LOCK_NAME = ".lorakit.lock"


class Locked(UserError):
    """The output folder belongs to another run that is still alive."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def acquire(folder: str | os.PathLike) -> tuple[Path, list[str]]:
    """Take the folder's lock; returns (lock path, warnings). Raises Locked when a live run holds it."""
    folder = make_dir(folder)
    path = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    warnings: list[str] = []
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read(path)
            if owner is None:  # empty or cut short: its writer died between create and write
                if time.time() - _mtime(path) < 5:
                    time.sleep(0.2)  # or it is writing right now: look again
                    owner = _read(path)
            stale = owner is None or (owner.get("host") == me["host"] and not pid_alive(int(owner.get("pid", 0))))
            if not stale:
                raise Locked(f"another lorakit run (pid {owner.get('pid')} on {owner.get('host')}, started "
                             f"{owner.get('started')}) is writing into this folder", file=str(folder), key="output_dir",
                             fix=f"wait for it to end, or choose another output_dir; if that run is gone (e.g. "
                                 f"another machine that crashed), delete {path}")
            what = "an unreadable lock" if owner is None else f"pid {owner.get('pid')}, no longer running"
            warnings.append(f"took over the lock of a run that ended without releasing it ({what}): {path}")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        except OSError as e:
            raise UserError(f"cannot create the lock file: {e.strerror}", file=str(path), key="output_dir",
                            fix="choose an output folder you can write to") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:
        raise Locked("could not take the output folder's lock (another run keeps taking it)", file=str(path),
                     key="output_dir", fix="choose another output_dir")
    cleaned = clean_stale_temporaries(folder)
    if cleaned:
        warnings.append(f"removed {len(cleaned)} temporary file(s) a killed run left in {folder}: "
                        + ", ".join(cleaned[:5]) + (" ..." if len(cleaned) > 5 else ""))
    return path, warnings


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def release(path: Path) -> None:
    """Remove the lock when it is still this process's."""
    owner = _read(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[list[str]]:
    """Hold the folder's lock for the block; yields the warnings of taking it. A folder the lock made
    is removed again when the run leaves nothing in it (it failed before writing anything), so a
    refused run does not leave an empty output folder behind."""
    made = not Path(folder).exists()
    path, warnings = acquire(folder)
    try:
        yield warnings
    finally:
        release(path)
        if made:
            with contextlib.suppress(OSError):  # not empty, or gone: keep what is there
                path.parent.rmdir()
