"""SD1.x / SD2.x as a :class:`~lorakit.models.family.ModelFamily`: one CLIP text encoder whose
(chunked, clip-skipped) states are the UNet's only conditioning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .family import ModelFamily, PromptEmbeds


@dataclass
class SDModel(ModelFamily):
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    v2: bool
    v_parameterization: bool
    source: str      # "diffusers" or "single_file"
    name: str        # file or folder name, for metadata (ss_sd_model_name)

    @property
    def family(self) -> str:  # type: ignore[override]
        return "sd2" if self.v2 else "sd1"

    @property
    def text_encoders(self) -> tuple[torch.nn.Module, ...]:
        return (self.text_encoder,)

    def encode_prompts(self, captions: list[str], *, max_token_length: int | None, clip_skip: int,
                       weighted: bool, device: torch.device | None) -> PromptEmbeds:
        from .text import encode_captions

        return PromptEmbeds(encode_captions(self.tokenizer, self.text_encoder, captions, max_token_length,
                                            clip_skip, weighted, device))

    @property
    def base_model_version(self) -> str:  # type: ignore[override]
        if not self.v2:
            return "sd_v1"
        return "sd_v2_v" if self.v_parameterization else "sd_v2"

    @property
    def modelspec_architecture(self) -> str:  # type: ignore[override]
        return {"sd_v1": "stable-diffusion-v1", "sd_v2": "stable-diffusion-v2-512",
                "sd_v2_v": "stable-diffusion-v2-768-v"}[self.base_model_version]

    def make_pipeline(self, scheduler: Any) -> Any:
        from diffusers import StableDiffusionPipeline

        if scheduler.config.get("steps_offset", 1) != 1:
            # the pipeline sets steps_offset to 1 itself and prints a deprecation notice with the whole
            # scheduler config (on every sample); setting it first gives the same sampler, quietly
            scheduler.register_to_config(steps_offset=1)
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds,
                added: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.unet(noisy, timesteps, embeds.context).sample
