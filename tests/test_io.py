"""Crash-safe writes: a failed or interrupted write never leaves a truncated file or replaces a good one."""
from __future__ import annotations

import errno

import pytest

from lorakit.errors import UserError
from lorakit.io import atomic_path, atomic_write_bytes


def test_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "adapter.safetensors"
    target.write_bytes(b"good old file")

    def fill_disk(tmp):
        tmp.write_bytes(b"half a fi")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError) as e:
        with atomic_path(target) as tmp:
            fill_disk(tmp)
    assert "no space left" in e.value.message and e.value.fix
    assert target.read_bytes() == b"good old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors"]


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_no_clobber_without_overwrite(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"1")
    with pytest.raises(UserError) as e:
        atomic_write_bytes(target, b"2", overwrite=False)
    assert "--overwrite" in e.value.fix and target.read_bytes() == b"1"
    atomic_write_bytes(target, b"3")
    assert target.read_bytes() == b"3"
