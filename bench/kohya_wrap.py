"""Runs a carried sd-scripts training script as __main__ and times its steps as bench/train_bench.py
times lorakit's (called by bench/kohya_side.sh; sd-scripts itself is never committed or installed here).

    python bench/kohya_wrap.py --out LINE_FILE --label lora_b1 --batch 1 --warmup 4 -- train_network.py ARGS...

Every optimizer step ends in torch's global step post-hook, which records the time (after a device
sync, so a step's kernels count in it; sd-scripts reads its loss every step, so this adds no wait of
its own). At exit it writes one line: the median of the step intervals after `warmup` of them, the
p90, img/s and the peak allocated memory of the whole run (torch.cuda.max_memory_allocated, as
train_bench.py reads lorakit's). tqdm's elapsed column would do, but only to a second.
"""
from __future__ import annotations

import argparse
import atexit
import os
import runpy
import statistics
import sys
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--label", required=True)
ap.add_argument("--batch", type=int, required=True)
ap.add_argument("--warmup", type=int, default=4)
ap.add_argument("script", nargs=argparse.REMAINDER)
args = ap.parse_args()
script = args.script[1:] if args.script[:1] == ["--"] else args.script
if not script:
    ap.error("no script to run")

stamps: list[float] = []
seen: set[int] = set()


def _stamp(optimizer, *_):
    # torch's optimizers and kohya's DAdaptation / Prodigy all pass through here; an optimizer that
    # wraps another (accelerate's, where its step is patched too) would come twice a step, so a step
    # is stamped once: when the first optimizer to step comes again, a new step has begun
    if id(optimizer) in seen:
        seen.clear()
    seen.add(id(optimizer))
    if len(seen) == 1:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())


def _report():
    steps = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup:]
    if not steps:
        line = f"kohya {args.label}: {len(stamps)} steps, too few to time after {args.warmup}"
    else:
        med = statistics.median(steps)
        # train_bench.py's median and p90, written again: this process has sd-scripts' packages
        # (diffusers 0.32), so it cannot import train_bench.py, which imports lorakit
        p90 = sorted(steps)[int(0.9 * (len(steps) - 1))]
        peak = f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB  " if torch.cuda.is_available() else ""
        line = (f"kohya {args.label:15s} batch {args.batch:2d}  {med:.3f} s/step  {args.batch / med:.2f} img/s  "
                f"{peak}(median of {len(steps)} steps after {args.warmup}; p90 {p90:.3f} s)")
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(line + "\n")


register_optimizer_step_post_hook(_stamp)
atexit.register(_report)
sys.argv = script
sys.path.insert(0, os.path.dirname(os.path.abspath(script[0])))  # its `library` package, as `python script` has
runpy.run_path(script[0], run_name="__main__")
