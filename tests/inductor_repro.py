"""A LoRA'd attention step that torch 2.13's inductor differentiates wrongly on the CPU.

LayerNorm -> q, k, v projections with a low-rank (LoRA) term added to q -> attention -> output
projection + residual, on an input that is a transposed view: what diffusers' Transformer2DModel
hands its BasicTransformerBlocks at batch 1 (permute + reshape returns a view there). Eager and
aot_eager give the same input gradient; inductor on the CPU gives one off by about 100 % (the
forward is right). Without the low-rank term, or with a contiguous input, it is right. Shared by
tests/test_compile.py (the CPU: lorakit refuses inductor there) and tests/test_gpu.py (CUDA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

C, S, R, H = 32, 64, 4, 8


def lowrank_attention_grad_error(device: str, backend: str) -> float:
    """||x.grad compiled - x.grad eager|| / ||x.grad eager|| for the function above, float32."""
    import torch._dynamo as dynamo

    g = torch.Generator().manual_seed(0)
    ln_w, ln_b = torch.randn(C, generator=g), torch.randn(C, generator=g)
    wq, wk, wv, wo = (torch.randn(C, C, generator=g) * 0.2 for _ in range(4))
    down, up = torch.randn(R, C, generator=g) * 0.2, torch.randn(C, R, generator=g) * 0.2
    x = torch.randn(1, S, C, generator=g)
    ln_w, ln_b, wq, wk, wv, wo, down, up, x = (t.to(device) for t in (ln_w, ln_b, wq, wk, wv, wo, down, up, x))

    def block(h: torch.Tensor) -> torch.Tensor:
        n = F.layer_norm(h, (C,), ln_w, ln_b)
        q = F.linear(n, wq) + F.linear(F.linear(n, down), up)
        k, v = F.linear(n, wk), F.linear(n, wv)
        q, k, v = (t.view(1, -1, H, C // H).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, -1, C)
        return F.linear(a, wo) + h

    def input_grad(fn) -> torch.Tensor:
        x0 = x.clone().requires_grad_(True)
        strided = (x0 * 1.0).transpose(1, 2).contiguous().transpose(1, 2)  # the values of x, transposed strides
        fn(strided).square().mean().backward()
        return x0.grad

    dynamo.reset()
    try:
        eager = input_grad(block)
        compiled = input_grad(torch.compile(block, backend=backend, dynamic=False))
    finally:
        dynamo.reset()
    return ((compiled - eager).norm() / eager.norm()).item()
