"""Everything before the first step: checks that need no model, then model, adapters, data, optimizer."""
from __future__ import annotations

import os
import random
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from ..adapters.network import check_network_config
from ..config.schema import TrainConfig
from ..errors import ConfigError
from ..io import make_dir
from ..transfer import on_device
from ..events import EventBus
from ..optim.optimizers import build_optimizer, optimizer_warnings, resolve_optimizer
from ..optim.schedulers import build_scheduler, scheduler_warnings, warmup_steps_for
from ..data.validate import validate_data_config
from .noise import NoiseSettings, training_scheduler, validate_noise_config
from .plan import check_scheduler, make_plan, text_encoder_stop_step
from .run import DTYPES, Run, TextEncoderState
from .settings import adapter_dtype, allow_fp16_gradients, check_train_settings, store_base_in_fp8
from .speed import (apply_speed_options, check_compile_device, checkpoint_transformer_units, shape_warnings,
                    validate_speed_config)

if TYPE_CHECKING:
    from ..adapters.network import AdapterNetwork
    from ..adapters.weights import WeightsFile
    from ..models.family import ModelFamily

def preflight(cfg: TrainConfig, overwrite: bool):
    """Checks that need no model: paths, output folder, data layout. Returns the dataset index."""
    from ..data.folders import scan_config

    if not cfg.pretrained_model_name_or_path:
        raise ConfigError("no model given", key="pretrained_model_name_or_path",
                          fix="pass --model PATH (a diffusers folder or a .safetensors/.ckpt file)")
    if not Path(cfg.pretrained_model_name_or_path).exists():
        raise ConfigError(f"model path '{cfg.pretrained_model_name_or_path}' does not exist",
                          key="pretrained_model_name_or_path", fix="check the path given with --model")
    if not cfg.train_data_dir and not cfg.dataset_subsets:
        raise ConfigError("no training data given", key="train_data_dir",
                          fix="pass --data DIR (a folder of <repeats>_<name> subfolders)")
    if not cfg.output_dir:
        raise ConfigError("no output folder given", key="output_dir", fix="pass --output DIR")
    resolve_optimizer(cfg.optimizer_type)
    check_network_config(cfg)
    check_scheduler(cfg)
    validate_noise_config(cfg, cfg.v_parameterization or None)
    validate_data_config(cfg)
    validate_speed_config(cfg)
    check_train_settings(cfg)
    if cfg.sample_prompts:
        from ..sample.prompts import parse_prompts
        from ..sample.samplers import canonical

        canonical(cfg.sample_sampler)
        for sp in parse_prompts(cfg.sample_prompts):
            if sp.sampler:
                canonical(sp.sampler)
    if cfg.resolved_unet_lr() == 0 and cfg.resolved_text_encoder_lr() == 0:
        raise ConfigError("both unet_lr and text_encoder_lr are 0: nothing would train", key="unet_lr",
                          fix="give the UNet or the text encoder a learning rate above 0")
    if cfg.cache_text_encoder_outputs and cfg.resolved_text_encoder_lr() > 0:
        raise ConfigError("cache_text_encoder_outputs is true but the text encoder is trained: its outputs change "
                          "every step, so they cannot be cached", key="cache_text_encoder_outputs",
                          fix="leave cache_text_encoder_outputs unset (on by itself when the text encoder is "
                              "frozen), or freeze it: text_encoder_lr = 0 or network_train_unet_only = true")
    check_output_paths(cfg)
    out = make_dir(cfg.output_dir)
    if not os.access(out, os.W_OK):
        raise ConfigError("the output folder is not writable", file=str(out), key="output_dir",
                          fix="choose a folder you can write to")
    existing = sorted(out.glob(f"{cfg.output_name}.safetensors")) + sorted(
        out.glob(f"{cfg.output_name}-*.safetensors"))
    if existing and not overwrite:
        raise ConfigError(f"{existing[0].name} already exists in {out}", file=str(existing[0]), key="output_name",
                          fix="pass --overwrite, or choose another output_name or output_dir")
    return scan_config(cfg)


def check_output_paths(cfg: TrainConfig) -> None:
    """output_name is a file name (no folders, no '..'), and the output folder is not inside a data
    folder (the next run would train on its plots and samples)."""
    name = cfg.output_name
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"output_name {name!r} is not a plain file name", key="output_name",
                          fix="give a name without '/', '\\' or '..' (the folder goes in output_dir)")
    if not cfg.output_dir:
        return
    out = Path(os.path.realpath(cfg.output_dir))
    data = [("train_data_dir", cfg.train_data_dir), ("reg_data_dir", cfg.reg_data_dir),
            ("validation_data_dir", cfg.validation_data_dir)]
    data += [("dataset_subsets", s.get("image_dir")) for s in cfg.dataset_subsets or []]
    for key, folder in data:
        if folder and out.is_relative_to(os.path.realpath(folder)):
            raise ConfigError(f"the output folder {cfg.output_dir} is inside the data folder {folder}: the next run "
                              "would train on its plots and samples", key="output_dir",
                              fix=f"choose an output_dir outside {folder}")


def network_weights_preflight(cfg: TrainConfig, state_dir: Path | None = None):
    """(cfg with the ranks to build, the network_weights file or None); before the model loads.

    A resumed run takes its adapter from the state: network_weights is not read again, and the
    ranks are the ones the state was saved with (dim_from_weights may have set them).
    """
    from ..adapters.weights import prepare
    from .state import saved_network_dims

    if state_dir is not None:
        return saved_network_dims(cfg, state_dir), None
    return prepare(cfg)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_run(cfg: TrainConfig, bus: EventBus, overwrite: bool = False, state_dir: Path | None = None) -> Run:
    """state_dir: the state a resumed run will load (its adapter replaces network_weights)."""
    from ..data.dataset import TrainDataset
    from .text_cache import TextCache
    from .validation_set import ValidationState

    index = preflight(cfg, overwrite)
    given, (cfg, weights) = cfg, network_weights_preflight(cfg, state_dir)
    seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)
    seed_everything(seed)
    # train() is a library call: a later run in the same process (a notebook, a UI, the bench) may use
    # another precision, and accelerate keeps one global state that refuses a change. Forget it; the
    # process group of a distributed launch lives in PartialState, which stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    if not accelerator.is_main_process:
        bus = EventBus()  # only rank 0 logs and writes files
    weight_dtype = DTYPES[cfg.mixed_precision]
    device = accelerator.device
    check_compile_device(cfg, device)

    m = load_frozen_model(cfg)
    noise_warnings = validate_noise_config(cfg, m.v_parameterization)
    family_warnings = m.check_config(cfg)  # settings the model family ignores or cannot take
    check_network_config(cfg, m.family)  # the block keys' value counts are the family's
    dataset = TrainDataset.from_config(cfg, index, seed=seed)
    if cfg.cache_latents or cfg.cache_latents_to_disk:  # disk caching implies caching, as kohya
        # on the device only while it encodes: no step uses it after (samples bring it back)
        with on_device(m.vae, device) as vae:
            dataset.cache_latents(vae, batch_size=cfg.vae_batch_size, device=device, dtype=torch.float32,
                                  seed=seed)
    else:  # it encodes every batch
        m.vae.to(device)
    for module in (m.unet, *m.text_encoders):  # frozen base weights in the autocast dtype, as kohya
        module.to(weight_dtype)
    m.unet.to(device)

    net, weights_warnings = attach_network(cfg, m, weights, device)
    groups = net.param_groups(cfg.resolved_text_encoder_lr(), cfg.resolved_unet_lr())
    cache = TextCache() if cfg.cache_text_encoder_outputs is not False and not net.train_text_encoder else None
    # frozen encoders with cached outputs wait on the host: the loop first tries to encode every caption of
    # the run with them (train/loop.py place_text_encoders); others work on the device every step
    text_on_host = cache is not None
    for encoder in m.text_encoders if not text_on_host else ():
        encoder.to(device)
    # after the adapters, checkpointing and train flags: compiled in place
    memory_format = apply_speed_options(cfg, m, net, dataset, bus)

    plan = make_plan(cfg, len(dataset), dataset.num_batches_per_epoch(cfg.train_batch_size),
                     accelerator.num_processes)
    optimizer = build_optimizer(cfg, groups)
    scheduler = build_scheduler(optimizer, cfg.lr_scheduler, plan.total_steps,
                                warmup_steps_for(cfg.lr_warmup_steps, plan.total_steps), cfg=cfg)
    text = TextEncoderState(net.train_text_encoder,
                            text_encoder_stop_step(cfg, plan.total_steps) if net.train_text_encoder else None, cache,
                            on_host=text_on_host)
    cache_warnings = [f"removed {len(dataset.removed_temporaries)} temporary latent-cache file(s) that a killed "
                      "run left beside the images"] if dataset.removed_temporaries else []
    warnings = (weights_warnings + noise_warnings + cache_warnings + family_warnings + check_train_settings(cfg)
                + validate_speed_config(cfg) + shape_warnings(cfg, dataset) + optimizer_warnings(cfg, groups)
                + scheduler_warnings(cfg, plan.total_steps))
    prepared = accelerator.prepare(optimizer)
    if cfg.full_fp16:
        allow_fp16_gradients(accelerator)
    return Run(cfg, given, bus, accelerator, seed, Path(cfg.output_dir), m, net, dataset, index, prepared, scheduler,
               plan, NoiseSettings.from_config(cfg), text, ValidationState(), weight_dtype=weight_dtype,
               memory_format=memory_format, overwrite=overwrite, warnings=tuple(warnings))


def load_frozen_model(cfg: TrainConfig) -> ModelFamily:
    """The base model, every weight frozen and in eval mode, with the training noise schedule."""
    from ..models.loader import load_sd_model

    m = load_sd_model(cfg.pretrained_model_name_or_path, v2=cfg.v2 or None, sdxl=cfg.sdxl,
                      v_parameterization=cfg.v_parameterization or None, vae=cfg.vae)
    # zero_terminal_snr rescales the schedule once; samples during training use it too
    m.noise_scheduler = training_scheduler(m.noise_scheduler, cfg.zero_terminal_snr)
    for module in (m.unet, *m.text_encoders, m.vae):
        module.requires_grad_(False)
        module.eval()
    return m


def attach_network(cfg: TrainConfig, m: ModelFamily, weights: WeightsFile | None, device: torch.device
                   ) -> tuple[AdapterNetwork, list[str]]:
    """The adapters applied to the model (from `weights` when given: network_weights or a state's),
    on `device`, with checkpointing and the train flags set. Returns (network, warnings)."""
    from ..adapters.network import create_network
    from ..adapters.weights import load_into

    net = create_network(cfg, m.unet, m.text_encoders, unet_module_name=m.unet_module_name, family=m.family)
    net.apply()
    warnings = load_into(net, weights) if weights is not None else []
    net.to(device, adapter_dtype(cfg))
    if cfg.fp8_base:  # after the adapters are applied: they wrap the modules whose weights become float8
        store_base_in_fp8(net, m.unet, *m.text_encoders)
    if cfg.gradient_checkpointing:
        m.unet.enable_gradient_checkpointing()
        checkpoint_transformer_units(m.unet)
        for encoder in m.text_encoders if net.train_text_encoder else ():  # transformers 5 renamed it
            (getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable)()
    m.unet.train(net.train_unet)
    for encoder in m.text_encoders:
        encoder.train(net.train_text_encoder)
    return net, warnings
