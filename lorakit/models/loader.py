"""Load an SD1.x / SD2.x / SDXL model (diffusers folder or original single file) for training.

The family is detected from the weights; SDXL is loaded by ``sdxl_loader`` (an SDXLModel).

Everything is local (``local_files_only=True``; nothing from the hub), fp32, with PyTorch
SDPA attention in the UNet and VAE. Single files carry no configs: the matching shipped
config folder (``configs/sd15``, ``sd2-512``, ``sd2-768-v``, ``sdxl``) is used unless ``config_dir``
is given (tests pass the tiny models' config folder).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..errors import ModelError
from .clip_tokenizer import load_tokenizer
from .configs_data import config_folder
from .schedule import make_noise_scheduler  # noqa: F401  (callers import it from here)
from .sd import SDModel
from .sdxl import SDXLModel
from .sdxl_configs import SDXL_CONFIG_DIR
from .sdxl_loader import check_family, is_sdxl_folder, load_sdxl_folder, load_sdxl_state_dict
from .single_file import (SINGLE_FILE_SUFFIXES, build_text_encoder, build_unet, build_vae, classify,
                          context_dim, read_state_dict, vae_state_dict_from_file)

EXPECTED = "a Stable Diffusion 1.x/2.x or SDXL diffusers folder (model_index.json, unet/, vae/, text_encoder/, " \
           "tokenizer/; SDXL also text_encoder_2/, tokenizer_2/) or a single .safetensors/.ckpt checkpoint in the " \
           "original layout"


def use_sdpa(*models) -> None:
    """Set PyTorch scaled-dot-product attention on diffusers models."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for m in models:
        m.set_attn_processor(AttnProcessor2_0())


def load_sd_model(path, *, v2: bool | None = None, v_parameterization: bool | None = None,
                  vae=None, config_dir=None, sdxl: bool | None = None):
    """Load ``path`` (diffusers folder or single file) as an :class:`SDModel` (SD1.x/2.x) or an
    :class:`~lorakit.models.sdxl.SDXLModel`, as the weights say.

    ``sdxl``/``v2``/``v_parameterization`` None = detect (the family from the weights or configs;
    v-prediction from a folder's scheduler config, an SDXL file's ``v_pred`` marker; an SD
    single file cannot say, so it is eps unless set); set flags that contradict the weights are a
    ModelError naming both. ``vae`` replaces the VAE (diffusers folder or single file).
    """
    if not path:
        raise ModelError("no model given", key="pretrained_model_name_or_path",
                         fix="set pretrained_model_name_or_path to " + EXPECTED)
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError("the model path does not exist", file=str(p), key="pretrained_model_name_or_path",
                         fix="point pretrained_model_name_or_path at " + EXPECTED)
    if p.is_dir():
        if is_sdxl_folder(p):
            check_family("sdxl", sdxl=sdxl, v2=v2, file=str(p))
            m = load_sdxl_folder(p, v_parameterization)
        else:
            check_family("sd1", sdxl=sdxl, v2=None, file=str(p))
            m = _load_folder(p, v2, v_parameterization)
    elif p.suffix.lower() in SINGLE_FILE_SUFFIXES:
        m = _load_single_file(p, v2, v_parameterization, Path(config_dir) if config_dir else None, sdxl)
    else:
        raise ModelError(f"unsupported model file type '{p.suffix}'", file=str(p), fix="use " + EXPECTED)
    is_sdxl = isinstance(m, SDXLModel)
    if vae:
        default = SDXL_CONFIG_DIR if is_sdxl else config_folder(False, False)
        m.vae = load_vae(vae, config_dir=Path(config_dir) if config_dir else default)
    use_sdpa(m.unet, m.vae)
    for mod in (m.unet, m.vae) + ((m.text_encoder, m.text_encoder_2) if is_sdxl else (m.text_encoder,)):
        if any(t.dtype != torch.float32 for t in mod.parameters()):
            mod.to(dtype=torch.float32)
        mod.eval()
    return m


def _check_v2(detected: bool, v2: bool | None, file: str) -> bool:
    if v2 is not None and bool(v2) != detected:
        what = "SD2.x" if detected else "SD1.x"
        raise ModelError(f"v2 = {bool(v2)} but the model is {what}", file=file, key="v2",
                         fix=f"set v2 = {str(detected).lower()} (or leave it unset: it is detected)")
    return detected


def _load_folder(p: Path, v2, v_param) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if not (p / "unet" / "config.json").exists() or not (p / "text_encoder").is_dir():
        raise ModelError("this folder is not a diffusers Stable Diffusion model", file=str(p), fix="use " + EXPECTED)
    te_cfg = _json(p / "text_encoder" / "config.json")
    detected = te_cfg.get("hidden_act") == "gelu" or te_cfg.get("hidden_size") == 1024
    v2 = _check_v2(detected, v2, str(p))
    if v_param is None:
        sched = _json(p / "scheduler" / "scheduler_config.json")
        v_param = sched.get("prediction_type") == "v_prediction"
    kw = dict(local_files_only=True, torch_dtype=torch.float32)
    try:
        unet = UNet2DConditionModel.from_pretrained(str(p), subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(str(p), subfolder="vae", **kw)
        te = CLIPTextModel.from_pretrained(str(p), subfolder="text_encoder", **kw)
        tok = load_tokenizer(p / "tokenizer")
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelError(f"cannot load the diffusers folder: {e}", file=str(p), fix="use " + EXPECTED) from None
    return SDModel(unet, vae, te, tok, make_noise_scheduler(bool(v_param)), bool(v2), bool(v_param),
                   "diffusers", p.name)


def _load_single_file(p: Path, v2, v_param, config_dir: Path | None, sdxl: bool | None):
    sd = read_state_dict(p)
    kind = classify(sd)
    if kind in ("sdxl", "sd1", "sd2"):
        check_family(kind, sdxl=sdxl, v2=v2 if kind == "sdxl" else None, file=str(p))
    if kind == "sdxl":
        return load_sdxl_state_dict(sd, p, v_param, config_dir)
    if kind == "class-conditioned":
        raise ModelError("this UNet is class-conditioned (label_emb) without SDXL's text encoders (SD2 unCLIP, or "
                         "an SDXL file without its conditioner.embedders.* keys); only SD1.x/2.x and SDXL "
                         "text-to-image checkpoints are supported", file=str(p),
                         fix="use an SD1.x/2.x or a complete SDXL base model")
    if kind == "unknown":
        raise ModelError("no Stable Diffusion weights found (expected model.diffusion_model.*, "
                         "first_stage_model.* and cond_stage_model.* keys)", file=str(p), fix="use " + EXPECTED)
    detected = kind == "sd2"
    v2 = _check_v2(detected, v2, str(p))
    if v_param is None:
        if v2 and context_dim(sd) == 1024:
            warnings.warn(f"{p.name}: SD2 single file, v-prediction cannot be detected from the weights; "
                          "training with the epsilon target. Set v_parameterization = true for 768-v models.",
                          stacklevel=3)
        v_param = False
    if config_dir is None:
        ctx = context_dim(sd)
        if ctx not in (768, 1024):
            raise ModelError(f"non-standard model (context width {ctx}); no shipped config matches",
                             file=str(p), fix="give --model a diffusers folder of this model (with model_index.json and its "
                                 "unet/vae/text_encoder configs) instead of the single file")
        config_dir = config_folder(v2, bool(v_param))
    name = str(p)
    unet = build_unet(sd, config_dir, name)
    vae = build_vae(sd, config_dir, name)
    te = build_text_encoder(sd, config_dir, v2, name)
    del sd
    tok = load_tokenizer(Path(config_dir) / "tokenizer")
    return SDModel(unet, vae, te, tok, make_noise_scheduler(bool(v_param)), bool(v2), bool(v_param),
                   "single_file", p.name)


def load_vae(path, config_dir: Path):
    """A replacement VAE: diffusers folder (with config.json or vae/) or a single file."""
    from diffusers import AutoencoderKL

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError("the VAE path does not exist", file=str(p), key="vae",
                         fix="point vae at a diffusers VAE folder or a .safetensors/.ckpt VAE file")
    if p.is_dir():
        sub = "vae" if (p / "vae" / "config.json").exists() else None
        kw = dict(local_files_only=True, torch_dtype=torch.float32)
        return AutoencoderKL.from_pretrained(str(p), subfolder=sub, **kw) if sub else \
            AutoencoderKL.from_pretrained(str(p), **kw)
    sd, prefix = vae_state_dict_from_file(p)
    return build_vae(sd, config_dir, str(p), prefix=prefix)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
