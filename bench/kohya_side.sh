#!/usr/bin/env bash
# kohya sd-scripts beside lorakit on the same machine, model and images (called by bench/gpu_run.sh;
# nothing here fetches or installs sd-scripts). Needs, carried by the session (bench/README.md):
#   KOHYA_DIR   a checkout of kohya-ss/sd-scripts (performance-anchors.md: 48d368fa); train_network.py,
#               library/ and networks/ are enough (2.5 MB)
#   KOHYA_SITE  its pinned packages installed with pip --target (diffusers 0.32.1, transformers 4.54.1,
#               tokenizers 0.21.4, huggingface-hub 0.34.3, lycoris_lora 3.2.0.post2, dadaptation 3.2,
#               prodigyopt 1.1.2, toml, voluptuous, imagesize); the rest (torch, torchvision, accelerate,
#               opencv, einops, safetensors) is the GPU image's. It replaces PYTHONPATH for these runs.
# Optional: KOHYA_MODEL (default WORKDIR/sd15-random: sd-scripts builds SD1.5's own UNet, so a tiny
# model does not load), KOHYA_CONFIGS (which rows, in order), KOHYA_EXTRA (flags added last, which
# win: "--resolution 64" for a dry run on the CPU), KOHYA_WARMUP / KOHYA_STEPS (steps not timed, timed),
# KOHYA_T (seconds for one config, 150).
# usage: kohya_side.sh WORKDIR RESULTS_FILE SECONDS_LEFT
# Each config runs once under bench/kohya_wrap.py, which times its optimizer steps as train_bench.py
# times lorakit's (the median after the warm-up) and reads its peak allocated memory.
set -u
WORK=$1 RES=$2 LEFT=$3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KOHYA_DIR=$(cd "$KOHYA_DIR" && pwd) || exit 2  # each run starts in it (absolute, as KOHYA_SITE must be)
KOHYA_SITE=$(cd "$KOHYA_SITE" && pwd) || exit 2
PY=${PY:-python3}
T0=$(date +%s)
WARMUP=${KOHYA_WARMUP:-4} STEPS=${KOHYA_STEPS:-12}  # as train_bench.py's eager rows: 12 timed after 4
T_CONFIG=${KOHYA_T:-150}  # seconds for one config: load, cache latents, 17 steps (H100: <= 1.8 s each)
MODEL=${KOHYA_MODEL:-$WORK/sd15-random}
# sd-scripts loads SD1's tokenizer by hub id (openai/clip-vit-large-patch14), which the GPU machine
# cannot reach, unless --tokenizer_cache_dir holds it under that id; transformers 4.54's
# CLIPTokenizer needs vocab.json and merges.txt, which the shipped base model's tokenizer has
# (the CLIP vocabulary, so the token counts are lorakit's)
TOK=$WORK/kohya-tokenizers
mkdir -p "$TOK" && ln -sfn "$ROOT/lorakit/models/base/tokenizer" "$TOK/openai_clip-vit-large-patch14"
export HF_HUB_OFFLINE=1
COMMON=(--pretrained_model_name_or_path "$MODEL" --train_data_dir "$WORK/data" --caption_extension .txt
        --tokenizer_cache_dir "$TOK"
        --mixed_precision bf16 --sdpa --cache_latents --gradient_checkpointing --max_token_length 150
        --shuffle_caption --seed 31337 --save_model_as safetensors --output_name kohya)
# the flags kohya_ss writes for the configs of bench/train_bench.py (seed A and LoKr: the seed guides'
# JSON blocks; their scheduler, samples and saves do not change a step's time and are left out)
LORA="--network_module networks.lora --network_dim 8 --network_alpha 8 --optimizer_type AdamW --learning_rate 1e-4 --resolution 512"
SEED_A="--network_module lycoris.kohya --network_dim 8 --network_alpha 8 --network_args algo=loha conv_dim=8 conv_alpha=8 --optimizer_type DAdaptation --optimizer_args decouple=True weight_decay=0.01 betas=0.9,0.99 --learning_rate 1.0 --text_encoder_lr 1.0 --unet_lr 1.0 --lr_scheduler constant --min_snr_gamma 3 --resolution 576"
LOKR="--network_module lycoris.kohya --network_dim 1024 --network_alpha 1024 --network_args algo=lokr conv_dim=512 conv_alpha=512 --network_dropout 0.3 --scale_weight_norms 1 --optimizer_type Prodigy --optimizer_args betas=0.9,0.99 d0=1e-6 d_coef=1.0 weight_decay=0.010 safeguard_warmup=False use_bias_correction=False --learning_rate 1.0 --text_encoder_lr 1.0 --unet_lr 1.0 --lr_scheduler constant --keep_tokens 1 --multires_noise_iterations 8 --multires_noise_discount 0.2 --resolution 512"
declare -A ARGS=(
  [lora_b15]="$LORA --train_batch_size 15"
  [lora_b1]="$LORA --train_batch_size 1"
  [seed_a_b1]="$SEED_A --train_batch_size 1"
  [seed_a_b15]="$SEED_A --train_batch_size 15"
  [lokr_b1]="$LOKR --train_batch_size 1"
)
LINE=$WORK/kohya-row.txt
for c in ${KOHYA_CONFIGS:-lora_b15 seed_a_b1 lora_b1 seed_a_b15 lokr_b1}; do
    rem=$(( LEFT - ($(date +%s) - T0) ))
    if [ "$rem" -lt 40 ]; then echo "kohya $c: skipped, ${rem}s left" | tee -a "$RES"; exit 0; fi
    bs=$(echo "${ARGS[$c]}" | sed -E 's/.*--train_batch_size ([0-9]+).*/\1/')
    lim=$((rem - 10)); [ "$lim" -gt "$T_CONFIG" ] && lim=$T_CONFIG  # one stuck run cannot take the rest
    rm -f "$LINE"
    # shellcheck disable=SC2086
    (cd "$KOHYA_DIR" && PYTHONPATH=$KOHYA_SITE timeout -k 10 "$lim" $PY "$ROOT/bench/kohya_wrap.py" \
        --out "$LINE" --label "$c" --batch "$bs" --warmup "$WARMUP" -- train_network.py "${COMMON[@]}" \
        --output_dir "$WORK/kohya-$c" --max_train_steps $((WARMUP + STEPS + 1)) ${ARGS[$c]} ${KOHYA_EXTRA:-}) \
        || echo "kohya $c: failed or timed out (exit $?)" | tee -a "$RES"
    if [ -f "$LINE" ]; then tee -a "$RES" < "$LINE"; fi
done
