"""lorakit.models: shipped tokenizer/configs, tiny models, loading (folder and single file), safe .ckpt."""
from __future__ import annotations

import torch

from lorakit.models.tiny import build_tiny_components, load_clip_tokenizer, save_tiny_pipeline


def test_shipped_tokenizers_offline():
    sd1, sd2 = load_clip_tokenizer(False), load_clip_tokenizer(True)
    assert sd1("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert sd2("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(sd1) == 49408 and sd1.model_max_length == 77
    assert (sd1.pad_token, sd1.pad_token_id) == ("<|endoftext|>", 49407)
    assert (sd2.pad_token, sd2.pad_token_id) == ("!", 0)
    assert sd1("Hello, WORLD! 1234").input_ids == [49406, 3306, 267, 1002, 256, 272, 273, 274, 275, 49407]


def test_tiny_components_deterministic_and_seeded(tiny_components):
    a, b, c = tiny_components(seed=0), tiny_components(seed=0), tiny_components(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb, sc = a[name].state_dict(), b[name].state_dict(), c[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    n_unet = sum(p.numel() for p in a["unet"].parameters())
    assert 500_000 < n_unet < 1_500_000
    assert a["text_encoder"].config.hidden_size == a["unet"].config.cross_attention_dim == 32
    v2 = tiny_components(v2=True)
    assert v2["text_encoder"].config.hidden_act == "gelu" and v2["unet"].config.use_linear_projection
    assert v2["tokenizer"].pad_token_id == 0


def test_tiny_pipeline_reloads_offline(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True,
                                                   safety_checker=None)
    ref = build_tiny_components(seed=0)
    sd = pipe.unet.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref["unet"].state_dict().items())
    assert pipe.tokenizer("a photo of a cat").input_ids[-1] == 49407
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = pipe.vae.decode(x).sample
    assert img.shape == (1, 3, 64, 64)
