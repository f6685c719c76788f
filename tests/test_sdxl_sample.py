"""Sampling a tiny SDXL with diffusers' StableDiffusionXLPipeline on lorakit's own prompt
embeddings and sd-scripts' sampling size conditioning (original = target = image size, crop 0)."""
from __future__ import annotations

import numpy as np
import torch

from lorakit.models.tiny_sdxl import build_tiny_sdxl
from lorakit.sample.samplers import make_scheduler


def test_pipeline_gets_our_embeddings_and_size_conditioning():
    m = build_tiny_sdxl(seed=2)
    pipe = m.make_pipeline(make_scheduler("euler_a", m.noise_scheduler.config))
    with torch.no_grad():
        cond = m.encode_prompts(["a red circle"], max_token_length=None, device="cpu")
        uncond = m.encode_prompts([""], max_token_length=None, device="cpu")
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[2] if len(args) > 2 else kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]))

    handle = m.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        images = []
        for _ in range(2):
            g = torch.Generator().manual_seed(7)
            images.append(pipe(**m.pipeline_inputs(cond, uncond, 64, 48), num_inference_steps=3, guidance_scale=5.0,
                               generator=g, output_type="np").images[0])
    finally:
        handle.remove()
    assert images[0].shape == (48, 64, 3) and np.array_equal(images[0], images[1])
    ctx, added = seen[0]
    assert torch.equal(ctx, torch.cat([uncond.context, cond.context]))   # CFG batch: negative first
    assert torch.equal(added["text_embeds"], torch.cat([uncond.pooled, cond.pooled]))
    assert added["time_ids"].tolist() == [[48, 64, 0, 0, 48, 64]] * 2
    assert uncond.context.abs().sum() > 0   # "" is encoded, not zeroed (sd-scripts)
