"""SDXL as a model family: shipped configs, SGM <-> diffusers keys, loading, and kohya's
conditioning rules (sd-scripts' strategy_sdxl.py / sdxl_train_util.py), each with worked numbers."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.errors import ModelError
from lorakit.models.family import PromptEmbeds
from lorakit.models.ldm_layout import unet_key_map
from lorakit.models.loader import load_sd_model
from lorakit.models.sdxl import SDXLModel, time_ids
from lorakit.models.sdxl_configs import SDXL_CONFIG_DIR, sdxl_unet_config
from lorakit.models.sgm_layout import TE2_PREFIX, te2_key_map
from lorakit.models.text import final_layer_norm
from lorakit.models.tiny_sdxl import (CONTEXT, TE2_HIDDEN, TE2_PROJECTION, build_tiny_sdxl,
                                      save_tiny_sdxl_pipeline, save_tiny_sdxl_single_file)

EOS, BOS = 49407, 49406


@pytest.fixture(scope="module")
def xl():
    return build_tiny_sdxl(seed=5)


@pytest.fixture(scope="module")
def xl_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sdxl")
    return {"dir": save_tiny_sdxl_pipeline(root / "dir", seed=5),
            "file": save_tiny_sdxl_single_file(root / "xl.safetensors", seed=5)}


def _meta(cls, **kw):
    with torch.device("meta"):
        return cls(**kw)


# ---- the shipped SDXL config folder ---------------------------------------------------------

def test_shipped_sdxl_configs_have_the_published_sizes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.models.sdxl_configs import load_sdxl_tokenizers

    unet = _meta(UNet2DConditionModel.from_config, config=UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet"))
    vae_cfg = AutoencoderKL.load_config(SDXL_CONFIG_DIR / "vae")
    vae = _meta(AutoencoderKL.from_config, config=vae_cfg)
    te1 = _meta(CLIPTextModel, config=CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder"))
    te2 = _meta(CLIPTextModelWithProjection, config=CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(te1), count(te2)) == (2_567_463_684, 83_653_863, 123_060_480,
                                                                 694_659_840)
    assert vae_cfg["scaling_factor"] == 0.13025 and vae_cfg["force_upcast"] is True
    assert unet.add_embedding.linear_1.in_features == 1280 + 6 * 256
    index = json.loads((SDXL_CONFIG_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    tok1, tok2 = load_sdxl_tokenizers()
    ids = lambda t: t("a photo of a cat", padding="max_length", max_length=77).input_ids  # noqa: E731
    assert ids(tok1)[:9] == [BOS, 320, 1125, 539, 320, 2368, EOS, EOS, EOS]
    assert ids(tok2)[:9] == [BOS, 320, 1125, 539, 320, 2368, EOS, 0, 0]   # tokenizer 2 pads with "!" = 0


# ---- SGM <-> diffusers keys: sd-scripts' sdxl_model_util.make_unet_conversion_map, restated ---

RESNET = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "norm2.": "out_layers.0.", "conv2.": "out_layers.3.",
          "time_emb_proj.": "emb_layers.1.", "conv_shortcut.": "skip_connection."}


def sgm_prefixes() -> dict[str, str]:
    """diffusers prefix -> SGM prefix of SDXL's UNet (3 levels, 2 resnets down, 3 up)."""
    t = {"conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
         "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
         "mid_block.attentions.0.": "middle_block.1.", "mid_block.resnets.0.": "middle_block.0.",
         "mid_block.resnets.1.": "middle_block.2."}
    for i in range(3):
        for j in range(2):
            t[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{3 * i + j + 1}.0."
            t[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{3 * i + j + 1}.1."
        for j in range(3):
            t[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{3 * i + j}.0."
            t[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{3 * i + j}.1."
        t[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{3 * (i + 1)}.0.op."
        t[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{3 * i + 2}.2."
    return t


def expected_sgm(key: str, table=sgm_prefixes()) -> str:
    for n in range(key.count("."), 0, -1):
        prefix = ".".join(key.split(".")[:n]) + "."
        if prefix in table:
            rest = key[len(prefix):]
            if ".resnets." in prefix:
                rest = next((s + rest[len(d):] for d, s in RESNET.items() if rest.startswith(d)), rest)
            return table[prefix] + rest
    raise KeyError(key)


@pytest.fixture(scope="module")
def full_unet():
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in sdxl_unet_config().items() if not k.startswith("_")}
    return _meta(UNet2DConditionModel, **cfg)


def test_full_size_unet_keys_map_to_sgm_as_sd_scripts(full_unet):
    keys = list(full_unet.state_dict())
    mapped = unet_key_map(keys, full_unet.config)
    assert len(keys) == len(mapped) == len(set(mapped.values())) == 1680
    assert mapped == {k: expected_sgm(k) for k in keys}
    sgm = set(mapped.values())
    for k in ("input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", "input_blocks.3.0.op.weight",
              "input_blocks.8.1.transformer_blocks.9.ff.net.2.weight",
              "middle_block.1.transformer_blocks.9.attn2.to_k.weight", "output_blocks.2.2.conv.weight",
              "output_blocks.5.2.conv.bias", "output_blocks.8.0.skip_connection.weight",
              "label_emb.0.0.weight", "label_emb.0.2.bias", "input_blocks.1.0.in_layers.2.weight"):
        assert k in sgm, k
    assert not any(k.startswith(("input_blocks.9.", "output_blocks.8.2.", "input_blocks.1.1.")) for k in sgm)


def test_full_size_text_encoder_2_keys_map_to_open_clip():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    te2 = _meta(CLIPTextModelWithProjection, config=CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2"))
    m = te2_key_map(list(te2.state_dict()))
    sgm = {k for k, _, _ in m.values()}
    # 12 file keys per layer (q/k/v fused into in_proj) + embeddings, ln_final, projection (+ logit_scale)
    assert len(sgm) == 32 * 12 + 5 == 389
    assert m["text_projection.weight"] == ("text_projection", None, True)
    assert m["text_model.encoder.layers.31.self_attn.v_proj.bias"] == ("transformer.resblocks.31.attn.in_proj_bias", 2,
                                                                     False)
    assert m["text_model.final_layer_norm.weight"] == ("ln_final.weight", None, False)


# ---- loading: folder, single file, families, v-prediction -------------------------------------

def _same_weights(a, b):
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")
    for x, y in zip((getattr(a, n) for n in parts), (getattr(b, n) for n in parts)):
        sa, sb = x.state_dict(), y.state_dict()
        assert sa.keys() == sb.keys()
        bad = [k for k in sa if not torch.equal(sa[k], sb[k].reshape(sa[k].shape))]
        assert not bad, bad[:3]


def test_folder_and_single_file_load_identical_weights(xl, xl_files):
    folder = load_sd_model(xl_files["dir"])
    path, configs = xl_files["file"]
    single = load_sd_model(path, config_dir=configs)
    assert isinstance(folder, SDXLModel) and isinstance(single, SDXLModel)
    assert (folder.source, single.source, single.family, single.name) == ("diffusers", "single_file", "sdxl",
                                                                            "xl.safetensors")
    _same_weights(xl, folder)
    _same_weights(xl, single)
    assert single.latent_scale == folder.latent_scale == 0.13025
    assert single.tokenizer_2.pad_token_id == folder.tokenizer_2.pad_token_id == 0
    sd = load_file(str(path))
    # open_clip keeps the projection as x @ P: the file holds the HF weight transposed
    assert torch.equal(sd[TE2_PREFIX + "text_projection"], xl.text_encoder_2.text_projection.weight.T)
    assert sd[TE2_PREFIX + "text_projection"].shape == (TE2_HIDDEN, TE2_PROJECTION)


def test_single_file_matches_diffusers_own_sdxl_converter(xl, xl_files):
    """Independent oracle for the SGM writer and the transposed projection."""
    from diffusers import StableDiffusionXLPipeline

    path, configs = xl_files["file"]
    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(configs), local_files_only=True)
    _same_weights(xl, pipe)


def test_family_flags_that_contradict_the_weights_name_both(xl_files, tmp_path):
    from lorakit.models.tiny import save_tiny_pipeline

    path, configs = xl_files["file"]
    for kw, key, text in ((dict(sdxl=False), "sdxl", "sdxl = false .*but the model is SDXL"),
                          (dict(v2=True), "v2", "v2 = true .*but the model is SDXL")):
        for target in (xl_files["dir"], path):
            with pytest.raises(ModelError, match=text) as e:
                load_sd_model(target, config_dir=configs if target == path else None, **kw)
            assert e.value.key == key
    sd1 = save_tiny_pipeline(tmp_path / "sd1")
    with pytest.raises(ModelError, match="sdxl = true but the model is SD1.x") as e:
        load_sd_model(sd1, sdxl=True)
    assert e.value.key == "sdxl" and "sdxl = false" in e.value.fix
    assert load_sd_model(xl_files["dir"], sdxl=True).family == "sdxl"


def test_v_prediction_from_folder_marker_or_flag(xl_files, tmp_path):
    d = save_tiny_sdxl_pipeline(tmp_path / "v", seed=5, v_prediction=True)
    m = load_sd_model(d)
    assert m.v_parameterization and m.noise_scheduler.config.prediction_type == "v_prediction"
    path, configs = xl_files["file"]
    assert load_sd_model(path, config_dir=configs).v_parameterization is False
    assert load_sd_model(path, config_dir=configs, v_parameterization=True).v_parameterization is True
    sd = load_file(str(path))
    sd["v_pred"], sd["ztsnr"] = torch.tensor([]), torch.tensor([])   # NoobAI-XL v-pred's markers
    save_file(sd, str(tmp_path / "vpred.safetensors"))
    m = load_sd_model(tmp_path / "vpred.safetensors", config_dir=configs)
    assert m.v_parameterization and m.noise_scheduler.config.prediction_type == "v_prediction"


def test_incomplete_sgm_file_names_the_missing_key(xl_files, tmp_path):
    path, configs = xl_files["file"]
    sd = load_file(str(path))
    del sd[TE2_PREFIX + "text_projection"]
    save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ModelError, match="text encoder 2 weights are incomplete: missing "
                                         "conditioner.embedders.1.model.text_projection"):
        load_sd_model(tmp_path / "cut.safetensors", config_dir=configs)


# ---- prompt encoding: kohya's rules ----------------------------------------------------------

def _penultimate_reference(te, ids):
    """The state sd-scripts takes, computed another way: the encoder without its last layer and
    without the final layer norm."""
    ref = copy.deepcopy(te)
    inner = ref.text_model if hasattr(ref, "text_model") else ref
    inner.encoder.layers = inner.encoder.layers[:-1]
    inner.final_layer_norm = torch.nn.Identity()
    with torch.no_grad():
        return ref(ids).last_hidden_state


def test_context_is_both_penultimate_states_without_final_norm_concatenated(xl):
    caps = ["a photo of a cat", "lkshape, red circle"]
    with torch.no_grad():
        e = xl.encode_prompts(caps, max_token_length=None, device="cpu")
    assert e.context.shape == (2, 77, 32 + TE2_HIDDEN) and e.pooled.shape == (2, TE2_PROJECTION)
    ids1 = xl.tokenizer(caps, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = xl.tokenizer_2(caps, padding="max_length", max_length=77, return_tensors="pt").input_ids
    want = torch.cat([_penultimate_reference(xl.text_encoder, ids1), _penultimate_reference(xl.text_encoder_2, ids2)],
                     dim=-1)
    assert (e.context - want).abs().max().item() < 1e-5
    with torch.no_grad():  # the final layer norm is NOT applied: the normed states differ
        normed = final_layer_norm(xl.text_encoder)(e.context[..., :32])
    assert (normed - e.context[..., :32]).abs().max().item() > 0.1


def test_pooled_is_the_projected_last_state_at_the_first_eos(xl):
    with torch.no_grad():
        e = xl.encode_prompts(["a photo of a cat"], max_token_length=None, device="cpu")
        ids = xl.tokenizer_2(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert ids[0, 6].item() == EOS and ids[0, 7].item() == 0
        last = xl.text_encoder_2(ids).last_hidden_state   # final layer norm applied
        want = last[0, 6] @ xl.text_encoder_2.text_projection.weight.T
    assert (e.pooled[0] - want).abs().max().item() < 1e-6
    assert (e.pooled[0] - last[0, 7] @ xl.text_encoder_2.text_projection.weight.T).abs().max().item() > 1e-3


def test_long_prompts_in_75_token_chunks_pooled_from_the_first(xl):
    words = " ".join(["red"] * 100)          # 100 tokens: chunk 0 holds 75, chunk 1 the other 25
    with torch.no_grad():
        e = xl.encode_prompts([words], max_token_length=150, device="cpu")
    assert e.context.shape == (1, 152, CONTEXT)
    from lorakit.models.text import tokenize

    ids2 = tokenize(xl.tokenizer_2, [words], 150)[0]                 # (2, 77)
    assert ids2[0, 76].item() == EOS                                 # chunk 0 closed with EOS (pad != eos fix-up)
    assert ids2[1, 26].item() == EOS and ids2[1, 27].item() == 0
    ids1 = tokenize(xl.tokenizer, [words], 150)[0]
    s1 = _penultimate_reference(xl.text_encoder, ids1)               # (2, 77, 32)
    s2 = _penultimate_reference(xl.text_encoder_2, ids2)
    chunk_states = torch.cat([s1, s2], dim=-1)
    # state 0 of chunk 0, 75 body states of each chunk, the last state of the last chunk
    want = torch.cat([chunk_states[0, :1], chunk_states[0, 1:76], chunk_states[1, 1:76], chunk_states[1, 76:]])
    assert (e.context[0] - want).abs().max().item() < 1e-5
    with torch.no_grad():
        own = xl.text_encoder_2(ids2).text_embeds                    # each chunk's own pooled vector
    assert (e.pooled[0] - own[0]).abs().max().item() < 1e-6
    assert (e.pooled[0] - own[1]).abs().max().item() > 1e-3


def test_weighted_captions_scale_both_encoders_states_not_pooled(xl):
    with torch.no_grad():
        plain = xl.encode_prompts(["a red cat"], max_token_length=None, weighted=True, device="cpu")
        w = xl.encode_prompts(["a (red:1.5) cat"], max_token_length=None, weighted=True, device="cpu")
    ratio = w.context[0] / plain.context[0]
    assert torch.allclose(ratio[2], torch.full((CONTEXT,), 1.5), atol=1e-4)   # BOS, a, red, cat: "red" at 2
    assert torch.allclose(w.context[0, [0, 1, 3, 4]], plain.context[0, [0, 1, 3, 4]], atol=1e-6)
    assert torch.equal(w.pooled, plain.pooled)


def test_clip_skip_is_ignored_as_sd_scripts(xl):
    with torch.no_grad():
        a = xl.encode_prompts(["cat"], max_token_length=None, clip_skip=1, device="cpu")
        with pytest.warns(UserWarning, match="ignores clip_skip"):
            b = xl.encode_prompts(["cat"], max_token_length=None, clip_skip=2, device="cpu")
    assert torch.equal(a.context, b.context) and torch.equal(a.pooled, b.pooled)


# ---- size conditioning -------------------------------------------------------------------------

class _Batch(list):
    def __init__(self, original_sizes, crop_top_lefts, bucket):
        super().__init__(original_sizes)
        self.original_sizes, self.crop_top_lefts, self.bucket = original_sizes, crop_top_lefts, bucket


def test_time_ids_are_original_hw_crop_top_left_target_hw(xl):
    # a 1200x800 (W x H) photo in the 1216x832 bucket, crop (top 0, left 4); a 500x700 one in 832x1216
    batch = _Batch([(1200, 800), (500, 700)], [(0, 4), (12, 0)], (1216, 832))
    added = xl.added_conditioning(batch, torch.device("cpu"))
    assert added["time_ids"].tolist() == [[800, 1200, 0, 4, 832, 1216], [700, 500, 12, 0, 832, 1216]]
    with pytest.raises(ValueError, match="time ids need 3"):
        time_ids([(1, 1)], [(0, 0)], (8, 8), 3)


def test_unet_embeds_time_ids_as_sd_scripts_get_size_embeddings(xl):
    """diffusers' add_time_proj == sd-scripts' timestep_embedding (cos first, max_period 1e4) per id."""
    ids = torch.tensor([[800.0, 1200.0, 0.0, 4.0, 832.0, 1216.0]])
    dim = xl.unet.config.addition_time_embed_dim
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = ids.flatten()[:, None] * freqs[None]
    want = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).reshape(1, 6 * dim)
    got = xl.unet.add_time_proj(ids.flatten()).reshape(1, -1)
    assert (got - want).abs().max().item() < 1e-6


def test_predict_passes_pooled_and_time_ids(xl):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    e = PromptEmbeds(torch.randn(2, 77, CONTEXT, generator=g), torch.randn(2, TE2_PROJECTION, generator=g))
    t = torch.tensor([10, 600])
    added = {"time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        out = xl.predict(x, t, e, added)
        cond = {"text_embeds": e.pooled, "time_ids": added["time_ids"]}
        want = xl.unet(x, t, e.context, added_cond_kwargs=cond).sample
        other = xl.predict(x, t, e, {"time_ids": torch.tensor([[1024.0, 1024, 0, 0, 64, 64]] * 2)})
    assert torch.equal(out, want)
    assert (out - other).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="pooled text vector"):
        xl.predict(x, t, PromptEmbeds(e.context), added)


def test_replacement_vae_keeps_sdxl_scaling(xl_files, tmp_path):
    """--vae with an SDXL model (e.g. an fp16-fixed SDXL VAE) is read with SDXL's VAE config (0.13025)."""
    path, configs = xl_files["file"]
    other, _ = save_tiny_sdxl_single_file(tmp_path / "other.safetensors", seed=9)
    want = build_tiny_sdxl(seed=9).vae.state_dict()
    m = load_sd_model(path, config_dir=configs, vae=other)
    assert all(torch.equal(m.vae.state_dict()[k], v) for k, v in want.items())
    assert m.latent_scale == 0.13025 and m.vae.config.force_upcast
    m = load_sd_model(xl_files["dir"], vae=xl_files["dir"])   # a folder with vae/
    assert m.latent_scale == 0.13025
