"""network_args: validated against each algorithm's ARGS, kohya strings parsed, passed to modules, in metadata."""
from __future__ import annotations

import pytest

from adapters_helpers import cfg, tiny_models
from lorakit.adapters.base import validate_network_args
from lorakit.adapters.lokr import LoKrModule
from lorakit.adapters.network import create_network
from lorakit.errors import ConfigError

# DoRA options of LoCon/LoHa/LoKr (dora.py), defaults
WD = {"dora_wd": False, "wd_on_output": False}
WD_STR = {"dora_wd": "False", "wd_on_output": "False"}



def test_kohya_strings_parsed_to_the_default_types():
    got = validate_network_args(LoKrModule, {"factor": "4", "decompose_both": "True", "use_tucker": "false"})
    assert got == {"factor": 4, "decompose_both": True, "use_tucker": False, **WD}
    assert type(got["factor"]) is int
    assert validate_network_args(LoKrModule, {"factor": "8.0", "decompose_both": "0"}) == \
        {"factor": 8, "decompose_both": False, "use_tucker": False, **WD}
    assert validate_network_args(LoKrModule, {"factor": -1, "decompose_both": True}) == \
        {"factor": -1, "decompose_both": True, "use_tucker": False, **WD}
    assert validate_network_args(LoKrModule, None) == {"factor": -1, "decompose_both": False, "use_tucker": False, **WD}


def test_use_cp_is_an_alias_that_overwrites_use_tucker():
    assert validate_network_args(LoKrModule, {"use_cp": "True"})["use_tucker"] is True
    # LyCORIS: the deprecated name wins when both are given, in either order
    assert validate_network_args(LoKrModule, {"use_cp": "False", "use_tucker": "True", **WD_STR})["use_tucker"] is False
    assert validate_network_args(LoKrModule, {"use_tucker": True, "use_cp": False})["use_tucker"] is False


@pytest.mark.parametrize("args, msg, fix", [
    ({"facto": 4}, "'facto' is not an option of lokr", "did you mean 'factor'?"),
    ({"decompose_bth": True}, "not an option", "did you mean 'decompose_both'?"),
    ({"zzz": 1}, "'zzz' is not an option", "lokr accepts: decompose_both, dora_wd, factor, use_cp, use_tucker, wd_on_output"),
    ({"factor": "four"}, "not an integer", "factor=-1"),
    ({"factor": "2.5"}, "not an integer", "factor=-1"),
    ({"decompose_both": "maybe"}, "not a boolean", "decompose_both=False"),
    ({"conv_dim": "8"}, "'conv_dim' is a config key of its own", "set conv_dim = '8' as its own key"),
    ({"dropout": 0.1}, "config key of its own", "set network_dropout = 0.1"),
    ({"algo": "lokr"}, "config key of its own", "network_type selects the algorithm"),
])
def test_bad_network_args_are_config_errors(args, msg, fix):
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_type="lokr", network_args=args), *tiny_models())
    assert e.value.key == "network_args"
    assert msg in e.value.message and fix in e.value.fix


def test_lora_accepts_only_merged_op():
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_args={"use_tucker": True, **WD}), *tiny_models())
    assert "lora accepts: merged_op" in e.value.fix
    net = create_network(cfg(network_args={"merged_op": "true"}), *tiny_models())
    assert all(m.args == {"merged_op": True} for m in net.all_modules())
    assert "merged_op" not in net.network_args  # a runtime choice, not written to ss_network_args


def test_validated_args_reach_every_module():
    unet, te = tiny_models()
    net = create_network(cfg(network_type="lokr", network_args={"factor": "4", "decompose_both": "true"}),
                         unet, te)
    assert len(net) == 91
    assert all(m.args == {"factor": 4, "decompose_both": True, "use_tucker": False, **WD} for m in net.all_modules())
    m = net.unet_modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert m.shapes == ((4, 8), (4, 8))  # 32 = 4 x 8 with factor 4


def test_ss_network_args_as_lycoris_writes_them():
    unet, te = tiny_models()
    net = create_network(cfg(network_type="loha", network_dim=8, network_alpha=4.0, rank_dropout=0.1), unet, te)
    assert net.network_module_name == "lycoris.kohya"
    # LyCORIS defaults: conv_dim = network_dim, conv_alpha = network_alpha
    assert net.network_args == {"algo": "loha", "conv_dim": "8", "conv_alpha": "4", "rank_dropout": "0.1",
                                "use_tucker": "False", **WD_STR}
    assert all(isinstance(v, str) for v in net.network_args.values())
    net = create_network(cfg(network_type="lokr", network_dim=4, network_alpha=1.0, conv_dim=2, conv_alpha=0.5,
                             network_args={"use_cp": "True", "factor": "8"}), *tiny_models())
    assert net.network_args == {"algo": "lokr", "conv_dim": "2", "conv_alpha": "0.5", "factor": "8",
                                "decompose_both": "False", "use_tucker": "True", **WD_STR}
    assert net.network_module_name == "lycoris.kohya"


def test_kohya_gui_lokr_json_builds(tmp_path):
    """A kohya_ss GUI LyCORIS/LoKr config imports and its network builds with the imported args."""
    import json

    from lorakit.config.kohya import import_kohya_json

    path = tmp_path / "lokr.json"
    path.write_text(json.dumps({"LoRA_type": "LyCORIS/LoKr", "network_dim": 16, "network_alpha": 16,
                                "conv_dim": 8, "conv_alpha": 8, "factor": "-1", "decompose_both": False,
                                "use_cp": "true"}))
    res = import_kohya_json(path)
    assert res.values["network_type"] == "lokr"
    values = {k: v for k, v in res.values.items() if k in type(cfg()).model_fields}
    net = create_network(cfg(**values), *tiny_models())
    m = net.unet_modules["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert m.args == {"factor": -1, "decompose_both": False, "use_tucker": True, **WD}
    assert (m.dim, float(m.alpha)) == (8, 8.0)
