"""network_dropout is really applied for every adapter type (LyCORIS ignores it for several),
and never in eval mode."""
from __future__ import annotations

import pytest
import torch

from adapters_helpers import cfg, tiny_models
from lorakit.adapters.network import create_network
from lorakit.adapters.registry import available


def eval_and_train_outputs(algo: str, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny UNet's output with the adapter (the same non-zero weights whatever the dropout) in
    eval mode, then in train mode after torch.manual_seed(0)."""
    unet, _ = tiny_models()
    # DyLoRA draws a rank each training forward: a unit equal to the rank makes every draw the full rank,
    # so that only the dropout can make train mode differ
    args = {"network_args": {"unit": 4}} if algo == "dylora" else {}
    net = create_network(cfg(network_type=algo, network_dim=4, network_dropout=dropout, conv_dim=4, **args),
                         unet, None)
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
        trained = unet(x, t, ctx).sample
    net.restore()
    return ref, trained


@pytest.mark.parametrize("algo", available())
def test_network_dropout_changes_training_output_and_is_off_in_eval(algo):
    ref, dropped = eval_and_train_outputs(algo, 0.5)
    plain_ref, plain = eval_and_train_outputs(algo, 0.0)
    assert torch.equal(plain_ref, ref)  # the same adapter weights
    torch.testing.assert_close(plain, ref)  # train mode alone changes nothing here
    assert (dropped - ref).abs().max().item() > 1e-4, algo
