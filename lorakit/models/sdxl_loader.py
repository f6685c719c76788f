"""Load an SDXL model (diffusers folder or SGM-layout single file) for training, offline.

A single file carries no configs: the shipped ``configs/sdxl`` folder (SDXL base 1.0) is used
unless ``config_dir`` is given (tests pass the tiny SDXL's). Every module key must be found in
the file; extra keys (``logit_scale``, ``alphas_cumprod``, position ids, markers) are ignored.
v-prediction: a folder's scheduler says it; a single file says it with the empty ``v_pred``
marker tensor that v-prediction SDXL releases (NoobAI-XL v-pred) carry; otherwise set
``v_parameterization``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelError
from .ldm_layout import VAE_PREFIX
from .schedule import make_noise_scheduler
from .sdxl import SDXLModel
from .sdxl_configs import SDXL_CONFIG_DIR, load_sdxl_tokenizers
from .sgm_layout import TE1_PREFIX, TE2_PREFIX, te2_key_map
from .single_file import _empty, _gather, _gather_openclip, _load_into, build_unet, build_vae

EXPECTED_SDXL = "an SDXL diffusers folder (model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, " \
                "tokenizer/, tokenizer_2/) or a single .safetensors in the original SGM layout"
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
V_PRED_MARKER = "v_pred"


def is_sdxl_folder(p: Path) -> bool:
    if (p / "text_encoder_2").exists():
        return True
    try:
        cfg = json.loads((p / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return cfg.get("addition_embed_type") == "text_time"


def check_family(detected: str, *, sdxl: bool | None, v2: bool | None, file: str) -> None:
    """A ModelError naming both when the config's sdxl / v2 flags contradict the weights' family
    (``detected``: "sd1", "sd2" or "sdxl"). Unset flags (None) accept what is detected; SD1 vs
    SD2 with v2 set is the SD loader's check."""
    have = FAMILY_NAMES[detected]
    if detected == "sdxl" and sdxl is False:
        raise ModelError("the config says sdxl = false (an SD1.x/2.x model) but the model is SDXL", file=file,
                         key="sdxl", fix="set sdxl = true to train this SDXL model, or pick an SD1.x/2.x model")
    if detected == "sdxl" and v2:
        raise ModelError("the config says v2 = true (an SD2.x model) but the model is SDXL", file=file, key="v2",
                         fix="set v2 = false (and sdxl = true) to train this SDXL model")
    if detected != "sdxl" and sdxl:
        raise ModelError(f"the config says sdxl = true but the model is {have}", file=file, key="sdxl",
                         fix=f"set sdxl = false to train this {have} model, or pick an SDXL model")


def load_sdxl_folder(p: Path, v_param: bool | None):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection


    missing = [s for s in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
               if not (p / s).is_dir()]
    if missing:
        raise ModelError(f"this SDXL folder lacks {', '.join(missing)}", file=str(p), fix="use " + EXPECTED_SDXL)
    if v_param is None:
        v_param = _json(p / "scheduler" / "scheduler_config.json").get("prediction_type") == "v_prediction"
    kw = dict(local_files_only=True, torch_dtype=torch.float32)
    try:
        unet = UNet2DConditionModel.from_pretrained(str(p), subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(str(p), subfolder="vae", **kw)
        te1 = CLIPTextModel.from_pretrained(str(p), subfolder="text_encoder", **kw)
        te2 = CLIPTextModelWithProjection.from_pretrained(str(p), subfolder="text_encoder_2", **kw)
        tok1, tok2 = load_sdxl_tokenizers(p)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelError(f"cannot load the SDXL diffusers folder: {e}", file=str(p),
                         fix="use " + EXPECTED_SDXL) from None
    tok2.pad_token_id = 0  # sd-scripts pads tokenizer 2 with id 0 ("!") whatever the folder says
    return SDXLModel(unet, vae, te1, te2, tok1, tok2, make_noise_scheduler(bool(v_param)), bool(v_param),
                     "diffusers", p.name)


def load_sdxl_state_dict(sd: dict, p: Path, v_param: bool | None, config_dir: Path | None):
    """An SDXLModel from the tensors of an SGM-layout single file."""

    config_dir = Path(config_dir) if config_dir else SDXL_CONFIG_DIR
    if v_param is None:
        v_param = V_PRED_MARKER in sd
    name = str(p)
    try:
        unet = build_unet(sd, config_dir, name)
        vae = build_vae(sd, config_dir, name, prefix=VAE_PREFIX)
        te1 = build_te1(sd, config_dir, name)
        te2 = build_te2(sd, config_dir, name)
    except ModelError as e:  # say which layout the file was read as (it has conditioner.embedders.*)
        raise ModelError(f"read as an SDXL checkpoint: {e.message}", file=name, key=e.key,
                         fix="pass a complete SDXL checkpoint of SDXL base's architecture (or a diffusers folder "
                             "of this model, which carries its own configs)") from None
    tok1, tok2 = load_sdxl_tokenizers(config_dir)
    return SDXLModel(unet, vae, te1, te2, tok1, tok2, make_noise_scheduler(bool(v_param)), bool(v_param),
                     "single_file", p.name)


def build_te1(sd: dict, config_dir: Path, file: str):
    from transformers import CLIPTextConfig, CLIPTextModel

    from .ldm_layout import clip_key_map

    cfg = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder"), local_files_only=True)
    te = _empty(lambda: CLIPTextModel(cfg))
    new_sd, missing = _gather(te, clip_key_map(list(te.state_dict())), sd, TE1_PREFIX, file)
    return _load_into(te, new_sd, missing, "text encoder 1", file)


def build_te2(sd: dict, config_dir: Path, file: str):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder_2"), local_files_only=True)
    te = _empty(lambda: CLIPTextModelWithProjection(cfg))
    new_sd, missing = _gather_openclip(te, te2_key_map(list(te.state_dict())), sd, TE2_PREFIX, file)
    return _load_into(te, new_sd, missing, "text encoder 2", file)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
