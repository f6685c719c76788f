"""Crash-safe file writing: every file lorakit writes goes through here.

A file is written to a temporary name in the same folder, flushed and fsynced,
then renamed over the target, so a crash or a full disk never leaves a truncated
file under the final name.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to `target`."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists and would be overwritten", file=str(target),
                        fix="pass --overwrite, choose another output_name, or move the file")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left on the device while writing {target.name}; nothing was "
                            "replaced", file=str(target), fix="free disk space (or choose another output_dir) "
                            "and run again; with save_state, --resume continues from the last state") from e
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(target: str | os.PathLike, writer: Callable[[Path], None], *,
                      overwrite: bool = True) -> None:
    """Call writer(tmp_path) and move the result into place atomically."""
    with atomic_path(target, overwrite=overwrite) as tmp:
        writer(tmp)
