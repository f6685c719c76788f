"""lorakit.models: shipped tokenizer/configs, tiny models, loading (folder and single file), safe .ckpt."""
from __future__ import annotations

import builtins
import json
import os
import pickletools
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.errors import ModelError
from lorakit.models.loader import load_sd_model
from lorakit.models.tiny import (build_tiny_components, load_clip_tokenizer, save_tiny_pipeline,
                                 save_tiny_single_file)


def test_shipped_tokenizers_offline():
    sd1, sd2 = load_clip_tokenizer(False), load_clip_tokenizer(True)
    assert sd1("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert sd2("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(sd1) == 49408 and sd1.model_max_length == 77
    assert (sd1.pad_token, sd1.pad_token_id) == ("<|endoftext|>", 49407)
    assert (sd2.pad_token, sd2.pad_token_id) == ("!", 0)
    assert sd1("Hello, WORLD! 1234").input_ids == [49406, 3306, 267, 1002, 256, 272, 273, 274, 275, 49407]


def test_tiny_components_deterministic_and_seeded(tiny_components):
    a, b, c = tiny_components(seed=0), tiny_components(seed=0), tiny_components(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb, sc = a[name].state_dict(), b[name].state_dict(), c[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    n_unet = sum(p.numel() for p in a["unet"].parameters())
    assert 500_000 < n_unet < 1_500_000
    assert a["text_encoder"].config.hidden_size == a["unet"].config.cross_attention_dim == 32
    v2 = tiny_components(v2=True)
    assert v2["text_encoder"].config.hidden_act == "gelu" and v2["unet"].config.use_linear_projection
    assert v2["tokenizer"].pad_token_id == 0


def test_tiny_pipeline_reloads_offline(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True,
                                                   safety_checker=None)
    ref = build_tiny_components(seed=0)
    sd = pipe.unet.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref["unet"].state_dict().items())
    assert pipe.tokenizer("a photo of a cat").input_ids[-1] == 49407
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = pipe.vae.decode(x).sample
    assert img.shape == (1, 3, 64, 64)


# ---- shipped config folders -------------------------------------------------------------

def _meta_counts(folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae")))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder")))
    return tuple(sum(p.numel() for p in m.parameters()) for m in (unet, vae, te))


def test_shipped_configs_have_the_published_sizes():
    from lorakit.models.configs_data import CONFIGS_ROOT, config_folder

    assert config_folder(False, False) == CONFIGS_ROOT / "sd15"
    assert _meta_counts(CONFIGS_ROOT / "sd15") == (859_520_964, 83_653_863, 123_060_480)
    assert _meta_counts(CONFIGS_ROOT / "sd2-512") == (865_910_724, 83_653_863, 340_387_840)
    v = json.loads((config_folder(True, True) / "scheduler" / "scheduler_config.json").read_text())
    assert v["prediction_type"] == "v_prediction" and v["beta_end"] == 0.012
    unet_768 = json.loads((config_folder(True, True) / "unet" / "config.json").read_text())
    assert unet_768["sample_size"] == 96 and unet_768["attention_head_dim"] == [5, 10, 20, 20]
    total = sum(f.stat().st_size for f in CONFIGS_ROOT.rglob("*") if f.is_file())
    # one CLIP BPE pair (1,485,762 bytes in clip-bpe/, shared by the five tokenizers) + JSON configs, no weights
    assert total < 1_650_000 and not list(CONFIGS_ROOT.rglob("*.safetensors"))


# ---- loading: diffusers folder vs single file -------------------------------------------

def _outputs(m):
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    ids = m.tokenizer(["a photo of a cat", "lkshape, red circle"], padding="max_length", max_length=77,
                      return_tensors="pt").input_ids
    with torch.no_grad():
        return {"unet": m.unet(x, torch.tensor([10, 700]), ctx).sample,
                "te": m.text_encoder(ids).last_hidden_state,
                "vae_enc": m.vae.encode(img).latent_dist.mean,
                "vae_dec": m.vae.decode(x).sample}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-files")
    out = {}
    for v2 in (False, True):
        out[v2, "dir"] = save_tiny_pipeline(root / f"dir-v2{v2}", v2=v2, seed=3)
        for fmt in ("safetensors", "ckpt"):
            out[v2, fmt] = save_tiny_single_file(root / f"single-v2{v2}", v2=v2, seed=3, fmt=fmt)
    return out


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_single_file_matches_diffusers_folder(tiny_files, v2, fmt):
    ref = load_sd_model(tiny_files[v2, "dir"])
    path, config_dir = tiny_files[v2, fmt]
    m = load_sd_model(path, config_dir=config_dir)
    assert (ref.source, m.source) == ("diffusers", "single_file")
    assert ref.v2 is m.v2 is v2 and m.v_parameterization is False and m.name == path.name
    assert m.tokenizer.pad_token_id == (0 if v2 else 49407)
    a, b = _outputs(ref), _outputs(m)
    for k in a:
        assert a[k].abs().mean() > 1e-3, k   # real signal, not zeros
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k
    assert all(p.dtype == torch.float32 for p in m.unet.parameters())
    procs = {type(p).__name__ for p in list(m.unet.attn_processors.values()) + list(m.vae.attn_processors.values())}
    assert procs == {"AttnProcessor2_0"}
    s = m.noise_scheduler
    assert (type(s).__name__, s.config.prediction_type, s.config.beta_schedule) == ("DDPMScheduler", "epsilon",
                                                                                  "scaled_linear")
    # scaled_linear: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)**2; abar = cumprod(1 - betas)
    assert s.alphas_cumprod[[0, 499, 999]].tolist() == pytest.approx([0.99915, 0.27766965, 0.0046601], rel=1e-5)


@pytest.mark.parametrize("v2", [False, True])
def test_written_single_file_matches_diffusers_own_converter(tiny_files, v2):
    """Independent oracle for our LDM writer: diffusers' from_single_file reads the same weights."""
    from diffusers import StableDiffusionPipeline

    path, config_dir = tiny_files[v2, "safetensors"]
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config_dir), local_files_only=True,
                                                    safety_checker=None)
    ref = build_tiny_components(v2=v2, seed=3)
    for name in ("unet", "vae", "text_encoder"):
        a, b = ref[name].state_dict(), getattr(pipe, name).state_dict()
        assert len(a) == len(b)
        assert all(torch.equal(a[k], b[k].reshape(a[k].shape)) for k in a), name


def test_v_prediction_detected_from_folder_or_set(tmp_path, tiny_files):
    d = save_tiny_pipeline(tmp_path / "v", v2=True, v_prediction=True)
    m = load_sd_model(d)
    assert m.v2 and m.v_parameterization and m.noise_scheduler.config.prediction_type == "v_prediction"
    assert load_sd_model(d, v_parameterization=False).noise_scheduler.config.prediction_type == "epsilon"
    path, cfg = tiny_files[True, "safetensors"]
    m = load_sd_model(path, config_dir=cfg, v_parameterization=True)
    assert m.v_parameterization and m.noise_scheduler.config.prediction_type == "v_prediction"


def test_separate_vae_file_or_folder(tiny_files, tmp_path):
    path, cfg = tiny_files[False, "safetensors"]
    other, _ = save_tiny_single_file(tmp_path / "other", seed=11)
    want = build_tiny_components(seed=11)["vae"].state_dict()
    m = load_sd_model(path, config_dir=cfg, vae=other)
    assert all(torch.equal(m.vae.state_dict()[k], v) for k, v in want.items())
    bare = {k[len("first_stage_model."):]: v for k, v in load_file(str(other)).items()
            if k.startswith("first_stage_model.")}
    save_file(bare, str(tmp_path / "bare_vae.safetensors"))
    m = load_sd_model(path, config_dir=cfg, vae=tmp_path / "bare_vae.safetensors")
    assert all(torch.equal(m.vae.state_dict()[k], v) for k, v in want.items())
    m = load_sd_model(path, config_dir=cfg, vae=tiny_files[False, "dir"])   # folder with vae/
    want3 = build_tiny_components(seed=3)["vae"].state_dict()
    assert all(torch.equal(m.vae.state_dict()[k], v) for k, v in want3.items())


# ---- rejections ----------------------------------------------------------------------------

def _raises(match, path, **kw):
    with pytest.raises(ModelError, match=match) as e:
        load_sd_model(path, **kw)
    return e.value


def test_rejects_sdxl_junk_missing_and_mismatch(tmp_path, tiny_files):
    t = torch.zeros(2, 2)
    xl = {k: t.clone() for k in ("model.diffusion_model.input_blocks.0.0.weight",
                                 "model.diffusion_model.label_emb.0.0.weight",
                                 "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight")}
    save_file(xl, str(tmp_path / "xl.safetensors"))
    e = _raises(r"read as an SDXL checkpoint: tensor .*input_blocks.0.0.weight. has shape \(2, 2\)",
                tmp_path / "xl.safetensors")
    assert e.file.endswith("xl.safetensors")
    e = _raises("sdxl = false .* but the model is SDXL", tmp_path / "xl.safetensors", sdxl=False)
    assert e.key == "sdxl"
    save_file({"foo.weight": t}, str(tmp_path / "lora.safetensors"))
    _raises("no Stable Diffusion weights", tmp_path / "lora.safetensors")
    unclip = {k: t.clone() for k in ("model.diffusion_model.label_emb.0.0.weight",
                                     "cond_stage_model.model.ln_final.weight")}
    save_file(unclip, str(tmp_path / "unclip.safetensors"))
    _raises("class-conditioned", tmp_path / "unclip.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 50)
    _raises("cannot read", tmp_path / "junk.safetensors")
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04not really a zip")
    _raises("cannot read", tmp_path / "junk.ckpt")
    (tmp_path / "model.txt").write_text("hi")
    _raises("unsupported model file type", tmp_path / "model.txt")
    e = _raises("does not exist", tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(e)
    (tmp_path / "empty").mkdir()
    _raises("not a diffusers Stable Diffusion model", tmp_path / "empty")
    path, cfg = tiny_files[False, "safetensors"]
    _raises("v2 = True but the model is SD1", path, config_dir=cfg, v2=True)
    _raises("non-standard model", path)   # tiny file without its config folder
    sd = load_file(str(path))
    del sd["model.diffusion_model.out.2.weight"]
    save_file(sd, str(tmp_path / "cut.safetensors"))
    _raises("missing model.diffusion_model.out.2.weight", tmp_path / "cut.safetensors", config_dir=cfg)


# ---- .ckpt safety -----------------------------------------------------------------------------

class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _RunsExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_ckpt_loads_tensors_without_running_code(tmp_path, tiny_files):
    from lorakit.models.safe_pickle import InertStub, safe_torch_load

    path, cfg = tiny_files[False, "ckpt"]
    sd = torch.load(str(path), weights_only=True)["state_dict"]
    m1, m2 = tmp_path / "shell-ran", tmp_path / "exec-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "callbacks": _RunsShell(m1), "hparams": [_RunsExec(m2)],
                "global_step": np.int64(470000), "p": torch.nn.Parameter(torch.arange(3.0).half())}, str(evil))
    with zipfile.ZipFile(evil) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    names = [str(arg) for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "SHORT_BINUNICODE")]
    # the payload really is in the file: GLOBAL "posix system" and "__builtin__ exec"
    assert any(n.endswith(" system") for n in names) and any(n.endswith(" exec") for n in names)

    obj = safe_torch_load(evil)
    assert not m1.exists() and not m2.exists()
    assert isinstance(obj["callbacks"], InertStub) and "system" in repr(obj["callbacks"])
    assert isinstance(obj["hparams"][0], InertStub)
    assert obj["global_step"] == 470000 and obj["p"].dtype == torch.float16 and obj["p"].tolist() == [0, 1, 2]
    assert set(obj["state_dict"]) == set(sd)
    assert all(torch.equal(obj["state_dict"][k], v) for k, v in sd.items())

    m = load_sd_model(evil, config_dir=cfg)
    assert not m1.exists() and not m2.exists()
    ref = _outputs(load_sd_model(path, config_dir=cfg))
    assert torch.equal(_outputs(m)["unet"], ref["unet"])


@pytest.mark.parametrize("v2", [False, True])
def test_sd_model_is_a_model_family(tiny_files, v2):
    """The seam the step, validation and sampling use: family name, the one text encoder, prompt
    embeddings equal to the kohya encoder's states (150 tokens: 2 chunks, clip skip 2, weighted),
    no added conditioning, and predict = the UNet's sample."""
    from lorakit.models.family import ModelFamily, PromptEmbeds
    from lorakit.models.text import encode_captions

    m = load_sd_model(tiny_files[v2, "dir"])
    assert isinstance(m, ModelFamily) and m.family == ("sd2" if v2 else "sd1")
    assert m.text_encoders == (m.text_encoder,)
    captions = ["a (red:1.5) circle", "a blue square"]
    with torch.no_grad():
        e = m.encode_prompts(captions, max_token_length=150, clip_skip=2, weighted=True, device=None)
        ref = encode_captions(m.tokenizer, m.text_encoder, captions, 150, 2, True)
    assert isinstance(e, PromptEmbeds) and e.pooled is None and len(e) == 2
    assert e.context.shape == (2, 152, m.text_encoder.config.hidden_size)
    assert torch.equal(e.context, ref)
    assert m.added_conditioning(None, torch.device("cpu")) is None
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 700])
    with torch.no_grad():
        assert torch.equal(m.predict(x, t, e), m.unet(x, t, ref).sample)
    assert m.latent_scale == m.vae.config.scaling_factor
