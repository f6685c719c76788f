"""`lorakit inspect FILE` on files written by lorakit: the numbers it prints."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch

from adapters_helpers import cfg, tiny_models
from lorakit.adapters.file import save_adapter_file
from lorakit.adapters.network import create_network
from lorakit.cli import main
from lorakit.inspect import classify, inspect_file



@pytest.fixture(scope="module")
def models():
    return tiny_models()


METADATA = {"ss_output_name": "mychar", "ss_sd_model_name": "v1-5-pruned.safetensors",
            "ss_base_model_version": "sd_v1", "ss_steps": "1200", "ss_epoch": "10", "ss_num_epochs": "10",
            "ss_optimizer": "prodigyopt.prodigy.Prodigy(betas=(0.9, 0.99))", "ss_resolution": "(512, 512)",
            "ss_network_dim": "4", "ss_network_alpha": "2"}


def write(tmp_path, models, name, metadata=None, **kw):
    unet, te = models
    net = create_network(cfg(**kw), unet, te)
    md = {**METADATA, "ss_network_module": net.network_module_name, "ss_network_args": json.dumps(net.network_args)}
    md.update(metadata or {})
    path = tmp_path / f"{name}.safetensors"
    sd = net.state_dict_to_save(torch.float16)
    save_adapter_file(path, sd, md, overwrite=True)
    n_params = sum(t.numel() for k, t in sd.items() if not k.endswith((".alpha", ".on_input")))
    return path, net, n_params


def run_cli(capsys, path) -> tuple[int, str, str]:
    code = main(["inspect", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_lora_file(tmp_path, models, capsys):
    path, net, n = write(tmp_path, models, "lora", network_dim=4, network_alpha=2.0)
    code, out, _ = run_cli(capsys, path)
    assert code == 0
    # rank 4: a Transformer2DModel of C channels has proj_in/out, attn1 q/k/v/out, attn2 q/out (C -> C:
    # 4 * 2C each = 64C), attn2 k/v (32 -> C: 2 * 4 * (32 + C)), ff.net.0.proj (C -> 8C: 36C), ff.net.2
    # (4C -> C: 20C) = 128C + 256; C = 32 (down), 64 (mid), 32 + 32 (up). CLIP layer (32 wide, MLP 37):
    # q/k/v/out 4 * 4 * 64 + fc1, fc2 2 * 4 * 69 = 1576.
    assert n == 128 * 160 + 4 * 256 + 2 * 1576 == 24_656
    assert f"parameters:  {n:,}" in out
    assert f"size:        {os.path.getsize(path):,} bytes" in out
    assert "algorithm:   lora (60 modules)" in out
    assert "modules:     60 (UNet 48, text encoder 12)" in out
    assert re.search(r"UNet\s+lora\s+dim 4, alpha 2, scale 0.5: 48 modules", out)
    assert re.search(r"text encoder\s+lora\s+dim 4, alpha 2, scale 0.5: 12 modules", out)
    for line in ("output name        mychar", "base model         v1-5-pruned.safetensors",
                 "base version       sd_v1", "network            networks.lora", "steps              1200",
                 "epochs             10/10", "resolution         (512, 512)",
                 "sshs hashes        sshs_model_hash, sshs_legacy_hash"):
        assert line in out
    assert re.search(r"A1111\s+yes", out) and re.search(r"diffusers\s+yes", out)
    assert "note:" not in out


def test_locon_and_dylora_files(tmp_path, models, capsys):
    path, _, n = write(tmp_path, models, "locon", network_type="locon", network_dim=4, network_alpha=2.0,
                       conv_dim=3, conv_alpha=1.5)
    code, out, _ = run_cli(capsys, path)
    assert code == 0 and f"parameters:  {n:,}" in out
    assert "algorithm:   locon (18 modules), lora (73 modules)" in out  # 8 ResNets x 2 + 2 samplers
    assert re.search(r"UNet\s+locon\s+dim 3, alpha 1.5, scale 0.5: 18 modules", out)
    assert re.search(r"UNet\s+lora\s+dim 4, alpha 2, scale 0.5: 61 modules", out)
    path, _, _ = write(tmp_path, models, "tucker", network_type="locon", conv_dim=3,
                       network_args={"use_tucker": True})
    _, out, _ = run_cli(capsys, path)
    assert "locon-tucker (18 modules)" in out and re.search(r"diffusers\s+no", out)
    assert re.search(r"ComfyUI\s+yes", out)
    path, _, _ = write(tmp_path, models, "dylora", network_type="dylora", network_dim=4, network_args={"unit": 2})
    _, out, _ = run_cli(capsys, path)
    assert "algorithm:   dylora (60 modules)" in out and re.search(r"diffusers\s+yes", out)


def test_ia3_file(tmp_path, models, capsys):
    path, _, n = write(tmp_path, models, "ia3", network_type="ia3", network_args={"train_on_input": True})
    code, out, _ = run_cli(capsys, path)
    assert code == 0
    # UNet: per transformer of C channels 4C outputs (to_k, to_v of attn1/attn2) + 4C inputs of ff.net.2,
    # C = 32 + 64 + 32 + 32; TE: 2 layers x (32 + 32 outputs + 37 inputs of fc2)
    assert n == 8 * 160 + 2 * (64 + 37) == 1482
    assert f"parameters:  {n:,}" in out
    assert "algorithm:   ia3 (26 modules)" in out
    assert re.search(r"UNet\s+ia3\s+no rank \(scales inputs per channel\): 4 modules", out)
    assert re.search(r"UNet\s+ia3\s+no rank \(scales outputs per channel\): 16 modules", out)
    assert re.search(r"text encoder\s+ia3\s+no rank \(scales inputs per channel\): 2 modules", out)
    assert re.search(r"A1111\s+yes", out)
    for ui in ("Forge", "ComfyUI", "diffusers"):
        assert re.search(ui + r"\s+no", out)
    assert "iA3 files load only in A1111" in out
    assert '"algo": "ia3"' in out and '"train_on_input": "True"' in out


def test_full_file_and_classify(tmp_path, models, capsys):
    path, _, n = write(tmp_path, models, "full", network_type="full")
    _, out, _ = run_cli(capsys, path)
    assert "algorithm:   full (91 modules)" in out and f"parameters:  {n:,}" in out
    assert re.search(r"diffusers\s+no", out) and re.search(r"Forge\s+yes", out)
    z = torch.zeros
    assert classify({"hada_w1_a": z(8, 2), "hada_w1_b": z(2, 4), "hada_w2_a": z(8, 2), "hada_w2_b": z(2, 4),
                     "alpha": z(())}) == ("loha", 2)
    assert classify({"lokr_w1": z(2, 2), "lokr_w2_a": z(4, 3), "lokr_w2_b": z(3, 8)}) == ("lokr", 3)
    assert classify({"oft_blocks": z(4, 8, 8), "alpha": z(())}) == ("diag-oft", None)
    assert classify({"a1.weight": z(8, 2), "a2.weight": z(2, 8), "b1.weight": z(8, 2), "b2.weight": z(2, 8)}) \
        == ("glora", 2)


def test_not_an_adapter_exits_2(tmp_path, capsys):
    import safetensors.torch as st

    ckpt = tmp_path / "model.safetensors"
    st.save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(ckpt))
    code, out, err = run_cli(capsys, ckpt)
    assert code == 2 and out == ""
    assert "not a LoRA/LyCORIS adapter file" in err and "a full checkpoint is not an adapter" in err
    peft = tmp_path / "peft.safetensors"
    st.save_file({"unet.down_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 4)}, str(peft))
    code, _, err = run_cli(capsys, peft)
    assert code == 2 and "diffusers/peft-format" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not safetensors")
    code, _, err = run_cli(capsys, junk)
    assert code == 2 and "not a readable .safetensors file" in err
    code, _, err = run_cli(capsys, tmp_path / "missing.safetensors")
    assert code == 2 and "not found" in err
    with pytest.raises(Exception):
        inspect_file(ckpt)


def loads_line(out: str, ui: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(ui + " ")).split(None, 1)[1]


def test_inspect_on_a_folder_lists_its_files(tmp_path, models, capsys):
    code, out, err = run_cli(capsys, tmp_path)
    assert code == 2 and out == "" and "a folder, not an adapter file; it holds no .safetensors files" in err
    write(tmp_path, models, "b")
    write(tmp_path, models, "a")
    code, _, err = run_cli(capsys, tmp_path)
    assert code == 2 and "it holds 2 .safetensors files: a.safetensors, b.safetensors" in err
    assert f"lorakit inspect {tmp_path / 'a.safetensors'}" in err


def test_ia3_loaders_state_their_conditions(tmp_path, models, capsys):
    path, _, _ = write(tmp_path, models, "ia3", network_type="ia3")
    _, out, _ = run_cli(capsys, path)
    assert loads_line(out, "A1111") == "yes"
    assert loads_line(out, "ComfyUI") == "no (ComfyUI takes none of iA3's keys)"
    assert loads_line(out, "LyCORIS").startswith("no (")
    # SD2: A1111 loads the text encoder's attention only as q/k/v/out sets (2 layers x k, v here)
    path, _, _ = write(tmp_path, models, "ia3-v2", {"ss_base_model_version": "sd_v2"}, network_type="ia3")
    _, out, _ = run_cli(capsys, path)
    assert loads_line(out, "A1111").startswith("partial (on SD2 A1111 skips the 4 text-encoder k_proj/v_proj")


def test_oft_loaders_depend_on_the_constraint_and_strength(tmp_path, models, capsys):
    path, _, _ = write(tmp_path, models, "oft0", network_type="diag-oft")
    _, out, _ = run_cli(capsys, path)
    assert loads_line(out, "A1111").startswith("no (A1111 applies Diag-OFT only with a non-zero constraint")
    assert loads_line(out, "ComfyUI") == "at strength 1 only (ComfyUI applies the strength of OFT/BOFT twice)"
    assert re.search(r"UNet\s+diag-oft\s+no rank \(block rotations, constraint 0\): \d+ modules", out)
    path, _, _ = write(tmp_path, models, "oft3", network_type="diag-oft", network_args={"constraint": 1e-3})
    _, out, _ = run_cli(capsys, path)
    assert loads_line(out, "A1111") == "yes"  # A1111 applies a non-zero constraint exactly
    assert loads_line(out, "ComfyUI").startswith("partial (at strength 1 only")
    assert "caps the rotation at the raw constraint" in loads_line(out, "ComfyUI")
    assert re.search(r"constraint 0.001\): \d+ modules", out)
    path, _, _ = write(tmp_path, models, "boft", network_type="boft", network_train_unet_only=True)
    _, out, _ = run_cli(capsys, path)
    assert loads_line(out, "ComfyUI") == "at strength 1 only (ComfyUI applies the strength of OFT/BOFT twice)"
    assert loads_line(out, "A1111") == "no"


def test_full_matrix_lokr_is_one_line(tmp_path, models, capsys):
    """Full-matrix LoKr modules store alpha = their dim (16 linear, 8 conv): no rank, one line."""
    path, _, _ = write(tmp_path, models, "lokr", network_type="lokr", network_dim=16, conv_dim=8,
                       network_train_unet_only=True)
    _, out, _ = run_cli(capsys, path)
    lines = [line for line in out.splitlines() if "full-matrix factors" in line]
    assert len(lines) == 1 and re.search(r"UNet\s+lokr\s+full-matrix factors: \d+ modules", lines[0])
