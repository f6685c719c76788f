"""The one training schema: every setting defined once, with kohya's key names.

Each field carries its default, its range and a help text; `lorakit config show`
prints them. Unknown keys are errors (see load.py for the "did you mean").
The kohya_ss importer (kohya.py) maps GUI JSON keys onto these fields.
"""
from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, field_validator, model_validator

from ..adapters.blockwise import SD_BLOCKS, SDXL_BLOCKS
from .checks import LR_WEIGHT_PRESETS, block_problems, is_number, one_text_encoder_lr, parse_kv_args, parse_resolution
from .fields import RESUME_LR, RESUME_NOTED, RESUME_SAFE, SS_FILE_NAME, SS_NEUTRAL_NONE, F

# Sections only group keys for display and for optional TOML tables; a key is
# defined once whatever the table it is written in.
SECTIONS = ("model", "data", "network", "optimizer", "training", "output", "sample")
# Caption and augmentation keys a dataset_subsets entry may set for its own images (sd-scripts'
# subset-level options); a subset without the key uses the run's value.
SUBSET_OPTIONS = ("shuffle_caption", "keep_tokens", "keep_tokens_separator", "caption_prefix", "caption_suffix",
                  "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                  "flip_aug", "color_aug", "random_crop")
# which layers get adapters (adapters/presets.py): kohya's own targets, then LyCORIS's presets
NETWORK_PRESETS = ("kohya", "attn-mlp", "attn-only", "full")
# the ranks of a network: from the config, or a network_weights file (dim_from_weights) or a resumed state
DIM_KEYS = ("network_dim", "network_alpha", "conv_dim", "conv_alpha")
SUBSET_KEYS = ("image_dir", "num_repeats", "class_tokens", "caption_extension", "is_reg",
               "conditioning_data_dir") + SUBSET_OPTIONS


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---- model -------------------------------------------------------------------
    pretrained_model_name_or_path: Optional[str] = F(
        None, "model", "Local SD1.x/2.x or SDXL checkpoint: a diffusers folder or a single .safetensors/.ckpt file.",
        resume=RESUME_SAFE, ss="ss_sd_model_name", ss_write=SS_FILE_NAME)
    sdxl: Optional[bool] = F(
        None, "model", "The checkpoint is SDXL (kohya_ss's sdxl checkbox; sd-scripts' sdxl_train_network.py). Unset: "
        "the family is detected from the weights; true / false is an error when the weights say otherwise.")
    v2: bool = F(False, "model", "The checkpoint is SD2.x (detected from the file when it can be).")
    v_parameterization: bool = F(False, "model", "Train with the v-prediction target (SD2 768-v models).")
    vae: Optional[str] = F(None, "model", "Optional separate VAE (diffusers folder or single file).",
                           resume=RESUME_SAFE)
    no_half_vae: bool = F(
        False, "model", "kohya's switch to keep the VAE in float32 (kohya_ss: sdxl_no_half_vae; SDXL's VAE overflows "
        "in fp16). lorakit always encodes in float32, so either value gives the same latents.", resume=RESUME_SAFE)
    clip_skip: int = F(1, "model", "Use the k-th last text-encoder layer (then final_layer_norm); 1 = last.",
                       ge=1, le=12, ss="ss_clip_skip")
    max_token_length: Literal[75, 150, 225] = F(
        75, "model", "Caption tokens: 75, 150 or 225 (chunks of 75 encoded separately, as kohya).",
        ss="ss_max_token_length")

    # ---- data --------------------------------------------------------------------
    train_data_dir: Optional[str] = F(
        None, "data", "Folder of kohya subfolders named <repeats>_<name> holding images and captions.",
        resume=RESUME_SAFE)
    reg_data_dir: Optional[str] = F(None, "data", "Regularization images, same folder layout.", resume=RESUME_SAFE)
    resolution: tuple[int, int] = F((512, 512), "data", "Training size 'W,H' or one number for square.",
                                    ss="ss_resolution", dataset_key="resolution")
    caption_extension: str = F(".txt", "data", "Caption file extension, next to each image.")
    shuffle_caption: bool = F(False, "data", "Shuffle comma-separated tags each time a caption is used.",
                              ss="ss_shuffle_caption")
    keep_tokens: int = F(0, "data", "Keep the first N comma-separated tags in place when shuffling.", ge=0,
                         ss="ss_keep_tokens")
    cache_latents: bool = F(True, "data", "Encode every image with the VAE once, before training.",
                            ss="ss_cache_latents")
    vae_batch_size: int = F(1, "data", "Batch size of the latent caching pass.", ge=1, gui_unset=(0,))
    cache_text_encoder_outputs: Optional[bool] = F(
        None, "data", "Reuse the text encoder's output for a caption string seen before (exact also with "
        "shuffled or dropped captions; the key is the string trained with), in up to 256 MB on the training "
        "device. Unset: on when the text encoder is not trained (text_encoder_lr = 0 or "
        "network_train_unet_only); true with a trained text encoder is an error.", resume=RESUME_SAFE)
    max_data_loader_n_workers: int = F(
        0, "data", "DataLoader worker processes that decode batches ahead of their step (0 = the main process "
        "builds each batch when its step comes). Same results either way.", ge=0, resume=RESUME_SAFE)
    persistent_data_loader_workers: bool = F(False, "data", "Keep DataLoader workers alive between epochs.",
                                             resume=RESUME_SAFE)
    prior_loss_weight: float = F(1.0, "data", "Loss weight of regularization images.", ge=0, ss="ss_prior_loss_weight")
    cache_latents_to_disk: bool = F(
        False, "data", "Keep cached latents in <image>_<W>x<H>_sd.npz files; re-encoded when the image, "
        "size or VAE changes.")
    enable_bucket: bool = F(False, "data", "Aspect-ratio buckets: each image trains near its own aspect ratio.",
                            ss="ss_enable_bucket", dataset_key="enable_bucket")
    min_bucket_reso: int = F(256, "data", "Smallest bucket side (with enable_bucket).", ge=64, ss="ss_min_bucket_reso",
                             dataset_key="min_bucket_reso")
    max_bucket_reso: int = F(1024, "data", "Largest bucket side (with enable_bucket).", ge=64, ss="ss_max_bucket_reso",
                             dataset_key="max_bucket_reso")
    bucket_reso_steps: int = F(64, "data", "Bucket sides are multiples of this (a multiple of 8).", ge=8,
                               dataset_key="bucket_reso_steps", gui_unset=(0, 1))
    bucket_no_upscale: bool = F(False, "data", "Never enlarge images: small images get small buckets.",
                                ss="ss_bucket_no_upscale", dataset_key="bucket_no_upscale")
    caption_prefix: str = F("", "data", "Text put before every caption (joined with a space).")
    caption_suffix: str = F("", "data", "Text put after every caption (joined with a space).")
    keep_tokens_separator: str = F(
        "", "data", "Tags before this mark stay in place, tags after it are shuffled (e.g. '|||').")
    caption_dropout_rate: float = F(0.0, "data", "Chance of training an image with an empty caption.", ge=0, le=1,
                                    ss="ss_caption_dropout_rate")
    caption_dropout_every_n_epochs: int = F(
        0, "data", "Empty captions for the whole epoch when epoch % N == 0 (epochs count from 1; 0 = off).", ge=0,
        ss="ss_caption_dropout_every_n_epochs")
    caption_tag_dropout_rate: float = F(
        0.0, "data", "Chance of leaving out each movable tag (after keep_tokens).", ge=0, le=1,
        ss="ss_caption_tag_dropout_rate")
    flip_aug: bool = F(False, "data", "Mirror images left-right half of the time (works with cached latents).",
                       ss="ss_flip_aug")
    color_aug: bool = F(False, "data", "Small random hue or gamma change (not with cached latents).", ss="ss_color_aug")
    random_crop: bool = F(False, "data", "Crop at a random place instead of the centre (not with cached latents).",
                          ss="ss_random_crop")
    alpha_mask: bool = F(
        False, "data", "Use each image's alpha channel as a loss mask (transparent pixels do not count; the RGB "
        "is not composited on white); images without alpha count everywhere.", ss="ss_alpha_mask")
    masked_loss: bool = F(
        False, "data", "kohya's masked loss: the loss counts each latent pixel by its mask value. The mask is the "
        "red channel of the same-named image in the subset's conditioning_data_dir (dataset_subsets), else the "
        "alpha channel (alpha_mask); needs one of them.")
    weighted_captions: bool = F(
        False, "data", "Read kohya's attention syntax in captions: (word) x1.1, [word] /1.1, (word:1.3) x1.3, "
        "nested ones multiply, \\( \\) \\[ \\] literal; the text-encoder output of each token is scaled by "
        "its weight. No commas inside brackets when captions are shuffled or dropped.")
    validation_split: float = F(
        0.0, "data", "Fraction of each train folder's images held out of training for a validation loss "
        "(chosen by validation_seed); 0 = off.", ge=0, lt=1, ss="ss_validation_split", dataset_key="validation_split")
    validation_seed: Optional[int] = F(None, "data", "Seed that picks the validation_split images (unset = seed).",
                                       ge=0, ss="ss_validation_seed", dataset_key="validation_seed")
    validation_data_dir: Optional[str] = F(
        None, "data", "Validation images in a separate folder, same <repeats>_<name> layout (repeats ignored).")
    validate_every_n_epochs: Optional[int] = F(
        None, "data", "Compute the validation loss every N epochs (unset = every epoch when validation is on).",
        ge=1, resume=RESUME_SAFE, ss="ss_validate_every_n_epochs")
    validate_every_n_steps: Optional[int] = F(
        None, "data", "Also compute the validation loss every N optimizer steps (sd-scripts: at steps N, 2N, ...); "
        "unset or 0 = only per epoch.", ge=1, resume=RESUME_SAFE)
    max_validation_steps: Optional[int] = F(
        None, "data", "Use at most this many validation batches (the first ones, in a fixed order) per "
        "validation; unset or 0 = all.", ge=1, resume=RESUME_SAFE)
    dataset_subsets: list[dict[str, Any]] = F(
        [], "data", "Explicit image folders instead of train_data_dir/reg_data_dir (what an sd-scripts "
        "dataset_config gives): each {image_dir, num_repeats, class_tokens, caption_extension, is_reg} and "
        "optionally its own caption/augmentation keys (shuffle_caption, keep_tokens, keep_tokens_separator, "
        "caption_prefix, caption_suffix, caption_dropout_rate, caption_dropout_every_n_epochs, "
        "caption_tag_dropout_rate, flip_aug, color_aug, random_crop; unset = the run's value) and "
        "conditioning_data_dir (the masked_loss masks of its images).")

    # ---- network -----------------------------------------------------------------
    network_type: str = F(
        "lora", "network", "Adapter algorithm from the registry (lora; with conv_dim it is kohya LoCon).")
    network_dim: int = F(8, "network", "Rank of each adapter.", ge=1)
    network_alpha: Optional[float] = F(
        1.0, "network", "Scale numerator: delta W is multiplied by alpha/dim. 0 or unset means alpha = dim.",
        ge=0, kohya_none=0)
    conv_dim: Optional[int] = F(
        None, "network", "Rank for 3x3 convs in ResNet blocks (enables LoCon); unset = not adapted.", ge=1,
        network_arg="conv_dim")
    conv_alpha: Optional[float] = F(None, "network", "Alpha for conv layers (unset = conv_dim).", ge=0,
                                    network_arg="conv_alpha", kohya_none=0)
    network_dropout: Optional[float] = F(
        None, "network", "Dropout on the down-projection output during training.", ge=0, lt=1, ss="ss_network_dropout",
        network_arg="dropout")
    rank_dropout: Optional[float] = F(None, "network", "Drop each rank per sample with this probability.",
                                      ge=0, lt=1, network_arg="rank_dropout")
    module_dropout: Optional[float] = F(None, "network", "Skip a whole module's delta with this probability.",
                                        ge=0, lt=1, network_arg="module_dropout")
    network_preset: Literal[NETWORK_PRESETS] = F(  # type: ignore[valid-type]
        "kohya", "network", "Which layers get adapters: kohya (kohya's default targets), attn-mlp, attn-only, "
                            "or full (+ conv blocks, conv_in, conv_out, time embedding).")
    network_args: dict[str, Any] = F(
        {}, "network", "Options of the adapter algorithm (LyCORIS network_args), e.g. use_tucker, factor, "
                       "decompose_both, train_on_input, block_size; each algorithm checks its own.")
    scale_weight_norms: Optional[float] = F(
        None, "network", "Max-norm: cap each module's ||delta W|| at this value once per optimizer step "
                         "(0 or unset = off).", ge=0, ss="ss_scale_weight_norms")
    network_weights: Optional[str] = F(
        None, "network", "Start from this adapter file (.safetensors from lorakit, kohya or LyCORIS) instead of "
                         "fresh adapters; its algorithm must be network_type. Not re-applied on --resume.",
                         resume=RESUME_SAFE, ss="ss_network_weights", ss_write=SS_FILE_NAME)
    dim_from_weights: bool = F(
        False, "network", "Take network_dim/network_alpha and conv_dim/conv_alpha from the network_weights file "
                          "instead of the config.")
    # block-wise settings (sd-scripts networks.lora; adapters/blockwise.py): the UNet in blocks as sd-scripts
    # counts them, 25 for SD1/SD2, 23 for SDXL (the text encoder has no block value); the count is checked
    # against the family once it is known (check_network_config)
    block_dims: Optional[list[int]] = F(
        None, "network", "Rank of the Linear / 1x1 adapters of each UNet block: 25 values for SD1.x/2.x (IN00-IN11, "
        "MID, OUT00-OUT11), e.g. '2,2,2,2,4,4,4,4,6,6,6,6,8,6,6,6,6,4,4,4,4,2,2,2,2', 23 for SDXL (BASE, "
        "IN00-IN08, MID00-MID02, OUT00-OUT08, OUT; docs/blockwise.md); a block with 0 gets no adapters; the text "
        "encoder keeps network_dim. '' or unset = network_dim everywhere. network_type lora only.")
    block_alphas: Optional[list[float]] = F(
        None, "network", "Alpha of each UNet block (25 values, SDXL 23; with block_dims or block lr weights); "
        "unset = network_alpha (unset network_alpha: each block's dim).")
    conv_block_dims: Optional[list[int]] = F(
        None, "network", "Rank of the 3x3-conv adapters of each UNet block (25 values, SDXL 23; adds the "
        "ResNet/Down-/Upsample convs as conv_dim does; 0 = none in that block); unset = conv_dim in every block. "
        "Needs block_dims or block lr weights.")
    conv_block_alphas: Optional[list[float]] = F(
        None, "network", "Alpha of the 3x3-conv adapters of each block (with conv_block_dims); unset = conv_alpha "
        "(unset conv_alpha: each block's conv dim).")
    down_lr_weight: Optional[str | list[float]] = F(
        None, "network", "UNet lr multiplier of the down blocks (shallow -> deep), SD1.x/2.x: the 12 blocks "
        "IN00-IN11, SDXL: the 9 blocks IN00-IN08. Up to 12 (SDXL 9) numbers (missing ones are 1, an empty entry "
        "0) or a preset over those blocks, sine, cosine, linear, reverse_linear, zeros, with an optional "
        "'+number' added to each (e.g. 'sine+0.5'). A block at or below block_lr_zero_threshold gets no "
        "adapters. network_type lora only.")
    mid_lr_weight: Optional[list[float]] = F(
        None, "network", "UNet lr multiplier of the middle block: one number (SD1.x/2.x: MID), SDXL up to 3 "
        "(MID00-MID02; missing ones are 1).", max_length=3)
    up_lr_weight: Optional[str | list[float]] = F(
        None, "network", "UNet lr multiplier of the up blocks (deep -> shallow), SD1.x/2.x: OUT00-OUT11, SDXL: "
        "OUT00-OUT08; as down_lr_weight.")
    block_lr_zero_threshold: float = F(
        0.0, "network", "A block lr weight not above this becomes 0: that block gets no adapters.", ge=0)
    # LoRA+ (sd-scripts and LyCORIS: the lora_up matrices learn at lr x ratio)
    loraplus_lr_ratio: Optional[float] = F(
        None, "network", "LoRA+: the up (B) matrices train at lr x this ratio (about 16), in groups of their own "
        "('unet plus', 'textencoder plus'); 0 or unset = off. network_type lora or locon (the ones with lora_up "
        "matrices).",
        ge=0, le=1024)
    loraplus_unet_lr_ratio: Optional[float] = F(
        None, "network", "LoRA+ ratio for the UNet; replaces loraplus_lr_ratio there (0 or unset = that value).",
        ge=0, le=1024)
    loraplus_text_encoder_lr_ratio: Optional[float] = F(
        None, "network", "LoRA+ ratio for the text encoder; replaces loraplus_lr_ratio there (0 or unset = that "
        "value).", ge=0, le=1024)
    train_norm: bool = F(
        False, "network", "LyCORIS: also train the LayerNorm / GroupNorm layers inside the adapted UNet blocks "
        "(W + w_norm, b + b_norm, saved as <name>.w_norm / .b_norm). Any network_type but lora (kohya's networks.lora "
        "has no train_norm; use locon).")
    network_train_unet_only: bool = F(False, "network", "Train the UNet adapters only.")
    network_train_text_encoder_only: bool = F(False, "network", "Train the text-encoder adapters only.")

    # ---- optimizer ---------------------------------------------------------------
    optimizer_type: str = F("AdamW", "optimizer", "Optimizer name (case-insensitive) or a module.Class path.")
    optimizer_args: dict[str, Any] = F(
        {}, "optimizer", "Optimizer keyword arguments; also accepts kohya's list of 'key=value' strings.")
    learning_rate: float = F(1e-4, "optimizer", "Fallback learning rate for unet_lr / text_encoder_lr.", ge=0,
                             resume=RESUME_LR, ss="ss_learning_rate")
    unet_lr: Optional[float] = F(None, "optimizer", "UNet adapter lr (unset = learning_rate; 0 = frozen).",
                                 ge=0, resume=RESUME_LR)
    text_encoder_lr: Optional[float] = F(
        None, "optimizer", "Text-encoder adapter lr (unset = learning_rate; 0 = frozen); SDXL: both encoders. A "
        "list of equal values (the kohya_ss GUI writes one per SDXL encoder) is read as one.", ge=0, resume=RESUME_LR)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = F(
        "constant", "optimizer", "Learning-rate schedule, stepped once per optimizer step (diffusers' formulas).",
        ss="ss_lr_scheduler")
    lr_scheduler_num_cycles: int = F(1, "optimizer", "Hard restarts of cosine_with_restarts.", ge=1)
    lr_scheduler_power: float = F(1.0, "optimizer", "Exponent of the polynomial schedule (1 = linear).", gt=0,
                                  gui_unset=(0,))
    lr_scheduler_type: Optional[str] = F(
        None, "optimizer", "A torch.optim.lr_scheduler class name or module.Class path; replaces lr_scheduler.")
    lr_scheduler_args: dict[str, Any] = F(
        {}, "optimizer", "Keyword arguments of lr_scheduler_type; also accepts kohya's list of 'key=value'.")
    lr_warmup_steps: float = F(
        0, "optimizer", "Warmup optimizer steps; a value below 1 is a fraction of the total steps.", ge=0,
        ss="ss_lr_warmup_steps", gui_unset=(0,))
    max_grad_norm: float = F(1.0, "optimizer", "Clip the gradient norm on each optimizer step (0 = off).",
                             ge=0, ss="ss_max_grad_norm")

    # ---- training ----------------------------------------------------------------
    train_batch_size: int = F(1, "training", "Images per micro-batch.", ge=1, ss="ss_batch_size_per_device",
                              dataset_key="batch_size")
    gradient_accumulation_steps: int = F(1, "training", "Micro-batches per optimizer step.", ge=1,
                                         ss="ss_gradient_accumulation_steps")
    max_train_steps: Optional[int] = F(
        None, "training", "Optimizer steps. With max_train_epochs too, training stops at whichever comes first. "
                          "Neither set: 1600 (sd-scripts' default).", ge=1, resume=RESUME_SAFE)
    max_train_epochs: Optional[int] = F(None, "training", "Epochs to train (see max_train_steps).", ge=1,
                                        resume=RESUME_SAFE, gui_unset=(0,))
    seed: Optional[int] = F(None, "training", "Random seed; unset = a random one, recorded in the metadata.",
                            ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = F("no", "training", "Autocast precision.", ss="ss_mixed_precision")
    gradient_checkpointing: bool = F(False, "training", "Recompute activations in backward to save memory.",
                                     ss="ss_gradient_checkpointing")
    full_fp16: bool = F(
        False, "training", "Adapter weights, gradients and optimizer state in float16 (needs mixed_precision = "
        "'fp16'; the gradient scaler still guards overflow). Saves memory, loses precision.", ss="ss_full_fp16")
    full_bf16: bool = F(
        False, "training", "Adapter weights, gradients and optimizer state in bfloat16 (needs mixed_precision = "
        "'bf16'). Saves memory, loses precision.")
    fp8_base: bool = F(
        False, "training", "Store the frozen UNet and text-encoder weights in float8_e4m3fn and compute in the "
        "autocast dtype (needs CUDA and mixed_precision fp16/bf16). Saves memory, changes results slightly.",
        ss="ss_fp8_base")
    stop_text_encoder_training: int = F(
        0, "training", "kohya GUI 'Stop TE (% of total steps)': the text encoder trains for the first "
        "ceil(total_steps * N / 100) optimizer steps, then its adapters are frozen (no gradient, no update, "
        "the UNet keeps training); -1 = the text encoder is not trained at all; 0 = no stop.", ge=-1, le=100)
    # speed (lorakit/train/speed.py); none of these changes what is trained, only how fast
    torch_compile: bool = F(
        False, "training", "torch.compile the UNet in place after the adapters are applied (and the text "
                           "encoder when it is trained); each new bucket shape compiles once.", resume=RESUME_SAFE)
    dynamo_backend: str = F(
        "inductor", "training", "torch.compile backend (list_backends(): inductor, aot_eager...) for torch_compile; "
        "GUI 'no' = off. inductor is refused on the CPU: wrong gradients there (docs/speed.md)", resume=RESUME_SAFE)
    torch_compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune",
                                         "max-autotune-no-cudagraphs"]] = F(
        None, "training", "torch.compile mode (inductor only): default, reduce-overhead (CUDA graphs, for small "
                          "batches), max-autotune, max-autotune-no-cudagraphs; unset = default.", resume=RESUME_SAFE)
    torch_compile_scope: Literal["regional", "whole"] = F(
        "regional", "training", "What torch_compile compiles: regional = each repeated block (transformer and ResNet "
                                "blocks, text-encoder layers) with its adapters, one graph per block shape, compiled "
                                "several times faster; whole = the whole UNet (and text encoder) as one graph.",
                                resume=RESUME_SAFE)
    channels_last: bool = F(
        False, "training", "UNet (and the VAE when it encodes during training) and their inputs in the "
                           "channels_last memory format.", resume=RESUME_SAFE)
    # noise and timesteps (lorakit/train/noise.py); every draw comes from the sample's own seed
    noise_offset: float = F(0.0, "training", "Add noise_offset * randn per sample and channel to the noise "
                                             "(darker/brighter images; about 0.05-0.1); 0 = off.", ge=0, le=1,
                                             ss="ss_noise_offset", ss_write=SS_NEUTRAL_NONE, neutral=0)
    noise_offset_random_strength: bool = F(
        False, "training", "Scale noise_offset by U(0,1), drawn per sample.", ss="ss_noise_offset_random_strength")
    adaptive_noise_scale: float = F(
        0.0, "training", "Per sample and channel: offset = max(noise_offset + this * |mean of the latent "
                         "channel|, 0). Needs noise_offset; 0 = off.", ge=-1, le=1,
                         ss="ss_adaptive_noise_scale", ss_write=SS_NEUTRAL_NONE, neutral=0)
    multires_noise_iterations: int = F(
        0, "training", "Multi-resolution (pyramid) noise levels, about 6-10; 0 = off.", ge=0, le=64,
        ss="ss_multires_noise_iterations", ss_write=SS_NEUTRAL_NONE, neutral=0)
    multires_noise_discount: float = F(
        0.3, "training", "Weight of pyramid level i is discount^i (with multires_noise_iterations).", gt=0, le=1,
        ss="ss_multires_noise_discount")
    ip_noise_gamma: float = F(0.0, "training", "Input perturbation: noisy latents get noise + gamma*randn, the "
                                               "target stays the noise (about 0.1); 0 = off.", ge=0, le=1,
                                               ss="ss_ip_noise_gamma", ss_write=SS_NEUTRAL_NONE, neutral=0)
    ip_noise_gamma_random_strength: bool = F(
        False, "training", "Scale ip_noise_gamma by U(0,1), drawn per sample.", ss="ss_ip_noise_gamma_random_strength")
    min_timestep: Optional[int] = F(None, "training", "Lowest training timestep (unset = 0).", ge=0, le=999,
                                    gui_unset=(0,))
    max_timestep: Optional[int] = F(
        None, "training", "Timesteps are drawn from [min_timestep, max_timestep) (unset = 1000); "
                          "min = max trains that one timestep.", ge=0, le=1000, gui_unset=(0, 1000))
    zero_terminal_snr: bool = F(
        False, "training", "Rescale the DDPM betas so the last timestep is pure noise (for v-prediction).",
        ss="ss_zero_terminal_snr")
    # loss (lorakit/train/loss.py)
    min_snr_gamma: float = F(
        0.0, "training", "Min-SNR weighting: min(snr, gamma)/snr (eps) or /(snr+1) (v-pred); about 5; 0 = off.",
        ge=0, ss="ss_min_snr_gamma", ss_write=SS_NEUTRAL_NONE, neutral=0)
    debiased_estimation_loss: bool = F(
        False, "training", "Weight the loss by 1/sqrt(snr) (eps) or 1/(snr+1) (v-pred), snr capped at 1000.",
        ss="ss_debiased_estimation")
    v_pred_like_loss: float = F(
        0.0, "training", "Add a v-prediction-like loss: loss * (1 + v_pred_like_loss * (snr + 1) / snr), snr capped "
        "at 1000 (sd-scripts' add_v_prediction_like_loss); 0 = off.", ge=0)
    scale_v_pred_loss_like_noise_pred: bool = F(
        False, "training", "v-prediction only: weight the loss by snr/(snr+1), like an eps loss.")
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = F(
        "l2", "training", "Elementwise loss: l2, l1, or pseudo-Huber huber / smooth_l1 with huber_c.",
        ss="ss_loss_type")
    huber_schedule: Literal["constant", "exponential", "snr"] = F(
        "snr", "training", "Huber threshold over timesteps: constant c, exponential from 1 (t=0) to c (t=T), "
                           "or snr-based (huber / smooth_l1 only).")
    huber_c: float = F(0.1, "training", "Huber threshold parameter c (huber / smooth_l1 only).", gt=0, le=1,
                       ss="ss_huber_c")
    huber_scale: float = F(1.0, "training", "Multiplies the Huber threshold (huber / smooth_l1 only).", gt=0)

    # ---- output ------------------------------------------------------------------
    output_dir: Optional[str] = F(None, "output", "Folder for the adapter, metrics.jsonl and logs.", resume=RESUME_SAFE)
    output_name: str = F("last", "output", "Adapter file name without extension.", ss="ss_output_name")
    save_model_as: Literal["safetensors"] = F("safetensors", "output", "File format (safetensors only).",
                                              resume=RESUME_NOTED)
    save_precision: Literal["float", "fp16", "bf16"] = F("fp16", "output", "dtype of the saved tensors.",
                                                         resume=RESUME_NOTED)
    save_every_n_epochs: Optional[int] = F(None, "output", "Also save <name>-<epoch:06d> every N epochs.", ge=1,
                                           resume=RESUME_NOTED)
    save_every_n_steps: Optional[int] = F(None, "output", "Also save <name>-step<step:08d> every N steps.",
                                          ge=1, resume=RESUME_NOTED)
    save_state: bool = F(False, "output", "Also save the full training state (for --resume) at each save "
                                          "and at the end, as <name>-...-state folders.", resume=RESUME_NOTED)
    save_state_on_train_end: bool = F(
        False, "output", "Save the training state as <name>-state at the end only (save_state saves it at "
        "every save too).", resume=RESUME_NOTED)
    resume: Optional[str] = F(
        None, "output", "Resume from this lorakit state folder (or 'auto': the newest in output_dir); the "
        "command line's --resume wins.", resume=RESUME_SAFE)
    save_last_n_epochs: Optional[int] = F(
        None, "output", "Keep only the newest N per-epoch files (the final file is always kept).", ge=1,
        resume=RESUME_NOTED)
    save_last_n_steps: Optional[int] = F(
        None, "output", "Keep only per-step files from the last N steps (kohya's rule).", ge=1, resume=RESUME_NOTED)
    save_last_n_epochs_state: Optional[int] = F(None, "output", "As save_last_n_epochs, for state folders.",
                                                ge=1, resume=RESUME_NOTED)
    save_last_n_steps_state: Optional[int] = F(None, "output", "As save_last_n_steps, for state folders.", ge=1,
                                               resume=RESUME_NOTED)
    logging_dir: Optional[str] = F(None, "output", "TensorBoard folder (unset = <output_dir>/logs).",
                                   resume=RESUME_SAFE)
    log_with: Optional[Literal["tensorboard", "wandb", "all"]] = F(
        None, "output", "Where step metrics go besides metrics.jsonl: tensorboard (also when unset), wandb (needs "
        "the wandb package; project log_tracker_name), or all (both).", resume=RESUME_SAFE)
    log_tracker_name: Optional[str] = F(None, "output", "wandb project name (unset = 'network_train', as "
                                                        "sd-scripts).", resume=RESUME_SAFE)
    wandb_run_name: Optional[str] = F(None, "output", "wandb run name (unset = output_name, as the kohya GUI "
                                                      "passes it).", resume=RESUME_SAFE)
    training_comment: Optional[str] = F(None, "output", "Stored as ss_training_comment in the file.",
                                        resume=RESUME_SAFE, ss="ss_training_comment")

    # ---- sample ------------------------------------------------------------------
    sample_prompts: Optional[str] = F(
        None, "sample", "Sample prompts, inline (one per line) or a .txt file; kohya options --n --w --h --d "
                        "--s --l --ss.", resume=RESUME_NOTED)
    sample_every_n_epochs: Optional[int] = F(None, "sample", "Write sample images every N epochs.", ge=1,
                                             resume=RESUME_NOTED)
    sample_every_n_steps: Optional[int] = F(None, "sample", "Write sample images every N steps.", ge=1,
                                            resume=RESUME_NOTED)
    sample_at_first: bool = F(False, "sample", "Also sample before the first step.", resume=RESUME_NOTED)
    sample_sampler: str = F("euler_a", "sample", "Sampler: ddim, pndm, lms, euler, euler_a, heun, dpm_2, "
                                                 "dpm_2_a, dpmsolver, dpmsolver++, dpmsingle, dpm++ 2m karras, "
                                                 "unipc (k_ prefixes allowed).", resume=RESUME_NOTED)
    dlr_spike_factor: float = F(
        3.0, "sample", "Warn when d*lr (Prodigy/DAdaptation) grows by more than this factor within "
                       "dlr_spike_window steps after it has levelled off; 0 = off.", ge=0, resume=RESUME_SAFE)
    dlr_spike_window: int = F(20, "sample", "Steps over which a d*lr spike is measured.", ge=1, resume=RESUME_SAFE)
    dlr_spike_action: Literal["warn", "save", "stop"] = F(
        "warn", "sample", "On a d*lr spike: warn; save the adapter as it was before the spike took effect; "
                          "or stop there (adapter saved).", resume=RESUME_SAFE)

    # ---- validators --------------------------------------------------------------
    @field_validator("resolution", mode="before")
    @classmethod
    def _resolution(cls, v: Any) -> Any:
        return parse_resolution(v)

    @field_validator("resolution")
    @classmethod
    def _resolution_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        for n in v:
            if n < 64 or n % 8:
                raise ValueError(f"{n} must be a multiple of 8 and at least 64")
        return v

    @field_validator("text_encoder_lr", mode="before")
    @classmethod
    def _te_lr(cls, v: Any) -> Any:
        return one_text_encoder_lr(v)[0]

    @field_validator("save_every_n_epochs", "save_every_n_steps", "sample_every_n_epochs",
                     "sample_every_n_steps", "save_last_n_epochs", "save_last_n_steps",
                     "save_last_n_epochs_state", "save_last_n_steps_state", "validate_every_n_steps",
                     "max_validation_steps", mode="before")
    @classmethod
    def _zero_is_off(cls, v: Any) -> Any:
        return None if v in (0, "0", "") else v  # kohya: 0 means "never"

    @field_validator("optimizer_args", "lr_scheduler_args", mode="before")
    @classmethod
    def _optimizer_args(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return parse_kv_args(v)
        return v

    @field_validator("dataset_subsets")
    @classmethod
    def _subsets(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, sub in enumerate(v):
            for k in sub:
                if k not in SUBSET_KEYS:
                    guess = difflib.get_close_matches(k, SUBSET_KEYS, n=1, cutoff=0.6)
                    hint = f"did you mean '{guess[0]}'?" if guess else f"allowed: {', '.join(SUBSET_KEYS)}"
                    raise ValueError(f"subset {i}: unknown key '{k}'; {hint}")
            if not sub.get("image_dir"):
                raise ValueError(f"subset {i} has no image_dir")
            reps = sub.get("num_repeats", 1)
            if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
                raise ValueError(f"subset {i}: num_repeats must be an integer of 1 or more (got {reps!r})")
            ext = str(sub.get("caption_extension", ".caption"))
            cond = sub.get("conditioning_data_dir")
            entry = {"image_dir": str(sub["image_dir"]), "num_repeats": reps,
                     "class_tokens": str(sub.get("class_tokens") or ""),
                     "caption_extension": ext if ext.startswith(".") or ext == "" else "." + ext,
                     "is_reg": bool(sub.get("is_reg", False))}
            if cond:  # masked_loss masks, one per image, same file name (sd-scripts' ControlNet subset key)
                entry["conditioning_data_dir"] = str(cond)
            for k in SUBSET_OPTIONS:  # checked against the run-level field: same type and range
                if k in sub:
                    field = cls.model_fields[k]
                    try:
                        entry[k] = TypeAdapter(Annotated[field.annotation, field]).validate_python(sub[k])
                    except ValidationError as e:
                        raise ValueError(f"subset {i}: {k}: {e.errors()[0]['msg']} (got {sub[k]!r})") from None
            out.append(entry)
        return out

    @field_validator("dynamo_backend", mode="before")
    @classmethod
    def _backend(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v  # the GUI and accelerate also write upper case

    @field_validator("caption_extension")
    @classmethod
    def _caption_ext(cls, v: str) -> str:
        return v if v.startswith(".") or v == "" else "." + v

    @field_validator("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", mode="before")
    @classmethod
    def _block_list(cls, v: Any) -> Any:
        # the GUI writes "2,2,...,2" and "" for unset; sd-scripts network_args the same string
        if isinstance(v, str):
            return [p.strip() for p in v.split(",")] if v.strip() else None
        return v

    @field_validator("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
    @classmethod
    def _block_list_values(cls, v: Optional[list]) -> Optional[list]:
        if v is not None and len(v) not in (SD_BLOCKS.total, SDXL_BLOCKS.total):
            raise ValueError(f"{len(v)} values; give one per UNet block, {SD_BLOCKS.total} for SD1.x/2.x "
                             f"({SD_BLOCKS.layout}) or {SDXL_BLOCKS.total} for SDXL ({SDXL_BLOCKS.layout})")
        if v is not None and any(d < 0 for d in v):
            raise ValueError(f"a value is negative ({min(v)}); a block without adapters has dim 0")
        return v

    @field_validator("down_lr_weight", "up_lr_weight", mode="before")
    @classmethod
    def _lr_weight(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return [float(v)]
        if not isinstance(v, str):
            return v
        text = v.strip()
        if not text:
            return None
        if "," in text or is_number(text):  # sd-scripts: an empty entry is 0
            return [float(p) if p.strip() else 0.0 for p in text.split(",")]
        name, _, plus = text.partition("+")
        if name not in LR_WEIGHT_PRESETS or (plus and not is_number(plus)):
            raise ValueError(f"'{v}' is neither up to 12 (SDXL 9) comma-separated numbers nor a preset "
                             f"({', '.join(LR_WEIGHT_PRESETS)}, optionally '+number', e.g. 'sine+0.5')")
        return text

    @field_validator("down_lr_weight", "up_lr_weight")
    @classmethod
    def _lr_weight_len(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 12:
            raise ValueError(f"{len(v)} values; the SD1.x/2.x UNet has 12 down and 12 up blocks (SDXL 9)")
        return v

    @field_validator("mid_lr_weight", mode="before")
    @classmethod
    def _mid_lr_weight(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return [float(v)]
        if isinstance(v, str):
            return [float(p) if p.strip() else 0.0 for p in v.split(",")] if v.strip() else None
        return v

    @field_validator("block_lr_zero_threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        return 0.0 if isinstance(v, str) and not v.strip() else v  # the GUI's empty text box

    @field_validator("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
    @classmethod
    def _loraplus(cls, v: Optional[float]) -> Optional[float]:
        return None if v == 0 else v  # the GUI writes 0 for off; sd-scripts gets no argument then

    @field_validator("network_alpha", "conv_alpha")
    @classmethod
    def _alpha(cls, v: Optional[float]) -> Optional[float]:
        return None if v == 0 else v  # kohya: alpha 0 means alpha = dim

    @model_validator(mode="after")
    def _contradictions(self) -> "TrainConfig":
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            raise ValueError("network_train_unet_only and network_train_text_encoder_only are both set; "
                             "set at most one")
        if self.sdxl and self.v2:  # sd-scripts' verify_sdxl_training_args asserts the same
            raise ValueError("sdxl and v2 are both true; an SDXL model is not SD2.x: set v2 = false")
        problems = block_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ---- derived values ------------------------------------------------------------
    def resolved_unet_lr(self) -> float:
        if self.network_train_text_encoder_only:
            return 0.0
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    def resolved_text_encoder_lr(self) -> float:
        if self.network_train_unet_only or self.stop_text_encoder_training == -1:  # -1: kohya's "never train"
            return 0.0
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr


def field_attr(name: str, attr: str, default: Any = None) -> Any:
    """Field `name`'s `attr` as F() recorded it (fields.py), or `default`."""
    return (TrainConfig.model_fields[name].json_schema_extra or {}).get(attr, default)  # type: ignore[union-attr]


def fields_with(attr: str) -> dict[str, Any]:
    """{field: its `attr`} for the fields F() gave `attr`, in schema order."""
    return {k: field_attr(k, attr) for k in TrainConfig.model_fields if field_attr(k, attr) is not None}


def field_section(name: str) -> str:
    return field_attr(name, "section", "training")
