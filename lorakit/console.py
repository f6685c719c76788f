"""What lorakit's commands print: its own lines, not the libraries' chatter.

transformers draws a "Loading weights" progress bar for every text encoder it loads, and warns that
its image processors want torchvision (lorakit uses none: the pipelines are built without a feature
extractor, and torchvision is never installed beside the pinned CPU torch). Only the commands turn
these off; a program that imports lorakit as a library keeps its own settings.
"""
from __future__ import annotations

import logging
import os
import sys


def quiet_libraries() -> None:
    """Without importing transformers (commands that load no model stay quick)."""
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # read at its import: already imported, switch it off there
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:  # transformers (and huggingface_hub) read it when they are imported
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
