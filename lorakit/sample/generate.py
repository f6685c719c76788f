"""Sample images from the model with its live adapters (no UNet copy).

Prompts are encoded with the same kohya chunking and clip_skip as training. Sampling
leaves training bit-identical: RNG states, train modes and grad mode are restored.
"""
from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..checkpoints import sample_file_name
from ..io import atomic_path
from ..models.family import ModelFamily, PromptEmbeds
from ..transfer import module_device, on_device_all
from .prompts import SamplePrompt
from .samplers import make_scheduler


@contextlib.contextmanager
def preserved_training_state(*modules: torch.nn.Module) -> Iterator[None]:
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        random.setstate(py), np.random.set_state(npy), torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for m, mode in zip(modules, modes):
            m.train(mode)


def make_pipeline(model: ModelFamily, sampler: str):
    """The family's pipeline with kohya's `sampler` built from the model's scheduler config."""
    return model.make_pipeline(make_scheduler(sampler, model.noise_scheduler.config))


def embed(model: ModelFamily, texts: list[str], max_token_length: int, clip_skip: int,
          dtype: torch.dtype) -> PromptEmbeds:
    device = module_device(model.text_encoders[0])
    return model.encode_prompts(texts, max_token_length=max_token_length, clip_skip=clip_skip, weighted=False,
                                device=device).to(dtype)


def generate(model, sp: SamplePrompt, *, sampler: str = "euler_a", max_token_length: int = 75,
             clip_skip: int = 1, seed: int = 0):
    """One PIL image for one prompt. The seed is sp.seed when given."""
    # the compute dtype: fp8_base stores layer weights in float8 (1 byte), the rest keeps it
    dtype = next(p.dtype for p in model.unet.parameters() if p.dtype.itemsize > 1)
    device = module_device(model.unet)
    pipe = make_pipeline(model, sp.sampler or sampler)
    # a run keeps the VAE (cached latents) and frozen, cached text encoders on the host between samples
    with preserved_training_state(model.unet, *model.text_encoders), \
            on_device_all([model.vae, *model.text_encoders], device):
        cond = embed(model, [sp.prompt], max_token_length, clip_skip, dtype)
        uncond = embed(model, [sp.negative], max_token_length, clip_skip, dtype)
        g = torch.Generator(device=device).manual_seed(sp.seed if sp.seed is not None else seed)
        latents = pipe(**model.pipeline_inputs(cond, uncond, sp.width, sp.height),
                       num_inference_steps=sp.steps, guidance_scale=sp.scale, generator=g,
                       output_type="latent").images
        # decoded here, in the VAE's own dtype (float32: a run casts the UNet and text encoders only): the
        # pipelines hand the VAE latents of the UNet's dtype, which a bf16/fp16 run's VAE cannot take
        vae = model.vae
        with torch.no_grad():
            image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return pipe.image_processor.postprocess(image, output_type="pil")[0]


def sample_prompts(model, prompts: list[SamplePrompt], out_dir: str | Path, output_name: str, *,
                   epoch: int | None, step: int, sampler: str, max_token_length: int, clip_skip: int,
                   base_seed: int = 0) -> list[tuple[Path, object]]:
    """Write one PNG per prompt; returns (path, image) pairs."""
    written = []
    with on_device_all([model.vae, *model.text_encoders], module_device(model.unet)):  # once for all prompts
        for i, sp in enumerate(prompts):
            image = generate(model, sp, sampler=sampler, max_token_length=max_token_length, clip_skip=clip_skip,
                             seed=base_seed + i)
            path = Path(out_dir) / sample_file_name(output_name, i, epoch=epoch, step=step, seed=sp.seed)
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            written.append((path, image))
    return written
