"""What the training tests share: a config on the tiny model and synthetic data, and a crash."""
from __future__ import annotations

from typing import Any

from lorakit.config.load import load_config


def tiny_run_config(model, data, out, defaults: dict[str, Any], **kw: Any):
    """A TrainConfig training `model` on `data` into `out` at 64 px with float32 saves, then the
    test file's `defaults`, then the test's own values `kw`."""
    values = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
              "resolution": 64, "save_precision": "float", **defaults, **kw}
    return load_config(None, [], values)


class Crash(Exception):
    """Raised by a test's subscriber to stop a run where a crash would."""
