"""Key maps between the diffusers/transformers SDXL modules and the original SGM (Stability
``generative-models``) single-file layout.

- UNet ``model.diffusion_model.*`` and VAE ``first_stage_model.*``: the LDM layout of
  ``ldm_layout`` (SDXL's ``add_embedding`` is ``label_emb.0.0/2``).
- Text encoder 1 ``conditioner.embedders.0.transformer.text_model.*``: HF CLIP names.
- Text encoder 2 ``conditioner.embedders.1.model.*``: open_clip names as SD2's, all layers, q/k/v
  fused in ``attn.in_proj_*``, plus ``text_projection`` (used as ``x @ P`` by open_clip, so the
  HF Linear weight is ``P.T``: diffusers' converter transposes it; sd-scripts' sdxl_model_util
  copies it untransposed, which gives a different pooled vector than every UI computes) and
  ``logit_scale`` (unused for generation).

The same tables name SDXL adapter modules in files: kohya's SDXL names are ``lora_unet_`` + the
SGM module path (sd-scripts trains its own UNet class with the original layout), see
:func:`unet_module_paths`.
"""
from __future__ import annotations

import torch

from .ldm_layout import clip_key_map, openclip_key_map, unet_key_map, unet_vae_to_ldm

TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
PROJECTION = "text_projection.weight"


def te2_key_map(keys) -> dict[str, tuple[str, int | None, bool]]:
    """CLIPTextModelWithProjection key -> (open_clip key, q/k/v slot or None, transposed)."""
    out: dict[str, tuple[str, int | None, bool]] = {}
    rest = [k for k in keys if k != PROJECTION]
    for k, (m, slot) in openclip_key_map(rest).items():
        out[k] = (m, slot, False)
    if PROJECTION in keys:
        out[PROJECTION] = ("text_projection", None, True)
    return out


def unet_module_paths(unet) -> dict[str, str]:
    """diffusers module path -> SGM module path, for every UNet module that holds a weight
    (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``; ``...resnets.0.conv1`` -> ``...0.in_layers.2``)."""
    keys = [k for k in unet.state_dict() if k.endswith(".weight")]
    mapped = unet_key_map(keys, unet.config)
    return {k[:-len(".weight")]: m[:-len(".weight")] for k, m in mapped.items()}


def to_sgm(unet, vae, text_encoder, text_encoder_2, logit_scale: float = 4.6052) -> dict[str, torch.Tensor]:
    """A full SGM-layout SDXL state dict from diffusers/transformers modules (fp32, contiguous)."""
    sd = unet_vae_to_ldm(unet, vae)
    t1 = text_encoder.state_dict()
    for k, m in clip_key_map(list(t1)).items():
        sd[TE1_PREFIX + m] = t1[k]
    t2 = text_encoder_2.state_dict()
    fused: dict[str, list] = {}
    for k, (m, slot, transposed) in te2_key_map(list(t2)).items():
        if slot is not None:
            fused.setdefault(m, [None, None, None])[slot] = t2[k]
        else:
            sd[TE2_PREFIX + m] = t2[k].T if transposed else t2[k]
    for m, parts in fused.items():
        sd[TE2_PREFIX + m] = torch.cat(parts, 0)
    sd[TE2_PREFIX + "logit_scale"] = torch.tensor(float(logit_scale))
    return {k: t.detach().float().contiguous().clone() for k, t in sd.items()}
