"""The names of what a run writes into its output folder, and the patterns that find them again
(retention of the last N files, ``--resume auto``, the UI's run pages). kohya's names:

- adapter files ``<name>.safetensors`` (the end), ``<name>-step%08d`` (every N steps and on Ctrl-C or
  divergence), ``<name>-%06d`` (every N epochs), ``<name>-prespike-step%08d`` (before a d*lr spike);
- state folders: the adapter file's stem plus ``-state``;
- sample images ``<name>_<e%06d | %06d>_<index:02d>_<YYYYmmddHHMMSS>[_<seed>].png``.
"""
from __future__ import annotations

import re
import time
from typing import Literal

ADAPTER_SUFFIX = ".safetensors"
STATE_SUFFIX = "-state"
STATE_GLOB = "*" + STATE_SUFFIX  # every state folder of an output folder, whatever its output_name

SAMPLE_RE = re.compile(r"^(?P<name>.+)_(?P<at>e\d{6}|\d{6})_(?P<index>\d{2})_(?P<time>\d{14})(?:_(?P<seed>\d+))?\.png$")


def checkpoint_name(output_name: str, *, step: int | None = None, epoch: int | None = None,
                    prespike: bool = False) -> str:
    """An adapter file's name without its suffix: the final one, by step, by epoch, or before a spike."""
    if prespike:
        return f"{output_name}-prespike-step{step:08d}"
    if step is not None:
        return f"{output_name}-step{step:08d}"
    if epoch is not None:
        return f"{output_name}-{epoch:06d}"
    return output_name


def state_name(output_name: str, *, step: int | None = None, epoch: int | None = None) -> str:
    """The state folder saved beside the adapter of the same step or epoch (the final one without either)."""
    return checkpoint_name(output_name, step=step, epoch=epoch) + STATE_SUFFIX


def numbered_pattern(output_name: str, by: Literal["step", "epoch"], state: bool) -> re.Pattern[str]:
    """Matches the adapter files (state=False) or state folders (True) of `output_name` saved by step
    or by epoch; group 1 is the step or epoch."""
    number = r"-step(\d{8})" if by == "step" else r"-(\d{6})"
    return re.compile(re.escape(output_name) + number + (re.escape(STATE_SUFFIX) if state else r"\.safetensors"))


def sample_file_name(output_name: str, index: int, *, epoch: int | None, step: int, seed: int | None) -> str:
    """A sample image's file name: by epoch when sampled at an epoch's end, else by step."""
    num = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    seed_part = f"_{seed}" if seed is not None else ""
    return f"{output_name}_{num}_{index:02d}_{time.strftime('%Y%m%d%H%M%S')}{seed_part}.png"
