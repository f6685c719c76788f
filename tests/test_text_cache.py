"""Cached text-encoder outputs while the TE is frozen: same losses, each caption string encoded once."""
from __future__ import annotations

import pytest
import torch

import lorakit.models.loader as model_loader
from lorakit.config.load import load_config
from lorakit.demo import make_synthetic_dataset
from lorakit.errors import ConfigError
from lorakit.train.loop import train
from lorakit.models.family import PromptEmbeds
from lorakit.train.text_cache import TextCache

LOAD = model_loader.load_sd_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d"), n_images=2, repeats=3)


def cfg_for(model, data, out, **kw):
    values = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
              "resolution": 64, "network_dim": 2, "seed": 11, "max_train_epochs": 2, "save_precision": "float",
              "learning_rate": 1e-3, "text_encoder_lr": 0.0}
    values.update(kw)
    return load_config(None, [], values)


def run(cfg, monkeypatch=None):
    """Step rows, and the number of rows of each text-encoder forward (a forward hook)."""
    rows, forwards = [], []
    if monkeypatch is not None:
        def hooked(*a, **kw):
            m = LOAD(*a, **kw)
            m.text_encoder.register_forward_hook(lambda mod, args, out: forwards.append(args[0].shape[0]))
            return m

        monkeypatch.setattr(model_loader, "load_sd_model", hooked)
    train(cfg, [lambda ev: rows.append(ev.data) if ev.kind == "step" else None], overwrite=True)
    return rows, forwards


def test_cache_gives_the_losses_of_no_cache_with_shuffled_captions(tiny_model_dir, data, tmp_path):
    # 3 tags shuffled: 6 orders per image, 12 draws over 2 epochs, so some strings repeat
    kw = dict(shuffle_caption=True, train_batch_size=2)
    off, _ = run(cfg_for(tiny_model_dir, data, tmp_path / "off", cache_text_encoder_outputs=False, **kw))
    on, _ = run(cfg_for(tiny_model_dir, data, tmp_path / "on", **kw))  # unset: on, the TE is frozen
    assert len(on) == 6  # 2 images x 3 repeats / batch 2, 2 epochs
    assert [r["loss"] for r in on] == [r["loss"] for r in off]  # bit-identical
    assert "text_cache/hits" not in off[0]["stats"]
    hits = sum(r["stats"]["text_cache/hits"] for r in on)
    misses = sum(r["stats"]["text_cache/misses"] for r in on)
    assert hits + misses == 12 and hits > 0, (hits, misses)


def test_each_caption_string_is_encoded_once(tiny_model_dir, data, tmp_path, monkeypatch):
    rows, forwards = run(cfg_for(tiny_model_dir, data, tmp_path / "on", train_batch_size=1), monkeypatch)
    assert len(rows) == 12  # 2 images x 3 repeats x 2 epochs, batch 1
    # the run's two caption strings are known before it starts: one forward of both, then every
    # step reads its row (train/loop.py place_text_encoders)
    assert forwards == [2]
    assert sum(r["stats"]["text_cache/hits"] for r in rows) == 12
    assert sum(r["stats"]["text_cache/misses"] for r in rows) == 0
    assert rows[-1]["stats"]["text_cache/rows"] == 2
    _, uncached = run(cfg_for(tiny_model_dir, data, tmp_path / "off", train_batch_size=1,
                              cache_text_encoder_outputs=False), monkeypatch)
    assert uncached == [1] * 12  # one forward per step without the cache


def test_true_with_a_trained_text_encoder_is_refused_before_the_model_loads(tiny_model_dir, data, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(model_loader, "load_sd_model", lambda *a, **kw: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError) as e:
        train(cfg_for(tiny_model_dir, data, tmp_path, text_encoder_lr=1e-4, cache_text_encoder_outputs=True), [])
    assert e.value.key == "cache_text_encoder_outputs" and "text_encoder_lr = 0" in e.value.fix


def test_lru_keeps_the_cap_and_the_batch_order():
    # a row: states (4, 8) and a pooled vector (8,), 160 bytes in float32; both are cached
    cache = TextCache(max_mb=330 / 2**20)  # room for 2 rows
    calls = []

    def enc(strings):
        calls.append(list(strings))
        return PromptEmbeds(torch.stack([torch.full((4, 8), float(len(s))) for s in strings]),
                            torch.stack([torch.full((8,), -float(len(s))) for s in strings]))

    out = cache.encode(["a", "bb", "a"], enc)
    assert calls == [["a", "bb"]]  # a repeated string in one batch is encoded once
    assert out.context[:, 0, 0].tolist() == [1.0, 2.0, 1.0] and out.pooled[:, 0].tolist() == [-1.0, -2.0, -1.0]
    cache.encode(["a"], enc)  # "a" is now the most recent: "ccc" evicts "bb"
    cache.encode(["ccc"], enc)
    assert list(cache.rows) == ["a", "ccc"] and cache.bytes == 2 * 160
    out = cache.encode(["bb", "a"], enc)
    assert calls[-1] == ["bb"] and out.pooled[:, 0].tolist() == [-2.0, -1.0]
    assert cache.take_stats() == {"text_cache/hits": 2, "text_cache/misses": 5, "text_cache/rows": 2}


@pytest.mark.parametrize("listed", [True, False])
def test_frozen_text_encoder_leaves_the_device_when_every_caption_is_cached(tiny_model_dir, data, tmp_path,
                                                                           monkeypatch, listed):
    """Fixed captions: each is encoded before the first step and the encoder goes to the host; a
    sample brings it back for its prompt. Too many strings to list (shuffled captions): it stays
    and encodes as the steps need. The device is the host here, so the moves are what is checked."""
    from transformers import CLIPTextModel

    import lorakit.train.text_cache as text_cache

    if not listed:
        monkeypatch.setattr(text_cache, "MAX_PREFILL_STRINGS", 1)  # 2 captions: more than it lists
    sent: list[tuple[str, str]] = []
    phase = ["setup"]
    real_to = CLIPTextModel.to
    monkeypatch.setattr(CLIPTextModel, "to", lambda self, *a, **k: (
        sent.append((phase[0], str(a[0]))) if a and isinstance(a[0], (str, torch.device)) else None,  # moves only
        real_to(self, *a, **k))[1])

    def on(ev):
        if ev.kind == "step":
            phase[0] = f"after step {ev.step}"
            rows.append(ev.data)
    rows: list[dict] = []
    train(cfg_for(tiny_model_dir, data, tmp_path, train_batch_size=1, max_train_steps=2, max_train_epochs=None,
                  sample_prompts="a red circle --w 64 --h 64 --s 2", sample_every_n_steps=2), [on], overwrite=True)
    assert len(list((tmp_path / "sample").glob("*.png"))) == 1
    setup = [d for p, d in sent if p == "setup"]
    # the sample: over for all its prompts and again (a no-op) for its one image, then home twice
    assert [d for p, d in sent if p == "after step 2"] == ["cpu"] * 4
    if listed:
        assert sum(r["stats"]["text_cache/misses"] for r in rows) == 0
        assert setup == ["cpu", "cpu"]  # setup leaves it on the host: it visits the device for the captions
    else:
        assert sum(r["stats"]["text_cache/misses"] for r in rows) == 2  # each caption on first use
        assert setup == ["cpu"]  # to the device, for good


RED, BLUE = "lkshape, red circle, simple background", "lkshape, blue square, simple background"


@pytest.mark.parametrize("options, epochs, expected", [
    # fixed captions: one epoch's 6 draws list both strings, however long the run
    ({}, range(1, 1001), [RED, BLUE]),
    # every 3rd epoch drops every caption: epochs 1 and 3 say it all
    ({"dropout_every_n_epochs": 3}, range(1, 1001), [RED, BLUE, ""]),
    ({"dropout_every_n_epochs": 3}, range(1, 3), [RED, BLUE]),
    # shuffled (all three tags kept in place here, but a shuffle draws): each epoch can differ,
    # and 1000 epochs are past the bound of draws
    ({"shuffle": True, "keep_tokens": 3}, range(1, 1001), None),
    ({"shuffle": True, "keep_tokens": 3}, range(1, 3), [RED, BLUE]),
])
def test_run_captions_lists_fixed_captions_from_one_epoch(data, monkeypatch, options, epochs, expected):
    import lorakit.train.text_cache as text_cache
    from lorakit.data import TrainDataset, scan_folders
    from lorakit.data.captions import CaptionOptions

    monkeypatch.setattr(text_cache, "MAX_LISTED_DRAWS", 100)
    ds = TrainDataset(scan_folders(data), (64, 64), caption_options=CaptionOptions(**options))
    assert len(ds) == 6  # 2 images x 3 repeats
    assert text_cache.run_captions(ds, epochs, seed=5) == expected
