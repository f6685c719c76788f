"""One line: does inductor get the input gradient of a LoRA'd attention on a transposed input right here?

torch 2.13's inductor does not on the CPU (tests/inductor_repro.py, docs/speed.md "Known limits"),
and lorakit refuses inductor there. bench/gpu_run.sh runs this first on the GPU machine, because a
wrong gradient on CUDA would void every compiled row after it.

    python bench/inductor_check.py            # CUDA if there is one, else the CPU
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from inductor_repro import lowrank_attention_grad_error  # noqa: E402

if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    err = lowrank_attention_grad_error(device, "inductor")
    verdict = "right" if err <= 1e-4 else "WRONG: compiled training at batch 1 cannot be trusted here"
    print(f"inductor check on {device}: LoRA'd attention input gradient off by {err:.1e} from eager ({verdict})")
