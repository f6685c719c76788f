#!/usr/bin/env bash
# kohya sd-scripts beside lorakit on the same machine, model and images (called by bench/gpu_run.sh;
# never run here, and nothing here fetches or installs sd-scripts). Needs, carried by the session:
#   KOHYA_DIR   a checkout of kohya-ss/sd-scripts (performance-anchors.md: 48d368fa)
#   KOHYA_SITE  its pinned packages installed with pip --target (diffusers 0.32.1, transformers 4.54.1,
#               lycoris_lora 3.2.0.post2, dadaptation 3.2, prodigyopt 1.1.2 and sd-scripts' own
#               requirements the GPU image lacks), put first on PYTHONPATH
# usage: kohya_side.sh WORKDIR RESULTS_FILE SECONDS_LEFT
# The steady step is read without tqdm: each config runs twice, with N1 and N2 steps, and
# (t(N2) - t(N1)) / (N2 - N1) is its seconds per step (start-up, caching and the first steps cancel).
set -u
WORK=$1 RES=$2 LEFT=$3
PY=${PY:-python3}
T0=$(date +%s)
N1=${KOHYA_N1:-4} N2=${KOHYA_N2:-16}
COMMON=(--pretrained_model_name_or_path "$WORK/sd15-random" --train_data_dir "$WORK/data" --caption_extension .txt
        --mixed_precision bf16 --sdpa --cache_latents --gradient_checkpointing --max_token_length 150
        --shuffle_caption --seed 31337 --save_model_as safetensors --output_name kohya)
declare -A ARGS=(
  [lora_b15]="--network_module networks.lora --network_dim 8 --network_alpha 8 --optimizer_type AdamW --learning_rate 1e-4 --resolution 512 --train_batch_size 15"
  [lora_b1]="--network_module networks.lora --network_dim 8 --network_alpha 8 --optimizer_type AdamW --learning_rate 1e-4 --resolution 512 --train_batch_size 1"
  [seed_a_b1]="--network_module lycoris.kohya --network_dim 8 --network_alpha 8 --network_args algo=loha conv_dim=8 conv_alpha=8 --optimizer_type DAdaptation --learning_rate 1.0 --text_encoder_lr 1.0 --unet_lr 1.0 --lr_scheduler constant --min_snr_gamma 3 --resolution 576 --train_batch_size 1"
)
for c in lora_b15 seed_a_b1 lora_b1; do
    secs=()
    for n in $N1 $N2; do
        rem=$(( LEFT - ($(date +%s) - T0) ))
        if [ "$rem" -lt 40 ]; then echo "kohya $c: skipped, ${rem}s left" | tee -a "$RES"; exit 0; fi
        t=$(date +%s%N)
        # shellcheck disable=SC2086
        PYTHONPATH=$KOHYA_SITE timeout -k 10 $((rem - 10)) $PY "$KOHYA_DIR/train_network.py" "${COMMON[@]}" \
            --output_dir "$WORK/kohya-$c-$n" --max_train_steps "$n" ${ARGS[$c]} \
            || { echo "kohya $c ($n steps): failed or timed out" | tee -a "$RES"; continue 2; }
        secs+=($(( ($(date +%s%N) - t) / 1000000 )))  # ms
    done
    bs=$(echo "${ARGS[$c]}" | sed -E 's/.*--train_batch_size ([0-9]+).*/\1/')
    $PY -c "import sys; a, b, n1, n2, bs = map(int, sys.argv[2:]); s = (b - a) / 1000 / (n2 - n1)
print(f'kohya {sys.argv[1]:15s} batch {bs:2d}  {s:.3f} s/step  {bs / s:.2f} img/s  '
      f'(runs of {n1} and {n2} steps: {a / 1000:.1f} s, {b / 1000:.1f} s)')" "$c" "${secs[0]}" "${secs[1]}" \
        "$N1" "$N2" "$bs" | tee -a "$RES"
done
