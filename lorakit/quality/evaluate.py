"""Sample a model on shape prompts and score what it drew (the demo, the benchmark and the tests).

Images come from lorakit's own sampling path (the live adapters of a loaded model), in batches:
one generator per image, seeded, so image i of a batch is the image a single call with that
seed gives (up to float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import shapes
from .score import classify

SAMPLER, STEPS, SCALE = "ddim", 20, 7.5


@dataclass(frozen=True)
class Target:
    """A prompt and what it should draw (None: any shape / any colour)."""
    prompt: str
    shape: str | None
    colour: str | None


def base_targets() -> list[Target]:
    """Every shape x colour the base model knows."""
    return [Target(shapes.caption(s, c), s, c) for s in shapes.SHAPES for c in shapes.COLOURS]


def sample_images(model, prompts: list[str], seeds: list[int], *, steps: int = STEPS, scale: float = SCALE,
                  sampler: str = SAMPLER, batch: int = 16) -> list:
    from ..sample.generate import embed, make_pipeline, preserved_training_state

    dtype = next(model.unet.parameters()).dtype
    device = next(model.unet.parameters()).device
    pipe = make_pipeline(model, sampler)
    images = []
    with preserved_training_state(model.unet, *model.text_encoders):
        for i in range(0, len(prompts), batch):
            ps, ss = prompts[i:i + batch], seeds[i:i + batch]
            cond = embed(model, ps, 75, 1, dtype)
            uncond = embed(model, [""] * len(ps), 75, 1, dtype)
            gens = [torch.Generator(device=device).manual_seed(s) for s in ss]
            images += pipe(**model.pipeline_inputs(cond, uncond, shapes.SIZE, shapes.SIZE), num_inference_steps=steps,
                           guidance_scale=scale, generator=gens, output_type="pil").images
    return images


def score_targets(model, targets: list[Target], n: int, seed: int = 0, **kw) -> dict[Target, float]:
    """Fraction of ``n`` seeded samples per target that the scorer reads as its shape and colour."""
    prompts = [t.prompt for t in targets for _ in range(n)]
    seeds = [seed + k for _ in targets for k in range(n)]
    images = sample_images(model, prompts, seeds, **kw)
    out = {}
    for j, t in enumerate(targets):
        verdicts = [classify(im) for im in images[j * n:(j + 1) * n]]
        out[t] = sum(v.is_(t.shape, t.colour) for v in verdicts) / n
    return out


def mean(scores: dict) -> float:
    return sum(scores.values()) / max(1, len(scores))
