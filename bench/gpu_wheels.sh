#!/usr/bin/env bash
# Wheels that lorakit needs on the workplace's GPU machine beyond what its image holds
# (torch, transformers, accelerate, safetensors, tensorboard, matplotlib, pillow, tqdm are there;
# diffusers, the LR-free optimizers and pydantic are not), for Python 3.12 x86-64, into .whl/
# (ignored by git). About 9 MB. See bench/README.md, "On a GPU machine".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
EXCLUDE=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
# pure-Python ones: built here from whatever index pip reaches (some are sdists only)
"$PY" -m pip wheel -q --no-deps -w .whl diffusers==0.42.1 prodigyopt==1.1.2 dadaptation==3.2 \
    schedulefree==1.4.1 prodigy-plus-schedule-free==2.0.1 pydantic==2.14.3 annotated-types typing-inspection \
    'typing-extensions>=4.16'  # pydantic 2.14 needs >= 4.16; the image's version is not known
# pydantic-core is compiled: the manylinux wheel for CPython 3.12 that matches pydantic 2.14.3
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pydantic-core==2.50.4
ls -1 .whl
