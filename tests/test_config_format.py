"""`--format {auto,lorakit,kohya,sd-scripts}`: the CLI forces a config reader; mismatches exit 2."""
from __future__ import annotations

import pytest

from lorakit.cli import main

LORAKIT = '[network]\nnetwork_type = "loha"\nnetwork_dim = 8\n'
# an sd-scripts --config_file without network_module, dataset_config or sd-scripts' table names:
# auto detection cannot tell it from a lorakit TOML
SDSCRIPTS = 'learning_rate = 2e-4\nnetwork_dim = 6\nxformers = true\n'
SDSCRIPTS_TABLES = '[training_arguments]\nnetwork_dim = 6\nxformers = true\n'
GUI = '{"LoRA_type": "LyCORIS/LoKr", "network_dim": 12, "factor": 4,}'


@pytest.fixture
def files(tmp_path):
    out = {}
    for name, text in (("lk.toml", LORAKIT), ("sd.toml", SDSCRIPTS), ("sdt.toml", SDSCRIPTS_TABLES),
                       ("gui.json", GUI), ("gui.txt", GUI)):
        (tmp_path / name).write_text(text, encoding="utf-8")
        out[name] = str(tmp_path / name)
    return out


def show(capsys, *argv):
    rc = main(["config", "show", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("fmt,name,expect", [
    ("lorakit", "lk.toml", ['network_type = "loha"', "network_dim = 8", 'caption_extension = ".txt"']),
    ("auto", "lk.toml", ['network_type = "loha"', "network_dim = 8"]),
    # sd-scripts' reader: xformers ignored, sd-scripts' caption default .caption
    ("sd-scripts", "sd.toml", ['network_type = "lora"', "network_dim = 6", 'caption_extension = ".caption"',
                               "learning_rate = 0.0002"]),
    ("auto", "sdt.toml", ["network_dim = 6", 'caption_extension = ".caption"']),
    ("kohya", "gui.json", ['network_type = "lokr"', "network_dim = 12", 'network_args = {factor = 4}']),
    ("kohya", "gui.txt", ['network_type = "lokr"', "network_dim = 12"]),  # forced: the suffix does not matter
])
def test_forced_format_reads_a_matching_file(files, capsys, fmt, name, expect):
    rc, out, err = show(capsys, "--format", fmt, files[name])
    assert rc == 0, err
    for line in expect:
        assert line in out


@pytest.mark.parametrize("fmt,name,says", [
    ("kohya", "lk.toml", "expected a kohya_ss GUI JSON config (--format kohya), but the file is TOML"),
    ("lorakit", "gui.json", "expected a lorakit TOML config (--format lorakit), but the file is not TOML "
                            "(a kohya_ss GUI JSON: --format kohya)"),
    ("sd-scripts", "gui.json", "expected an sd-scripts --config_file TOML (--format sd-scripts), but the file is "
                               "not TOML (a kohya_ss GUI JSON: --format kohya)"),
    ("lorakit", "sdt.toml", "expected a lorakit TOML config (--format lorakit), but 'xformers' is sd-scripts'"),
    ("lorakit", "sd.toml", "expected a lorakit TOML config (--format lorakit), but 'xformers' is sd-scripts'"),
])
def test_forced_format_refuses_a_mismatching_file(files, capsys, fmt, name, says):
    rc, out, err = show(capsys, "--format", fmt, files[name])
    assert rc == 2 and out == ""
    assert says in err and files[name] in err
    # the same for train and plan, before any model is looked at
    for command in ("train", "plan"):
        assert main([command, "--format", fmt, files[name]]) == 2
        assert says in capsys.readouterr().err, command


def test_auto_hints_format_sd_scripts(files, capsys):
    # auto reads sd.toml as lorakit TOML (no marker); its sd-scripts-only key says what to do
    rc, _, err = show(capsys, files["sd.toml"])
    assert rc == 2
    assert "unknown key 'xformers'" in err and "pass --format sd-scripts" in err and files["sd.toml"] in err
    rc, _, err = show(capsys, files["gui.txt"])  # auto needs a known suffix
    assert rc == 2 and "unknown config type '.txt'" in err and "--format" in err
    with pytest.raises(SystemExit):  # argparse: an unknown format name
        main(["config", "show", "--format", "toml", files["lk.toml"]])
