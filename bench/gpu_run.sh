#!/usr/bin/env bash
# The one prepared GPU run of issue 18 (bench/README.md, "On a GPU machine"). On the device machine,
# with .whl carried (bash bench/gpu_wheels.sh builds it here):
#
#     bash bench/gpu_run.sh                    # every group, in priority order, within 9 minutes
#     bash bench/gpu_run.sh regional graphs    # only these groups (a second session continues)
#     bash bench/gpu_run.sh --cpu              # here: the same logic on the tiny model, a dry run
#
# First one line from bench/inductor_check.py (is inductor's gradient of a LoRA'd attention at batch 1
# right on this device? docs/speed.md "Known limits"). Groups, in this order: eager (seed A b1/b15, LoRA b1/b15, LoKr b1, iA3 b1), kernels (CUDA kernel launches
# of one LoRA and one seed A step, bench/kernels_cpu.py --cuda), sdxl (issue 16: SDXL LoRA
# b1/b4 at 1024 px, UNet only, TE outputs cached; the random SDXL is built first), regional (the repeated
# blocks compiled; LoRA b1 once more to read the inductor cache), graphs (reduce-overhead: CUDA
# graphs on the regions), forms (LoRA b1/b15 with merged_op = auto), dynamic (regional with
# torch_compile_dynamic: its first step and its kernels against the static regional rows), whole (the whole UNet compiled, for the compile-time ratio), kohya (only
# with a carried sd-scripts: KOHYA_DIR, KOHYA_SITE; then bench/vs_kohya.py, lorakit / kohya per config;
# see bench/README.md), tests (tests/test_gpu.py).
# Each row is printed and appended to $OUT/results.txt as it ends; a row past its timeout, or past
# the run's budget (BUDGET_S, 530 s: under 9 minutes), is written as such and the run goes on or
# stops. stderr of each row goes to $OUT/rows.log.
set -u
cd "$(dirname "$0")/.."
CPU=0
if [ "${1:-}" = "--cpu" ]; then CPU=1; shift; fi
GROUPS_WANTED=${*:-eager kernels sdxl regional graphs forms dynamic whole kohya tests}
OUT=${OUT:-$PWD/gpu-run-out}
mkdir -p "$OUT"
RES=$OUT/results.txt
LOG=$OUT/rows.log
T0=$(date +%s)
BUDGET=${BUDGET_S:-530}
WORK=${WORK:-/tmp/lorakit-bench}
export PYTHONUNBUFFERED=1

PY=${PY:-python3}
# the GPU image lacks diffusers, pydantic and the LR-free optimizers: the carried wheels (a Python
# without them here, e.g. one set up as the image is, takes the same path)
if ! $PY -c "import diffusers, pydantic" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/: run bash bench/gpu_wheels.sh here and carry .whl"; exit 2; }
    SITE=${SITE:-/tmp/site}
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 2
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
if [ $CPU = 1 ]; then
    BACKEND=aot_eager            # no C++ compile here; the rows only check the script's logic
    EAGER_STEPS="--steps 2 --warmup 1"
    COMPILE_STEPS="--steps 2 --warmup 1"
    T_EAGER=${T_EAGER:-60}; T_COMPILE=${T_COMPILE:-240}; T_WHOLE=${T_WHOLE:-240}; T_SDXL=${T_SDXL:-120}
    BUDGET=${BUDGET_S:-1500}     # 2 shared cores: compiling the tiny model takes minutes here
    WORK=$WORK-cpu
    MODE_FLAG=--cpu
else
    BACKEND=inductor
    # b15 rows stay within the first 13 batches of the 200-image epoch (its short 14th batch would
    # compile a new shape inside the timed steps)
    EAGER_STEPS="--steps 12 --warmup 4"
    COMPILE_STEPS="--steps 8 --warmup 5"
    T_EAGER=${T_EAGER:-75}; T_COMPILE=${T_COMPILE:-150}; T_WHOLE=${T_WHOLE:-200}; T_SDXL=${T_SDXL:-120}
    MODE_FLAG=
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

say() { echo "$*" | tee -a "$RES"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# row LABEL TIMEOUT CONFIG [train_bench args...]: one config in its own process, stopped at TIMEOUT
# or at the end of the budget, whichever comes first
row() {
    local label=$1 limit=$2 config=$3 rem rc
    shift 3
    rem=$(left)
    if [ "$rem" -lt 25 ]; then say "$config  $label: skipped, ${rem}s left of ${BUDGET}s"; return; fi
    [ "$limit" -lt $((rem - 10)) ] || limit=$((rem - 10))
    echo "--- $config $label (limit ${limit}s)" >> "$LOG"
    n=$(wc -l < "$RES")
    timeout -k 10 "$limit" $PY bench/train_bench.py $MODE_FLAG --workdir "$WORK" --rows-only --out "$RES" \
        --label "$label" --configs "$config" "$@" >> "$LOG" 2>&1
    rc=$?
    tail -n +$((n + 1)) "$RES"  # the row train_bench appended as it ended
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        say "$config  $label: timed out after ${limit}s"
    elif [ "$rc" != 0 ]; then
        say "$config  $label: failed (exit $rc): $(grep -E 'Error' "$LOG" | tail -1 | cut -c1-160)"
    fi
}

want() { case " $GROUPS_WANTED " in *" $1 "*) return 0;; *) return 1;; esac; }

say "lorakit gpu_run $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "device $($PY -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")')" \
    "budget ${BUDGET}s, groups: $GROUPS_WANTED"
# the packages the rows run with (the image's own, or the carried wheels): a failure reads better beside them
say "versions $($PY -c 'import importlib.metadata as m; print(" ".join(f"{p} {m.version(p)}" for p in ("torch", "transformers", "diffusers", "accelerate", "tokenizers", "pydantic")))' 2>&1 | tail -1)"
say "config          batch  res    img/s   med s   p90 s first s$([ $CPU = 1 ] || echo '  peak GB    MFU')  setting"
timeout -k 10 $(( $(left) - 10 )) $PY bench/train_bench.py $MODE_FLAG --workdir "$WORK" --prepare \
    --configs lora_b1 >> "$LOG" 2>&1 \
    || { say "building the model and images failed or timed out (see rows.log)"; exit 1; }

# first the inductor gradient check (docs/speed.md "Known limits"): a wrong gradient voids the compiled rows
line=$(timeout -k 5 120 $PY bench/inductor_check.py 2>> "$LOG" | tail -1)
say "${line:-inductor check: failed or timed out (see rows.log)}"

COMPILE="--set torch_compile=true --set dynamo_backend=$BACKEND"
if want eager; then
    for c in seed_a_b1 seed_a_b15 lora_b1 lora_b15 lokr_b1 seed_b_ia3_b1; do
        row eager "$T_EAGER" $c $EAGER_STEPS
    done
fi
if want kernels; then  # the CUDA kernel launches per step that bench/kernels_cpu.py's op counts stand for
    lim=$(( $(left) - 10 )); [ 90 -lt "$lim" ] && lim=90
    if [ "$lim" -lt 25 ]; then
        say "kernels: skipped, $(left)s left of ${BUDGET}s"
    else
        n=$(wc -l < "$RES")
        timeout -k 10 "$lim" $PY bench/kernels_cpu.py $([ $CPU = 1 ] || echo --cuda) --configs lora_b1 seed_a_b1 \
            2>> "$LOG" | grep -Ev "^( |Using )" >> "$RES"
        rc=${PIPESTATUS[0]}  # the script's, not grep's
        tail -n +$((n + 1)) "$RES"
        [ "$rc" = 0 ] || say "kernels: failed or timed out (exit $rc; see rows.log)"
    fi
fi
if want sdxl; then  # issue 16 targets (H100/H200): >= 1.85 img/s at batch 1, peak <= 11 GB
    lim=$(( $(left) - 10 )); [ "$T_SDXL" -lt "$lim" ] && lim=$T_SDXL
    if [ "$lim" -lt 25 ]; then
        say "sdxl: skipped, $(left)s left of ${BUDGET}s"
    elif timeout -k 10 "$lim" $PY bench/train_bench.py $MODE_FLAG --workdir "$WORK" --prepare \
            --configs sdxl_lora_b1 >> "$LOG" 2>&1; then
        for c in sdxl_lora_b1 sdxl_lora_b4; do
            row eager "$T_SDXL" $c $EAGER_STEPS
        done
    else
        say "sdxl: building the random SDXL failed or took over ${T_SDXL}s (see rows.log)"
    fi
fi
if want regional; then
    for c in lora_b15 seed_a_b1 lora_b1 seed_a_b15; do
        row "compile regional" "$T_COMPILE" $c $COMPILE_STEPS $COMPILE --set torch_compile_scope=regional
    done
    # the same shapes again: inductor's FX graph cache (~/.cache/lorakit/inductor) should make it seconds
    row "compile regional, 2nd run (cache)" "$T_COMPILE" lora_b1 $COMPILE_STEPS $COMPILE \
        --set torch_compile_scope=regional
fi
if want graphs; then
    if [ $CPU = 1 ]; then
        say "graphs: reduce-overhead is an inductor mode with CUDA graphs; skipped on the CPU"
    else
        for c in lora_b1 seed_a_b1 lokr_b1 seed_b_ia3_b1; do
            row "compile regional + reduce-overhead" "$T_COMPILE" $c $COMPILE_STEPS $COMPILE \
                --set torch_compile_scope=regional --set torch_compile_mode=reduce-overhead
        done
    fi
fi
if want forms; then  # merged_op = auto: each LoRA layer shape's faster form, measured in the warm-up steps
    for c in lora_b1 lora_b15; do
        row "merged_op auto" "$T_EAGER" $c $EAGER_STEPS --set 'network_args={merged_op="auto"}'
    done
fi
if want dynamic; then  # one graph per block for every shape: the compile once, generic kernels after
    for c in lora_b1 lora_b15; do
        row "compile regional dynamic" "$T_COMPILE" $c $COMPILE_STEPS $COMPILE \
            --set torch_compile_scope=regional --set torch_compile_dynamic=true
    done
fi
if want whole; then  # issue 18: no timed step within 160 s on the H200; first s is the compile time
    row "compile whole" "$T_WHOLE" lora_b15 $COMPILE_STEPS $COMPILE --set torch_compile_scope=whole
fi
if want kohya; then
    # sd-scripts cannot be fetched on the GPU machine (no network) and is never committed: a session
    # carries a checkout (KOHYA_DIR) and its pinned packages (KOHYA_SITE), bench/README.md.
    # --cpu: a dry run of the harness at 64 px, 2 steps timed after 1, on a full-size SD1.5 (KOHYA_MODEL:
    # sd-scripts builds SD1.5's own UNet) with a Python whose torch has torchvision beside it (KOHYA_PY)
    if [ -z "${KOHYA_DIR:-}" ] || [ ! -f "${KOHYA_DIR:-/nonexistent}/train_network.py" ] || [ -z "${KOHYA_SITE:-}" ]; then
        say "kohya: skipped (set KOHYA_DIR to a carried sd-scripts checkout and KOHYA_SITE to its packages)"
    elif [ $CPU = 1 ] && [ -z "${KOHYA_MODEL:-}" ]; then
        say "kohya: skipped (--cpu needs KOHYA_MODEL, a full-size SD1.5 folder)"
    else
        [ $CPU = 0 ] || export KOHYA_WARMUP=${KOHYA_WARMUP:-1} KOHYA_STEPS=${KOHYA_STEPS:-2} KOHYA_T=${KOHYA_T:-400} \
            KOHYA_EXTRA=${KOHYA_EXTRA:---resolution 64}
        n=$(wc -l < "$RES")
        PY=${KOHYA_PY:-$PY} bash bench/kohya_side.sh "$WORK" "$RES" "$(left)" >> "$LOG" 2>&1 \
            || say "kohya: failed (see rows.log)"
        tail -n +$((n + 1)) "$RES"  # the lines kohya_side.sh appended
        # each config's lorakit rows of this run against kohya's (issue 18: >= 4x, at no more memory)
        $PY bench/vs_kohya.py "$RES" | tee -a "$RES"
    fi
fi
if want tests; then
    rem=$(left)
    if [ "$rem" -lt 60 ]; then
        say "tests: skipped, ${rem}s left"
    elif [ $CPU = 1 ]; then
        say "tests: LORAKIT_GPU_TESTS_ON_CPU=1 python -m pytest tests/test_gpu.py runs them here (90 s); skipped"
    else
        timeout -k 10 $((rem - 10)) $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/gpu-tests.txt" 2>&1
        say "tests: $(tail -1 "$OUT/gpu-tests.txt")"
    fi
fi
say "done in $(( $(date +%s) - T0 ))s"
