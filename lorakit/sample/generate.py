"""Sample images from the model with its live adapters (no UNet copy)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import atomic_path


def make_pipeline(model, sampler: str = "euler_a"):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerAncestralDiscreteScheduler.from_config(model.noise_scheduler.config)
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_images(model, prompts: list[str], out_dir: str | Path, *, seed: int = 0, steps: int = 20,
                  size: tuple[int, int] = (512, 512), guidance: float = 7.5, prefix: str = "sample"
                  ) -> list[Path]:
    pipe = make_pipeline(model)
    device = next(model.unet.parameters()).device
    modes = (model.unet.training, model.text_encoder.training)
    model.unet.eval(), model.text_encoder.eval()
    paths = []
    try:
        for i, prompt in enumerate(prompts):
            g = torch.Generator(device=device).manual_seed(seed + i)
            image = pipe(prompt, width=size[0], height=size[1], num_inference_steps=steps,
                         guidance_scale=guidance, generator=g).images[0]
            path = Path(out_dir) / f"{prefix}_{i:02d}_{seed + i}.png"
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            paths.append(path)
    finally:
        model.unet.train(modes[0]), model.text_encoder.train(modes[1])
    return paths
