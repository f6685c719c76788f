"""Speed options (lorakit/train/speed.py): torch.compile and channels_last change the speed, not the result.

On CPU the "aot_eager" backend traces forward and backward through dynamo and AOTAutograd (what
inductor compiles) but runs the traced ops eagerly, so it needs no C++ compiler and is quick.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lorakit.config.kohya import import_kohya_json
from lorakit.config.load import load_config
from lorakit.demo import make_synthetic_dataset
from lorakit.errors import ConfigError
from lorakit.train import compile as compiling
from lorakit.train.loop import train
from lorakit.train.speed import validate_speed_config
from train_helpers import tiny_run_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_images=4, repeats=1)


DEFAULTS = {"network_dim": 4, "network_alpha": 2, "learning_rate": 1e-3, "seed": 7, "max_train_steps": 3,
            "train_batch_size": 2, "gradient_checkpointing": True}


def make_cfg(model_dir, data_dir, out, **kw):
    return tiny_run_config(model_dir, data_dir, out, DEFAULTS, **kw)


def run(cfg):
    losses: list[float] = []
    res = train(cfg, [lambda ev: losses.append(ev.data["loss"]) if ev.kind == "step" else None], overwrite=True)
    return res, losses


@pytest.fixture(autouse=True)
def fresh_dynamo():
    import torch._dynamo

    torch._dynamo.reset()  # compiled graphs of one test never serve another
    yield
    torch._dynamo.reset()


def compare_runs(model_dir, data_dir, tmp_path, scope, **kw):
    """Eager and compiled (aot_eager) runs of the same config: (eager result, compiled result, events)."""
    eager, eager_losses = run(make_cfg(model_dir, data_dir, tmp_path / "eager", **kw))
    events: list[str] = []
    losses: list[float] = []

    def on_event(ev):
        events.append(ev.kind)
        if ev.kind == "step":
            losses.append(ev.data["loss"])
    res = train(make_cfg(model_dir, data_dir, tmp_path / "compiled", torch_compile=True, dynamo_backend="aot_eager",
                         torch_compile_scope=scope, **kw), [on_event], overwrite=True)
    assert len(losses) == 3
    assert losses == pytest.approx(eager_losses, abs=1e-5, rel=0)
    assert "compiling" in events[:events.index("step")]  # the first step announces its compile
    unet = res.model.unet
    if scope == "whole":
        assert getattr(unet, "_compiled_call_impl", None) is not None  # compiled in place
    else:  # each repeated block, nothing else
        assert getattr(unet, "_compiled_call_impl", None) is None
        n = compiling.count_regions(unet, compiling.UNET_REGIONS)
        assert n >= 8 and compiling.compiled_regions(unet) == n
    a, b = load_file(eager.output_file), load_file(res.output_file)
    assert sorted(a) == sorted(b)  # the same names: the adapters were applied before compiling
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert not any("_orig_mod" in k for k in unet.state_dict())
    return eager, res


def test_regional_compiled_lora_equals_eager_and_samples(tiny_model_dir, data, tmp_path):
    # sampling after step 2 runs the compiled blocks in eval mode under no_grad, mid-training;
    # without gradient checkpointing here (the LoHa test has it): checkpointing doubles compile time
    prompt = "a red circle --w 64 --h 64 --d 5 --s 2 --l 1"
    compiling.reset_dynamo_counters()
    eager, res = compare_runs(tiny_model_dir, data, tmp_path, "regional", sample_prompts=prompt,
                              sample_every_n_steps=2, gradient_checkpointing=False)
    te = res.model.text_encoder  # trained: its layers are compiled too, and the identical ones share graphs
    assert compiling.compiled_regions(te) == compiling.count_regions(te, compiling.TEXT_ENCODER_REGIONS) == 2
    regions = compiling.compiled_regions(res.model.unet) + 2
    # one graph per (block shape, input shape, grad mode), not one per block: the tiny UNet's 12
    # blocks and the 2 text-encoder layers, in training and in sampling, give 21 graphs (28 if every
    # block had its own)
    assert compiling.unique_graphs() < 2 * regions
    a = sorted((tmp_path / "eager" / "sample").glob("*.png"))
    b = sorted((tmp_path / "compiled" / "sample").glob("*.png"))
    assert len(a) == len(b) == 1
    pa, pb = (torch.from_numpy(np.array(Image.open(f))).to(torch.int16) for f in (a[0], b[0]))
    assert (pa - pb).abs().max().item() <= 1  # the same image, up to rounding to 8 bits


# dynamo traces through diffusers' lru_cache'd is_torch_version in its checkpointing helper and warns of a
# "potential" risk: this test compares the compiled run's values with eager's, which is the check it asks for
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_whole_compiled_loha_equals_eager(tiny_model_dir, data, tmp_path):
    # LoHa runs the merged op (the base op once more with delta W); UNet only: the text encoder is
    # frozen, so it is not compiled
    _, res = compare_runs(tiny_model_dir, data, tmp_path, "whole", network_type="loha", conv_dim=2, conv_alpha=1,
                          network_train_unet_only=True)
    assert getattr(res.model.text_encoder, "_compiled_call_impl", None) is None


def test_channels_last_equals_default(tiny_model_dir, data, tmp_path, monkeypatch):
    # with a validation image: the held-out loss goes through the channels_last UNet too
    from diffusers import UNet2DConditionModel

    unet_forward, formats = UNet2DConditionModel.forward, []

    def spy(self, sample, *a, **k):
        formats.append(sample.is_contiguous(memory_format=torch.channels_last))
        return unet_forward(self, sample, *a, **k)
    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)

    def run_with_validation(out, **kw):
        events = []
        res = train(make_cfg(tiny_model_dir, data, out, conv_dim=2, validation_split=0.25, **kw),
                    [lambda ev: events.append((ev.kind, ev.data["loss"])) if ev.kind in ("step", "validation")
                     else None], overwrite=True)
        return res, events

    _, base = run_with_validation(tmp_path / "a")
    formats.clear()
    res, cl = run_with_validation(tmp_path / "b", channels_last=True)
    assert len(formats) > 3 and all(formats)  # training steps and the validation timesteps
    assert [k for k, _ in cl] == [k for k, _ in base] and ("validation" in [k for k, _ in cl])
    assert [v for _, v in cl] == pytest.approx([v for _, v in base], abs=1e-5, rel=0)
    conv_in = res.model.unet.conv_in.weight
    assert conv_in.is_contiguous(memory_format=torch.channels_last) and not conv_in.is_contiguous()


def test_channels_last_vae_encodes_each_step(tiny_model_dir, data, tmp_path):
    _, base = run(make_cfg(tiny_model_dir, data, tmp_path / "a", cache_latents=False, max_train_steps=2))
    res, cl = run(make_cfg(tiny_model_dir, data, tmp_path / "b", cache_latents=False, max_train_steps=2,
                           channels_last=True))
    assert cl == pytest.approx(base, abs=1e-5, rel=0)
    assert res.model.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def cfg_values(**kw):
    return load_config(None, [], kw)


def test_speed_config_checks():
    assert validate_speed_config(cfg_values()) == []
    assert validate_speed_config(cfg_values(torch_compile=True, dynamo_backend="AOT_EAGER")) == []
    with pytest.raises(ConfigError) as e:
        validate_speed_config(cfg_values(torch_compile=True, dynamo_backend="inductr"))
    assert e.value.key == "dynamo_backend" and "inductor" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate_speed_config(cfg_values(torch_compile=True, dynamo_backend="no"))
    assert e.value.key == "dynamo_backend"
    with pytest.raises(ConfigError) as e:  # a mode is an inductor option
        validate_speed_config(cfg_values(torch_compile=True, dynamo_backend="aot_eager",
                                         torch_compile_mode="reduce-overhead"))
    assert e.value.key == "torch_compile_mode"
    with pytest.raises(ConfigError) as e:
        cfg_values(torch_compile_mode="fast")
    assert e.value.key == "torch_compile_mode" and "reduce-overhead" in str(e.value)
    warns = validate_speed_config(cfg_values(torch_compile_mode="max-autotune", torch_compile_dynamic=True))
    assert len(warns) == 2 and all("torch_compile is off" in w for w in warns)


def test_gui_dynamo_backend(tmp_path):
    def gui(text):
        p = tmp_path / "k.json"
        p.write_text(text, encoding="utf-8")
        return load_config(p)

    off = gui('{"dynamo_backend": "no", "dynamo_mode": "max-autotune", "dynamo_use_fullgraph": false}')
    assert (off.torch_compile, off.dynamo_backend, off.torch_compile_mode) == (False, "inductor", None)
    on = gui('{"dynamo_backend": "inductor", "dynamo_mode": "reduce-overhead", "dynamo_use_dynamic": false}')
    assert (on.torch_compile, on.dynamo_backend, on.torch_compile_mode) == (True, "inductor", "reduce-overhead")
    assert on.torch_compile_dynamic is False
    dynamic = gui('{"dynamo_backend": "inductor", "dynamo_use_dynamic": true}')
    assert (dynamic.torch_compile, dynamic.torch_compile_dynamic) == (True, True)
    assert gui('{"dynamo_backend": "no", "dynamo_use_dynamic": true}').torch_compile_dynamic is False
    eager = gui('{"dynamo_backend": "aot_eager", "dynamo_mode": "default"}')
    assert (eager.torch_compile, eager.dynamo_backend, eager.torch_compile_mode) == (True, "aot_eager", None)
    res = import_kohya_json(tmp_path / "k.json")
    assert "dynamo_mode" in dict(res.ignored)
    flag = gui('{"additional_parameters": "--torch_compile --dynamo_backend aot_eager"}')
    assert (flag.torch_compile, flag.dynamo_backend) == (True, "aot_eager")


def test_sdscripts_toml_compile_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[training_arguments]\ntorch_compile = true\ndynamo_backend = "aot_eager"\n'
                 '[additional_network_arguments]\nnetwork_module = "networks.lora"\n', encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.torch_compile, cfg.dynamo_backend) == (True, "aot_eager")


def test_progress_bar_says_compiling_until_the_step_ends():
    import io
    from types import SimpleNamespace

    from lorakit.events import Event
    from lorakit.monitors import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(out)
    plan = SimpleNamespace(total_steps=4, describe=lambda: "4 steps")
    bar(Event("start", data={"plan": plan}))
    bar(Event("compiling"))
    assert bar.bar.desc == "compiling" and "compiling" in out.getvalue()
    bar(Event("compiling"))  # a second graph of the same step: no new line of text
    bar(Event("step", 1, 1, {"images": 1, "loss_avg": 0.5, "lrs": {"unet": 1e-4}, "loss": 0.5}))
    assert bar.bar.desc == ""
    bar(Event("end", 1, 1))


def test_merged_weights_outside_checkpointed_blocks_are_recomputed(tiny_model_dir, data, tmp_path):
    # LoHa on the down/up-sampling convs (outside the checkpointed blocks) is checkpointed itself
    # under gradient checkpointing: the same losses as without checkpointing, the rank-dropout masks
    # drawn again identically in the recompute. proj_in/proj_out are inside the checkpointed units
    # (train/speed.py checkpoint_transformer_units): recomputed with them, not on their own
    kw = {"network_type": "loha", "conv_dim": 2, "conv_alpha": 1, "rank_dropout": 0.2, "network_train_unet_only": True}
    _, plain = run(make_cfg(tiny_model_dir, data, tmp_path / "a", gradient_checkpointing=False, **kw))
    res, ckpt = run(make_cfg(tiny_model_dir, data, tmp_path / "b", **kw))
    assert ckpt == pytest.approx(plain, abs=1e-6, rel=0)
    flagged = sorted(n for n, a in res.network.unet_modules.items() if a.recompute_merged)
    assert any("downsamplers" in n for n in flagged) and any("upsamplers" in n for n in flagged)
    assert not any("proj_in" in n or "proj_out" in n for n in flagged)
    assert any("mid_block_resnets_0" in n for n in flagged)  # diffusers runs it unchecked
    assert not any(("resnets" in n and "mid_block_resnets_0" not in n) or "transformer_blocks" in n
                   for n in flagged)


def test_torch_inductor_cpu_gradient_agrees_with_the_refusal():
    """lorakit refuses inductor on the CPU with a torch older than INDUCTOR_CPU_RIGHT_FROM (train/speed.py
    check_compile_device) for this torch bug: the repro must be wrong on such a torch and right on a
    newer one (2.13.0: off by 1.2; 2.14.1: 5e-7). When it fails, move INDUCTOR_CPU_RIGHT_FROM."""
    import shutil

    from inductor_repro import lowrank_attention_grad_error

    from lorakit.train.speed import INDUCTOR_CPU_RIGHT_FROM

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("inductor needs a C++ compiler on the CPU")
    assert lowrank_attention_grad_error("cpu", "aot_eager") <= 1e-6  # the function itself is sound
    err = lowrank_attention_grad_error("cpu", "inductor")
    if torch.__version__ < INDUCTOR_CPU_RIGHT_FROM:  # torch's TorchVersion compares with a tuple
        assert err > 0.1, f"inductor's CPU input gradient is right with torch {torch.__version__} ({err:.1e})"
    else:
        assert err < 1e-4, f"inductor's CPU input gradient is wrong with torch {torch.__version__} ({err:.1e})"


def test_inductor_on_the_cpu_is_refused_before_the_model_loads():
    from lorakit.train.speed import check_compile_device

    cfg = load_config(None, [], {"torch_compile": True})
    for old in ("2.13.0", "2.13.0+cpu", "2.14", "2.14.0", "2.14.0+cu130"):
        with pytest.raises(ConfigError) as e:
            check_compile_device(cfg, torch.device("cpu"), torch_version=old)
        assert e.value.key == "dynamo_backend" and "aot_eager" in e.value.fix and "torch >= 2.14.1" in e.value.fix
        assert f"torch {old}'s inductor" in str(e.value)
    for new in ("2.14.1", "2.14.1+cu130", "2.15.0a0+git1234", "3.0.0"):
        check_compile_device(cfg, torch.device("cpu"), torch_version=new)  # right there (the repro test)
    check_compile_device(cfg, torch.device("cuda"), torch_version="2.13.0")  # a GPU compiles with inductor
    check_compile_device(load_config(None, [], {"torch_compile": True, "dynamo_backend": "aot_eager"}),
                         torch.device("cpu"), torch_version="2.13.0")


def test_compiled_regions_take_dense_inputs():
    """A strided view reaches a compiled block as a dense copy (inductor's CPU gradient bug,
    tests/inductor_repro.py); channels_last inputs are dense already and pass as they are."""
    from torch import nn

    class BasicTransformerBlock(nn.Module):  # the class name compile_regions looks for
        def forward(self, x):
            return x * 2

    layouts = []

    def backend(gm, example_inputs):  # what the compiled graph is given
        layouts.extend((t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last))
                       for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 4)
        layouts.extend((t.is_contiguous(), None) for t in example_inputs
                       if isinstance(t, torch.Tensor) and t.dim() == 3)
        return gm.forward

    import torch._dynamo as dynamo

    dynamo.reset()
    root = nn.Sequential(BasicTransformerBlock())
    assert compiling.compile_regions(root, ("BasicTransformerBlock",), backend=backend, dynamic=False) == 1
    x = torch.randn(1, 32, 64).transpose(1, 2)  # the transposed view diffusers hands a block at batch 1
    assert not x.is_contiguous()
    assert torch.equal(root(x), x * 2)
    cl = torch.randn(1, 8, 4, 4).to(memory_format=torch.channels_last)
    root(cl)
    dynamo.reset()
    assert layouts == [(True, None), (False, True)]



@pytest.fixture
def duck_sizing():
    """dynamo's default duck sizing, restored after the test (compiling.dynamic_shapes turns it off)."""
    import torch.fx.experimental._config as fx_config

    with fx_config.patch(use_duck_shape=True):
        yield fx_config


def test_dynamic_regions_compile_once_for_every_bucket_shape(duck_sizing):
    """torch_compile_dynamic: a LoRA'd (LoCon) ResNet block compiled in place with dynamic shapes runs
    a square bucket, then oblong ones, on the graph of the first, with eager's values and gradients.
    With static shapes each bucket compiles again (checked: the count reads [1, 2, 3]); without
    compiling.dynamic_shapes the first oblong bucket does (duck sizing tied height to width). A
    transformer block's dynamic compile is the same mechanism at 9 s of CPU tracing, so it is left to
    bench/compile_cpu.py --modes dynamic."""
    import torch._dynamo as dynamo
    from diffusers.models.resnet import ResnetBlock2D
    from torch import nn

    from lorakit.adapters.lora import LoRAModule

    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None, groups=8)
    root = nn.Sequential(block)
    root.requires_grad_(False)
    adapters = [LoRAModule(n, m, 4, 2.0) for n, m in block.named_modules() if isinstance(m, nn.Conv2d)]
    for a in adapters:
        nn.init.normal_(a.lora_up.weight, std=0.1)
        a.apply()
    inputs = [torch.randn(2, 32, h, w) for h, w in ((6, 6), (8, 4), (4, 10))]

    def outputs_and_grads():
        out = []
        for x in inputs:
            y = block(x, None)
            y.square().mean().backward()
            out.append((y.detach(), [p.grad.clone() for a in adapters for p in a.parameters()],
                        compiling.unique_graphs()))
            for a in adapters:
                a.zero_grad(set_to_none=True)
        return out

    eager = outputs_and_grads()
    dynamo.reset()
    compiling.reset_dynamo_counters()
    compiling.dynamic_shapes()
    assert compiling.compile_regions(root, compiling.UNET_REGIONS, backend="aot_eager", dynamic=True) == 1
    compiled = outputs_and_grads()
    assert [n for *_, n in compiled] == [1, 1, 1]  # one graph for all three shapes
    for (y, grads, _), (cy, cgrads, _) in zip(eager, compiled):
        assert torch.allclose(y, cy, atol=1e-5, rtol=1e-5)
        assert all(torch.allclose(g, cg, atol=1e-5, rtol=1e-4) for g, cg in zip(grads, cgrads))


def test_torch_compile_dynamic_reaches_the_compile(tiny_model_dir, data, tmp_path, monkeypatch, duck_sizing):
    """The key turns dynamic shapes on in the run's compile call (recorded here, not compiled)."""
    calls = []
    monkeypatch.setattr(compiling, "compile_regions", lambda module, names, **kw: calls.append(kw) or 0)
    run(make_cfg(tiny_model_dir, data, tmp_path / "o", torch_compile=True, dynamo_backend="aot_eager",
                 torch_compile_dynamic=True, max_train_steps=1, network_train_unet_only=True))
    assert [kw["dynamic"] for kw in calls] == [True] and duck_sizing.use_duck_shape is False


def test_many_bucket_shapes_suggest_dynamic_shapes(monkeypatch):
    from lorakit.train import speed

    def warnings(n, **kw):
        monkeypatch.setattr(speed, "training_shapes", lambda dataset, batch: n)
        return speed.shape_warnings(cfg_values(torch_compile=True, **kw), None)

    assert warnings(speed.MANY_SHAPES - 1) == []
    (w,) = warnings(speed.MANY_SHAPES)
    assert f"{speed.MANY_SHAPES} shapes" in w and "torch_compile_dynamic = true" in w
    assert warnings(9, torch_compile_dynamic=True) == []
    monkeypatch.setattr(speed, "training_shapes", lambda dataset, batch: 9)
    assert speed.shape_warnings(cfg_values(), None) == []  # nothing is compiled
