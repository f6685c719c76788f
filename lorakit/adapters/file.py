"""Adapter files: safetensors with string metadata and kohya's sshs hashes, written atomically.

kohya (library/train_util.py precalculate_safetensors_hashes) serialises the tensors
with only the ``ss_*`` metadata (user metadata may be edited later) and stores
- ``sshs_model_hash``: sha256 of every byte after the 8-byte length and the JSON header
  (the tensor data; it does not depend on the metadata),
- ``sshs_legacy_hash``: the first 8 hex digits of sha256 of the 0x10000 bytes at offset
  0x100000 of that serialisation (empty, hence sha256(b"") for files under 1 MiB).
sd-webui-additional-networks and A1111 read them instead of hashing the file again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from safetensors.torch import save_file

from ..errors import UserError
from ..io import atomic_write_with

LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000


def sshs_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) exactly as kohya computes them."""
    data = st_save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_len = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(memoryview(data)[8 + header_len:]).hexdigest()
    legacy = hashlib.sha256(memoryview(data)[LEGACY_OFFSET:LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]
    return model_hash, legacy


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{k}: {type(t).__name__} is not a tensor")
        out[k] = t.detach().to("cpu").contiguous()
    return out


def save_adapter_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *,
                      overwrite: bool) -> None:
    """Write `tensors` with `metadata` (+ sshs_model_hash / sshs_legacy_hash) to `path` atomically.

    Every metadata value must be a string (safetensors and the web UIs require it).
    """
    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise TypeError(f"adapter metadata values must be strings: {bad}")
    tensors = _prepare(tensors)
    md = {k: v for k, v in metadata.items() if k not in ("sshs_model_hash", "sshs_legacy_hash")}
    md["sshs_model_hash"], md["sshs_legacy_hash"] = sshs_hashes(tensors, md)
    need = sum(t.numel() * t.element_size() for t in tensors.values()) + len(json.dumps(md))
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), md), overwrite=overwrite, need=need)


def read_adapter_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on CPU, metadata) of a .safetensors adapter file."""
    p = Path(path)
    if not p.is_file():
        raise UserError("adapter file not found", file=str(p), fix="check the path")
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"not a readable .safetensors file ({e})", file=str(p),
                        fix="adapters are read from .safetensors files only") from e
