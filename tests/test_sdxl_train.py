"""Training the tiny SDXL end to end: every adapter type, the text cache with pooled rows, latent
caching, v-prediction with zero terminal SNR, validation, sampling, resume, and the saved file's
kohya SDXL names and metadata (sd-scripts' sdxl_train_network.py)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorakit.adapters.registry import available
from lorakit.demo import make_synthetic_dataset
from lorakit.models.tiny_sdxl import CONTEXT, save_tiny_sdxl_pipeline
from lorakit.monitors import MetricsJsonl
from lorakit.train.loop import train
from train_helpers import Crash, tiny_run_config

DEFAULTS = {"network_dim": 4, "network_alpha": 2, "learning_rate": 1e-3, "seed": 7, "max_train_steps": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_images=3, repeats=1)


def run(model, data, out, **kw):
    rows = []
    cfg = tiny_run_config(model, data, out, DEFAULTS, **kw)
    res = train(cfg, [MetricsJsonl(out / "metrics.jsonl"), lambda ev: rows.append(ev.data) if ev.kind == "step"
                      else None], overwrite=True)
    return res, [r["loss"] for r in rows]


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("algo", available())
def test_every_adapter_type_trains_and_saves_kohya_sdxl_names(tiny_sdxl_dir, data, tmp_path, algo):
    kw = {"network_type": algo}
    if algo in ("loha", "lokr", "locon"):
        kw.update(conv_dim=2, conv_alpha=1)
    res, losses = run(tiny_sdxl_dir, data, tmp_path, **kw)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    tensors, md = _read(res.output_file)
    modules = {k.split(".")[0] for k in tensors}
    assert any(n.startswith("lora_unet_input_blocks_") or n.startswith("lora_unet_output_blocks_") for n in modules)
    assert not any(n.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_te_")) for n in modules)
    te = {n.split("_")[1] for n in modules if n.startswith("lora_te")}
    assert te == {"te1", "te2"}, te        # adapters on both text encoders
    assert md["ss_base_model_version"] == "sdxl_base_v1-0" and md["ss_v2"] == "False"
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert md["modelspec.prediction_type"] == "epsilon"


def test_text_cache_keeps_pooled_rows_and_losses(tiny_sdxl_dir, data, tmp_path, monkeypatch):
    """A frozen text encoder's outputs cached by caption (states and pooled vector) give the
    losses of encoding every step (to float rounding: the cache encodes the run's captions ahead,
    in batches of its own, and a row's last bit can depend on the batch it was encoded in)."""
    from lorakit.train.text_cache import TextCache

    rows = []
    put = TextCache._put
    monkeypatch.setattr(TextCache, "_put", lambda self, c, row: (rows.append(row), put(self, c, row))[1])
    common = dict(network_train_unet_only=True, max_train_steps=4, train_batch_size=2, shuffle_caption=True)
    _, cached = run(tiny_sdxl_dir, data, tmp_path / "a", **common)
    assert rows and all(r.pooled is not None and r.pooled.shape == (40,) and r.context.shape == (77, CONTEXT)
                        for r in rows)
    n = len(rows)
    _, fresh = run(tiny_sdxl_dir, data, tmp_path / "b", cache_text_encoder_outputs=False, **common)
    assert len(rows) == n      # nothing cached on the second run
    assert cached == pytest.approx(fresh, rel=1e-6, abs=0)


def test_latent_cache_and_flip_train(tiny_sdxl_dir, data, tmp_path):
    res, losses = run(tiny_sdxl_dir, data, tmp_path, cache_latents=True, flip_aug=True, max_train_steps=3)
    assert len(losses) == 3 and res.output_file.exists()


def test_v_prediction_with_zero_terminal_snr(tmp_path, data):
    model = save_tiny_sdxl_pipeline(tmp_path / "v", seed=1, v_prediction=True)
    res, losses = run(model, data, tmp_path / "out", zero_terminal_snr=True, v_parameterization=True)
    _, md = _read(res.output_file)
    assert md["modelspec.prediction_type"] == "v" and md["ss_zero_terminal_snr"] == "True"
    assert all(l == l for l in losses)
    assert res.model.noise_scheduler.config.prediction_type == "v_prediction"
    assert float(res.model.noise_scheduler.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-6)


def test_validation_and_sampling_during_training(tiny_sdxl_dir, data, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle --w 128 --h 64 --s 3 --d 5\n")
    res, _ = run(tiny_sdxl_dir, data, tmp_path / "out", validation_split=0.34, validate_every_n_steps=2,
                 sample_prompts=str(prompts), sample_every_n_steps=2, max_train_steps=2)
    samples = list((tmp_path / "out" / "sample").glob("*.png"))
    assert len(samples) == 1
    from PIL import Image

    assert Image.open(samples[0]).size == (128, 64)
    lines = [json.loads(x) for x in open(tmp_path / "out" / "metrics.jsonl")]
    assert any("validation_loss" in r for r in lines)


def test_crash_and_resume_is_bit_identical(tiny_sdxl_dir, data, tmp_path):
    common = dict(max_train_steps=4, save_every_n_steps=2, save_state=True, optimizer_type="AdamW")
    straight, want = run(tiny_sdxl_dir, data, tmp_path / "straight", **common)
    cfg = tiny_run_config(tiny_sdxl_dir, data, tmp_path / "r", DEFAULTS, **common)

    def crash(ev):
        if ev.kind == "step" and ev.step == 3:
            raise Crash()

    with pytest.raises(Crash):
        train(cfg, [MetricsJsonl(tmp_path / "r" / "metrics.jsonl"), crash])
    res = train(cfg, [MetricsJsonl(tmp_path / "r" / "metrics.jsonl")], resume="auto")
    got_losses = [json.loads(x)["loss"] for x in open(tmp_path / "r" / "metrics.jsonl") if '"loss"' in x]
    assert got_losses == want
    a, b = load_file(res.output_file), load_file(straight.output_file)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_on_unet_and_both_encoders_gives_the_same_losses(tiny_sdxl_dir, data, tmp_path):
    res_a, plain = run(tiny_sdxl_dir, data, tmp_path / "a", max_train_steps=3, optimizer_type="SGD",
                       learning_rate=0.1)
    res_b, ckpt = run(tiny_sdxl_dir, data, tmp_path / "b", max_train_steps=3, optimizer_type="SGD", learning_rate=0.1,
                      gradient_checkpointing=True)
    assert ckpt == pytest.approx(plain, rel=1e-5, abs=1e-6)
    for res, on in ((res_a, False), (res_b, True)):  # the losses are equal because checkpointing is exact
        models = (res.model.unet, *res.model.text_encoders)
        assert len(models) == 3 and [mod.is_gradient_checkpointing for mod in models] == [on] * 3


def test_bf16_mixed_precision_trains(tiny_sdxl_dir, data, tmp_path):
    res, losses = run(tiny_sdxl_dir, data, tmp_path, mixed_precision="bf16", enable_bucket=True, min_bucket_reso=64,
                      max_bucket_reso=128)
    assert res.model.unet.dtype == torch.bfloat16 and all(torch.isfinite(torch.tensor(losses)))
