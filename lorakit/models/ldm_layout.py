"""Key maps between diffusers modules and the original LDM (CompVis / Stability) checkpoint layout.

One table per component, built from the diffusers module's config, maps every diffusers
state-dict key to its LDM key. The same table serves both directions: writing a
single-file checkpoint (tests, export) and loading one (see ``single_file.py``).

Layout facts (from the published checkpoints):
- UNet ``model.diffusion_model.*``: ``input_blocks.0`` = conv_in, then per down level
  ``layers_per_block`` (resnet, attention) pairs and one downsampler; ``middle_block``
  0/1/2 = resnet/attention/resnet; ``output_blocks`` per up level ``layers_per_block+1``
  (resnet, attention, upsampler); ``time_embed.0/2``; ``out.0/2``; SDXL's ``add_embedding``
  is ``label_emb.0.0/2``.
- VAE ``first_stage_model.*``: ``encoder.down.i.block.j``, ``decoder.up`` in reverse order,
  ``mid.block_1/attn_1/block_2``; attention q/k/v/proj_out are 1x1 convs.
- SD1 text encoder ``cond_stage_model.transformer.text_model.*`` (HF CLIP names).
- SD2 text encoder ``cond_stage_model.model.*`` (open_clip names, fused in_proj q/k/v).
"""
from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SD2_TE_PREFIX = "cond_stage_model.model."

_RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_RESNET_VAE = {"conv_shortcut": "nin_shortcut"}
_ATTN_VAE = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _sub(rest: str, table: dict[str, str]) -> str:
    for d, l in table.items():
        if rest == d or rest.startswith(d + "."):
            return l + rest[len(d):]
    return rest


def unet_key_map(keys, config) -> dict[str, str]:
    """diffusers UNet2DConditionModel key -> LDM key (without the ``model.diffusion_model.`` prefix)."""
    L = config["layers_per_block"] if isinstance(config, dict) else config.layers_per_block
    out = {}
    for k in keys:
        p = k.split(".")
        if p[0] == "time_embedding":
            m = {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[p[1]] + "." + ".".join(p[2:])
        elif p[0] == "add_embedding":  # SDXL's pooled-text + size embedding
            m = {"linear_1": "label_emb.0.0", "linear_2": "label_emb.0.2"}[p[1]] + "." + ".".join(p[2:])
        elif p[0] == "conv_in":
            m = "input_blocks.0.0." + ".".join(p[1:])
        elif p[0] == "conv_norm_out":
            m = "out.0." + ".".join(p[1:])
        elif p[0] == "conv_out":
            m = "out.2." + ".".join(p[1:])
        elif p[0] == "down_blocks":
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if kind == "resnets":
                m = f"input_blocks.{1 + i * (L + 1) + j}.0." + _sub(rest, _RESNET_UNET)
            elif kind == "attentions":
                m = f"input_blocks.{1 + i * (L + 1) + j}.1." + rest
            else:  # downsamplers.0.conv
                m = f"input_blocks.{1 + i * (L + 1) + L}.0.op." + ".".join(p[5:])
        elif p[0] == "mid_block":
            kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
            if kind == "resnets":
                m = f"middle_block.{2 * j}." + _sub(rest, _RESNET_UNET)
            else:
                m = "middle_block.1." + rest
        elif p[0] == "up_blocks":
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            if kind == "resnets":
                m = f"output_blocks.{i * (L + 1) + j}.0." + _sub(rest, _RESNET_UNET)
            elif kind == "attentions":
                m = f"output_blocks.{i * (L + 1) + j}.1." + rest
            else:  # upsamplers.0.conv: after the attention when the level has one
                has_attn = any(x.startswith(f"up_blocks.{i}.attentions.") for x in keys)
                m = f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.conv." + ".".join(p[5:])
        else:
            raise KeyError(f"unexpected UNet key {k}")
        out[k] = m
    return out


def vae_key_map(keys, config) -> dict[str, str]:
    """diffusers AutoencoderKL key -> LDM key (without the ``first_stage_model.`` prefix)."""
    n = len(config["block_out_channels"] if isinstance(config, dict) else config.block_out_channels)
    out = {}
    for k in keys:
        p = k.split(".")
        side = p[0]
        if side in ("quant_conv", "post_quant_conv"):
            out[k] = k
            continue
        part = p[1]
        if part in ("conv_in", "conv_out"):
            m = k
        elif part == "conv_norm_out":
            m = f"{side}.norm_out." + ".".join(p[2:])
        elif part in ("down_blocks", "up_blocks"):
            i, kind = int(p[2]), p[3]
            level = f"{side}.down.{i}" if part == "down_blocks" else f"{side}.up.{n - 1 - i}"
            if kind == "resnets":
                m = f"{level}.block.{p[4]}." + _sub(".".join(p[5:]), _RESNET_VAE)
            else:  # downsamplers.0.conv / upsamplers.0.conv
                m = f"{level}.{'downsample' if kind == 'downsamplers' else 'upsample'}.conv." + ".".join(p[6:])
        elif part == "mid_block":
            kind, j, rest = p[2], int(p[3]), ".".join(p[4:])
            if kind == "resnets":
                m = f"{side}.mid.block_{j + 1}." + _sub(rest, _RESNET_VAE)
            else:
                m = f"{side}.mid.attn_1." + _sub(rest, _ATTN_VAE)
        else:
            raise KeyError(f"unexpected VAE key {k}")
        out[k] = m
    return out


def _strip_text_model(k: str) -> str:
    return k[len("text_model."):] if k.startswith("text_model.") else k


def clip_key_map(keys) -> dict[str, str]:
    """HF CLIPTextModel key -> SD1 LDM key (without ``cond_stage_model.transformer.``)."""
    return {k: "text_model." + _strip_text_model(k) for k in keys if not k.endswith("position_ids")}


_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def openclip_key_map(keys) -> dict[str, tuple[str, int | None]]:
    """HF CLIPTextModel key -> (SD2 open_clip key, q/k/v slot or None).

    q/k/v projections live fused in ``attn.in_proj_weight``/``in_proj_bias``: slot 0/1/2.
    """
    out = {}
    for k in keys:
        s = _strip_text_model(k)
        if s.endswith("position_ids"):
            continue
        if s == "embeddings.token_embedding.weight":
            out[k] = ("token_embedding.weight", None)
        elif s == "embeddings.position_embedding.weight":
            out[k] = ("positional_embedding", None)
        elif s.startswith("final_layer_norm."):
            out[k] = ("ln_final." + s.split(".", 1)[1], None)
        elif s.startswith("encoder.layers."):
            p = s.split(".")
            i, rest = p[2], ".".join(p[3:])
            base = f"transformer.resblocks.{i}."
            for proj, slot in (("q_proj", 0), ("k_proj", 1), ("v_proj", 2)):
                if rest.startswith(f"self_attn.{proj}."):
                    out[k] = (base + "attn.in_proj_" + rest.rsplit(".", 1)[1], slot)
                    break
            else:
                out[k] = (base + _sub(rest, _OPENCLIP_LAYER), None)
        else:
            raise KeyError(f"unexpected text encoder key {k}")
    return out


def unet_vae_to_ldm(unet, vae) -> dict[str, torch.Tensor]:
    """The UNet's and VAE's weights under their original-layout keys (SD1/SD2 and SDXL share them)."""
    sd: dict[str, torch.Tensor] = {}
    u = unet.state_dict()
    for k, m in unet_key_map(list(u), unet.config).items():
        sd[UNET_PREFIX + m] = u[k]
    v = vae.state_dict()
    for k, m in vae_key_map(list(v), vae.config).items():
        t = v[k]
        if ".mid.attn_1." in m and m.endswith("weight") and t.dim() == 2:
            t = t[:, :, None, None]  # the original VAE keeps these as 1x1 convs
        sd[VAE_PREFIX + m] = t
    return sd


def to_ldm(unet, vae, text_encoder, v2: bool) -> dict[str, torch.Tensor]:
    """A full LDM-layout state dict from diffusers/transformers modules (fp32, contiguous)."""
    sd = unet_vae_to_ldm(unet, vae)
    t_sd = text_encoder.state_dict()
    if not v2:
        for k, m in clip_key_map(list(t_sd)).items():
            sd[SD1_TE_PREFIX + m] = t_sd[k]
    else:
        fused: dict[str, list] = {}
        for k, (m, slot) in openclip_key_map(list(t_sd)).items():
            if slot is None:
                sd[SD2_TE_PREFIX + m] = t_sd[k]
            else:
                fused.setdefault(m, [None, None, None])[slot] = t_sd[k]
        for m, parts in fused.items():
            sd[SD2_TE_PREFIX + m] = torch.cat(parts, 0)
    return {k: t.detach().float().contiguous().clone() for k, t in sd.items()}
