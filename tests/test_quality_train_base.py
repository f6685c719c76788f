"""tools/train_base.py end to end in miniature: its folder loads as a lorakit model and samples."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_train_base_writes_a_loadable_model_and_card(tmp_path):
    spec = importlib.util.spec_from_file_location("train_base", ROOT / "tools" / "train_base.py")
    tb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tb)
    out = tmp_path / "base"
    assert tb.main(["--out", str(out), "--work", str(tmp_path / "work"), "--vae-steps", "2", "--vae-batch", "2",
                    "--images", "8", "--unet-steps", "3", "--batch", "2", "--save-every", "2",
                    "--decoder-steps", "1"]) == 0
    from lorakit.models.loader import load_sd_model
    from lorakit.quality.evaluate import sample_images

    model = load_sd_model(out)
    assert model.vae.config.scaling_factor != 1.0  # set from the latents' std
    assert torch.all(model.vae.quant_conv.bias[4:] == -20.0)  # pinned posterior variance
    img = sample_images(model, ["a red circle"], [0], steps=2)[0]
    assert img.size == (64, 64)
    card = (out / "CARD.md").read_text(encoding="utf-8")
    info = json.loads(card.split("```json\n")[1].split("```")[0])
    assert (info["unet_steps_run"], info["decoder_steps"], info["seed"]) == (3, 1, 0)
    sizes = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    assert sizes < 10 * 2**20
