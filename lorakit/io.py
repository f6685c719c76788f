"""Crash-safe file writing: every file lorakit writes goes through here.

A file is written to a hidden temporary name in the same folder (`.<name>.<random>.tmp`),
flushed and fsynced, then renamed over the target, so a crash or a full disk never leaves a
truncated file under the final name. A write that fails because of the disk (full, quota,
read-only, permissions) becomes a :class:`DiskError` (exit 2) naming the path and the bytes
needed, whatever the writing library raised: an OSError, safetensors' SafetensorError (a Rust
io error as text) or torch's zip writer's RuntimeError ("unexpected pos", "file write failed").
Files get the mode the umask gives (0644 under 022), not mkstemp's 0600.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError

# errno -> what the user reads
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.EFBIG: "file too large for the file system"}
# how the Rust (safetensors) and C++ (torch) writers spell those errors in their messages
_TEXTS = {"no space left": errno.ENOSPC, "os error 28": errno.ENOSPC, "quota exceeded": errno.EDQUOT,
          "os error 122": errno.EDQUOT, "read-only file system": errno.EROFS, "os error 30": errno.EROFS,
          "permission denied": errno.EACCES, "os error 13": errno.EACCES, "file too large": errno.EFBIG}
# torch's PyTorchStreamWriter: a short write shows only as a position mismatch or a failed write
_WRITER_TEXTS = ("unexpected pos", "file write failed", "pytorchstreamwriter failed")
TMP_SUFFIX = ".tmp"


class DiskError(UserError):
    """Writing a file failed because of the disk: full, quota, read-only or no permission."""


def umask() -> int:
    try:  # Linux: read it without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    return 0o666 & ~umask()


def free_bytes(folder: str | os.PathLike) -> int | None:
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_errno(e: BaseException, folder: str | os.PathLike | None = None, need: int | None = None) -> int | None:
    """The errno behind a failed write, from the exception chain or the library's message; None when
    the failure is not the disk's. A torch zip-writer failure names no cause: it counts as a full disk
    when the folder has less free space than the write needs (or under 1 MiB)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e.errno
        text = str(e).lower()
        for words, code in _TEXTS.items():
            if words in text:
                return code
        if isinstance(e, RuntimeError) and any(w in text for w in _WRITER_TEXTS):
            free = free_bytes(folder) if folder is not None else None
            if free is not None and free < max(need or 0, 1 << 20):
                return errno.ENOSPC
            return errno.EIO
        e = e.__cause__ or e.__context__
    return None


def disk_error(e: BaseException, target: str | os.PathLike, need: int | None = None,
               written: int | None = None) -> DiskError | None:
    """A DiskError for `e` raised while writing `target`, or None when `e` is not about the disk.
    need: the bytes the write needs when known; else written: what it got onto the disk first."""
    target = Path(target)
    code = disk_errno(e, target.parent, need)
    if code is None:
        return None
    free = free_bytes(target.parent)
    sizes = []
    if need:
        sizes.append(f"needs {human(need)}")
    elif written:
        sizes.append(f"needs more than the {human(written)} it wrote")
    if free is not None:
        sizes.append(f"{human(free)} free")
    what = DISK_ERRNOS.get(code, "the write failed") + (f" ({', '.join(sizes)})" if sizes else "")
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
        fix = ("free disk space (or choose another output_dir) and run again; with save_state, --resume "
               "continues from the last state")
    else:
        fix = f"make {target.parent} writable for this user (or choose another output_dir)"
    detail = "" if code in DISK_ERRNOS else f": {e}"
    return DiskError(f"cannot write {target.name}: {what}{detail}; nothing was replaced", file=str(target), fix=fix)


def human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def make_dir(folder: str | os.PathLike, key: str = "output_dir") -> Path:
    """mkdir -p with a UserError naming the folder when it cannot be made."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder: {e.strerror}", file=str(folder), key=key,
                        fix="choose a folder you can write to") from None
    return folder


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to `target`. `need`: the bytes the write
    needs, when known, for the message of a full disk."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists and would be overwritten", file=str(target),
                        fix="pass --overwrite, choose another output_name, or move the file")
    tmp_path = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
        tmp_path = Path(tmp)
        os.close(fd)
        yield tmp_path
        # mkstemp makes 0600 and safetensors' writer recreates the file 0600: other users (a UI)
        # should read what the umask allows
        os.chmod(tmp_path, file_mode())
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException as e:
        written = None
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                written = tmp_path.stat().st_size
                tmp_path.unlink()
        if isinstance(e, Exception) and not isinstance(e, UserError):
            err = disk_error(e, target, need, written)
            if err is not None:
                raise err from e
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    with atomic_path(target, overwrite=overwrite, need=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(target: str | os.PathLike, writer: Callable[[Path], None], *,
                      overwrite: bool = True, need: int | None = None) -> None:
    """Call writer(tmp_path) and move the result into place atomically."""
    with atomic_path(target, overwrite=overwrite, need=need) as tmp:
        writer(tmp)


def clean_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove what a killed run left in `folder` (call only while holding its lock): hidden
    `.<name>.<random>.tmp` files of atomic_path, `.<state>.tmp` folders of save_state, and a
    `.<state>.old` whose replacement never landed is put back. Returns the names handled."""
    folder = Path(folder)
    done = []
    if not folder.is_dir():
        return done
    for p in sorted(folder.iterdir()):
        if not p.name.startswith("."):
            continue
        if p.name.endswith(TMP_SUFFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            done.append(p.name)
        elif p.name.endswith(".old") and p.is_dir():
            final = folder / p.name[1:-len(".old")]
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, final)
            done.append(p.name)
    return done
