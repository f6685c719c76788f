"""Training-loop settings of kohya's set: weighted captions, v_pred_like_loss, stop_text_encoder_training,
save_state_on_train_end, resume in the config, full_bf16 / full_fp16, fp8_base, log_with, mask folders."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from lorakit.config.schema import TrainConfig, fields_with
from lorakit.data import TrainDataset
from lorakit.data.augment import Draw
from lorakit.data.folders import scan_subsets
from lorakit.demo import make_synthetic_dataset
from lorakit.errors import ConfigError, DataError
from lorakit.models.text import apply_token_weights, encode, parse_attention, tokenize, tokenize_weighted
from lorakit.monitors import TensorBoard, Wandb, loggers_for
from lorakit.train.loop import train
from lorakit.train.loss import timestep_weights, v_pred_like_loss_weight
from lorakit.train.plan import text_encoder_stop_step
from lorakit.train.settings import check_train_settings
from train_helpers import tiny_run_config

DEFAULTS = {"network_dim": 4, "network_alpha": 2, "learning_rate": 1e-3, "seed": 7, "max_train_steps": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_images=4, repeats=1)


def run(model, data_dir, out, **kw):
    rows = []
    cfg = tiny_run_config(model, data_dir, out, DEFAULTS, **kw)
    res = train(cfg, [lambda ev: rows.append((ev.step, ev.data)) if ev.kind == "step" else None], overwrite=True)
    return res, [d["loss"] for _, d in rows], [s for s, _ in rows]


def te_tensors(path):
    return {k: v for k, v in load_file(path).items() if k.startswith("lora_te_")}


def unet_tensors(path):
    return {k: v for k, v in load_file(path).items() if k.startswith("lora_unet_")}


# ---- weighted_captions -----------------------------------------------------------------

def test_attention_syntax_worked_example():
    got = parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    want = [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
            (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want])
    assert parse_attention("(unbalanced") == [("unbalanced", pytest.approx(1.1))]
    assert parse_attention(r"\(literal\]") == [("(literal]", 1.0)]
    assert parse_attention("(a)(b)") == [("ab", pytest.approx(1.1))]  # equal neighbours merge
    assert parse_attention("[x]")[0][1] == pytest.approx(1 / 1.1)
    assert parse_attention("x:1.2)") == [("x:1.2)", 1.0)]  # no open bracket: literal text
    assert parse_attention("") == [("", 1.0)]


def test_weighted_ids_and_weights_and_state_scaling(tiny_components):
    c = tiny_components()
    tok, te = c["tokenizer"], c["text_encoder"].eval()
    ids, w = tokenize_weighted(tok, ["a (cat:1.5) [dog]"], None)
    assert torch.equal(ids, tokenize(tok, ["a cat dog"], None))  # the brackets leave the tokens alone
    assert ids[0, 0, :5].tolist() == [49406, 320, 2368, 1929, 49407]
    assert w[0, 0, :6].tolist() == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1, 1.0, 1.0])
    assert w[0, 0, 6:].eq(1.0).all()
    with torch.no_grad():
        plain = encode(te, ids)
        weighted = apply_token_weights(plain, w)
    assert torch.equal(weighted[0, 2], plain[0, 2] * 1.5)  # cat
    assert torch.allclose(weighted[0, 3], plain[0, 3] / 1.1)  # dog
    assert torch.equal(weighted[0, [0, 1, 4, 5]], plain[0, [0, 1, 4, 5]])


def test_weighted_chunks_of_150_tokens(tiny_components):
    tok = tiny_components()["tokenizer"]
    caption = " ".join(["cat"] * 80) + " (dog:2)"  # dog is token 81: second chunk, position 81 - 75 = 6
    ids, w = tokenize_weighted(tok, [caption], 150)
    assert ids.shape == w.shape == (1, 2, 77)
    assert torch.equal(ids, tokenize(tok, [" ".join(["cat"] * 80) + " dog"], 150))
    assert w[0, 0].eq(1.0).all() and w[0, 1, 6].item() == 2.0 and w[0, 1].sum().item() == 77 + 1
    states = torch.ones(1, 152, 3)
    out = apply_token_weights(states, w)
    assert out[0, :, 0].tolist().index(2.0) == 1 + 75 + 5  # BOS, 75 of chunk 1, then dog
    assert out.sum().item() == 152 * 3 + 3


def test_weighted_captions_train_two_steps(tiny_model_dir, data, tmp_path):
    res, losses, _ = run(tiny_model_dir, data, tmp_path, weighted_captions=True, caption_prefix="(lkshape:1.3)")
    assert len(losses) == 2 and all(np.isfinite(losses))
    # the same tokens without the syntax: only the weight differs
    _, plain, _ = run(tiny_model_dir, data, tmp_path / "b", caption_prefix="lkshape")
    _, unit, _ = run(tiny_model_dir, data, tmp_path / "c", weighted_captions=True, caption_prefix="(lkshape:1.0)")
    assert unit == plain  # weight 1 is the plain caption
    assert losses != plain  # the weight 1.3 changes what the UNet sees


# ---- v_pred_like_loss --------------------------------------------------------------------

def test_v_pred_like_loss_weight_worked_numbers():
    abar = torch.tensor([0.75, 0.5])  # snr = abar / (1 - abar) = 3, 1
    t = torch.tensor([0, 1])
    # 1 + v * (snr + 1) / snr: 1 + 0.2 * 4/3, 1 + 0.2 * 2
    w = timestep_weights(TrainConfig(v_pred_like_loss=0.2), abar, t, False)
    assert w.tolist() == pytest.approx([1.0 + 0.2 * 4 / 3, 1.4])
    # with min-SNR gamma 2 (eps): min(snr, 2) / snr = 2/3, 1 multiplies it
    w2 = timestep_weights(TrainConfig(v_pred_like_loss=0.2, min_snr_gamma=2), abar, t, False)
    assert w2.tolist() == pytest.approx([2 / 3 * (1 + 0.2 * 4 / 3), 1.4])
    assert v_pred_like_loss_weight(torch.tensor([5000.0]), 0.1).item() == pytest.approx(1 + 0.1 * 1001 / 1000)
    assert timestep_weights(TrainConfig(), abar, t, False).tolist() == [1.0, 1.0]


def test_v_pred_like_loss_trains_two_steps(tiny_model_dir, data, tmp_path):
    _, losses, _ = run(tiny_model_dir, data, tmp_path, v_pred_like_loss=0.1)
    _, plain, _ = run(tiny_model_dir, data, tmp_path / "b")
    assert all(a > b for a, b in zip(losses, plain))  # every weight is above 1


# ---- stop_text_encoder_training ------------------------------------------------------------

def test_stop_step_is_the_gui_percentage_rounded_up():
    cfg = TrainConfig(stop_text_encoder_training=25)
    assert text_encoder_stop_step(cfg, 10) == 3  # ceil(10 / 100 * 25)
    assert text_encoder_stop_step(cfg.model_copy(update={"stop_text_encoder_training": 100}), 10) == 10
    assert text_encoder_stop_step(TrainConfig(), 10) is None
    never = TrainConfig(stop_text_encoder_training=-1, text_encoder_lr=1e-4)
    assert never.resolved_text_encoder_lr() == 0.0 and never.resolved_unet_lr() == 1e-4
    with pytest.raises(Exception, match="less than or equal to 100"):
        TrainConfig(stop_text_encoder_training=101)


def test_text_encoder_stops_after_half_of_four_steps(tiny_model_dir, data, tmp_path):
    """stop 50 of 4 steps: the text encoder trains steps 1-2 only, so its adapters end where a 2-step
    run's end; the UNet's keep training (AdamW: no update and no weight decay once frozen)."""
    stopped, _, _ = run(tiny_model_dir, data, tmp_path / "s", max_train_steps=4, stop_text_encoder_training=50,
                        optimizer_args={"weight_decay": 0.1})
    two, _, _ = run(tiny_model_dir, data, tmp_path / "t", max_train_steps=2, optimizer_args={"weight_decay": 0.1})
    four, _, _ = run(tiny_model_dir, data, tmp_path / "f", max_train_steps=4, optimizer_args={"weight_decay": 0.1})
    a, b, c = te_tensors(stopped.output_file), te_tensors(two.output_file), te_tensors(four.output_file)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # without the stop the TE moves on
    ua, ub = unet_tensors(stopped.output_file), unet_tensors(two.output_file)
    assert any(not torch.equal(ua[k], ub[k]) for k in ua)
    assert not stopped.model.text_encoder.training


def test_stop_with_text_encoder_only_is_refused():
    with pytest.raises(ConfigError, match="nothing would train") as e:
        check_train_settings(TrainConfig(stop_text_encoder_training=50, network_train_text_encoder_only=True))
    assert e.value.key == "stop_text_encoder_training"


# ---- states: save_state_on_train_end, resume in the config -------------------------------------

def test_state_on_train_end_and_resume_from_the_config(tiny_model_dir, data, tmp_path):
    res, _, _ = run(tiny_model_dir, data, tmp_path, save_state_on_train_end=True)
    state = tmp_path / "last-state"
    assert json.loads((state / "state.json").read_text())["progress"]["step"] == 2
    assert not list(tmp_path.glob("*-step*-state"))  # only at the end
    _, _, steps = run(tiny_model_dir, data, tmp_path, save_state_on_train_end=True, resume="auto",
                      max_train_steps=4)
    assert steps == [3, 4]
    res2, _, _ = run(tiny_model_dir, data, tmp_path / "none")
    assert not (tmp_path / "none" / "last-state").exists()
    kinds = fields_with("resume")  # a key without a resume kind must not change on --resume
    assert (kinds["resume"], kinds["log_with"], kinds["save_state_on_train_end"]) == ("safe", "safe", "noted")
    assert not {"stop_text_encoder_training", "weighted_captions", "v_pred_like_loss", "full_bf16",
                "fp8_base"} & set(kinds)


# ---- precision -----------------------------------------------------------------------------

def test_full_bf16_trains_adapters_in_bf16(tiny_model_dir, data, tmp_path):
    res, losses, _ = run(tiny_model_dir, data, tmp_path, mixed_precision="bf16", full_bf16=True)
    assert {p.dtype for p in res.network.parameters()} == {torch.bfloat16}
    assert all(np.isfinite(losses))
    with safe_open(str(res.output_file), "pt") as f:
        md = f.metadata()
    assert md["ss_full_fp16"] == "False" and md["ss_fp8_base"] == "False"


def test_full_fp16_trains_adapters_in_fp16_and_refuses_a_zero_eps(tiny_model_dir, data, tmp_path):
    with pytest.raises(ConfigError, match="eps 1e-08 is 0 in float16") as e:
        check_train_settings(TrainConfig(mixed_precision="fp16", full_fp16=True))
    assert e.value.key == "optimizer_args"
    res, losses, _ = run(tiny_model_dir, data, tmp_path, mixed_precision="fp16", full_fp16=True,
                         optimizer_args={"eps": 1e-4})
    assert {p.dtype for p in res.network.parameters()} == {torch.float16}
    assert all(np.isfinite(losses))
    assert load_file(res.output_file)  # saved (fp16 by save_precision)


@pytest.mark.parametrize("kw,key", [({"full_bf16": True}, "full_bf16"), ({"full_fp16": True}, "full_fp16"),
                                    ({"full_fp16": True, "full_bf16": True, "mixed_precision": "bf16"},
                                     "full_bf16"),
                                    ({"fp8_base": True}, "fp8_base")])
def test_precision_settings_need_their_mixed_precision(kw, key):
    with pytest.raises(ConfigError) as e:
        check_train_settings(TrainConfig(**kw))
    assert e.value.key == key and "mixed_precision" in e.value.message + (e.value.fix or "")


@pytest.mark.parametrize("kw", [{"network_type": "loha"}, {"network_type": "locon", "network_args": {"dora_wd": True}}])
def test_fp8_base_refuses_adapters_that_read_the_base_weight(kw):
    with pytest.raises(ConfigError, match="fp8_base stores in float8") as e:
        check_train_settings(TrainConfig(fp8_base=True, mixed_precision="bf16", **kw))
    assert e.value.key == "fp8_base" and "lora, locon, dylora, ia3" in e.value.fix


def test_all_problems_listed_at_once():
    with pytest.raises(ConfigError) as e:
        check_train_settings(TrainConfig(full_bf16=True, fp8_base=True, log_with="wandb"))
    msg = e.value.message
    if "wandb" in sys.modules or __import__("importlib").util.find_spec("wandb"):
        pytest.skip("wandb is installed")
    assert msg.startswith("3 settings") and "full_bf16" in msg and "fp8_base" in msg and "wandb" in msg


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")
def test_fp8_base_stores_linear_and_conv_weights_in_float8(tiny_model_dir, data, tmp_path):
    res, losses, _ = run(tiny_model_dir, data, tmp_path, mixed_precision="bf16", fp8_base=True,
                         sample_prompts="a cat --w 64 --h 64 --s 2", sample_every_n_steps=2)
    assert len(list((tmp_path / "sample").glob("*.png"))) == 1  # sampling under autocast reads float8 too
    unet = res.model.unet
    lin = [m for m in unet.modules() if type(m) is torch.nn.Linear]
    assert lin and {m.weight.dtype for m in lin} == {torch.float8_e4m3fn}
    assert {m.bias.dtype for m in lin if m.bias is not None} == {torch.bfloat16}
    assert res.model.text_encoder.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(np.isfinite(losses))
    assert {p.dtype for p in res.network.parameters()} == {torch.float32}  # the adapters stay float32
    frozen_te, _, _ = run(tiny_model_dir, data, tmp_path / "u", mixed_precision="bf16", fp8_base=True,
                          network_train_unet_only=True)
    assert {p.dtype for p in frozen_te.network.parameters()} == {torch.float32}  # also untrained ones
    with safe_open(str(res.output_file), "pt") as f:
        assert f.metadata()["ss_fp8_base"] == "True"


# ---- log_with --------------------------------------------------------------------------------

def test_log_with_picks_the_loggers(tmp_path):
    assert [type(s) for s in loggers_for(TrainConfig(), tmp_path)] == [TensorBoard]
    assert [type(s) for s in loggers_for(TrainConfig(log_with="all"), tmp_path)] == [TensorBoard, Wandb]
    assert [type(s) for s in loggers_for(TrainConfig(log_with="wandb"), tmp_path)] == [Wandb]
    with pytest.raises(Exception):
        TrainConfig(log_with="comet")


def test_wandb_without_the_package_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails, find_spec finds nothing
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match="wandb package") as e:
        check_train_settings(TrainConfig(log_with="all"))
    assert e.value.key == "log_with" and "pip install wandb" in e.value.fix


def test_wandb_logger_logs_kohya_tags(monkeypatch, tmp_path):
    logged, inits = [], []

    class FakeRun:
        def log(self, row, step):
            logged.append((step, row))

        def finish(self):
            logged.append("finished")

    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from lorakit.events import Event

    w = Wandb(tmp_path, None, "run1")
    w(Event("start", 0, 0, {"config": TrainConfig()}))
    w(Event("step", 1, 1, {"loss": 0.5, "loss_avg": 0.25, "lrs": {"unet": 1e-4}, "dlr": {}}))
    w(Event("end", 1, 1, {}))
    assert inits[0]["project"] == "network_train" and inits[0]["name"] == "run1"
    assert logged == [(1, {"loss/current": 0.5, "loss/average": 0.25, "lr/unet": 1e-4}), "finished"]


# ---- masked_loss with mask folders ------------------------------------------------------------

def _mask_dataset(root: Path, masks: dict[str, np.ndarray], images=("a", "b")) -> tuple[Path, Path]:
    img_dir, mask_dir = root / "img", root / "mask"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for name in images:
        Image.new("RGB", (32, 32), (120, 30, 200)).save(img_dir / f"{name}.png")
        (img_dir / f"{name}.txt").write_text("x")
    for name, arr in masks.items():
        Image.fromarray(arr).save(mask_dir / f"{name}.png")
    return img_dir, mask_dir


def test_mask_folder_gives_the_red_channel_at_latent_resolution(tmp_path):
    left = np.zeros((32, 32), np.uint8)
    left[:, 16:] = 255  # mask of a: right half counts
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 51  # mask of b: red 51 (0.2), green and blue ignored
    rgb[..., 1] = 255
    img_dir, mask_dir = _mask_dataset(tmp_path, {"a": left, "b": rgb})
    sub = {"image_dir": str(img_dir), "conditioning_data_dir": str(mask_dir), "caption_extension": ".txt"}
    index = scan_subsets([TrainConfig(dataset_subsets=[sub]).dataset_subsets[0]])
    ds = TrainDataset(index, (32, 32))
    b = ds.make_batch([0, 1], 1, 0)
    assert b.masks.shape == (2, 1, 4, 4)
    assert b.masks[0, 0].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 4
    assert b.masks[1].flatten().tolist() == pytest.approx([0.2] * 16)
    flipped = ds._mask(0, Draw(flip=True), None)
    assert flipped[0].tolist() == [[1.0, 1.0, 0.0, 0.0]] * 4


def test_mask_folder_errors_list_every_missing_and_extra_file(tmp_path):
    img_dir, mask_dir = _mask_dataset(tmp_path, {"a": np.zeros((32, 32), np.uint8),
                                                 "zz": np.zeros((32, 32), np.uint8)}, images=("a", "b", "c"))
    with pytest.raises(DataError) as e:
        scan_subsets([{"image_dir": str(img_dir), "conditioning_data_dir": str(mask_dir), "num_repeats": 1,
                       "caption_extension": ".txt"}])
    assert "no mask for 2 image(s): b.png, c.png" in e.value.message and "1 mask(s) without an image: zz" in \
        e.value.message
    Image.new("L", (16, 16)).save(mask_dir / "b.png")
    (mask_dir / "zz.png").unlink()
    (mask_dir / "a.png").replace(mask_dir / "c.png")
    Image.new("L", (32, 32)).save(mask_dir / "a.png")
    with pytest.raises(DataError, match=r"b.png is \(16, 16\), its image \(32, 32\)"):
        scan_subsets([{"image_dir": str(img_dir), "conditioning_data_dir": str(mask_dir), "num_repeats": 1,
                       "caption_extension": ".txt"}])


def test_mask_folder_needs_masked_loss_and_masked_loss_needs_a_mask(tmp_path):
    from lorakit.data.validate import validate_data_config

    sub = {"image_dir": str(tmp_path), "conditioning_data_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="masked_loss is off"):
        validate_data_config(TrainConfig(dataset_subsets=[sub]))
    with pytest.raises(ConfigError, match="conditioning_data_dir") as e:
        validate_data_config(TrainConfig(masked_loss=True))
    assert e.value.key == "masked_loss"
    validate_data_config(TrainConfig(masked_loss=True, dataset_subsets=[sub]))


def test_masked_loss_from_a_mask_folder_trains_two_steps(tiny_model_dir, tmp_path):
    half = np.zeros((64, 64), np.uint8)
    half[:, 32:] = 255
    img_dir, mask_dir = tmp_path / "img", tmp_path / "mask"
    img_dir.mkdir()
    mask_dir.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8)).save(img_dir / f"{i}.png")
        (img_dir / f"{i}.txt").write_text("noise")
        Image.fromarray(half).save(mask_dir / f"{i}.png")
    sub = {"image_dir": str(img_dir), "conditioning_data_dir": str(mask_dir), "caption_extension": ".txt"}
    cfg = dict(masked_loss=True, dataset_subsets=[sub], train_data_dir=None)
    res, losses, _ = run(tiny_model_dir, img_dir, tmp_path / "o", **cfg)
    _, plain, _ = run(tiny_model_dir, img_dir, tmp_path / "p", dataset_subsets=[
        {k: v for k, v in sub.items() if k != "conditioning_data_dir"}], train_data_dir=None)
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses != plain


# ---- save_last_n_epochs / save_last_n_epochs_state ------------------------------------------------

def test_last_n_epochs_keep_the_newest_files_and_states(tiny_model_dir, data, tmp_path):
    """4 images, batch 4: one step per epoch; epochs 1-3 save (epoch 4 is the final file). With
    save_last_n_epochs 2 the files of epochs 2 and 3 stay (sd-scripts removes epoch - every * N),
    with save_last_n_epochs_state 1 the state of epoch 3."""
    run(tiny_model_dir, data, tmp_path, max_train_steps=None, max_train_epochs=4, train_batch_size=4,
        save_every_n_epochs=1, save_state=True, save_last_n_epochs=2, save_last_n_epochs_state=1)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("last"))
    assert names == ["last-000002.safetensors", "last-000003-state", "last-000003.safetensors", "last-state",
                     "last.safetensors"]


# ---- settings lorakit had before: each trains 2 steps on the tiny model ---------------------------

@pytest.fixture(scope="module")
def plain_losses(tiny_model_dir, data, tmp_path_factory):
    return run(tiny_model_dir, data, tmp_path_factory.mktemp("plain"))[1]


@pytest.mark.parametrize("kw,changes", [
    ({"ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True}, True),
    ({"noise_offset": 0.1, "noise_offset_random_strength": True}, True),
    ({"vae_batch_size": 3}, False),  # the same latents, encoded 3 at a time
    ({"log_with": "tensorboard"}, False),
])
def test_existing_settings_train_two_steps(tiny_model_dir, data, tmp_path, plain_losses, kw, changes):
    _, losses, steps = run(tiny_model_dir, data, tmp_path, **kw)
    assert steps == [1, 2] and all(np.isfinite(losses))
    if changes:
        assert losses != plain_losses
    else:
        assert losses == pytest.approx(plain_losses, abs=1e-6)


def test_lr_scheduler_type_with_args_trains_two_steps(tiny_model_dir, data, tmp_path):
    rows = []
    cfg = tiny_run_config(tiny_model_dir, data, tmp_path, DEFAULTS, lr_scheduler_type="StepLR",
                          lr_scheduler_args=["step_size=1", "gamma=0.5"])
    train(cfg, [lambda ev: rows.append(ev.data["lrs"]["unet"]) if ev.kind == "step" else None], overwrite=True)
    assert rows == pytest.approx([1e-3, 5e-4])  # halved after each optimizer step


def test_plan_shows_where_the_text_encoder_stops(data):
    from lorakit.train.plan import plan_for_config

    cfg = TrainConfig(train_data_dir=str(data), resolution=64, max_train_steps=10, stop_text_encoder_training=25)
    lines = plan_for_config(cfg).lines(cfg)
    assert "text encoder trained for the first 3 of 10 steps (stop_text_encoder_training 25%)" in lines


def test_bad_combinations_are_refused_before_the_model_loads(tiny_model_dir, data, tmp_path, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("lorakit.models.loader.load_sd_model", no_load)
    cfg = tiny_run_config(tiny_model_dir, data, tmp_path, DEFAULTS, full_bf16=True, fp8_base=True)
    with pytest.raises(ConfigError) as e:
        train(cfg, overwrite=True)
    assert e.value.message.startswith("2 settings") and "full_bf16" in e.value.message
