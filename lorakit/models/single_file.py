"""Read original-LDM-layout single files (.safetensors / .ckpt) into diffusers/transformers modules.

Our own converter: the diffusers module is built empty from a config folder and each of its
keys is looked up in the checkpoint through the tables of ``ldm_layout``. Every module key
must be found (else :class:`ModelError`); extra checkpoint keys (EMA copies, the unused last
open_clip layer, text_projection, schedules) are ignored. ``.ckpt`` files are unpickled with
the restricted unpickler of ``safe_pickle`` (no pickled code ever runs).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError
from .ldm_layout import (SD1_TE_PREFIX, SD2_TE_PREFIX, UNET_PREFIX, VAE_PREFIX, clip_key_map,
                         openclip_key_map, unet_key_map, vae_key_map)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single file, on CPU. Raises ModelError for unreadable files."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        from .safe_pickle import safe_torch_load

        obj = safe_torch_load(str(path))
    except ModelError:
        raise
    except Exception as e:  # corrupt / not a checkpoint at all
        raise ModelError(f"cannot read this file as a model checkpoint ({type(e).__name__}: {e})",
                         file=str(path), fix="pass a Stable Diffusion .safetensors/.ckpt file or a "
                         "diffusers folder") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"the checkpoint holds a {type(obj).__name__}, not a state dict", file=str(path),
                         fix="pass a Stable Diffusion .safetensors/.ckpt file or a diffusers folder")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def classify(sd: dict[str, torch.Tensor]) -> str:
    """'sdxl', 'sd2', 'sd1', 'class-conditioned' or 'unknown' from the key layout."""
    if any(k.startswith("conditioner.embedders.") for k in sd):
        return "sdxl"
    if any(k.startswith(UNET_PREFIX + "label_emb.") for k in sd):   # SDXL-style UNet, SD2 unCLIP
        return "class-conditioned"
    has_unet = any(k.startswith(UNET_PREFIX) for k in sd)
    if has_unet and any(k.startswith(SD2_TE_PREFIX) for k in sd):
        return "sd2"
    if has_unet and any(k.startswith(SD1_TE_PREFIX) for k in sd):
        return "sd1"
    return "unknown"


def context_dim(sd: dict[str, torch.Tensor]) -> int | None:
    """Width of the cross-attention context (768 SD1, 1024 SD2, other for tiny models)."""
    for k, v in sd.items():
        if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight"):
            return int(v.shape[1])
    return None


def _fit(t: torch.Tensor, shape: torch.Size, key: str, file: str) -> torch.Tensor:
    if t.shape == shape:
        return t
    if t.numel() == shape.numel() and [s for s in t.shape if s != 1] == [s for s in shape if s != 1]:
        return t.reshape(shape)  # 1x1 conv <-> linear (VAE attention, SD2 proj_in/out)
    raise ModelError(f"tensor '{key}' has shape {tuple(t.shape)}, the model config expects {tuple(shape)}",
                     file=file, fix="the checkpoint does not match the config folder (SD1 vs SD2, or a "
                     "custom architecture): set v2 (and v_parameterization) to match the checkpoint, or give --model "
                     "a diffusers folder of this model")


def _load_into(module, new_sd: dict, missing: list[str], what: str, file: str):
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ModelError(f"the {what} weights are incomplete: missing {shown}", file=file,
                         fix="pass a complete SD1.x/2.x or SDXL checkpoint (or a diffusers folder of this model)")
    module.load_state_dict(new_sd, strict=True, assign=True)
    bad = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.is_meta]
    if bad:
        raise ModelError(f"the {what} weights left {bad[:3]} unset", file=file)
    return module


def _empty(builder):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return builder()


def _gather(module, key_map: dict[str, str], sd: dict, prefix: str, file: str):
    target = module.state_dict()
    new_sd, missing = {}, []
    for k, t in target.items():
        m = key_map.get(k)
        if m is None:  # e.g. position_ids: keep the module's own buffer
            new_sd[k] = t
        elif prefix + m in sd:
            new_sd[k] = _fit(sd[prefix + m].float(), t.shape, prefix + m, file)
        else:
            missing.append(prefix + m)
    return new_sd, missing


def _gather_openclip(module, key_map: dict[str, tuple], sd: dict, prefix: str, file: str):
    """_gather for an open_clip text encoder: key_map gives (open_clip key, q/k/v slot of its fused
    in_proj or None[, transposed]); a fused tensor is cut in three, a transposed one (SDXL's
    text_projection) turned back."""
    new_sd, missing = {}, []
    for k, t in module.state_dict().items():
        m = key_map.get(k)
        if m is None:  # position_ids: the module's own buffer
            new_sd[k] = t
            continue
        key, slot, transposed = (*m, False)[:3]
        if prefix + key not in sd:
            missing.append(prefix + key)
            continue
        src = sd[prefix + key].float()
        if slot is not None:
            src = src.chunk(3, dim=0)[slot]
        if transposed:
            src = src.T
        new_sd[k] = _fit(src.contiguous(), t.shape, prefix + key, file)
    return new_sd, missing


def build_unet(sd: dict, config_dir: Path, file: str):
    from diffusers import UNet2DConditionModel

    cfg = UNet2DConditionModel.load_config(str(config_dir / "unet"))
    unet = _empty(lambda: UNet2DConditionModel.from_config(cfg))
    new_sd, missing = _gather(unet, unet_key_map(list(unet.state_dict()), unet.config), sd, UNET_PREFIX, file)
    return _load_into(unet, new_sd, missing, "UNet", file)


def build_vae(sd: dict, config_dir: Path, file: str, prefix: str = VAE_PREFIX):
    from diffusers import AutoencoderKL

    cfg = AutoencoderKL.load_config(str(config_dir / "vae"))
    vae = _empty(lambda: AutoencoderKL.from_config(cfg))
    keys = list(vae.state_dict())
    if all(k in sd for k in keys):  # a VAE file already in diffusers layout
        key_map, prefix = {k: k for k in keys}, ""
    else:
        key_map = vae_key_map(keys, vae.config)
    new_sd, missing = _gather(vae, key_map, sd, prefix, file)
    return _load_into(vae, new_sd, missing, "VAE", file)


def build_text_encoder(sd: dict, config_dir: Path, v2: bool, file: str):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder"), local_files_only=True)
    te = _empty(lambda: CLIPTextModel(cfg))
    target = te.state_dict()
    if not v2:
        key_map = clip_key_map(list(target))
        if not any(k.startswith(SD1_TE_PREFIX + "text_model.") for k in sd):  # very old layout
            key_map = {k: m[len("text_model."):] for k, m in key_map.items()}
        new_sd, missing = _gather(te, key_map, sd, SD1_TE_PREFIX, file)
        return _load_into(te, new_sd, missing, "text encoder", file)
    key_map = {k: m for k in target for m in [openclip_key_map([k]).get(k)] if m is not None}
    new_sd, missing = _gather_openclip(te, key_map, sd, SD2_TE_PREFIX, file)
    return _load_into(te, new_sd, missing, "text encoder", file)


def vae_state_dict_from_file(path: Path) -> tuple[dict, str]:
    """A standalone VAE file: (state dict, key prefix to use)."""
    sd = read_state_dict(path)
    if any(k.startswith(VAE_PREFIX) for k in sd):
        return sd, VAE_PREFIX
    return sd, ""
