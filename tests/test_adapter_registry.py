"""Adapter types declare themselves (adapters/declare.py); the registry answers from the declarations."""
from __future__ import annotations

import json

import pytest
import torch

from adapters_helpers import cfg, tiny_models
from lorakit.adapters import registry
from lorakit.adapters.declare import GUI_BLOCK_ARGS, LYCORIS_MODULE, GuiLoraType
from lorakit.adapters.network import create_network

# network_type -> the settings of a tiny network that shows every format the type writes
BUILD = {
    "lora": dict(conv_dim=2), "locon": dict(network_args={"use_tucker": True}), "dylora": dict(conv_dim=2),
    "loha": dict(network_args={"use_tucker": True}), "lokr": dict(), "ia3": dict(), "full": dict(),
    "glora": dict(), "diag-oft": dict(), "boft": dict(network_train_unet_only=True),  # CLIP fc1 has 37 outputs
}


def test_every_registered_type_is_covered_here():
    assert sorted(BUILD) == registry.available()


@pytest.mark.parametrize("ntype", sorted(BUILD))
def test_a_type_reads_back_from_its_files_and_metadata(ntype):
    """Each module of a type's network classifies into a format the type declares, the type builds
    that format, and its ss_network_module / ss_network_args name the type again."""
    cls = registry.get_algorithm(ntype)
    net = create_network(cfg(network_type=ntype, network_dim=4, **BUILD[ntype]), *tiny_models())
    seen = set()
    for m in net.all_modules():
        ts = {k: v.detach() for k, v in m.tensors_to_save().items()}
        fmt = registry.classify(ts)
        assert fmt in cls.file_formats and ntype in registry.builders(fmt), m.name
        seen.add(fmt.name)
    assert seen == {f.name for f in cls.file_formats} - ({"locon"} if ntype == "locon" else set())
    md = {"ss_network_module": cls.network_module, "ss_network_args": json.dumps(net.network_args)}
    assert registry.by_metadata(md) is cls
    if cls.network_module == LYCORIS_MODULE:
        assert registry.by_lycoris_algo(net.network_args["algo"]) is cls
    for lora_type, gui in cls.gui_lora_types.items():
        assert registry.by_gui_lora_type(lora_type) == (cls, gui)


def test_lookups_the_config_importers_use():
    assert registry.lycoris_algos() == {
        "locon": "locon", "lora": "locon", "ia3": "ia3", "dylora": "dylora", "full": "full", "glora": "glora",
        "loha": "loha", "lokr": "lokr", "diag-oft": "diag-oft", "boft": "boft"}
    assert registry.by_lycoris_algo(" LoRA ") is registry.get_algorithm("locon")
    assert registry.by_lycoris_algo("lorra") is None
    assert registry.network_modules() == {"networks.lora": "lora", "networks.dylora": "dylora",
                                          "lycoris.kohya": None}
    types = registry.gui_lora_types()
    assert len(types) == 13
    assert types["Kohya DyLoRA"] == ("dylora", GuiLoraType("networks.dylora", ("conv", "unit")))
    assert types["LyCORIS/DyLoRA"] == ("dylora", GuiLoraType(LYCORIS_MODULE, ("conv", "use_tucker", "rank_dropout",
                                                                             "module_dropout", "rank_dropout_scale",
                                                                             "train_norm", "unit")))
    assert types["Standard"] == ("lora", GuiLoraType("networks.lora", GUI_BLOCK_ARGS))
    assert types["LyCORIS/LoKr"][1].gui_args[-3:] == ("factor", "use_cp", "decompose_both")
    assert registry.by_gui_lora_type("LyCORIS/Nope") is None


def test_tucker_locon_metadata_rebuilds_it_in_lycoris(tmp_path):
    """A Tucker LoCon names lycoris.kohya with algo=locon and use_tucker=True: sd-scripts'
    networks.lora has no lora_mid. LyCORIS's create_network, given exactly those args, builds a
    network that takes every tensor of the file."""
    kohya = pytest.importorskip("lycoris.kohya")
    net = create_network(cfg(network_type="locon", network_dim=4, network_alpha=2.0, conv_dim=2,
                             network_args={"use_tucker": True}), *tiny_models())
    assert net.network_module_name == "lycoris.kohya"
    assert net.network_args == {"algo": "locon", "conv_dim": "2", "conv_alpha": "2", "use_tucker": "True",
                                "dora_wd": "False", "wd_on_output": "False"}
    sd = {k.replace("lora_te_text_model_", "lora_te_"): v for k, v in net.state_dict_to_save().items()}
    assert any(k.endswith("lora_mid.weight") for k in sd)
    preset = tmp_path / "preset.toml"  # kohya's targets (LyCORIS's default preset adds conv_in etc.)
    preset.write_text('enable_conv = true\nunet_target_module = ["Transformer2DModel", "ResnetBlock2D", '
                      '"Downsample2D", "Upsample2D"]\nunet_target_name = []\ntext_encoder_target_module = '
                      '["CLIPAttention", "CLIPMLP"]\ntext_encoder_target_name = []\n')
    cls = kohya.LycorisNetworkKohya
    names = ("ENABLE_CONV", "UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME",
             "TEXT_ENCODER_TARGET_REPLACE_MODULE", "TEXT_ENCODER_TARGET_REPLACE_NAME")
    saved = {n: getattr(cls, n) for n in names}
    try:
        unet, te = tiny_models()
        ly = kohya.create_network(1.0, 4, 2.0, None, te, unet, preset=str(preset), **net.network_args)
        ly.apply_to(te, unet, apply_text_encoder=True, apply_unet=True)
        info = ly.load_state_dict(sd, strict=False)
    finally:
        for n, v in saved.items():
            setattr(cls, n, v)
    assert not info.unexpected_keys
    assert not [k for k in info.missing_keys if "scalar" not in k]
    mids = [m for m in ly.unet_loras if getattr(m, "tucker", False)]
    assert len(mids) == sum(k.endswith("lora_mid.weight") for k in sd) == 18
    assert torch.equal(ly.state_dict()[next(k for k in sd if k.endswith("lora_mid.weight"))],
                       sd[next(k for k in sd if k.endswith("lora_mid.weight"))])


def test_a_new_type_plugs_in_by_its_declaration(tmp_path):
    """A type declared in one place reaches classify, inspect's loaders, the importers' lookups and
    network_weights' format check, with no table elsewhere to edit."""
    from lorakit.adapters.base import AdapterModule
    from lorakit.adapters.declare import LOADERS, FileFormat, Loads, has_all
    from lorakit.adapters.file import save_adapter_file
    from lorakit.adapters.weights import read_weights_file
    from lorakit.inspect import inspect_file

    toy = FileFormat("toy", has_all("toy_scale"), {**{ui: Loads("no") for ui in LOADERS},
                                                   "ComfyUI": Loads("at strength 1 only", "a test's claim")},
                     rank=lambda ts: int(ts["toy_scale"].shape[0]))

    class ToyModule(AdapterModule):
        network_module = LYCORIS_MODULE
        lycoris_algos = ("toy",)
        gui_lora_types = {"LyCORIS/Toy": GuiLoraType(LYCORIS_MODULE, ("conv",))}
        file_formats = (toy,)

    registry.available()  # the built-in types first
    registry.register("toy")(ToyModule)
    try:
        assert registry.classify({"toy_scale": torch.zeros(3)}) is toy
        assert registry.builders(toy) == ["toy"]
        assert registry.by_lycoris_algo("toy") is ToyModule and registry.lycoris_algos()["toy"] == "toy"
        assert registry.by_gui_lora_type("LyCORIS/Toy") == (ToyModule, GuiLoraType(LYCORIS_MODULE, ("conv",)))
        path = tmp_path / "toy.safetensors"
        save_adapter_file(path, {"lora_unet_mid_block_attentions_0_proj_in.toy_scale": torch.zeros(3),
                                 "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(1.5)},
                          {"ss_network_module": LYCORIS_MODULE, "ss_network_args": '{"algo": "toy"}'}, overwrite=True)
        report = inspect_file(path)
        assert [(m.algo, m.dim, m.alpha) for m in report.modules] == [("toy", 3, 1.5)]
        assert report.loaders()["ComfyUI"] == "at strength 1 only (a test's claim)"
        assert report.loaders()["A1111"] == "no"
        wf = read_weights_file(str(path))
        assert wf.algos == {"lora_unet_mid_block_attentions_0_proj_in": "toy"}
    finally:
        registry._ALGORITHMS.pop("toy")
    assert registry.by_lycoris_algo("toy") is None
