"""network_weights / dim_from_weights: a run continues from an adapter file, exactly."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorakit.adapters.base import CONV3X3
from lorakit.adapters.weights import prepare
from lorakit.config.load import load_config
from lorakit.demo import make_synthetic_dataset
from lorakit.errors import ConfigError
from lorakit.events import EventBus
from lorakit.train.loop import train
from lorakit.train.setup import setup_run
from train_helpers import tiny_run_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d"), n_images=2, repeats=1)


DEFAULTS = {"network_dim": 4, "network_alpha": 2, "seed": 3, "max_train_steps": 2,
            "learning_rate": 1e-2}


def cfg_for(model, data, out, **kw):
    return tiny_run_config(model, data, out, DEFAULTS, **kw)


TYPES = {  # network_type -> extra settings of the run that writes the file
    "lora": {"conv_dim": 2},
    "loha": {"conv_dim": 2},
    "lokr": {"conv_dim": 2},
    "ia3": {},
    "dylora": {"conv_dim": 2, "network_args": {"unit": 2}},
}


@pytest.fixture(scope="module")
def trained(tiny_model_dir, data, tmp_path_factory):
    """network_type -> the file of a 2-step run (float32)."""
    cache = {}

    def get(ntype):
        if ntype not in cache:
            out = tmp_path_factory.mktemp(ntype)
            res = train(cfg_for(tiny_model_dir, data, out, network_type=ntype, **TYPES[ntype]), overwrite=True)
            cache[ntype] = res.output_file
        return cache[ntype]
    return get


@pytest.mark.parametrize("ntype", list(TYPES))
def test_network_equals_the_file(ntype, trained, tiny_model_dir, data, tmp_path):
    path = trained(ntype)
    saved = load_file(path)
    # another seed: the fresh modules would differ from the file everywhere training moved them
    cfg = cfg_for(tiny_model_dir, data, tmp_path, network_type=ntype, network_weights=str(path), seed=11,
                  **TYPES[ntype])
    run = setup_run(cfg, EventBus(), overwrite=True)
    got = run.network.state_dict_to_save(torch.float32)
    assert got.keys() == saved.keys()
    assert len(got) > 20
    for k, t in saved.items():
        assert torch.equal(got[k], t), k  # exact: a float32 file into float32 parameters
    # the tensors each type starts at zero (iA3's scales, the up / second factors) hold trained values
    zero_init = ".weight" if ntype == "ia3" else ("lora_up.weight", "hada_w2_a", "lokr_w2", "lokr_w2_b")
    moved = [t.abs().max().item() for k, t in saved.items() if k.endswith(zero_init)]
    assert moved and max(moved) > 1e-4


def test_fp16_file_is_converted(trained, tiny_model_dir, data, tmp_path):
    saved = load_file(trained("lora"))
    half = tmp_path / "half.safetensors"
    save_file({k: (t if k.endswith("alpha") else t.half()) for k, t in saved.items()}, str(half))
    cfg = cfg_for(tiny_model_dir, data, tmp_path / "o", conv_dim=2, network_weights=str(half))
    got = setup_run(cfg, EventBus(), overwrite=True).network.state_dict_to_save()
    k = next(k for k in saved if k.endswith("lora_down.weight"))
    assert got[k].dtype == torch.float32
    assert torch.equal(got[k], saved[k].half().float())


def test_dim_from_weights_takes_rank_alpha_and_conv_rank(trained, tiny_model_dir, data, tmp_path):
    path = trained("lora")  # network_dim 4, alpha 2, conv_dim 2 (conv_alpha unset = 2)
    cfg = cfg_for(tiny_model_dir, data, tmp_path, network_dim=8, network_alpha=1, dim_from_weights=True,
                  network_weights=str(path), max_train_steps=1)
    run = setup_run(cfg, EventBus(), overwrite=True)
    assert (run.cfg.network_dim, run.cfg.network_alpha, run.cfg.conv_dim, run.cfg.conv_alpha) == (4, 2.0, 2, 2.0)
    mods = run.network.all_modules()
    convs = [m for m in mods if m.kind == CONV3X3]
    others = [m for m in mods if m.kind != CONV3X3]
    assert convs and others
    assert {(m.dim, float(m.alpha)) for m in others} == {(4, 2.0)}
    assert {(m.dim, float(m.alpha)) for m in convs} == {(2, 2.0)}
    assert all(m.lora_down.weight.shape[0] == 4 and m.scale == 0.5 for m in others)
    assert all(tuple(m.lora_down.weight.shape[::2]) == (2, 3) for m in convs)  # (2, in, 3, 3)
    # a whole run: the file says what was built, not what the config said
    res = train(cfg, overwrite=True)
    with safe_open(str(res.output_file), "pt") as f:
        md = f.metadata()
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("4", "2.0")
    assert json.loads(md["ss_network_args"])["conv_dim"] == "2"
    assert md["ss_network_weights"] == path.name


def test_dim_mismatch_and_disagreeing_ranks(trained, tiny_model_dir, data, tmp_path):
    path = trained("lora")
    cfg = cfg_for(tiny_model_dir, data, tmp_path, network_dim=8, conv_dim=2, network_weights=str(path))
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    assert e.value.key == "network_dim" and "rank 4" in e.value.message and "dim_from_weights" in e.value.fix
    assert "module lora_" in e.value.message
    with pytest.raises(ConfigError) as e:  # alpha 1 against the file's 2
        prepare(cfg.model_copy(update={"network_dim": 4, "network_alpha": 1.0}))
    assert e.value.key == "network_alpha" and "alpha 2" in e.value.message
    with pytest.raises(ConfigError) as e:  # convs in the file, none in the config
        prepare(cfg.model_copy(update={"network_dim": 4, "network_alpha": 2.0, "conv_dim": None}))
    assert e.value.key == "conv_dim" and "rank 2" in e.value.message
    # one linear module of rank 2 among rank 4: dim_from_weights cannot give one rank
    sd = load_file(path)
    name = next(k for k in sd if k.endswith("attn1_to_q.lora_down.weight")).split(".")[0]
    sd[f"{name}.lora_down.weight"] = sd[f"{name}.lora_down.weight"][:2].contiguous()
    sd[f"{name}.lora_up.weight"] = sd[f"{name}.lora_up.weight"][:, :2].contiguous()
    mixed = tmp_path / "mixed.safetensors"
    save_file(sd, str(mixed))
    with pytest.raises(ConfigError) as e:
        prepare(cfg.model_copy(update={"network_weights": str(mixed), "dim_from_weights": True}))
    assert e.value.key == "dim_from_weights" and name in e.value.message and "different ranks" in e.value.message


def test_text_encoder_part_rule(trained, tiny_model_dir, data, tmp_path):
    path = trained("lora")  # UNet + text encoder
    cfg = cfg_for(tiny_model_dir, data, tmp_path, conv_dim=2, network_weights=str(path),
                  network_train_unet_only=True)
    with pytest.raises(ConfigError) as e:  # its text-encoder modules would be dropped
        setup_run(cfg, EventBus(), overwrite=True)
    assert e.value.key == "network_weights" and "lora_te_text_model_" in e.value.message
    # a UNet-only file into a run that trains the text encoder too: the TE modules start fresh
    unet_only = tmp_path / "unet.safetensors"
    save_file({k: t for k, t in load_file(path).items() if k.startswith("lora_unet_")}, str(unet_only))
    run = setup_run(cfg.model_copy(update={"network_weights": str(unet_only), "network_train_unet_only": False}),
                    EventBus(), overwrite=True)
    te = run.network.text_encoder_modules
    assert len(te) > 0 and all(float(m.lora_up.weight.detach().abs().max()) == 0 for m in te.values())
    assert any("no text-encoder modules" in w for w in run.warnings)
    # a file without conv modules into a network with conv_dim: the network's extra modules are named
    no_conv = tmp_path / "noconv.safetensors"
    save_file({k: t for k, t in load_file(path).items() if "resnets" not in k and "samplers" not in k}, str(no_conv))
    with pytest.raises(ConfigError) as e:
        setup_run(cfg.model_copy(update={"network_weights": str(no_conv), "network_train_unet_only": False}),
                  EventBus(), overwrite=True)
    assert e.value.key == "network_weights" and "lacks" in e.value.message and "resnets" in e.value.message


def test_resume_uses_the_state_not_the_file(trained, tiny_model_dir, data, tmp_path):
    src = tmp_path / "start.safetensors"
    src.write_bytes(trained("lora").read_bytes())
    cfg = cfg_for(tiny_model_dir, data, tmp_path / "o", network_dim=8, dim_from_weights=True,
                  network_weights=str(src), save_state=True, max_train_steps=3, save_every_n_steps=1)

    class Crash(Exception):
        pass

    def crash(ev):
        if ev.kind == "step" and ev.step == 2:  # after step 1's state was saved
            raise Crash()
    with pytest.raises(Crash):
        train(cfg, [crash], overwrite=True)
    src.unlink()  # the file is gone; the state has the adapter and the ranks
    res = train(cfg, resume="auto")
    assert res.steps == 3
    sd = load_file(res.output_file)
    assert {t.shape[0] for k, t in sd.items() if k.endswith("to_q.lora_down.weight")} == {4}


@pytest.mark.parametrize("ntype,kw", [
    ("locon", {"network_args": {"use_tucker": True}}), ("lokr", {}), ("glora", {}), ("full", {}),
    ("diag-oft", {"network_args": {"constraint": 0.5}}), ("boft", {}),
])
def test_every_type_round_trips_with_dim_from_weights(ntype, kw, tiny_components, tmp_path):
    """No training: random tensors in a network of rank 4 (conv 2), written, read back into a config of rank 8
    with dim_from_weights, loaded into the network that config builds: the same tensors, the same ranks."""
    from lorakit.adapters.network import create_network
    from lorakit.adapters.weights import load_into

    comps = tiny_components()
    base = load_config(None, [], {"network_type": ntype, "network_dim": 4, "network_alpha": 2, "conv_dim": 2,
                                  "conv_alpha": 1, **kw})
    net = create_network(base, comps["unet"], comps["text_encoder"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    path = tmp_path / "f.safetensors"
    saved = net.state_dict_to_save(torch.float32)
    save_file(saved, str(path))
    cfg, wf = prepare(base.model_copy(update={"network_dim": 8, "network_alpha": 8.0, "conv_dim": None,
                                              "conv_alpha": None, "dim_from_weights": True,
                                              "network_weights": str(path)}))
    if ntype == "full":  # no rank: the config's stay
        assert (cfg.network_dim, cfg.conv_dim) == (8, None)
    elif ntype in ("diag-oft", "boft"):  # block sizes; alpha is the constraint, not a LoRA alpha
        assert (cfg.network_dim, cfg.conv_dim, cfg.network_alpha) == (4, 2, 8.0)
    else:
        assert (cfg.network_dim, cfg.network_alpha, cfg.conv_dim, cfg.conv_alpha) == (4, 2.0, 2, 1.0)
    again = create_network(cfg, comps["unet"], comps["text_encoder"])
    assert load_into(again, wf) == []
    got = again.state_dict_to_save(torch.float32)
    assert got.keys() == saved.keys()
    assert all(torch.equal(got[k], saved[k]) for k in saved)
