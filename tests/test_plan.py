"""`lorakit plan`: folder counts, reg balancing, batches, optimizer steps, warmup and T_max, number by number."""
from __future__ import annotations

import pytest
from PIL import Image

from lorakit.cli import main
from lorakit.config.load import load_config
from lorakit.errors import ConfigError
from lorakit.train.plan import make_plan, plan_for_config


def make_dataset(root, folders):
    for name, n in folders.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(d / f"img{i}.png")
            (d / f"img{i}.txt").write_text(f"caption {i}", encoding="utf-8")
    return root


@pytest.fixture
def data(tmp_path):
    train = make_dataset(tmp_path / "train", {"10_sks dog": 3, "5_cat": 2, "notes": 1})
    reg = make_dataset(tmp_path / "reg", {"1_dog": 7})
    return train, reg


def test_plan_numbers_with_reg(data):
    train, reg = data
    cfg = load_config(None, [f'train_data_dir="{train}"', f'reg_data_dir="{reg}"', "train_batch_size=3",
                             "gradient_accumulation_steps=2", "max_train_epochs=5",
                             'lr_scheduler_type="CosineAnnealingLR"', 'lr_scheduler_args={T_max=5}'])
    r = plan_for_config(cfg)
    # train: 3 x 10 + 2 x 5 = 40; reg: 7 images x 1 repeat, balanced up to 40 samples
    assert (r.num_train_images, r.num_reg_images, r.num_reg_samples) == (40, 7, 40)
    p = r.plan
    assert p.samples_per_epoch == 80
    assert p.batches_per_epoch == 27          # ceil(80 / 3)
    assert p.steps_per_epoch == 14            # ceil(27 / 2)
    assert (p.total_steps, p.epochs, p.decided_by) == (70, 5, "max_train_epochs")
    assert r.warmup_steps == 0 and r.t_max_suggestion == 70
    # warmup as a fraction of the run: 0.1 x 70 steps; a torch scheduler class takes none (train refuses it,
    # and so does plan, before any model loads)
    assert plan_for_config(cfg.model_copy(update={"lr_scheduler_type": None, "lr_warmup_steps": 0.1})).warmup_steps == 7
    with pytest.raises(ConfigError, match="does not take warmup steps"):
        plan_for_config(cfg.model_copy(update={"lr_warmup_steps": 0.1}))
    assert len(r.warnings) == 2 and "notes" in r.warnings[0]  # the folder without a repeats prefix
    assert "T_max=5" in r.warnings[1] and "14.0 times" in r.warnings[1]
    text = "\n".join(r.lines(cfg))
    assert "train 10_sks dog: 3 images x 10 repeats -> 30 samples" in text
    assert "reg   1_dog: 7 images x 1 repeats -> 40 samples" in text
    assert "total optimizer steps: 70 over 5 epoch(s); decided by max_train_epochs" in text


def test_plan_steps_cap_and_default(data):
    train, _ = data
    cfg = load_config(None, [f'train_data_dir="{train}"', "train_batch_size=4", "max_train_epochs=10",
                             "max_train_steps=25"])
    p = plan_for_config(cfg).plan
    assert (p.samples_per_epoch, p.batches_per_epoch, p.steps_per_epoch) == (40, 10, 10)
    assert (p.total_steps, p.epochs) == (25, 3)
    assert p.decided_by.startswith("max_train_steps")
    p = plan_for_config(cfg.model_copy(update={"max_train_epochs": None, "max_train_steps": None})).plan
    assert (p.total_steps, p.epochs) == (1600, 160) and p.decided_by.startswith("default 1600")
    assert make_plan(cfg, 40, 10, num_processes=2).steps_per_epoch == 5


def test_cli_plan(data, capsys):
    train, reg = data
    assert main(["plan", "--data", str(train), "--reg-data", str(reg), "--set", "max_train_epochs=2",
                 "--set", "train_batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "batches per epoch: 10 (batch size 8)" in out           # ceil(80 / 8)
    assert "total optimizer steps: 20 over 2 epoch(s)" in out
    assert "T_max for one cosine decay over the run (CosineAnnealingLR): 20" in out
