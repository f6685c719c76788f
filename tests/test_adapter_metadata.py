"""The metadata of saved adapter files: what each adapter type writes, and ModelSpec 1.0.1."""
from __future__ import annotations

import datetime
import json

import pytest
from safetensors import safe_open

from lorakit.demo import make_synthetic_dataset
from lorakit.train.loop import train
from train_helpers import tiny_run_config

DEFAULTS = {"network_dim": 4, "network_alpha": 2, "seed": 3, "max_train_steps": 1, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d"), n_images=1, repeats=1)


def metadata(tiny_model_dir, data, tmp_path, **kw) -> dict[str, str]:
    res = train(tiny_run_config(tiny_model_dir, data, tmp_path, DEFAULTS, **kw), overwrite=True)
    with safe_open(str(res.output_file), framework="pt") as f:
        return dict(f.metadata())


def test_lora_metadata_and_modelspec(tiny_model_dir, data, tmp_path):
    md = metadata(tiny_model_dir, data, tmp_path, clip_skip=2, min_timestep=100)
    assert (md["ss_network_module"], md["ss_network_dim"], md["ss_network_alpha"]) == ("networks.lora", "4", "2.0")
    assert md["modelspec.sai_model_spec"] == "1.0.1"
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert md["modelspec.prediction_type"] == "epsilon"
    assert md["modelspec.encoder_layer"] == "2"
    assert md["modelspec.timestep_range"] == "100,1000"  # sd-scripts: unset max is 1000
    started = int(float(md["ss_training_started_at"]))
    assert md["modelspec.date"] == datetime.datetime.fromtimestamp(started).isoformat()
    assert len(md["modelspec.date"]) == 19  # YYYY-MM-DDTHH:MM:SS, no microseconds


@pytest.mark.parametrize("ntype", ["ia3", "full"])
def test_rankless_types_write_no_dim(ntype, tiny_model_dir, data, tmp_path):
    """iA3 and full have no rank: ss_network_dim / ss_network_alpha are "None", as sd-scripts writes
    an unset network_dim, not the config's unused 4 / 2."""
    md = metadata(tiny_model_dir, data, tmp_path, network_type=ntype)
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("None", "None")
    assert "modelspec.timestep_range" not in md
    assert md["ss_network_module"] == "lycoris.kohya" and json.loads(md["ss_network_args"])["algo"] == ntype


def test_oft_alpha_is_its_constraint(tiny_model_dir, data, tmp_path):
    md = metadata(tiny_model_dir, data, tmp_path, network_type="diag-oft", network_args={"constraint": 1e-3})
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("4", "0.001")
    assert json.loads(md["ss_network_args"])["constraint"] == "0.001"


def test_tucker_locon_names_lycoris(tiny_model_dir, data, tmp_path):
    """networks.lora cannot load lora_mid: a Tucker LoCon names lycoris.kohya with algo and use_tucker."""
    md = metadata(tiny_model_dir, data, tmp_path, network_type="locon", network_args={"use_tucker": True})
    args = json.loads(md["ss_network_args"])
    assert md["ss_network_module"] == "lycoris.kohya"
    assert (args["algo"], args["use_tucker"], args["conv_dim"], args["conv_alpha"]) == ("locon", "True", "4", "2")
    md = metadata(tiny_model_dir, data, tmp_path, network_type="locon")  # plain LoCon: networks.lora rebuilds it
    assert md["ss_network_module"] == "networks.lora"
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2"}


def test_config_metadata_from_the_fields():
    """The ss_* keys the schema fields declare: str(value), "None" at a neutral value that sd-scripts
    leaves unset, and file names without their folders (no key for an unset network_weights)."""
    from lorakit.config.schema import TrainConfig
    from lorakit.train.save import config_metadata

    md = config_metadata(TrainConfig(pretrained_model_name_or_path="/models/sd15.safetensors", noise_offset=0.05,
                                     resolution="512,768", debiased_estimation_loss=True))
    assert (md["ss_noise_offset"], md["ss_min_snr_gamma"], md["ss_multires_noise_iterations"]) == ("0.05", "None",
                                                                                                     "None")
    assert (md["ss_sd_model_name"], md["ss_resolution"], md["ss_debiased_estimation"]) == ("sd15.safetensors",
                                                                                            "(512, 768)", "True")
    assert md["ss_batch_size_per_device"] == "1" and "ss_network_weights" not in md
    md = config_metadata(TrainConfig(network_weights="/home/me/loras/prev.safetensors", min_snr_gamma=5))
    assert (md["ss_network_weights"], md["ss_min_snr_gamma"]) == ("prev.safetensors", "5.0")
