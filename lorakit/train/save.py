"""Writing adapter files with kohya's names and ss_* metadata (sd-scripts' set, docs/adapters.md)."""
from __future__ import annotations

import datetime
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters.registry import get_algorithm
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


def base_model_version(run: "Run") -> str:
    m = run.model
    if not m.v2:
        return "sd_v1"
    return "sd_v2_v" if m.v_parameterization else "sd_v2"


def build_metadata(run: "Run", step: int, epoch: int) -> dict[str, str]:
    cfg, plan, net, index = run.cfg, run.plan, run.network, run.index
    legacy, full = model_hashes(run)
    dim, alpha = get_algorithm(cfg.network_type).metadata_dims(cfg)  # "None" for iA3/full; OFT: the constraint
    md = {
        "ss_session_id": str(run.seed),
        "ss_training_started_at": str(run.started_at),
        "ss_training_finished_at": str(time.time()),
        "ss_output_name": cfg.output_name,
        "ss_learning_rate": str(cfg.learning_rate),
        "ss_text_encoder_lr": str(cfg.resolved_text_encoder_lr()),
        "ss_unet_lr": str(cfg.resolved_unet_lr()),
        "ss_num_train_images": str(index.num_train_images),
        "ss_num_reg_images": str(index.num_reg_images),
        "ss_num_batches_per_epoch": str(plan.batches_per_epoch),
        "ss_num_epochs": str(plan.epochs),
        "ss_gradient_checkpointing": str(cfg.gradient_checkpointing),
        "ss_gradient_accumulation_steps": str(cfg.gradient_accumulation_steps),
        "ss_max_train_steps": str(plan.total_steps),
        "ss_lr_warmup_steps": str(cfg.lr_warmup_steps),
        "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_network_module": net.network_module_name,
        "ss_network_dim": dim,
        "ss_network_alpha": alpha,
        "ss_network_args": json.dumps(net.network_args),
        "ss_network_dropout": str(cfg.network_dropout),
        "ss_mixed_precision": cfg.mixed_precision,
        "ss_v2": str(run.model.v2),
        "ss_base_model_version": base_model_version(run),
        "ss_clip_skip": str(cfg.clip_skip),
        "ss_max_token_length": str(cfg.max_token_length),
        "ss_cache_latents": str(cfg.cache_latents),
        "ss_seed": str(run.seed),
        "ss_noise_offset": str(cfg.noise_offset or None),
        "ss_adaptive_noise_scale": str(cfg.adaptive_noise_scale or None),
        "ss_multires_noise_iterations": str(cfg.multires_noise_iterations or None),
        "ss_multires_noise_discount": str(cfg.multires_noise_discount),
        "ss_min_snr_gamma": str(cfg.min_snr_gamma or None),
        "ss_ip_noise_gamma": str(cfg.ip_noise_gamma or None),
        "ss_noise_offset_random_strength": str(cfg.noise_offset_random_strength),
        "ss_ip_noise_gamma_random_strength": str(cfg.ip_noise_gamma_random_strength),
        "ss_full_fp16": str(cfg.full_fp16),
        "ss_fp8_base": str(cfg.fp8_base),
        "ss_zero_terminal_snr": str(cfg.zero_terminal_snr),
        "ss_debiased_estimation": str(cfg.debiased_estimation_loss),
        "ss_loss_type": cfg.loss_type,
        "ss_huber_c": str(cfg.huber_c),
        "ss_training_comment": str(cfg.training_comment),
        "ss_optimizer": describe_optimizer(cfg),
        "ss_max_grad_norm": str(cfg.max_grad_norm),
        "ss_scale_weight_norms": str(cfg.scale_weight_norms),
        "ss_prior_loss_weight": str(cfg.prior_loss_weight),
        "ss_resolution": f"({cfg.resolution[0]}, {cfg.resolution[1]})",
        "ss_batch_size_per_device": str(cfg.train_batch_size),
        "ss_total_batch_size": str(cfg.train_batch_size * cfg.gradient_accumulation_steps
                                   * run.accelerator.num_processes),
        "ss_shuffle_caption": str(cfg.shuffle_caption),
        "ss_keep_tokens": str(cfg.keep_tokens),
        "ss_enable_bucket": str(cfg.enable_bucket),
        "ss_bucket_no_upscale": str(cfg.bucket_no_upscale),
        "ss_min_bucket_reso": str(cfg.min_bucket_reso),
        "ss_max_bucket_reso": str(cfg.max_bucket_reso),
        "ss_bucket_info": json.dumps(run.dataset.bucket_info() if cfg.enable_bucket else None),
        "ss_color_aug": str(cfg.color_aug),
        "ss_flip_aug": str(cfg.flip_aug),
        "ss_random_crop": str(cfg.random_crop),
        "ss_caption_dropout_rate": str(cfg.caption_dropout_rate),
        "ss_caption_dropout_every_n_epochs": str(cfg.caption_dropout_every_n_epochs),
        "ss_caption_tag_dropout_rate": str(cfg.caption_tag_dropout_rate),
        "ss_dataset_dirs": json.dumps(index.dataset_dirs()),
        "ss_tag_frequency": json.dumps(index.tag_frequency()),
        "ss_sd_model_name": Path(cfg.pretrained_model_name_or_path).name,
        "ss_sd_model_hash": legacy,
        "ss_new_sd_model_hash": full,
        "ss_num_validation_images": str(len(getattr(index, "validation_items", []) or [])),
        "ss_validation_split": str(cfg.validation_split),
        "ss_validation_seed": str(cfg.validation_seed),
        "ss_validate_every_n_epochs": str(cfg.validate_every_n_epochs),
        "ss_alpha_mask": str(cfg.alpha_mask),
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": ("stable-diffusion-v2-768-v" if base_model_version(run) == "sd_v2_v"
                                   else "stable-diffusion-v2-512" if run.model.v2
                                   else "stable-diffusion-v1") + "/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": cfg.output_name,
        "modelspec.resolution": f"{cfg.resolution[0]}x{cfg.resolution[1]}",
        # sd-scripts: the start time in local ISO-8601 without microseconds; clip skip as the encoder layer
        "modelspec.date": datetime.datetime.fromtimestamp(int(run.started_at)).isoformat(),
        "modelspec.prediction_type": "v" if run.model.v_parameterization else "epsilon",
        "modelspec.encoder_layer": str(cfg.clip_skip),
    }
    if cfg.min_timestep is not None or cfg.max_timestep is not None:
        high = 1000 if cfg.max_timestep is None else cfg.max_timestep
        md["modelspec.timestep_range"] = f"{cfg.min_timestep or 0},{high}"
    if cfg.network_weights:  # not in kohya's set: which file the run continued (base name only, no folders)
        md["ss_network_weights"] = Path(cfg.network_weights).name
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
