"""Batches built when their step comes (main process or DataLoader workers): same losses, no early decoding."""
from __future__ import annotations


import pytest

from lorakit.data.dataset import TrainDataset
from lorakit.data.loader import rank_groups
from lorakit.demo import make_synthetic_dataset
from lorakit.train.loop import train
from train_helpers import Crash, tiny_run_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d"), n_images=3, repeats=2)


# uncached latents, so every batch decodes its images; flip / colour / caption shuffle make
# each draw random (seeded by (seed, epoch, sample id))
DEFAULTS = {"network_dim": 2, "seed": 3, "max_train_epochs": 2,
            "train_batch_size": 2, "cache_latents": False, "flip_aug": True, "color_aug": True,
            "shuffle_caption": True, "learning_rate": 1e-3}


def cfg_for(model, data, out, **kw):
    return tiny_run_config(model, data, out, DEFAULTS, **kw)


def losses_of(cfg, resume=None, extra=()):
    rows = []
    train(cfg, [lambda ev: rows.append(ev.data["loss"]) if ev.kind == "step" else None, *extra],
          overwrite=True, resume=resume)
    return rows


def count_builds(monkeypatch) -> list[int]:
    """Counts TrainDataset.make_batch calls in this process (workers are other processes)."""
    calls = [0]
    orig = TrainDataset.make_batch

    def counted(self, *a, **kw):
        calls[0] += 1
        return orig(self, *a, **kw)

    monkeypatch.setattr(TrainDataset, "make_batch", counted)
    return calls


@pytest.fixture(scope="module")
def straight(tiny_model_dir, data, tmp_path_factory):
    return losses_of(cfg_for(tiny_model_dir, data, tmp_path_factory.mktemp("straight")))


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_give_bit_identical_losses(tiny_model_dir, data, tmp_path, straight, monkeypatch, persistent):
    assert len(straight) == 6  # 3 images x 2 repeats / batch 2 = 3 steps per epoch, 2 epochs
    calls = count_builds(monkeypatch)
    got = losses_of(cfg_for(tiny_model_dir, data, tmp_path, max_data_loader_n_workers=2,
                            persistent_data_loader_workers=persistent))
    assert calls[0] == 0  # every batch was built in a worker process
    assert got == straight  # bit-identical


def test_main_process_builds_each_batch_when_its_step_comes(tiny_model_dir, data, tmp_path, monkeypatch):
    calls = count_builds(monkeypatch)
    at_step = {}
    cfg = cfg_for(tiny_model_dir, data, tmp_path, train_batch_size=1, max_train_epochs=None, max_train_steps=3)
    losses_of(cfg, extra=[lambda ev: at_step.setdefault(ev.step, calls[0]) if ev.kind == "step" else None])
    # one batch per step, none ahead (the old loop built all 6 of the epoch before step 1)
    assert at_step == {1: 1, 2: 2, 3: 3}
    assert calls[0] == 3


def test_resume_mid_epoch_builds_only_the_remaining_batches(tiny_model_dir, data, tmp_path, straight, monkeypatch):
    cfg = cfg_for(tiny_model_dir, data, tmp_path, save_every_n_steps=2, save_state=True)
    rows = []

    def crash(ev):
        if ev.kind == "step":
            rows.append(ev.data["loss"])
            if ev.step == 3:
                raise Crash()  # the state of step 2 is the last one: epoch 1, 2 of its 3 steps done

    with pytest.raises(Crash):
        train(cfg, [crash], overwrite=True)
    calls = count_builds(monkeypatch)
    resumed = losses_of(cfg, resume="auto")
    assert rows[:2] + resumed == straight
    assert calls[0] == 4  # epoch 1's last batch and epoch 2's three; not epoch 1's first two


def test_each_process_gets_only_its_micro_batches():
    # 7 batches, accumulation 2 x 2 processes = 4 per step: steps {0..3}, {4..6}
    assert rank_groups(7, 4, 2, 0) == [[0, 2], [4, 6]]
    assert rank_groups(7, 4, 2, 1) == [[1, 3], [5]]
    assert rank_groups(7, 4, 2, 1, first_group=1) == [[5]]
    # a short last step can leave a process nothing: it still joins the gradient reduction
    assert rank_groups(5, 4, 2, 1) == [[1, 3], []]
    assert rank_groups(3, 1, 1, 0) == [[0], [1], [2]]
