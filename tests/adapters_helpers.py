"""Tiny and SD1.5-shaped models for the adapter tests (built here, no fixtures from conftest)."""
from __future__ import annotations

import torch

from lorakit.config.schema import TrainConfig

SD15_UNET = dict(
    sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
CLIP_L = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
              max_position_embeddings=77, vocab_size=49408)

TINY_UNET = dict(
    sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, norm_num_groups=8,
    attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_CLIP = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=77, vocab_size=1000)


def sd15_meta():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_UNET), CLIPTextModel(CLIPTextConfig(**CLIP_L))


def tiny_models(seed: int = 0):
    """(unet, text_encoder) in eval mode with seeded random weights."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    te = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
    unet.requires_grad_(False)
    te.requires_grad_(False)
    return unet.eval(), te.eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8)


def cfg(**kw) -> TrainConfig:
    base = dict(network_dim=4, network_alpha=2.0)
    base.update(kw)
    return TrainConfig(**base)


def randomize_up(net, std: float = 0.2, seed: int = 1) -> None:
    """Non-zero up weights so that every adapter changes its layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.all_modules():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * std)


def inputs(batch: int = 2, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500][:batch] + [900] * max(0, batch - 2))
    ids = torch.randint(0, 1000, (batch, 77), generator=g)
    return x, t, ids


def run_models(unet, te, x, t, ids):
    enc = te(ids)[0]
    return enc, unet(x, t, enc).sample


def seeded_oft(cls, org, dim: int, constraint: float = 0.0, rescaled: bool = False, seed: int = 2):
    """A Diag-OFT / BOFT module (`cls`) on `org` with seeded random blocks (and rescale), in eval mode."""
    m = cls("m", org, dim, None, args={"constraint": constraint, "rescaled": rescaled})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.oft_blocks.copy_(torch.randn(m.oft_blocks.shape, generator=g) * 0.2)
        if rescaled:
            m.rescale.copy_(1 + 0.3 * torch.randn(m.rescale.shape, generator=g))
    return m.eval()


def assert_oft_matches_lycoris(m, org, x, ly_org, ly, constraint: float):
    """Apply `m` on `org`, copy its tensors into the LyCORIS module `ly` built on `ly_org` (a fresh
    copy of the layer) and compare the outputs on `x` within 1e-5; returns our output."""
    import pytest

    m.apply()
    got = org(x)
    params = dict(ly.named_parameters())
    with torch.no_grad():
        for k, v in m.tensors_to_save().items():
            if k != "alpha":
                assert params[k].shape == v.shape, k
                params[k].copy_(v)
    assert float(ly.alpha) == float(m.alpha) == pytest.approx(constraint)
    ly.eval()
    ly.apply_to()
    want = ly_org(x)
    assert (got - ly_org._lycoris_original_forward(x)).abs().max() > 1e-2  # it does change the layer
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    return got


def diffusers_reload(path, x, t, ids, enc):
    """Fresh tiny models before and after diffusers' `load_lora_weights(path)`: (enc0, out0) without
    the adapter, (enc2, out2) with it; the UNet gets `enc` both times so it is compared on its own."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    unet2, te2 = tiny_models()
    with torch.no_grad():
        enc0, out0 = run_models(unet2, te2, x, t, ids)
    # only load_lora_weights matters here: no tokenizer is needed to build the pipeline object
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=te2, tokenizer=None, unet=unet2,
                                   scheduler=DDPMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(path))
    with torch.no_grad():
        return enc0, out0, te2(ids)[0], unet2(x, t, enc).sample


# LyCORIS's targets for SD1/2 as a preset file (its default "full" preset crashes there)
LYCORIS_PRESET_TOML = """
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""
