"""Gradient checkpointing of the SD1.x/SD2.x transformer units as a whole (train/speed.py
checkpoint_transformer_units): the same values as diffusers' checkpoint per block, less held."""
from __future__ import annotations

import pytest
import torch

from lorakit.config.load import load_config
from lorakit.train.speed import checkpoint_transformer_units, checkpointed_units


def unet_with_lora(sdxl: bool, mode: str):
    """A tiny UNet with LoRA (rank dropout: the recompute must draw the same masks) and its adapter
    parameters; mode: "off", "blocks" (diffusers' checkpoint per block) or "units" (lorakit)."""
    from diffusers import UNet2DConditionModel

    from lorakit.adapters.network import create_network
    from lorakit.models.tiny import tiny_unet_config
    from lorakit.models.tiny_sdxl import tiny_sdxl_unet_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(tiny_sdxl_unet_config() if sdxl else tiny_unet_config(False)))
    unet.requires_grad_(False)
    cfg = load_config(None, [], {"network_type": "lora", "network_dim": 4, "network_alpha": 2, "conv_dim": 4,
                                 "rank_dropout": 0.3, "network_train_unet_only": True})
    net = create_network(cfg, unet, None, family="sdxl" if sdxl else "sd1")
    net.apply()
    for p in net.parameters():  # up weights start at 0: give every factor a gradient path
        torch.nn.init.normal_(p, std=0.1)
    if mode != "off":
        unet.enable_gradient_checkpointing()
    if mode == "units":
        checkpoint_transformer_units(unet)
    unet.train()
    return unet, [p for p in net.parameters() if p.requires_grad]


def step(unet, params, sdxl: bool):
    """(loss, gradients, bytes saved for backward outside the checkpoints, each storage once)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    ctx = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    extra = {}
    if sdxl:
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g),
                                      "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]] * 2)}
    seen: dict[int, int] = {}
    own = {p.untyped_storage().data_ptr() for p in [*unet.parameters(), *params]}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            seen[s.data_ptr()] = s.nbytes()
        return t
    torch.manual_seed(5)  # the rank-dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = unet(x, torch.tensor([10, 700]), ctx, **extra).sample.square().mean()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in params], sum(seen.values())


def test_single_block_units_are_checkpointed_whole_with_the_same_values():
    results = {mode: step(*unet_with_lora(False, mode), False) for mode in ("off", "blocks", "units")}
    loss, grads, _ = results["off"]
    for mode in ("blocks", "units"):
        assert results[mode][0] == pytest.approx(loss, rel=1e-6)
        for a, b in zip(grads, results[mode][1]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    off, blocks, units = (results[m][2] for m in ("off", "blocks", "units"))
    # per block, each unit's GroupNorm input, proj_in's and proj_out's inputs stay held; whole, only
    # what the ResNet blocks between the units keep. The tiny UNet has 3 units at 16x16 (2 x 32 x 256
    # floats each): 3 x 3 such tensors fewer
    token_tensor = 2 * 32 * 16 * 16 * 4
    assert blocks - units >= 3 * 3 * token_tensor, (off, blocks, units)
    assert units < blocks < off


def test_units_of_several_blocks_keep_the_checkpoint_per_block_and_checkpoint_their_prologue():
    """SDXL's units hold 2 or 10 blocks: one checkpoint around them all would rebuild every block's
    activations at once in backward, so the blocks stay checkpointed one by one; the GroupNorm and
    proj_in before them get a checkpoint of their own."""
    unet, params = unet_with_lora(True, "units")
    units = sorted(n for n, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel")
    assert units and all(len(unet.get_submodule(u).transformer_blocks) == 2 for u in units)
    assert checkpointed_units(unet) == [] and all(unet.get_submodule(u).gradient_checkpointing for u in units)
    assert sorted(checkpointed_units(unet, "_operate_on_continuous_inputs")) == units
    loss, grads, units_saved = step(unet, params, True)
    ref_loss, ref_grads, blocks_saved = step(*unet_with_lora(True, "blocks"), True)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for a, b in zip(ref_grads, grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    # proj_in's input (the GroupNorm's output, 2 x 64 tokens x 64 channels in float32) is no longer
    # held, in each of the 6 units
    assert blocks_saved - units_saved >= len(units) * 2 * 64 * 64 * 4, (blocks_saved, units_saved)


def test_a_run_with_checkpointing_wraps_every_single_block_unit(tiny_model_dir, tmp_path):
    from lorakit.demo import make_synthetic_dataset
    from lorakit.train.loop import train
    from train_helpers import tiny_run_config

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    cfg = tiny_run_config(tiny_model_dir, data, tmp_path / "out", {}, network_dim=4, network_alpha=4,
                          gradient_checkpointing=True, max_train_steps=1)
    unet = train(cfg, overwrite=True).model.unet
    units = sorted(n for n, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel")
    assert units and sorted(checkpointed_units(unet)) == units
