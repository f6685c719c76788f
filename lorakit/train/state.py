"""Training state: save, find, check and load, so a resumed run continues bit-identically.

A state folder holds the adapter (float32), the optimizer (Prodigy's d and all its
state), the scheduler, every RNG and the position in the data order. Data order and
noise are functions of (seed, epoch, position), so the position is all the data
pipeline needs. Folders are written under a temporary name and renamed into place.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config.schema import TrainConfig
from ..errors import ConfigError, UserError
from ..optim.optimizers import eval_mode, train_mode

if TYPE_CHECKING:
    from .setup import Run

# Keys that may change between a run and its resumption.
RESUME_SAFE = {
    "max_train_steps", "max_train_epochs", "save_every_n_epochs", "save_every_n_steps", "save_state",
    "save_last_n_steps", "save_last_n_epochs", "save_last_n_steps_state", "save_last_n_epochs_state",
    "sample_prompts", "sample_every_n_epochs",
    "sample_every_n_steps", "sample_at_first", "sample_sampler", "dlr_spike_factor", "dlr_spike_window",
    "dlr_spike_action", "logging_dir", "training_comment", "max_data_loader_n_workers",
    "persistent_data_loader_workers", "output_dir", "pretrained_model_name_or_path", "train_data_dir",
    "reg_data_dir", "vae", "cache_text_encoder_outputs", "validate_every_n_steps", "max_validation_steps",
    "validate_every_n_epochs",
    # the adapter comes from the state: network_weights is not read again on resume (so the file may
    # have moved); dim_from_weights stays checked, the ranks are the state's either way
    "network_weights",
    # speed only: the same step, computed faster (lorakit/train/speed.py)
    "torch_compile", "dynamo_backend", "torch_compile_mode", "torch_compile_scope", "channels_last",
}
# the ranks a run built (cfg may have taken them from network_weights), saved beside the given config
NETWORK_DIM_KEYS = ("network_dim", "network_alpha", "conv_dim", "conv_alpha")


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    groups_done: int = 0  # optimizer steps done within `epoch`


class Diverged(Exception):
    def __init__(self, loss: float, what: str = "loss"):
        self.loss, self.what = loss, what
        super().__init__(f"{what} is {loss}")

    def user_error(self, step: int, saved: Path) -> UserError:
        return UserError(
            f"the {self.what} became {self.loss} at step {step}; training stopped before that step changed the "
            "adapter",
            file=str(saved), key="learning_rate",
            fix="the adapter from the last good step is saved there. Usual causes: a learning rate too high "
                "(lower learning_rate / unet_lr, or d_coef for Prodigy), fp16 overflow (use mixed_precision = "
                "'bf16' or 'no'), or a broken image in the data (run `lorakit doctor`).")


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def save_state(run: "Run", name: str) -> Path:
    final = run.output_dir / name
    if not run.accelerator.is_main_process:
        return final
    tmp = run.output_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with eval_mode(run.optimizer):  # adapter and optimizer state saved in the same mode (schedule-free)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in run.network.state_dict().items()}
        save_file(tensors, str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   tmp / "optimizer.pt")
    np_state = np.random.get_state()
    progress = getattr(run, "progress", Progress())
    given = getattr(run, "given_cfg", None) or run.cfg
    meta = {"progress": asdict(progress), "seed": run.seed, "config": _config_dict(given),
            "network_dims": {k: getattr(run.cfg, k) for k in NETWORK_DIM_KEYS},
            "random_state": _py_state(), "numpy_state": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        old = run.output_dir / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    run.bus.emit("save", progress.step, progress.epoch, path=str(final), state=True)
    return final


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def find_state(output_dir: str | Path, resume: str) -> Path:
    """`resume` is a state folder, or "auto" for the newest state folder in output_dir."""
    if resume != "auto":
        p = Path(resume)
        if not (p / "state.json").is_file():
            raise ConfigError("not a lorakit state folder (no state.json)", file=str(p), key="resume",
                              fix="give a folder named <output_name>-...-state written with save_state = true")
        return p
    states = [p for p in Path(output_dir).glob("*-state") if (p / "state.json").is_file()]
    if not states:
        raise ConfigError("no saved state to resume from", file=str(output_dir), key="resume",
                          fix="train with save_state = true (and save_every_n_steps / _epochs), then --resume")
    return max(states, key=lambda p: json.loads((p / "state.json").read_text())["progress"]["step"])


def check_resume_config(cfg: TrainConfig, state_dir: Path) -> TrainConfig:
    """Refuse a changed config unless the change is safe; returns cfg with the state's seed."""
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    old, new = meta["config"], _config_dict(cfg)
    for key in sorted(set(old) | set(new)):
        if key in RESUME_SAFE or key == "seed" and new.get("seed") is None:
            continue
        if old.get(key) != new.get(key):
            raise ConfigError(f"differs from the run being resumed: was {old.get(key)!r}, now {new.get(key)!r}",
                              file=str(state_dir), key=key,
                              fix="resume with the same setting, or start a new run in another output_dir")
    return cfg.model_copy(update={"seed": meta["seed"]})


def saved_network_dims(cfg: TrainConfig, state_dir: Path) -> TrainConfig:
    """cfg with the ranks the state's run built (states without them: cfg as is)."""
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    dims = meta.get("network_dims")
    return cfg.model_copy(update={k: dims[k] for k in NETWORK_DIM_KEYS if k in dims}) if dims else cfg


def load_state(run: "Run", state_dir: Path) -> Progress:
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    run.network.load_state_dict(load_file(str(state_dir / "adapter.safetensors")), strict=True)
    blob = torch.load(state_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    run.optimizer.load_state_dict(blob["optimizer"])
    run.scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    version, internal, gauss = meta["random_state"]
    random.setstate((version, tuple(internal), gauss))
    ns = meta["numpy_state"]
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
    train_mode(run.optimizer)  # the state was saved in eval mode (schedule-free optimizers)
    run.progress = Progress(**meta["progress"])
    return run.progress
