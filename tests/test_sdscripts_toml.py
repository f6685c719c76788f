"""sd-scripts --config_file TOML + dataset_config -> TrainConfig and the dataset index."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from PIL import Image

from lorakit.config.load import load_config
from lorakit.config.sdscripts import looks_like_sdscripts
from lorakit.data.folders import scan_config
from lorakit.errors import ConfigError


def _images(folder: Path, names: list[str], size=(16, 8), captions: dict[str, str] | None = None) -> None:
    folder.mkdir(parents=True)
    for n in names:
        Image.new("RGB", size, (10, 20, 30)).save(folder / f"{n}.png")
    for n, text in (captions or {}).items():
        (folder / f"{n}.txt").write_text(text, encoding="utf-8")


CONFIG = """
[model_arguments]
pretrained_model_name_or_path = "model.safetensors"
v2 = false

[additional_network_arguments]
network_module = "lycoris.kohya"
network_dim = 16
network_alpha = 8
network_args = ["algo=lokr", "conv_dim=4", "conv_alpha=2", "factor=8", "use_cp=True"]

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 2e-4
optimizer_args = ["weight_decay=0.1", "betas=0.9,0.99"]
lr_scheduler = "cosine"

[training_arguments]
output_dir = "out"
max_train_epochs = 10
xformers = true
train_data_dir = "ignored"
dataset_config = "dataset.toml"
"""


def _pair(tmp_path: Path, config: str = CONFIG, extra_subset: str = "") -> Path:
    _images(tmp_path / "a", ["a1", "a2", "a3"], captions={"a1": "red, cat", "a2": "blue, cat"})
    _images(tmp_path / "b", ["b1", "b2"], size=(8, 16))
    _images(tmp_path / "reg", [f"r{i}" for i in range(5)])
    (tmp_path / "dataset.toml").write_text(f"""
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"
enable_bucket = true

[[datasets]]
resolution = 768
batch_size = 4
min_bucket_reso = 320
bucket_reso_steps = 32

  [[datasets.subsets]]
  image_dir = "{tmp_path / 'a'}"
  num_repeats = 3
  class_tokens = "sks cat"

  [[datasets.subsets]]
  image_dir = "{tmp_path / 'b'}"
  num_repeats = 2
  {extra_subset}

  [[datasets.subsets]]
  image_dir = "{tmp_path / 'reg'}"
  class_tokens = "cat"
  is_reg = true
""", encoding="utf-8")
    p = tmp_path / "config.toml"
    p.write_text(config, encoding="utf-8")
    return p


def test_config_file_and_dataset_config(tmp_path):
    cfg = load_config(_pair(tmp_path))
    assert cfg.network_type == "lokr"
    assert (cfg.network_dim, cfg.network_alpha, cfg.conv_dim, cfg.conv_alpha) == (16, 8.0, 4, 2.0)
    assert cfg.network_args == {"factor": 8, "use_tucker": True}
    assert cfg.optimizer_args == {"weight_decay": 0.1, "betas": (0.9, 0.99)}
    assert (cfg.learning_rate, cfg.lr_scheduler, cfg.max_train_epochs) == (2e-4, "cosine", 10)
    # dataset level
    assert cfg.resolution == (768, 768)
    assert (cfg.train_batch_size, cfg.enable_bucket, cfg.min_bucket_reso, cfg.max_bucket_reso,
            cfg.bucket_reso_steps) == (4, True, 320, 1024, 32)
    # subset level, equal everywhere -> global
    assert (cfg.shuffle_caption, cfg.keep_tokens, cfg.caption_extension) == (True, 1, ".txt")
    assert cfg.train_data_dir is None and cfg.reg_data_dir is None
    assert [(s["num_repeats"], s["class_tokens"], s["is_reg"], s["caption_extension"]) for s in cfg.dataset_subsets] \
        == [(3, "sks cat", False, ".txt"), (2, "", False, ".txt"), (1, "cat", True, ".txt")]

    idx = scan_config(cfg)
    assert (idx.num_train_images, idx.num_reg_images, idx.num_reg_samples, idx.num_samples) == (13, 5, 13, 26)
    train = [(it.path.name, it.caption, it.repeats, it.size) for it in idx.train_items]
    assert train == [("a1.png", "red, cat", 3, (16, 8)), ("a2.png", "blue, cat", 3, (16, 8)),
                     ("a3.png", "sks cat", 3, (16, 8)), ("b1.png", "", 2, (8, 16)), ("b2.png", "", 2, (8, 16))]
    reg = [(it.path.name, it.caption, it.repeats) for it in idx.reg_items]
    assert reg == [("r0.png", "cat", 3), ("r1.png", "cat", 3), ("r2.png", "cat", 3), ("r3.png", "cat", 2),
                   ("r4.png", "cat", 2)]
    assert idx.dataset_dirs() == {"a": {"n_repeats": 3, "img_count": 3}, "b": {"n_repeats": 2, "img_count": 2}}


def test_lora_module_and_defaults(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('network_module = "networks.lora"\nnetwork_args = ["conv_dim=8", "conv_alpha=4"]\n'
                 'train_data_dir = "d"\n', encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.network_type, cfg.conv_dim, cfg.conv_alpha, cfg.network_args) == ("lora", 8, 4.0, {})
    assert cfg.caption_extension == ".caption"  # sd-scripts' default
    p.write_text('network_module = "networks.dylora"\nnetwork_args = ["unit=4"]\n', encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.network_type, cfg.network_args) == ("dylora", {"unit": 4})
    p.write_text('network_module = "networks.lora"\nnetwork_weights = "old.safetensors"\ndim_from_weights = true\n',
                 encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.network_weights, cfg.dim_from_weights) == ("old.safetensors", True)


def test_typo_gets_a_suggestion(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[training_arguments]\nnetwork_module = "networks.lora"\nlearnig_rate = 1e-4\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.key == "learnig_rate" and "learning_rate" in str(e.value)
    p.write_text('network_module = "networks.lora"\nnetwork_args = ["algo=lokr"]\n'
                 'network_module2 = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="network_module"):
        load_config(p)


def test_run_wide_settings_must_agree(tmp_path):
    with pytest.raises(ConfigError, match="subsets disagree on alpha_mask") as e:
        load_config(_pair(tmp_path, extra_subset="alpha_mask = true"))
    assert e.value.key == "alpha_mask" and e.value.file.endswith("dataset.toml")
    ds = tmp_path / "dataset.toml"
    ds.write_text(ds.read_text(encoding="utf-8") + "\n[[datasets]]\nresolution = 512\n  [[datasets.subsets]]\n"
                  f'  image_dir = "{tmp_path / "b"}"\n', encoding="utf-8")
    ds.write_text(ds.read_text(encoding="utf-8").replace("alpha_mask = true", ""), encoding="utf-8")
    with pytest.raises(ConfigError, match="datasets disagree on resolution") as e:
        load_config(tmp_path / "config.toml")
    assert e.value.key == "resolution"


SUBSETS_CONFIG = 'network_module = "networks.lora"\ndataset_config = "dataset.toml"\ncache_latents = false\n'


def _two_subsets(tmp_path: Path, extra_first: str = "") -> Path:
    """Subset 1 shuffles (first tag kept, prefix "a"), subset 2 flips and always drops its caption;
    keep_tokens = 2 at the dataset level, which subset 1 overrides (sd-scripts: subset > dataset)."""
    _images(tmp_path / "one", ["p", "q"], captions={"p": "red, cat, sitting, grass", "q": "blue, cat, sky"})
    _images(tmp_path / "two", ["r", "s"], captions={"r": "green, dog", "s": "dog"})
    (tmp_path / "dataset.toml").write_text(f"""
[general]
caption_extension = ".txt"
[[datasets]]
keep_tokens = 2
  [[datasets.subsets]]
  image_dir = "{tmp_path / 'one'}"
  shuffle_caption = true
  keep_tokens = 1
  caption_prefix = "a"
  {extra_first}
  [[datasets.subsets]]
  image_dir = "{tmp_path / 'two'}"
  flip_aug = true
  caption_dropout_rate = 1.0
""", encoding="utf-8")
    p = tmp_path / "config.toml"
    p.write_text(SUBSETS_CONFIG, encoding="utf-8")
    return p


def test_per_subset_captions_and_flips(tmp_path):
    from lorakit.data import TrainDataset
    cfg = load_config(_two_subsets(tmp_path))
    own = [{k: v for k, v in s.items() if k not in ("image_dir", "num_repeats", "class_tokens", "caption_extension",
                                                      "is_reg")} for s in cfg.dataset_subsets]
    assert own == [{"shuffle_caption": True, "keep_tokens": 1, "caption_prefix": "a"},
                   {"keep_tokens": 2, "caption_dropout_rate": 1.0, "flip_aug": True}]
    # the run's values stay the defaults; the subsets carry theirs
    assert (cfg.shuffle_caption, cfg.keep_tokens, cfg.caption_prefix, cfg.caption_dropout_rate, cfg.flip_aug) \
        == (False, 0, "", 0.0, False)
    ds = TrainDataset.from_config(cfg)
    assert [it.path.name for it in ds.items] == ["p.png", "q.png", "r.png", "s.png"]
    caps = {e: [ds.caption_for(s, e, seed=0) for s in range(4)] for e in (1, 2, 3)}
    assert caps == {1: PINNED_CAPTIONS[0], 2: PINNED_CAPTIONS[1], 3: PINNED_CAPTIONS[2]}
    seen = set()
    for e in range(1, 31):
        p, q, r, s = (ds.caption_for(i, e, seed=0) for i in range(4))
        assert p.split(", ")[0] == "a red" and sorted(p.split(", ")[1:]) == ["cat", "grass", "sitting"]
        assert q.split(", ")[0] == "a blue" and sorted(q.split(", ")[1:]) == ["cat", "sky"]
        assert (r, s) == ("", "")  # caption_dropout_rate 1.0: always empty
        seen.add(p)
    assert len(seen) == 6  # all 3! orders of the movable tags occur
    flips = [[ds.augmentation_for(i, e, seed=0).flip for i in range(4)] for e in range(1, 9)]
    assert not any(f[0] or f[1] for f in flips)  # subset 1 has no flip_aug
    assert [f[2:] for f in flips] == PINNED_FLIPS


# seed 0, epochs 1-3: draws of (p, q, r, s); the rng of a draw is random.Random("0:<epoch>:<sample id>")
PINNED_CAPTIONS = [["a red, grass, sitting, cat", "a blue, sky, cat", "", ""],
                   ["a red, sitting, cat, grass", "a blue, sky, cat", "", ""],
                   ["a red, grass, sitting, cat", "a blue, cat, sky", "", ""]]
# seed 0, epochs 1-8: flips of subset 2's two images
PINNED_FLIPS = [[True, True], [False, False], [True, True], [False, False], [True, True], [False, True],
                [True, True], [True, False]]


def test_per_subset_pixel_aug_refuses_cached_latents(tmp_path):
    p = _two_subsets(tmp_path, extra_first="color_aug = true")
    assert load_config(p).dataset_subsets[0]["color_aug"] is True  # no cache: fine
    p.write_text(SUBSETS_CONFIG.replace("false", "true"), encoding="utf-8")
    cfg = load_config(p)
    from lorakit.data.validate import validate_data_config
    with pytest.raises(ConfigError, match="dataset subset 0") as e:
        validate_data_config(cfg)
    assert e.value.key == "color_aug" and str(tmp_path / "one") in str(e.value)
    assert "cache_latents" in str(e.value)


def test_lorakit_toml_is_not_sdscripts():
    raw = tomllib.loads('[network]\nnetwork_dim = 4\n[data]\ntrain_data_dir = "x"\nlearning_rate = 1\n')
    assert not looks_like_sdscripts(raw)
    assert looks_like_sdscripts(tomllib.loads('[training_arguments]\nlearning_rate = 1\n'))
    assert looks_like_sdscripts(tomllib.loads('[a]\nnetwork_module = "networks.lora"\n'))


def test_cache_text_encoder_outputs(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('network_module = "networks.lora"\ncache_text_encoder_outputs = true\n'
                 'cache_text_encoder_outputs_to_disk = true\n', encoding="utf-8")
    assert load_config(p).cache_text_encoder_outputs is True
    p.write_text('network_module = "networks.lora"\ncache_text_encoder_outputs = false\n', encoding="utf-8")
    assert load_config(p).cache_text_encoder_outputs is None  # sd-scripts' default: lorakit decides


def test_step_validation_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[training_arguments]\nnetwork_module = "networks.lora"\nvalidate_every_n_steps = 100\n'
                 'max_validation_steps = 2\n', encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.validate_every_n_steps, cfg.max_validation_steps) == (100, 2)


def test_network_args_shared_mapping(tmp_path):
    # the mapping the GUI's additional_parameters use too (config/netargs.py)
    p = tmp_path / "c.toml"
    p.write_text('network_module = "lycoris.kohya"\nnetwork_dim = 8\nnetwork_alpha = 2\n'
                 'network_args = ["algo=loha", "preset=full", "dropout=0.1", "use_tucker=True"]\n', encoding="utf-8")
    cfg = load_config(p)
    assert (cfg.network_type, cfg.network_preset, cfg.network_dropout, cfg.conv_dim, cfg.conv_alpha,
            cfg.network_args) == ("loha", "full", 0.1, 8, 2.0, {"use_tucker": True})
    p.write_text('network_module = "lycoris.kohya"\nnetwork_args = ["algo=lokr", "factr=4"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:  # before any model is loaded
        load_config(p)
    assert (e.value.key, e.value.file) == ("network_args", str(p)) and "did you mean 'factor'?" in e.value.fix


def test_subset_conditioning_data_dir_is_its_mask_folder(tmp_path):
    """sd-scripts' masked loss reads a subset's masks from conditioning_data_dir (red channel of the
    same-named file); the dataset TOML's key reaches that subset, and only that one."""
    import numpy as np

    from lorakit.data import TrainDataset
    _images(tmp_path / "one", ["p"], size=(64, 64))
    _images(tmp_path / "two", ["r"], size=(64, 64))
    (tmp_path / "masks").mkdir()
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:, 32:, 0] = 255  # right half counts
    Image.fromarray(mask).save(tmp_path / "masks" / "p.png")
    (tmp_path / "dataset.toml").write_text(f"""
[general]
caption_extension = ".txt"
resolution = 64
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{tmp_path / 'one'}"
  conditioning_data_dir = "{tmp_path / 'masks'}"
""", encoding="utf-8")
    p = tmp_path / "config.toml"
    p.write_text(SUBSETS_CONFIG + "masked_loss = true\n", encoding="utf-8")
    cfg = load_config(p)
    assert [s.get("conditioning_data_dir") for s in cfg.dataset_subsets] == [str(tmp_path / "masks")]
    ds = TrainDataset.from_config(cfg)
    b = ds.make_batch([0], 1, 0)
    assert b.masks[0, 0].tolist() == [[0.0] * 4 + [1.0] * 4] * 8


def test_dataset_config_problems_are_all_raised_together(tmp_path):
    """A typo in [general], a subset without image_dir and a refused subset value: one error, three
    lines, each with its fix; no value of the half-read dataset file reaches the config."""
    (tmp_path / "config.toml").write_text(SUBSETS_CONFIG, encoding="utf-8")
    (tmp_path / "dataset.toml").write_text(
        "[general]\nshuffle_captoin = true\n[[datasets]]\nresolution = 512\n"
        "  [[datasets.subsets]]\n  num_repeats = 2\n"
        f'  [[datasets.subsets]]\n  image_dir = "{tmp_path / "a"}"\n  face_crop_aug_range = "2.0,4.0"\n',
        encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "config.toml")
    text = str(e.value)
    assert "3 problems" in text, text
    assert "shuffle_captoin" in text and "shuffle_caption" in text
    assert "no image_dir" in text and "face_crop_aug_range" in text
    assert e.value.file.endswith("dataset.toml")
