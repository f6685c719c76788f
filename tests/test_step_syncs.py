"""Device -> host reads per optimizer step (docs/speed.md "Per step").

Each read of a device value makes the host wait until the device has run everything queued so far,
so a step should read once: the loss and the gradient norm together. On the CPU there is no device
to wait for, so the proxy counts the reads themselves: Tensor.item / tolist / float() / int() /
bool() / numpy() called from lorakit's code during one step. Excluded by design: the per-sample
noise and timestep draws (train/noise.py), which read tensors of a CPU generator, and torch's own
optimizers, which keep their step counters on the host.
"""
from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from lorakit.demo import make_synthetic_dataset
from lorakit.train.loop import train
from train_helpers import tiny_run_config

LORAKIT = Path(__file__).resolve().parents[1] / "lorakit"
READS = {"item", "tolist", "__float__", "__int__", "__bool__", "numpy", "__index__"}
TORCH = Path(torch.__file__).resolve().parent
CPU_DRAWS = {LORAKIT / "train" / "noise.py"}


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.where: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            # the innermost frame outside torch (Tensor.__float__ is Python code in torch, tolist is not)
            outside = [f for f in traceback.extract_stack(limit=6)[:-1]
                       if TORCH not in Path(f.filename).resolve().parents]
            path = Path(outside[-1].filename).resolve() if outside else TORCH
            if path.is_relative_to(LORAKIT) and path not in CPU_DRAWS:
                self.where[f"{path.relative_to(LORAKIT)}:{outside[-1].lineno}"] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syncs"), n_images=4, repeats=1)


def reads_in_step_2(model, data, out, **kw) -> collections.Counter:
    mode = HostReads()

    def on(ev):
        if ev.kind == "step" and ev.step == 1:
            mode.__enter__()
        elif ev.kind == "step" and ev.step == 2:
            mode.__exit__(None, None, None)
    cfg = tiny_run_config(model, data, out, {"network_type": "lora", "network_dim": 4, "network_alpha": 4,
                                              "max_train_steps": 2, "max_grad_norm": 1.0, "sample_prompts": None},
                          **kw)
    train(cfg, [on], overwrite=True)
    return mode.where


def test_adamw_step_reads_the_device_once(tiny_model_dir, data, tmp_path):
    where = reads_in_step_2(tiny_model_dir, data, tmp_path, optimizer_type="AdamW", learning_rate=1e-3)
    assert sum(where.values()) == 1, where  # loss and gradient norm in one read


def test_prodigy_step_reads_the_device_twice(tiny_model_dir, data, tmp_path):
    # the loss/norm read before the update, and d and k for the log after it (what the update computed;
    # k for the bias correction): one read for both groups
    where = reads_in_step_2(tiny_model_dir, data, tmp_path, optimizer_type="Prodigy", learning_rate=1.0,
                            optimizer_args=["implementation=fast", "use_bias_correction=True"], text_encoder_lr=0.5)
    assert sum(where.values()) == 2, where


def test_max_norm_reads_every_module_norm_at_once(tiny_model_dir, data, tmp_path):
    where = reads_in_step_2(tiny_model_dir, data, tmp_path, optimizer_type="AdamW", learning_rate=1e-3,
                            scale_weight_norms=1.0)
    assert sum(where.values()) == 2, where  # was 1 + one per adapted module (61 here)


def test_prodigy_with_max_norm_reads_d_and_the_norms_together(tiny_model_dir, data, tmp_path):
    # the second seed guide's shape (Prodigy + scale_weight_norms): was 3 reads, d's and the norms'
    where = reads_in_step_2(tiny_model_dir, data, tmp_path, optimizer_type="Prodigy", learning_rate=1.0,
                            optimizer_args=["implementation=fast", "use_bias_correction=True"],
                            scale_weight_norms=1.0)
    assert sum(where.values()) == 2, where


def test_the_counter_sees_lorakit_reads_only():
    from types import SimpleNamespace

    from lorakit.train.loop import group_lrs

    run = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"lr": torch.tensor(0.5)}]))
    with HostReads() as mode:
        float(torch.ones(()))  # this file is not lorakit's
        assert group_lrs(run) == {"0": 0.5}  # float() of a tensor lr (Adafactor's relative_step)
    assert sum(mode.where.values()) == 1 and next(iter(mode.where)).startswith("train/loop.py")
