"""Every key of the kohya world, and what lorakit does with it (docs/kohya.md is generated from here).

The kohya world is the kohya_ss GUI's JSON (its save list today and the older ones), sd-scripts'
train_network.py / sdxl_train_network.py arguments (a --config_file TOML, or `additional_parameters`
in a GUI JSON), sd-scripts' network_args and its dataset_config keys. Each key is one of:

- mapped: onto a schema field, with its conversion. A key named like a schema field maps onto it by
  name and needs no entry in TABLE;
- runtime-only: changes only how kohya runs (threads, ports, uploads, memory placement, another model
  family's option): ignored, and listed with the reason;
- neutral-only: a training setting lorakit does not implement: accepted at its neutral value(s) (blank
  too), refused by name with the value to set otherwise. Once the schema gains a field of that name
  (or of the name in `field`) the key maps onto it by name: the entry needs no edit;
- refused: out of lorakit's scope (another model family, DeepSpeed, fine-tuning datasets): accepted
  at its neutral (off/unset) value only, refused by name otherwise.

A leaf (only the schema and the error types are imported): kohya.py, sdscripts.py, netargs.py and
load.py all use it without an import cycle.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Iterable, Optional

from ..errors import ConfigError
from .checks import parse_kv_args, text_encoder_lrs
from .schema import TrainConfig

MAPPED, RUNTIME, NEUTRAL, REFUSED = "mapped", "runtime-only", "neutral-only", "refused"
KINDS = (MAPPED, RUNTIME, NEUTRAL, REFUSED)

# the kohya_ss GUI's save list, in order (kohya_gui/lora_gui.py FIELD_REGISTRY, bmaltais/kohya_ss HEAD
# 45088f04; v26.0.0 lacks model_type)
GUI_KEYS = tuple("""
pretrained_model_name_or_path v2 v_parameterization sdxl flux1_checkbox dataset_config save_model_as
save_precision train_data_dir output_name model_list training_comment logging_dir reg_data_dir output_dir
max_resolution learning_rate lr_scheduler lr_warmup lr_warmup_steps train_batch_size epoch save_every_n_epochs
seed cache_latents cache_latents_to_disk train_inpainting caption_extension enable_bucket
stop_text_encoder_training min_bucket_reso max_bucket_reso max_train_epochs max_train_steps
lr_scheduler_num_cycles lr_scheduler_power optimizer optimizer_args lr_scheduler_args lr_scheduler_type
max_grad_norm mixed_precision num_cpu_threads_per_process num_processes num_machines multi_gpu gpu_ids
main_process_port dynamo_backend dynamo_mode dynamo_use_fullgraph dynamo_use_dynamic
extra_accelerate_launch_args gradient_checkpointing fp8_base fp8_base_unet full_fp16 highvram lowvram xformers
shuffle_caption save_state save_state_on_train_end resume prior_loss_weight color_aug flip_aug masked_loss
clip_skip gradient_accumulation_steps mem_eff_attn max_token_length max_data_loader_n_workers keep_tokens
persistent_data_loader_workers bucket_no_upscale random_crop bucket_reso_steps v_pred_like_loss
caption_dropout_every_n_epochs caption_dropout_rate noise_offset_type noise_offset
noise_offset_random_strength adaptive_noise_scale multires_noise_iterations multires_noise_discount
ip_noise_gamma ip_noise_gamma_random_strength additional_parameters loss_type huber_schedule huber_c
huber_scale vae_batch_size min_snr_gamma save_every_n_steps save_last_n_steps save_last_n_steps_state
save_last_n_epochs save_last_n_epochs_state skip_cache_check log_with wandb_api_key wandb_run_name
log_tracker_name log_tracker_config log_config scale_v_pred_loss_like_noise_pred full_bf16 min_timestep
max_timestep vae weighted_captions debiased_estimation_loss sdxl_cache_text_encoder_outputs sdxl_no_half_vae
text_encoder_lr t5xxl_lr unet_lr network_dim network_weights dim_from_weights network_alpha LoRA_type factor
bypass_mode dora_wd use_cp use_tucker use_scalar rank_dropout_scale constrain rescaled train_norm
decompose_both train_on_input conv_dim conv_alpha sample_every_n_steps sample_every_n_epochs sample_sampler
sample_prompts down_lr_weight mid_lr_weight up_lr_weight block_lr_zero_threshold block_dims block_alphas
conv_block_dims conv_block_alphas unit scale_weight_norms network_dropout rank_dropout module_dropout
LyCORIS_preset loraplus_lr_ratio loraplus_text_encoder_lr_ratio loraplus_unet_lr_ratio train_lora_ggpo
ggpo_sigma ggpo_beta huggingface_repo_id huggingface_token huggingface_repo_type huggingface_repo_visibility
huggingface_path_in_repo save_state_to_huggingface resume_from_huggingface async_upload metadata_author
metadata_description metadata_license metadata_tags metadata_title flux1_cache_text_encoder_outputs
flux1_cache_text_encoder_outputs_to_disk model_type ae clip_l t5xxl discrete_flow_shift model_prediction_type
timestep_sampling split_mode train_blocks t5xxl_max_token_length enable_all_linear guidance_scale mem_eff_save
apply_t5_attn_mask split_qkv train_t5xxl cpu_offload_checkpointing blocks_to_swap single_blocks_to_swap
double_blocks_to_swap show_timesteps show_timesteps_resolution img_attn_dim img_mlp_dim img_mod_dim single_dim
txt_attn_dim txt_mlp_dim txt_mod_dim single_mod_dim in_dims train_double_block_indices
train_single_block_indices sd3_cache_text_encoder_outputs sd3_cache_text_encoder_outputs_to_disk
sd3_fused_backward_pass clip_g clip_g_dropout_rate sd3_clip_l sd3_clip_l_dropout_rate
sd3_disable_mmap_load_safetensors sd3_enable_scaled_pos_embed logit_mean logit_std mode_scale
pos_emb_random_crop_rate save_clip save_t5xxl sd3_t5_dropout_rate sd3_t5xxl t5xxl_device t5xxl_dtype
sd3_text_encoder_batch_size weighting_scheme sd3_checkbox hunyuan_image_cache_text_encoder_outputs
hunyuan_image_cache_text_encoder_outputs_to_disk hunyuan_text_encoder hunyuan_byt5 hunyuan_vae
hunyuan_discrete_flow_shift hunyuan_model_prediction_type hunyuan_timestep_sampling hunyuan_sigmoid_scale
hunyuan_attn_mode hunyuan_split_attn hunyuan_fp8_scaled hunyuan_fp8_vl hunyuan_text_encoder_cpu
hunyuan_vae_chunk_size hunyuan_image_checkbox anima_cache_text_encoder_outputs
anima_cache_text_encoder_outputs_to_disk anima_qwen3 anima_vae anima_llm_adapter_path anima_t5_tokenizer_path
anima_discrete_flow_shift anima_timestep_sampling anima_sigmoid_scale anima_qwen3_max_token_length
anima_t5_max_token_length anima_attn_mode anima_split_attn anima_vae_chunk_size anima_vae_disable_cache
anima_unsloth_offload_checkpointing anima_qwen_image_vae_2d anima_compile anima_torch_compile
anima_compile_backend anima_compile_mode anima_compile_dynamic anima_compile_fullgraph
anima_compile_cache_size_limit anima_checkbox lumina_cache_text_encoder_outputs
lumina_cache_text_encoder_outputs_to_disk lumina_gemma2 lumina_ae lumina_discrete_flow_shift
lumina_model_prediction_type lumina_timestep_sampling lumina_sigmoid_scale lumina_gemma2_max_token_length
lumina_system_prompt lumina_use_flash_attn lumina_use_sage_attn lumina_checkbox
""".split())

# keys of older GUI save lists (save_configuration's parameters, every third tag v21.1 .. v25.2) that
# the current one dropped
GUI_OLD_KEYS = tuple("""
no_token_padding use_8bit_adam lora_network_weights locon conv_dims conv_alphas use_wandb
stop_text_encoder_training_pct
""".split())

# sd-scripts train_network.py / sdxl_train_network.py arguments (setup_parser and the add_*_arguments
# helpers it calls), union over v0.6.0, v0.6.6, v0.7.1, v0.8.7, v0.9.1 and HEAD 48d368fa
SD_SCRIPTS_ARGS = tuple("""
adaptive_noise_scale alpha_mask async_upload base_weights base_weights_multiplier bucket_no_upscale
bucket_reso_steps cache_info cache_latents cache_latents_to_disk cache_text_encoder_outputs
cache_text_encoder_outputs_to_disk caption_dropout_every_n_epochs caption_dropout_rate caption_extension
caption_extention caption_prefix caption_separator caption_suffix caption_tag_dropout_rate clip_skip color_aug
conditioning_data_dir config_file console_log_file console_log_level console_log_simple
cpu_offload_checkpointing dataset_class dataset_config dataset_repeats ddp_gradient_as_bucket_view
ddp_static_graph ddp_timeout debiased_estimation_loss debug_dataset deepspeed dim_from_weights
disable_mmap_load_safetensors dynamo_backend enable_bucket enable_wildcard face_crop_aug_range flip_aug
fp16_master_weights_and_gradients fp8_base fp8_base_unet full_bf16 full_fp16 fused_backward_pass
gradient_accumulation_steps gradient_checkpointing highvram huber_c huber_scale huber_schedule
huggingface_path_in_repo huggingface_repo_id huggingface_repo_type huggingface_repo_visibility
huggingface_token in_json initial_epoch initial_step ip_noise_gamma ip_noise_gamma_random_strength keep_tokens
keep_tokens_separator learning_rate log_config log_prefix log_tracker_config log_tracker_name log_with
logging_dir loraplus_lr_ratio loraplus_text_encoder_lr_ratio loraplus_unet_lr_ratio loss_type lowram
lr_decay_steps lr_scheduler lr_scheduler_args lr_scheduler_min_lr_ratio lr_scheduler_num_cycles
lr_scheduler_power lr_scheduler_timescale lr_scheduler_type lr_warmup_steps masked_loss max_bucket_reso
max_data_loader_n_workers max_grad_norm max_timestep max_token_length max_train_epochs max_train_steps
max_validation_steps mem_eff_attn metadata_author metadata_description metadata_is_negative_embedding
metadata_license metadata_merged_from metadata_preprocessor metadata_tags metadata_thumbnail metadata_title
metadata_trigger_phrase metadata_usage_hint min_bucket_reso min_snr_gamma min_timestep mixed_precision
multires_noise_discount multires_noise_iterations network_alpha network_args network_dim network_dropout
network_module network_train_text_encoder_only network_train_unet_only network_weights no_half_vae no_metadata
noise_offset noise_offset_random_strength offload_optimizer_device offload_optimizer_nvme_path
offload_param_device offload_param_nvme_path optimizer_args optimizer_type output_config output_dir
output_name persistent_data_loader_workers pretrained_model_name_or_path prior_loss_weight random_crop
reg_data_dir resize_interpolation resolution resume resume_from_huggingface sample_at_first
sample_every_n_epochs sample_every_n_steps sample_prompts sample_sampler save_every_n_epochs
save_every_n_steps save_last_n_epochs save_last_n_epochs_state save_last_n_steps save_last_n_steps_state
save_model_as save_n_epoch_ratio save_precision save_state save_state_on_train_end save_state_to_huggingface
scale_v_pred_loss_like_noise_pred scale_weight_norms sdpa secondary_separator seed shuffle_caption
skip_cache_check skip_until_initial_step text_encoder_lr token_warmup_min token_warmup_step
tokenizer_cache_dir torch_compile train_batch_size train_data_dir training_comment unet_lr use_8bit_adam
use_lion_optimizer v2 v_parameterization v_pred_like_loss vae vae_batch_size validate_every_n_epochs
validate_every_n_steps validation_seed validation_split wandb_api_key wandb_run_name weighted_captions
xformers zero3_init_flag zero3_save_16bit_model zero_stage zero_terminal_snr
""".split())

# sd-scripts dataset_config keys ([general], [[datasets]], [[datasets.subsets]]; library/config_util.py)
DATASET_KEYS = tuple("""
alpha_mask batch_size bucket_no_upscale bucket_reso_steps cache_info caption_dropout_every_n_epochs
caption_dropout_rate caption_extension caption_prefix caption_separator caption_suffix caption_tag_dropout_rate
class_tokens color_aug conditioning_data_dir custom_attributes dataset_repeats debug_dataset enable_bucket
enable_wildcard face_crop_aug_range flip_aug image_dir is_reg keep_tokens keep_tokens_separator max_bucket_reso
max_token_length metadata_file min_bucket_reso network_multiplier num_repeats prior_loss_weight random_crop
resize_interpolation resolution secondary_separator shuffle_caption token_warmup_min token_warmup_step
train_batch_size validation_seed validation_split
""".split())

# sd-scripts network_args (networks.lora and LyCORIS' kohya wrapper) that are kohya keys of their own
NETWORK_ARGS = tuple("""
block_dims block_alphas conv_block_dims conv_block_alphas down_lr_weight mid_lr_weight up_lr_weight
block_lr_zero_threshold loraplus_lr_ratio loraplus_unet_lr_ratio loraplus_text_encoder_lr_ratio train_norm
use_scalar rank_dropout_scale bypass_mode
""".split())

# the switches of the model families lorakit does not train (SDXL's `sdxl` is a schema field)
FAMILY_SWITCHES = {"flux1_checkbox": "FLUX.1", "sd3_checkbox": "SD3",
                   "hunyuan_image_checkbox": "HunyuanImage", "anima_checkbox": "Anima", "lumina_checkbox": "Lumina"}
FIELDS = TrainConfig.model_fields


@dataclass(frozen=True)
class Key:
    kind: str                     # MAPPED, RUNTIME, NEUTRAL or REFUSED
    why: str                      # mapped: the conversion; else why it is ignored / not implemented / refused
    field: str = ""               # mapped: the schema field(s); neutral-only: the field that will implement it
    neutral: tuple = ()           # neutral-only / refused: the values that change nothing (blank always does)
    inert: Optional[Callable[[dict[str, Any]], bool]] = None  # true when the other keys make it change nothing
    fix: str = ""                 # what to do instead, for a refused value


def _map(field: str, how: str) -> Key:
    return Key(MAPPED, how, field)


def _run(why: str) -> Key:
    return Key(RUNTIME, why)


def _neutral(why: str, *neutral: Any, field: str = "", inert=None, fix: str = "") -> Key:
    return Key(NEUTRAL, why, field, neutral, inert, fix)


def _refuse(why: str, *neutral: Any, inert=None, fix: str = "") -> Key:
    return Key(REFUSED, why, "", neutral, inert, fix)


def _num(raw: dict[str, Any], key: str) -> float:
    try:
        return float(raw.get(key) or 0)
    except (TypeError, ValueError):
        return 1.0  # not a number: not "off" (the key's own check reports it)


_ATTN = "attention kernel: lorakit always uses PyTorch SDPA (same results)"
_LAUNCH = "accelerate launch setting (processes, machines, GPUs, ports)"
_UPLOAD = "Hugging Face upload: lorakit uploads nothing"
_LOGGER = "logger setting of wandb / other trackers: lorakit logs to TensorBoard"
_META = "model-card text: lorakit writes the ss_* metadata only"
_DEEPSPEED = "DeepSpeed multi-GPU training is not supported"
_MEMORY = "memory placement: where tensors live, not what is trained"
_FT = "fine-tuning datasets (metadata JSON) are not supported: lorakit reads DreamBooth-style folders"
_NETARG = "network arg of the LoRA_type (lycoris.kohya / networks.* network_args)"

TABLE: dict[str, Key] = {
    # ---- GUI keys with a conversion
    "max_resolution": _map("resolution", '"W,H" or one number'),
    "epoch": _map("max_train_epochs", "counts epochs; blank or 0: unset"),
    "optimizer": _map("optimizer_type", "same names (DAdaptation = DAdaptAdamPreprint, docs/optimizers.md)"),
    "lora_network_weights": _map("network_weights", "the GUI's name before v22"),
    "LoRA_type": _map("network_type", "see LoRA_type -> network_type; also picks the network args read"),
    "LyCORIS_preset": _map("network_preset", "full / attn-mlp / attn-only (LyCORIS types only; others refused)"),
    "lr_warmup": _map("lr_warmup_steps", "a percent of the total steps: lr_warmup_steps = pct / 100"),
    "sdxl": _map("sdxl", "true: the model must be SDXL (sdxl_train_network.py); false: SD1.x/2.x; checked "
                 "against the weights before training (exit 2 naming both); not in the file: detected"),
    "text_encoder_lr": _map("text_encoder_lr", "a list (sd-scripts' nargs; the GUI writes [lr, lr] for SDXL): the "
                            "first value, which networks.lora / lycoris.kohya give every text encoder"),
    "lr_scheduler": _map("lr_scheduler", "'adafactor': dropped with Adafactor computing its own lr (relative_step), "
                         "which uses AdafactorSchedule anyway; refused with any other optimizer, as sd-scripts stops"),
    "sdxl_cache_text_encoder_outputs": _map(
        "cache_text_encoder_outputs", "true -> true; false leaves lorakit's own caching (same results); ignored "
        "with sdxl = false (the GUI passes --cache_text_encoder_outputs only for SDXL)"),
    "cache_text_encoder_outputs_to_disk": _map(
        "cache_text_encoder_outputs", "true -> true: sd-scripts turns the cache on with it (lorakit keeps the "
        "outputs in memory); false changes nothing"),
    "sdxl_no_half_vae": _map("no_half_vae", "ignored with sdxl = false (the GUI passes --no_half_vae only for SDXL)"),
    "dynamo_backend": _map("torch_compile, dynamo_backend", '"no": off; any other backend compiles with it'),
    "dynamo_mode": _map("torch_compile_mode", "with a dynamo_backend; default: torch.compile's default"),
    "dynamo_use_dynamic": _map("torch_compile_dynamic", "with a dynamo_backend: one graph for every bucket size"),
    "noise_offset_type": _map("noise_offset, multires_noise_*", "Original: noise_offset keys; Multires: multires_*"),
    "additional_parameters": _map("(each flag)", "sd-scripts flags, each read through this table; they "
                                                 "override the JSON"),
    "dataset_config": _map("dataset_subsets", "sd-scripts dataset TOML: subsets and the run's data settings"),
    "network_module": _map("network_type", "networks.lora: lora, networks.dylora: dylora, lycoris.kohya: algo="),
    "network_args": _map("network_args", "k=v items (netargs.py); conv_dim/conv_alpha/dropout/... lifted"),
    "caption_extention": _map("caption_extension", "sd-scripts' old spelling"),
    "batch_size": _map("train_batch_size", "dataset_config level"),
    "image_dir": _map("dataset_subsets", "a subset's folder"),
    "num_repeats": _map("dataset_subsets", "a subset's repeats"),
    "class_tokens": _map("dataset_subsets", "a subset's caption when an image has none"),
    "is_reg": _map("dataset_subsets", "a regularization subset"),
    "factor": _map("network_args", "LoKr factor (LyCORIS/LoKr)"),
    "decompose_both": _map("network_args", "LoKr decompose_both (LyCORIS/LoKr)"),
    "use_cp": _map("network_args", "use_tucker (LyCORIS' old name)"),
    "use_tucker": _map("network_args", "use_tucker (LyCORIS types)"),
    "train_on_input": _map("network_args", "iA3 train_on_input (LyCORIS/iA3)"),
    "unit": _map("network_args", "DyLoRA unit / block_size (DyLoRA types)"),
    "dora_wd": _map("network_args", "DoRA (LyCORIS LoCon / LoHa / LoKr)"),
    "constrain": _map("network_args", "OFT constraint (LyCORIS/Diag-OFT)"),
    "rescaled": _map("network_args", "OFT rescaled (LyCORIS/Diag-OFT)"),
    # ---- runtime-only
    "model_list": _run("GUI model picker; pretrained_model_name_or_path is the model"),
    "no_token_padding": _run("DreamBooth script only"),
    "xformers": _run(_ATTN), "mem_eff_attn": _run(_ATTN), "sdpa": _run(_ATTN),
    "bypass_mode": _run("LyCORIS computes W x + delta W x instead of merging: the same result"),
    "use_wandb": _run(_LOGGER), "wandb_api_key": _run(_LOGGER), "wandb_run_name": _run(_LOGGER),
    "log_tracker_name": _run(_LOGGER), "log_tracker_config": _run(_LOGGER), "log_prefix": _run(_LOGGER),
    "log_config": _run("lorakit writes its config next to the adapter"),
    "output_config": _run("lorakit writes its config next to the adapter"),
    "config_file": _run("this file"),
    "console_log_level": _run("console logging"), "console_log_file": _run("console logging"),
    "console_log_simple": _run("console logging"),
    "ddp_timeout": _run(_LAUNCH), "ddp_gradient_as_bucket_view": _run(_LAUNCH), "ddp_static_graph": _run(_LAUNCH),
    "dynamo_use_fullgraph": _run("lorakit compiles the repeated blocks (or the whole UNet) as it sees fit; "
                                 "same results"),
    "highvram": _run(_MEMORY), "lowvram": _run(_MEMORY), "lowram": _run(_MEMORY),
    "blocks_to_swap": _run(_MEMORY), "cpu_offload_checkpointing": _run(_MEMORY),
    "disable_mmap_load_safetensors": _run("how the checkpoint file is read"),
    "skip_cache_check": _run("lorakit re-encodes a cached latent when the image, size or VAE changes"),
    "cache_info": _run("a cache of image sizes: speed only"),
    "tokenizer_cache_dir": _run("lorakit reads the tokenizer from the checkpoint"),
    "no_metadata": _run("lorakit always writes the ss_* metadata (loaders ignore it)"),
    "fused_backward_pass": _run("optimizer step fused into backward: memory only"),
    "show_timesteps": _run("shows the timestep distribution; trains nothing"),
    "show_timesteps_resolution": _run("shows the timestep distribution; trains nothing"),
    "save_model_as": _map("save_model_as", "safetensors only"),
    # ---- neutral-only: training settings lorakit does not implement
    "stop_text_encoder_training": _neutral("stops training the text encoder after N steps", 0),
    "stop_text_encoder_training_pct": _neutral("the GUI's percent form of stop_text_encoder_training (v21-v24)", 0),
    "save_state_on_train_end": _neutral("saves the training state at the end", False, fix="use save_state"),
    "v_pred_like_loss": _neutral("adds a v-prediction-like loss term", 0),
    "weighted_captions": _neutral("(word:1.2) caption weights", False),
    "full_bf16": _neutral("bf16 gradients and weights", False),
    "log_with": _neutral("the logger", "tensorboard", fix="lorakit logs to TensorBoard"),
    "fp8_base": _neutral("fp8 base model weights", False),
    "resume": _neutral("resumes from a state folder", fix="pass --resume STATE_DIR to `lorakit train`"),
    "train_inpainting": _refuse("inpainting models (9-channel UNet) are not supported", False),
    "use_scalar": _neutral("a trained scalar on each LyCORIS delta", False),
    "rank_dropout_scale": _neutral("rescales rank dropout by 1/(1-p)", False,
                                   inert=lambda raw: _num(raw, "rank_dropout") == 0),
    "conv_dims": _neutral("block-wise conv ranks (the GUI's name before conv_block_dims)", field="conv_block_dims"),
    "conv_alphas": _neutral("block-wise conv alphas (the GUI's name before conv_block_alphas)",
                            field="conv_block_alphas"),
    "use_8bit_adam": _neutral("the 2023 switch for AdamW8bit", False, fix="set optimizer_type = AdamW8bit"),
    "use_lion_optimizer": _neutral("the 2023 switch for Lion", False, fix="set optimizer_type = Lion"),
    "locon": _neutral("the 2023 LoCon switch", False, fix="set LoRA_type = LyCORIS/LoCon"),
    "lr_decay_steps": _neutral("warmup_stable_decay schedule", 0),
    "lr_scheduler_timescale": _neutral("inverse_sqrt schedule", 0),
    "lr_scheduler_min_lr_ratio": _neutral("minimum lr of cosine_with_min_lr / warmup_stable_decay", 0),
    "save_n_epoch_ratio": _neutral("saves N times over the run", 0, fix="use save_every_n_epochs"),
    "initial_epoch": _neutral("starts counting at epoch N", 0, 1), "initial_step": _neutral("starts at step N", 0),
    "skip_until_initial_step": _neutral("skips batches until initial_step", False),
    "resize_interpolation": _neutral("image resize method", "area", fix="remove it (lorakit resizes like sd-scripts' "
                                                                     "default)"),
    "caption_separator": _neutral("tag separator", ","),
    "secondary_separator": _neutral("second tag separator"),
    "enable_wildcard": _neutral("{a|b} wildcards in captions", False),
    "token_warmup_min": _neutral("caption token warmup", 1), "token_warmup_step": _neutral("caption token warmup", 0),
    "face_crop_aug_range": _neutral("face-centred crop augmentation"),
    "network_multiplier": _neutral("a dataset's adapter multiplier", 1),
    "custom_attributes": _neutral("per-subset custom attributes"),
    # ---- refused: out of scope
    "base_weights": _refuse("merges other adapters into the model before training"),
    "base_weights_multiplier": _refuse("merges other adapters into the model before training"),
    "debug_dataset": _refuse("shows the dataset instead of training", False),
    "in_json": _refuse(_FT), "dataset_repeats": _refuse(_FT, 1), "metadata_file": _refuse(_FT),
    "dataset_class": _refuse("a user dataset class (Python code)"),
    "conditioning_data_dir": _map("dataset_subsets", "a subset's mask folder for masked_loss (the red channel of "
                                  "each image's same-named file): dataset_subsets[].conditioning_data_dir"),
    "deepspeed": _refuse(_DEEPSPEED, False), "zero_stage": _refuse(_DEEPSPEED, 2),
    "offload_optimizer_device": _refuse(_DEEPSPEED), "offload_optimizer_nvme_path": _refuse(_DEEPSPEED),
    "offload_param_device": _refuse(_DEEPSPEED), "offload_param_nvme_path": _refuse(_DEEPSPEED),
    "zero3_init_flag": _refuse(_DEEPSPEED, False), "zero3_save_16bit_model": _refuse(_DEEPSPEED, False),
    "fp16_master_weights_and_gradients": _refuse(_DEEPSPEED, False),
}
for _k in ("num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids",
           "main_process_port", "extra_accelerate_launch_args"):
    TABLE[_k] = _run(_LAUNCH)
for _k in ("huggingface_repo_id", "huggingface_token", "huggingface_repo_type", "huggingface_repo_visibility",
           "huggingface_path_in_repo", "save_state_to_huggingface", "resume_from_huggingface", "async_upload"):
    TABLE[_k] = _run(_UPLOAD)
for _k in ("metadata_author", "metadata_description", "metadata_license", "metadata_tags", "metadata_title",
           "metadata_is_negative_embedding", "metadata_merged_from", "metadata_preprocessor", "metadata_thumbnail",
           "metadata_trigger_phrase", "metadata_usage_hint"):
    TABLE[_k] = _run(_META)
# block-wise ranks / learning rates and LoRA+ (sd-scripts network_args; the GUI keeps them as keys of their own)
for _k in NETWORK_ARGS[:8]:
    TABLE[_k] = _neutral("block-wise ranks / learning rates (sd-scripts network_args)")
for _k in NETWORK_ARGS[8:11]:
    TABLE[_k] = _neutral("LoRA+ learning-rate ratio of the up weights", 0, 1)
TABLE["train_norm"] = _neutral("trains the norm layers too (LyCORIS)", False)

# the other model families: their switch is refused, their options only act with it
for _switch, _name in FAMILY_SWITCHES.items():
    TABLE[_switch] = _refuse(f"{_name} models are not supported: lorakit trains SD1.x/2.x and SDXL", False)
_FAMILY_OPTIONS = {
    "flux1_checkbox": """flux1_cache_text_encoder_outputs flux1_cache_text_encoder_outputs_to_disk model_type ae clip_l
        t5xxl discrete_flow_shift model_prediction_type timestep_sampling split_mode train_blocks t5xxl_max_token_length
        enable_all_linear guidance_scale mem_eff_save apply_t5_attn_mask split_qkv train_t5xxl single_blocks_to_swap
        double_blocks_to_swap img_attn_dim img_mlp_dim img_mod_dim single_dim txt_attn_dim txt_mlp_dim txt_mod_dim
        single_mod_dim in_dims train_double_block_indices train_single_block_indices t5xxl_lr train_lora_ggpo
        ggpo_sigma ggpo_beta fp8_base_unet""",
    "sd3_checkbox": """clip_g clip_g_dropout_rate logit_mean logit_std mode_scale pos_emb_random_crop_rate save_clip
        save_t5xxl t5xxl_device t5xxl_dtype weighting_scheme""",
}
for _k in GUI_KEYS:
    for _switch, _prefix in (("sd3_checkbox", "sd3_"), ("hunyuan_image_checkbox", "hunyuan_"),
                             ("anima_checkbox", "anima_"), ("lumina_checkbox", "lumina_")):
        if _k.startswith(_prefix) and _k != _switch:
            _FAMILY_OPTIONS[_switch] = _FAMILY_OPTIONS.get(_switch, "") + " " + _k
for _switch, _keys in _FAMILY_OPTIONS.items():
    for _k in _keys.split():
        TABLE[_k] = _run(f"{FAMILY_SWITCHES[_switch]} option: the GUI passes it only with {_switch}")

ALL_KEYS = frozenset(GUI_KEYS) | set(GUI_OLD_KEYS) | set(SD_SCRIPTS_ARGS) | set(DATASET_KEYS) | set(NETWORK_ARGS)


def lookup(name: str) -> Optional[Key]:
    """What lorakit does with kohya key `name` (None: no kohya version knows it and no schema field has it).
    A schema field of the key's name (or of a neutral-only key's `field`) supersedes the entry."""
    entry = TABLE.get(name)
    if entry is not None and entry.kind == MAPPED:
        return entry
    target = entry.field if entry is not None and entry.kind == NEUTRAL and entry.field else name
    if target in FIELDS:
        return Key(MAPPED, "same name" if target == name else f"old name of {target}", target)
    return entry


def describe(name: str) -> tuple[str, str]:
    """(kind, what lorakit does) for docs/kohya.md and the tests."""
    entry = lookup(name)
    if entry is None:
        raise KeyError(name)
    if entry.kind == MAPPED:
        return MAPPED, f"`{entry.field}`" + ("" if entry.why == "same name" else f": {entry.why}")
    if entry.kind == RUNTIME:
        return RUNTIME, entry.why
    return entry.kind, f"{entry.why}; accepted at {neutral_text(entry)}" + (f"; {entry.fix}" if entry.fix else "")


def neutral_text(entry: Key) -> str:
    vals = [repr(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            for v in entry.neutral]
    return " / ".join(vals + ["blank"])


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "") or value == [] or value == {}


def as_bool(value: Any) -> bool:
    """LyCORIS' and the GUI's reading of a flag: anything but false / 0 / blank / none is on."""
    return str(value).strip().lower() not in ("false", "0", "", "none", "0.0")


def is_neutral(entry: Key, value: Any, raw: dict[str, Any]) -> bool:
    """True when `value` of a neutral-only / refused key changes nothing (given the other keys `raw`)."""
    if blank(value) or (entry.inert is not None and entry.inert(raw)):
        return True
    for n in entry.neutral:
        if isinstance(n, bool):
            if str(value).strip().lower() in ("true", "false", "0", "1", "0.0", "1.0") and as_bool(value) == n:
                return True
        elif isinstance(n, (int, float)):
            try:
                if not isinstance(value, bool) and float(value) == n:
                    return True
            except (TypeError, ValueError):
                pass
        elif str(value).strip().lower() == str(n).lower():
            return True
    return False


def refusal(name: str, entry: Key, value: Any) -> tuple[str, str]:
    """(message, fix) for a neutral-only / refused key at a value that would change training."""
    if entry.kind == NEUTRAL:
        msg = f"{name} = {value!r}: lorakit does not implement this kohya setting yet ({entry.why})"
    else:
        msg = f"{name} = {value!r}: {entry.why}"
    fix = f"set {name} to {neutral_text(entry)} (or remove it)"
    return msg, fix + (f"; {entry.fix}" if entry.fix else "")


def suggest(key: str, known: Iterable[str]) -> Optional[str]:
    """Closest known key, for a "did you mean"."""
    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key(key: str, known: Iterable[str] = ()) -> tuple[str, str]:
    """(message, fix) for a key no kohya version and no schema field knows; "did you mean" a close one."""
    guess = suggest(key, set(known) | set(ALL_KEYS) | set(FIELDS))
    return f"unknown key '{key}'", (f"did you mean '{guess}'?" if guess else "remove it; docs/kohya.md lists "
                                                                               "every kohya key")


def first_text_encoder_lr(value: Any, res: "ImportResult", where: str) -> Any:
    """sd-scripts' reading of a text_encoder_lr list (checks.text_encoder_lrs): the first value, the
    differing later ones noted as unused."""
    first, dropped = text_encoder_lrs(value)
    if dropped:
        res.ignored.append((where, f"{', '.join(map(str, dropped))} not used: sd-scripts' networks.lora and "
                                   f"lycoris.kohya train every text encoder (SDXL: both) at the first value, {first}"))
    return first


def adafactor_scheduler(res: "ImportResult") -> None:
    """sd-scripts' lr_scheduler "adafactor" is transformers' AdafactorSchedule, which sd-scripts (and lorakit)
    use anyway whenever Adafactor computes its own lr (relative_step, Adafactor's default in sd-scripts); with
    any other optimizer sd-scripts stops. The value is dropped with that reason, or is a problem."""
    if str(res.values.get("lr_scheduler", "")).strip().lower() != "adafactor":
        return
    del res.values["lr_scheduler"]
    args = res.values.get("optimizer_args") or {}
    try:
        args = parse_kv_args(args) if isinstance(args, (list, tuple)) else dict(args)
    except (TypeError, ValueError):
        args = {}  # reported with optimizer_args
    relative = as_bool(args.get("relative_step", True)) or as_bool(args.get("warmup_init", False))
    if str(res.values.get("optimizer_type", "")).lower() == "adafactor" and relative:
        res.ignored.append(("lr_scheduler", "'adafactor': Adafactor with relative_step computes its own lr "
                                            "(AdafactorSchedule), which lorakit uses for it anyway"))
    else:
        res.problems.add("lr_scheduler", "lr_scheduler 'adafactor' is the schedule of optimizer Adafactor with "
                         "relative_step = True (sd-scripts stops with any other optimizer)",
                         "set optimizer_type = Adafactor, or choose another lr_scheduler (constant, cosine, ...)")


@dataclass
class ImportResult:
    """What an importer (kohya.py, sdscripts.py) read: schema values, the ignored keys with the reason,
    the network args it gathered, and every problem found (raised together by the caller)."""
    values: dict[str, Any]
    ignored: list[tuple[str, str]] = dc_field(default_factory=list)
    network_args: dict[str, Any] = dc_field(default_factory=dict)
    problems: "Problems" = dc_field(default_factory=lambda: Problems(None))


class Problems:
    """Every problem of one config, raised together as one ConfigError (exit 2). A problem may name
    where its value came from when that is not the file (`--set KEY=VALUE`, the command line)."""

    def __init__(self, file: Optional[str]):
        self.file, self.items = file, []  # type: ignore[var-annotated]

    def add(self, key: Optional[str], message: str, fix: str = "", where: Optional[str] = None) -> None:
        self.items.append((key, message, fix, where))

    def raise_all(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            key, message, fix, where = self.items[0]
            raise ConfigError(message, file=where or self.file, key=key, fix=fix or None)
        lines = [f"{len(self.items)} problems:"]
        for key, message, fix, where in self.items:
            lines.append(f"  - {'[' + where + '] ' if where else ''}"
                         f"{'key ' + repr(key) + ': ' if key and key not in message else ''}{message}"
                         + (f" (fix: {fix})" if fix else ""))
        raise ConfigError("\n".join(lines), file=self.file, fix="each line says its fix")
