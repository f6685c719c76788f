"""network_dropout is really applied for every adapter type (LyCORIS ignores it for several),
and never in eval mode."""
from __future__ import annotations

import pytest
import torch

from adapters_helpers import cfg, tiny_models
from lorakit.adapters.network import create_network
from lorakit.adapters.registry import available


@pytest.mark.parametrize("algo", available())
def test_network_dropout_changes_training_output_and_is_off_in_eval(algo):
    unet, _ = tiny_models()
    net = create_network(cfg(network_type=algo, network_dim=4, network_dropout=0.5, conv_dim=4), unet, None)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    net.apply()
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([500])
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        unet.eval()
        ref = unet(x, t, ctx).sample
        assert torch.equal(unet(x, t, ctx).sample, ref)  # eval: no dropout, deterministic
        unet.train()
        torch.manual_seed(0)
        dropped = unet(x, t, ctx).sample
    net.restore()
    assert (dropped - ref).abs().max().item() > 1e-4, algo
