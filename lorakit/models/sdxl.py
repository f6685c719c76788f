"""SDXL as a model family: two text encoders, a pooled text vector and size/crop time ids,
with the semantics of sd-scripts' SDXL training (library/strategy_sdxl.py, sdxl_train_network.py).

Text (``SDXLModel.encode_prompts``):
- both tokenizers give ids (B, n, 77) as for SD1/SD2 (:func:`lorakit.models.text.tokenize`:
  75-token chunks; tokenizer 2 pads with "!" (id 0) and gets the pad != eos chunk fix-ups);
- text encoder 1's and 2's penultimate hidden states (``hidden_states[-2]``: the input of the
  last layer, WITHOUT the final layer norm; sd-scripts indexes ``hidden_states[11]`` of
  CLIP ViT-L's 12 layers, the same state) of every chunk, merged as SD1's
  (state 0 of the first chunk, 75 body states of each chunk, the last state of the last chunk),
  concatenated on the feature axis: (B, n*75+2, 768+1280);
- the pooled vector: text encoder 2's last hidden state (final layer norm applied) at the first
  EOS of the FIRST chunk, through ``text_projection`` (sd-scripts' ``_pool_workaround`` and
  ``pool2[::n]``);
- ``clip_skip`` is ignored (sd-scripts: "clip_skip will be unexpected" in SDXL training);
- weighted captions: each encoder's states times the token weights as for SD1
  (:func:`lorakit.models.text.apply_token_weights`); the pooled vector is not weighted.

Size conditioning (``added_conditioning``): per sample ``[orig_h, orig_w, crop_top, crop_left,
target_h, target_w]``, from ``Batch.original_sizes`` (W, H), ``Batch.crop_top_lefts`` (top, left)
and the batch's bucket (W, H) as target (see ``lorakit.data.dataset``). The diffusers UNet embeds
each id with 256 sinusoidal features (cos first), as sd-scripts' ``get_size_embeddings``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .family import ModelFamily, PromptEmbeds
from .sgm_layout import unet_module_paths
from ..transfer import to_device
from .text import apply_token_weights, tokenize, tokenize_weighted


@dataclass
class SDXLModel(ModelFamily):
    unet: Any
    vae: Any
    text_encoder: Any      # CLIPTextModel (ViT-L), file prefix lora_te1_
    text_encoder_2: Any    # CLIPTextModelWithProjection (bigG), file prefix lora_te2_
    tokenizer: Any
    tokenizer_2: Any
    noise_scheduler: Any
    v_parameterization: bool
    source: str            # "diffusers" or "single_file"
    name: str              # file or folder name, for metadata (ss_sd_model_name)
    family: str = "sdxl"
    _unet_names: dict[str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def text_encoders(self) -> tuple[torch.nn.Module, ...]:
        return (self.text_encoder, self.text_encoder_2)

    @property
    def tokenizers(self) -> tuple[Any, Any]:
        return (self.tokenizer, self.tokenizer_2)

    def unet_module_name(self, path: str) -> str:
        """The original (SGM) layout path: sd-scripts names SDXL adapters after its own UNet class,
        ``input_blocks.4.1.transformer_blocks.0.attn1.to_q`` for diffusers'
        ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``."""
        if self._unet_names is None:
            self._unet_names = unet_module_paths(self.unet)
        return self._unet_names[path]

    def check_config(self, cfg: Any) -> list[str]:
        """sd-scripts' verify_sdxl_training_args and bucket check: SDXL's UNet halves the latent twice,
        so bucket sizes step by multiples of 32; clip_skip is ignored with a warning."""
        from ..errors import ConfigError

        if cfg.enable_bucket and cfg.bucket_reso_steps % 32:
            raise ConfigError(f"bucket_reso_steps is {cfg.bucket_reso_steps}; SDXL needs a multiple of 32",
                              key="bucket_reso_steps", fix="set bucket_reso_steps to 32 or 64 (the default)")
        if cfg.clip_skip > 1:
            return [f"clip_skip = {cfg.clip_skip} is ignored for SDXL (as sd-scripts): both text encoders give "
                    "their penultimate layer"]
        return []

    def encode_prompts(self, captions: list[str], *, max_token_length: int | None, clip_skip: int = 1,
                       weighted: bool = False, device: torch.device | None = None) -> PromptEmbeds:
        """``clip_skip`` is ignored (see :meth:`check_config`)."""
        return encode_sdxl(self.tokenizers, self.text_encoders, captions, max_token_length, weighted, device)

    def added_conditioning(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        return {"time_ids": to_device(time_ids(batch.original_sizes, batch.crop_top_lefts, batch.bucket, len(batch)),
                                      device)}

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds,
                added: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if added is None or embeds.pooled is None:
            raise ValueError("SDXL needs the pooled text vector and the time ids (added_conditioning)")
        ctx = embeds.context
        # time ids stay float32: the UNet embeds them in float32 (as sd-scripts' get_size_embeddings),
        # and bf16 cannot hold a size such as 1213
        cond = {"text_embeds": embeds.pooled.to(ctx.dtype), "time_ids": added["time_ids"].float()}
        return self.unet(noisy, timesteps, ctx, added_cond_kwargs=cond, return_dict=False)[0]


    # ---- sampling with diffusers' StableDiffusionXLPipeline ----------------------------------------
    def make_pipeline(self, scheduler):
        """The live modules in a StableDiffusionXLPipeline (no copies). Empty negative prompts are
        encoded like any prompt (sd-scripts), not replaced by zeros."""
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder,
                                         text_encoder_2=self.text_encoder_2, tokenizer=self.tokenizer,
                                         tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pipeline_inputs(self, cond: PromptEmbeds, uncond: PromptEmbeds, width: int, height: int) -> dict[str, Any]:
        """Pipeline keyword arguments of one sample: the embeddings and sd-scripts' sampling size
        conditioning (original = target = the image size, crop (0, 0))."""
        return {"prompt_embeds": cond.context, "pooled_prompt_embeds": cond.pooled,
                "negative_prompt_embeds": uncond.context, "negative_pooled_prompt_embeds": uncond.pooled,
                "width": width, "height": height, "original_size": (height, width), "target_size": (height, width),
                "crops_coords_top_left": (0, 0)}

    # ---- facts written into adapter files (as sd-scripts' sdxl_train_network.py writes them) -------
    base_model_version = "sdxl_base_v1-0"
    v2 = False
    modelspec_architecture = "stable-diffusion-xl-v1-base"


def time_ids(original_sizes, crop_top_lefts, target: tuple[int, int], n: int) -> torch.Tensor:
    """(n, 6) float32 ``[orig_h, orig_w, crop_top, crop_left, target_h, target_w]``.

    ``original_sizes``: (W, H) per sample; ``crop_top_lefts``: (top, left) per sample;
    ``target``: the bucket (W, H) shared by the batch."""
    if len(original_sizes) != n or len(crop_top_lefts) != n:
        raise ValueError(f"time ids need {n} original sizes and crop offsets, got "
                         f"{len(original_sizes)} and {len(crop_top_lefts)}")
    tw, th = target
    rows = [[h, w, top, left, th, tw] for (w, h), (top, left) in zip(original_sizes, crop_top_lefts)]
    return torch.tensor(rows, dtype=torch.float32)


def merge_chunks(states: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """(b*n, 77, D) chunk states -> (b, n*75+2, D): state 0 of the first chunk, positions 1..75 of
    every chunk, the last state of the last chunk (one chunk: unchanged)."""
    width = states.shape[1]
    states = states.reshape(b, n, width, -1)
    if n == 1:
        return states[:, 0]
    parts = [states[:, 0, :1]] + [states[:, c, 1:width - 1] for c in range(n)] + [states[:, -1, -1:]]
    return torch.cat(parts, dim=1)


def pooled_output(text_encoder_2, last_hidden_state: torch.Tensor, ids: torch.Tensor, eos: int) -> torch.Tensor:
    """The last hidden state at the first EOS of each row (row 0 when none), projected."""
    index = (ids == eos).int().argmax(dim=1).to(last_hidden_state.device)
    rows = last_hidden_state[torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device), index]
    proj = text_encoder_2.text_projection
    return proj(rows.to(proj.weight.dtype)).to(last_hidden_state.dtype)


def encode_sdxl(tokenizers, text_encoders, captions: list[str], max_token_length: int | None,
                weighted: bool = False, device=None) -> PromptEmbeds:
    """PromptEmbeds(context (B, n*75+2, D1+D2), pooled (B, P)) of caption strings (module docstring)."""
    (tok1, tok2), (te1, te2) = tokenizers, text_encoders
    if weighted:
        (ids1, w1), (ids2, w2) = (tokenize_weighted(t, captions, max_token_length) for t in (tok1, tok2))
    else:
        ids1, ids2 = (tokenize(t, captions, max_token_length) for t in (tok1, tok2))
        w1 = w2 = None
    b, n, width = ids1.shape
    flat1 = to_device(ids1.reshape(b * n, width), device or te1.device)
    flat2 = to_device(ids2.reshape(b * n, width), device or te2.device)
    out1 = te1(flat1, output_hidden_states=True, return_dict=True)
    h1 = merge_chunks(out1.hidden_states[-2], b, n)
    out2 = te2(flat2, output_hidden_states=True, return_dict=True)
    h2 = merge_chunks(out2.hidden_states[-2], b, n)
    pooled = pooled_output(te2, out2.last_hidden_state, flat2, tok2.eos_token_id)[::n]
    if w1 is not None:
        h1, h2 = apply_token_weights(h1, w1), apply_token_weights(h2, w2)
    return PromptEmbeds(torch.cat([h1, h2.to(h1.device)], dim=-1), pooled.to(h1.device))
