"""The three seed-guide JSON configs, byte for byte, train on the tiny model (issue 4 acceptance).

Only --model, --data, --output and --set max_train_steps=N are given, as a user would.
"""
from __future__ import annotations

import pytest

from lorakit.adapters.file import read_adapter_file
from lorakit.cli import main
from lorakit.demo import make_synthetic_dataset
from test_kohya import DADAPT_LOHA, PRODIGY_IA3, PRODIGY_LOKR


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("seed-data"), n_images=2, repeats=2)


@pytest.mark.parametrize("name,text,key_part,optimizer", [
    ("dadapt-loha", DADAPT_LOHA, ".hada_w1_a", "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint"),
    ("prodigy-ia3", PRODIGY_IA3, ".on_input", "prodigyopt.prodigy.Prodigy"),
    ("prodigy-lokr", PRODIGY_LOKR, ".lokr_w", "prodigyopt.prodigy.Prodigy"),
])
def test_seed_config_runs_verbatim(name, text, key_part, optimizer, data, tiny_model_dir, tmp_path, capsys):
    conf = tmp_path / f"{name}.json"
    conf.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["train", str(conf), "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                 "--set", "max_train_steps=2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    files = sorted(out.glob("*.safetensors"))
    assert [f.name for f in files] == ["last.safetensors"]
    tensors, meta = read_adapter_file(files[0])
    assert any(key_part in k for k in tensors), sorted(tensors)[:5]
    assert any(k.startswith("lora_te_text_model_") for k in tensors)
    assert meta["ss_optimizer"].startswith(optimizer)
    assert meta["ss_steps"] == "2" and meta["ss_seed"] == "31337"
    if name == "prodigy-ia3":  # the guide's train_on_input: the feed-forward outputs scale their inputs
        flags = {k.rsplit(".", 1)[0]: bool(t.item()) for k, t in tensors.items() if k.endswith(".on_input")}
        ff = [k for k in flags if k.endswith(("_ff_net_2", "_mlp_fc2"))]
        assert ff and all(flags[k] for k in ff)
        assert len(flags) > len(ff) and not any(v for k, v in flags.items() if k not in ff)
