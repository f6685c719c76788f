"""Writing adapter files with kohya's names and ss_* metadata (sd-scripts' set, docs/adapters.md)."""
from __future__ import annotations

import datetime
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters.registry import get_algorithm
from ..config.fields import SS_FILE_NAME, SS_NEUTRAL_NONE
from ..config.schema import TrainConfig, field_attr, fields_with
from ..optim.optimizers import describe_optimizer, eval_mode
from .run import DTYPES

if TYPE_CHECKING:
    from .run import Run


def legacy_model_hash(path: Path) -> str:
    """A1111's old model hash: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits."""
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_hashes(run: "Run") -> tuple[str, str]:
    if run.caches.model_hashes is None:
        p = Path(run.cfg.pretrained_model_name_or_path)
        run.caches.model_hashes = (legacy_model_hash(p), file_sha256(p)) if p.is_file() else ("", "")
    return run.caches.model_hashes


def config_metadata(cfg: TrainConfig) -> dict[str, str]:
    """The ss_* keys the schema's fields declare (F(..., ss=...)), written as each declares."""
    md, values = {}, cfg.model_dump()
    for name, key in fields_with("ss").items():
        value, how = values[name], field_attr(name, "ss_write")
        if how == SS_FILE_NAME:
            if value is not None:
                md[key] = Path(value).name  # the name only: folders can hold user names
        elif how == SS_NEUTRAL_NONE and value == field_attr(name, "neutral"):
            md[key] = "None"
        else:
            md[key] = str(value)
    return md


def build_metadata(run: "Run", step: int, epoch: int) -> dict[str, str]:
    """sd-scripts' ss_* set and ModelSpec 1.0.1: the config's fields, then what the run worked out."""
    cfg, plan, index = run.cfg, run.plan, run.index
    legacy, full = model_hashes(run)
    dim, alpha = get_algorithm(cfg.network_type).metadata_dims(cfg)  # "None" for iA3/full; OFT: the constraint
    md = config_metadata(cfg)
    md.update({
        "ss_session_id": str(run.seed), "ss_seed": str(run.seed),
        "ss_training_started_at": str(run.started_at), "ss_training_finished_at": str(time.time()),
        "ss_text_encoder_lr": str(cfg.resolved_text_encoder_lr()), "ss_unet_lr": str(cfg.resolved_unet_lr()),
        "ss_num_train_images": str(index.num_train_images), "ss_num_reg_images": str(index.num_reg_images),
        "ss_num_validation_images": str(len(getattr(index, "validation_items", []) or [])),
        "ss_num_batches_per_epoch": str(plan.batches_per_epoch), "ss_num_epochs": str(plan.epochs),
        "ss_max_train_steps": str(plan.total_steps), "ss_steps": str(step), "ss_epoch": str(epoch),
        "ss_network_module": run.network.network_module_name, "ss_network_dim": dim, "ss_network_alpha": alpha,
        "ss_network_args": json.dumps(run.network.network_args),
        "ss_v2": str(run.model.v2), "ss_base_model_version": run.model.base_model_version,
        "ss_optimizer": describe_optimizer(cfg),
        "ss_total_batch_size": str(cfg.train_batch_size * cfg.gradient_accumulation_steps
                                   * run.accelerator.num_processes),
        "ss_bucket_info": json.dumps(run.dataset.bucket_info() if cfg.enable_bucket else None),
        "ss_dataset_dirs": json.dumps(index.dataset_dirs()), "ss_tag_frequency": json.dumps(index.tag_frequency()),
        "ss_sd_model_hash": legacy, "ss_new_sd_model_hash": full,
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": run.model.modelspec_architecture + "/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": cfg.output_name,
        "modelspec.resolution": f"{cfg.resolution[0]}x{cfg.resolution[1]}",
        # sd-scripts: the start time in local ISO-8601 without microseconds; clip skip as the encoder layer
        "modelspec.date": datetime.datetime.fromtimestamp(int(run.started_at)).isoformat(),
        "modelspec.prediction_type": "v" if run.model.v_parameterization else "epsilon",
        "modelspec.encoder_layer": str(cfg.clip_skip),
    })
    if cfg.min_timestep is not None or cfg.max_timestep is not None:
        high = 1000 if cfg.max_timestep is None else cfg.max_timestep
        md["modelspec.timestep_range"] = f"{cfg.min_timestep or 0},{high}"
    return md


def save_adapter(run: "Run", step: int, epoch: int, name: str) -> Path:
    from ..adapters.file import save_adapter_file

    path = run.output_dir / f"{name}.safetensors"
    if not run.accelerator.is_main_process:
        return path
    with eval_mode(run.optimizer):  # schedule-free optimizers: save the evaluated weights
        tensors = run.network.state_dict_to_save(DTYPES[run.cfg.save_precision])
    # preflight refused existing files unless --overwrite; files of this run replace each other
    save_adapter_file(path, tensors, build_metadata(run, step, epoch), overwrite=True)
    run.bus.emit("save", step, epoch, path=str(path))
    return path
