"""On a CUDA GPU: each speed lever trains what the baseline trains (bf16, tiny model).

CI has no GPU, so these tests are skipped there. A session lent a GPU runs them before it
benchmarks (bench/README.md): `python3 -m pytest tests/test_gpu.py`. With
LORAKIT_GPU_TESTS_ON_CPU=1 they run on the CPU instead (the aot_eager backend for inductor, no
CUDA-graph row), which checks the tests themselves.

bf16 kernels differ between the levers (fused, reordered, another memory format), so runs agree
to bf16 rounding, not bit for bit: losses within 1e-2 and every adapter tensor within 5 % of its
norm. The levers train with SGD, whose update is proportional to the gradient (Adam's first
steps are about lr * sign(gradient), which turns rounding into whole-step differences where a
gradient is near 0). A lever that broke training (no gradient reaching an adapter, an adapter
left out of the graph, a wrong merge) moves a tensor by 100 %.
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from lorakit.demo import make_synthetic_dataset
from lorakit.train.loop import train
from train_helpers import tiny_run_config

ON_CPU = os.environ.get("LORAKIT_GPU_TESTS_ON_CPU") == "1"
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU),
                                reason="needs a CUDA GPU (or LORAKIT_GPU_TESTS_ON_CPU=1 to check the tests)")
BACKEND = "aot_eager" if ON_CPU else "inductor"

DEFAULTS = {"network_dim": 8, "network_alpha": 8, "conv_dim": 4, "optimizer_type": "SGD", "learning_rate": 0.5,
            "seed": 11,
            "max_train_steps": 4, "train_batch_size": 2, "gradient_checkpointing": True, "mixed_precision": "bf16",
            "max_token_length": 150, "shuffle_caption": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_images=4, repeats=2)


def trained(model, data, out, **kw):
    """(losses, adapter tensors as float32) of a run."""
    losses: list[float] = []
    res = train(tiny_run_config(model, data, out, DEFAULTS, **kw),
                [lambda ev: losses.append(ev.data["loss"]) if ev.kind == "step" else None], overwrite=True)
    return losses, {k: v.float() for k, v in load_file(res.output_file).items()}


ZERO_INIT = ("lora_up.weight", "hada_w2_a")  # adapter tensors that start at 0: all they hold is trained


def assert_same_training(a, b, tol=0.05):
    """Same losses to 1e-2; the zero-initialised tensors (what training wrote) within `tol` of their
    norm, all together and each one that holds at least a tenth of the largest one's norm (the
    others hold little more than bf16 noise)."""
    (la, ta), (lb, tb) = a, b
    assert len(la) == len(lb) == DEFAULTS["max_train_steps"]
    assert all(map(torch.isfinite, map(torch.tensor, lb)))
    assert lb == pytest.approx(la, abs=1e-2, rel=0)
    assert sorted(ta) == sorted(tb)
    keys = [k for k in ta if k.endswith(ZERO_INIT)]
    norms = {k: ta[k].norm().item() for k in keys}
    assert keys and max(norms.values()) > 0  # the baseline trained its adapters
    total = torch.cat([ta[k].flatten() for k in keys])
    diff = torch.cat([(ta[k] - tb[k]).flatten() for k in keys])
    assert diff.norm().item() <= tol * total.norm().item()
    for k in keys:
        if norms[k] >= 0.1 * max(norms.values()):
            assert (ta[k] - tb[k]).norm().item() <= tol * norms[k], k


# torch_compile compiles the repeated blocks (torch_compile_scope's default, "regional")
LEVERS = {
    "torch_compile": {"torch_compile": True, "dynamo_backend": BACKEND},
    "channels_last": {"channels_last": True},
    "merged_op": {"network_args": {"merged_op": True}},
    "merged_op auto": {"network_args": {"merged_op": "auto"}},
    # batch 1: diffusers hands its transformer blocks a transposed view then (permute + reshape makes
    # no copy), the input on which the CPU's inductor gets the gradient wrong (tests/inductor_repro.py).
    # float32: in bf16 one image per step leaves reordered sums 8 % apart after 4 SGD steps (CPU, aot_eager)
    "torch_compile batch 1": {"torch_compile": True, "dynamo_backend": BACKEND, "train_batch_size": 1,
                              "mixed_precision": "no"},
    "torch_compile dynamic": {"torch_compile": True, "dynamo_backend": BACKEND, "torch_compile_dynamic": True},
    "together": {"torch_compile": True, "dynamo_backend": BACKEND, "network_args": {"merged_op": True},
                 "channels_last": True},
    # LoHa in float32: in bf16 its small factors turn the rounding of a reordered sum into 7-10 % after
    # 4 SGD steps here, with or without these levers (compile alone: 6.9 %)
    "loha compile + channels_last": {"network_type": "loha", "mixed_precision": "no", "torch_compile": True,
                                     "dynamo_backend": BACKEND, "channels_last": True},
}
if not ON_CPU:
    LEVERS["torch_compile whole"] = {"torch_compile": True, "torch_compile_scope": "whole"}
    LEVERS["cuda_graphs"] = {"torch_compile": True, "torch_compile_mode": "reduce-overhead"}
    LEVERS["cuda_graphs whole"] = {"torch_compile": True, "torch_compile_mode": "reduce-overhead",
                                   "torch_compile_scope": "whole"}
    # On the CPU (torch 2.13, aot_eager) the whole scope with channels_last and a merged op fails in
    # the compiled backward: a gradient's runtime strides differ from the traced ones at diffusers'
    # Transformer2D reshape (docs/speed.md). Whether inductor on CUDA does the same is this row.
    LEVERS["loha compile whole + channels_last"] = {"network_type": "loha", "mixed_precision": "no",
                                                    "torch_compile": True, "torch_compile_scope": "whole",
                                                    "channels_last": True}


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, data, tmp_path_factory):
    return trained(tiny_model_dir, data, tmp_path_factory.mktemp("baseline"))


@pytest.mark.parametrize("lever", list(LEVERS))
def test_lever_trains_what_the_baseline_trains(tiny_model_dir, data, tmp_path, baseline, lever):
    import torch._dynamo

    torch._dynamo.reset()
    change = LEVERS[lever]
    # another adapter or batch size: its own eager baseline, in the lever's precision
    same = {k: change[k] for k in ("network_type", "mixed_precision", "train_batch_size") if k in change}
    if same:
        baseline = trained(tiny_model_dir, data, tmp_path / "eager", **same)
    assert_same_training(baseline, trained(tiny_model_dir, data, tmp_path / "lever", **change))


def test_compiled_lowrank_attention_gradient_on_a_transposed_input():
    """The input gradient the CPU's inductor gets wrong (tests/inductor_repro.py: lorakit refuses inductor
    on the CPU), on this device: regional compiling puts LoRA'd attention inside each compiled block."""
    from inductor_repro import lowrank_attention_grad_error

    assert lowrank_attention_grad_error("cpu" if ON_CPU else "cuda", BACKEND) <= 1e-4


@pytest.mark.parametrize("optimizer", ["Prodigy", "DAdaptation", "DAdaptAdam", "DAdaptLion"])
def test_fast_optimizer_trains_what_the_reference_trains(tiny_model_dir, data, tmp_path, optimizer):
    # d0 1e-2: large enough steps from the first one that an optimizer that did not step would show.
    # float32: the optimizers differ only by rounding (CPU: 5e-5 of the norm after 4 DAdaptAdam
    # steps), which bf16 forwards amplify to about 1.4 % by step 4, as any reordering of sums would
    kw = {"optimizer_type": optimizer, "learning_rate": 1.0, "network_type": "loha", "mixed_precision": "no"}
    ref = trained(tiny_model_dir, data, tmp_path / "ref", optimizer_args={"d0": 1e-2}, **kw)
    fast = trained(tiny_model_dir, data, tmp_path / "fast", optimizer_args={"d0": 1e-2, "implementation": "fast"},
                   **kw)
    assert_same_training(ref, fast, tol=1e-2)


def test_cached_text_encoder_and_workers(tiny_model_dir, data, tmp_path):
    unet_only = {"network_train_unet_only": True, "cache_latents": False, "flip_aug": True}
    base = trained(tiny_model_dir, data, tmp_path / "a", cache_text_encoder_outputs=False, **unet_only)
    assert_same_training(base, trained(tiny_model_dir, data, tmp_path / "b", cache_text_encoder_outputs=True,
                                       max_data_loader_n_workers=2, **unet_only))


@pytest.mark.parametrize("cached", [True, False])
def test_the_vae_is_on_the_device_only_while_it_is_used(tiny_model_dir, data, tmp_path, cached):
    """Cached latents: the VAE goes home after caching them and after each sample's decode.
    Without the cache it encodes every batch on the device (this path once crashed on CUDA: the
    VAE was never sent there)."""
    if ON_CPU:
        pytest.skip("one device on the CPU: tests/test_train.py checks the moves there")
    res = train(tiny_run_config(tiny_model_dir, data, tmp_path, DEFAULTS, cache_latents=cached, max_train_steps=2,
                                sample_prompts="a red circle --w 64 --h 64 --s 2", sample_every_n_steps=2),
                overwrite=True)
    assert len(list((tmp_path / "sample").glob("*.png"))) == 1
    assert next(res.model.vae.parameters()).device.type == ("cpu" if cached else "cuda")


def test_frozen_text_encoder_trains_from_the_host_with_every_caption_cached(tiny_model_dir, data, tmp_path):
    """UNet only, fixed captions: the encoder's outputs are all cached before the first step and the
    encoder waits on the host; the sample brings it over for its prompt. Same training as with the
    encoder on the device and no cache."""
    if ON_CPU:
        pytest.skip("one device on the CPU: tests/test_text_cache.py checks the moves there")
    kw = {"network_train_unet_only": True, "shuffle_caption": False, "cache_latents": True}
    base = trained(tiny_model_dir, data, tmp_path / "a", cache_text_encoder_outputs=False, **kw)
    res = train(tiny_run_config(tiny_model_dir, data, tmp_path / "b", DEFAULTS, sample_every_n_steps=4,
                                sample_prompts="a red circle --w 64 --h 64 --s 2", **kw), overwrite=True)
    assert next(res.model.text_encoder.parameters()).device.type == "cpu"
    assert len(list((tmp_path / "b" / "sample").glob("*.png"))) == 1
    assert_same_training(base, trained(tiny_model_dir, data, tmp_path / "c", **kw))


def test_a_step_waits_for_the_device_once(tiny_model_dir, data, tmp_path):
    """One synchronizing call per optimizer step: the loss and gradient-norm read (docs/speed.md
    "Per step"); torch's sync debug mode reports every other one with the Python line it came from."""
    if ON_CPU:
        pytest.skip("no device to wait for on the CPU: tests/test_step_syncs.py counts the reads there")
    import warnings

    caught: list[warnings.WarningMessage] = []
    recorder = warnings.catch_warnings(record=True)

    def on(ev):
        nonlocal caught
        if ev.kind == "step" and ev.step == 2:
            caught = recorder.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif ev.kind == "step" and ev.step == 3:
            torch.cuda.set_sync_debug_mode("default")
            recorder.__exit__(None, None, None)
    cfg = tiny_run_config(tiny_model_dir, data, tmp_path, DEFAULTS, optimizer_type="AdamW", learning_rate=1e-4,
                          max_grad_norm=1.0, max_train_steps=3, cache_latents=True)
    train(cfg, [on], overwrite=True)
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, syncs
