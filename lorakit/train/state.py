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

from ..checkpoints import STATE_GLOB
from ..config.fields import RESUME_LR, RESUME_NOTED, RESUME_SAFE
from ..config.schema import TrainConfig, fields_with
from ..config.sections.network import DIM_KEYS
from ..errors import ConfigError, UserError
from ..io import disk_error, file_mode
from ..optim.optimizers import eval_mode, train_mode

if TYPE_CHECKING:
    from .run import Run



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


def save_state(run: "Run", name: str, progress: Progress) -> Path:
    """The state after `progress` (the last finished step) in the folder `name` of the output folder."""
    final = run.output_dir / name
    if not run.accelerator.is_main_process:
        return final
    tmp = run.output_dir / f".{name}.tmp"
    with eval_mode(run.optimizer):  # adapter and optimizer state saved in the same mode (schedule-free)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in run.network.state_dict().items()}
        blob = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    need = _tensor_bytes(tensors) + _tensor_bytes(blob) + 65536  # + the zip and JSON around them
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "adapter.safetensors"))
        torch.save(blob, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state_meta(run, progress)), encoding="utf-8")
        for f in tmp.iterdir():
            os.chmod(f, file_mode())  # safetensors writes 0600 whatever the umask
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = disk_error(e, final, need)
        if err is None:
            raise
        raise err from e
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


def _run_fingerprint(run: "Run") -> dict:
    if run.caches.dataset_fingerprint is None:  # once per run: the dataset does not change while it trains
        run.caches.dataset_fingerprint = dataset_fingerprint(run.given_cfg)
    return run.caches.dataset_fingerprint


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def state_meta(run: "Run", progress: Progress) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"progress": asdict(progress), "seed": run.seed, "config": _config_dict(run.given_cfg),
            "network_dims": run.cfg.model_dump(include=set(DIM_KEYS)),  # the ranks built, beside the given cfg
            "dataset": _run_fingerprint(run),
            "random_state": _py_state(), "numpy_state": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


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
    states = [p for p in Path(output_dir).glob(STATE_GLOB) if (p / "state.json").is_file()]
    if not states:
        raise ConfigError("no saved state to resume from", file=str(output_dir), key="resume",
                          fix="train with save_state = true (and save_every_n_steps / _epochs), then --resume")
    return max(states, key=lambda p: json.loads((p / "state.json").read_text())["progress"]["step"])


def check_resume_config(cfg: TrainConfig, state_dir: Path) -> tuple[TrainConfig, list[str]]:
    """Refuse a changed config unless every change is safe, naming every unsafe change at once.
    Returns (cfg with the state's seed, a warning per safe change worth telling)."""
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    old, new = meta["config"], _config_dict(cfg)
    bad, bad_keys, warnings = [], [], []
    resume_kinds = fields_with("resume")
    for key in sorted(set(old) | set(new)):
        if key == "seed" and new.get("seed") is None or old.get(key) == new.get(key):
            continue
        change = f"{key}: was {old.get(key)!r}, now {new.get(key)!r}"
        kind = resume_kinds.get(key)
        if kind == RESUME_LR and _lr_kept_sign(old, new, key):  # load_state rescales the scheduler's base rates
            warnings.append(f"resume: {change} (takes effect from the resumed step on)")
        elif kind == RESUME_NOTED:
            warnings.append(f"resume: {change}")
        elif kind != RESUME_SAFE:
            bad.append(change)
            bad_keys.append(key)
    if bad:
        raise ConfigError(f"{len(bad)} setting(s) differ from the run being resumed:\n    " + "\n    ".join(bad),
                          file=str(state_dir), key=bad_keys[0] if len(bad_keys) == 1 else "resume",
                          fix="resume with the same settings, or start a new run in another output_dir")
    return cfg.model_copy(update={"seed": meta["seed"]}), warnings


def _lr_kept_sign(old: dict, new: dict, key: str) -> bool:
    """A learning rate may change, but not to or from 0: that adds or drops a parameter group."""
    def resolved(c: dict, which: str) -> float:
        v = c.get(which)
        return float(c.get("learning_rate") or 0) if v is None else float(v)
    return all((resolved(old, k) > 0) == (resolved(new, k) > 0) for k in ("unet_lr", "text_encoder_lr"))


def dataset_fingerprint(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Per folder of the config's dataset: repeats and every image with a hash of its caption, so a
    resume can name what changed. Images are listed, not opened (cheap, and unreadable ones count
    the same way both times); the scan's warnings were shown by the run's own scan."""
    import hashlib
    import logging

    from ..data.folders import scan_config

    log = logging.getLogger("lorakit.data")
    was, log.disabled = log.disabled, True
    try:
        index = scan_config(cfg, check_images=False)
    finally:
        log.disabled = was
    out: dict[str, dict[str, Any]] = {}
    for f in index.folders:
        out[("reg/" if f.is_reg else "") + f.name] = {"repeats": f.repeats, "images": {}}
    for it in getattr(index, "_all_captioned", None) or index.items:
        f = out.setdefault(("reg/" if it.is_reg else "") + it.subset, {"repeats": it.repeats, "images": {}})
        f["images"][it.path.name] = hashlib.sha256(it.caption.encode("utf-8")).hexdigest()[:12]
    return out


def dataset_changes(old: dict, new: dict, limit: int = 8) -> list[str]:
    """What differs between two dataset fingerprints, one line per change (the first `limit`)."""
    out = []
    for folder in sorted(set(old) | set(new)):
        if folder not in new:
            out.append(f"folder {folder} is gone")
        elif folder not in old:
            out.append(f"folder {folder} is new")
        else:
            a, b = old[folder], new[folder]
            if a["repeats"] != b["repeats"]:
                out.append(f"{folder}: repeats {a['repeats']} -> {b['repeats']}")
            for name in sorted(set(a["images"]) | set(b["images"])):
                if name not in b["images"]:
                    out.append(f"{folder}/{name} removed")
                elif name not in a["images"]:
                    out.append(f"{folder}/{name} added")
                elif a["images"][name] != b["images"][name]:
                    out.append(f"{folder}/{name}: caption changed")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def check_resume_data(cfg: TrainConfig, state_dir: Path, allow_changed: bool) -> list[str]:
    """Refuse a dataset that differs from the one the state was trained on (unless allowed: then a
    warning). States written before fingerprints were kept pass."""
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    if "dataset" not in meta:
        return []
    changes = dataset_changes(meta["dataset"], dataset_fingerprint(cfg))
    if not changes:
        return []
    if allow_changed:
        return ["resume: the dataset changed (--resume-changed-data): " + "; ".join(changes)]
    raise ConfigError("the dataset differs from the one the resumed run trained on:\n    " + "\n    ".join(changes),
                      file=str(state_dir), key="train_data_dir",
                      fix="resume with the same data, or pass --resume-changed-data to continue on the new data "
                          "(the data order then differs from a straight run)")


def saved_network_dims(cfg: TrainConfig, state_dir: Path) -> TrainConfig:
    """cfg with the ranks the state's run built (states without them: cfg as is)."""
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    dims = meta.get("network_dims")
    return cfg.model_copy(update={k: dims[k] for k in DIM_KEYS if k in dims}) if dims else cfg


def load_state(run: "Run", state_dir: Path) -> Progress:
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    run.network.load_state_dict(load_file(str(state_dir / "adapter.safetensors")), strict=True)
    blob = torch.load(state_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    wanted = [g.get("initial_lr", g["lr"]) for g in run.optimizer.param_groups]  # this run's config
    run.optimizer.load_state_dict(blob["optimizer"])
    run.scheduler.load_state_dict(blob["scheduler"])
    _rescale_lrs(run, wanted)
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    version, internal, gauss = meta["random_state"]
    random.setstate((version, tuple(internal), gauss))
    ns = meta["numpy_state"]
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
    train_mode(run.optimizer)  # the state was saved in eval mode (schedule-free optimizers)
    return Progress(**meta["progress"])


def _rescale_lrs(run: "Run", wanted: list[float]) -> None:
    """A learning rate changed on resume: scale the group's lr, initial_lr and the scheduler's base
    lr by new/old, so the schedule goes on from the resumed step at the new height."""
    base = getattr(run.scheduler, "base_lrs", None)
    for i, (g, new) in enumerate(zip(run.optimizer.param_groups, wanted)):
        old = g.get("initial_lr", g["lr"])
        if old == new or not old:
            continue
        ratio = new / old
        g["lr"] *= ratio
        if "initial_lr" in g:
            g["initial_lr"] = new
        if base is not None and i < len(base):
            base[i] = base[i] * ratio
