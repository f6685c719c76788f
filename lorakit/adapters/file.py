"""Adapter files: safetensors with string metadata and kohya's sshs hashes, written atomically."""
from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..io import atomic_write_bytes


def sshs_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """kohya: hash the file serialised with only the ss_* metadata (user metadata may change later).

    model hash = sha256 of everything after the header; legacy = sha256 of 64 KiB at 1 MiB, 8 hex digits.
    """
    data = st_save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + n:]).hexdigest()
    legacy = hashlib.sha256(BytesIO(data).getbuffer()[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def save_adapter_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *,
                      overwrite: bool) -> None:
    md = {k: str(v) for k, v in metadata.items()}
    md["sshs_model_hash"], md["sshs_legacy_hash"] = sshs_hashes(tensors, md)
    atomic_write_bytes(path, st_save(tensors, md), overwrite=overwrite)


def read_adapter_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
