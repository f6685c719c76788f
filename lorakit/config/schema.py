"""The one training schema: every setting defined once, with kohya's key names.

Each field carries its default, its range and a help text; `lorakit config show`
prints them. Unknown keys are errors (see load.py for the "did you mean").
The kohya_ss importer (kohya.py) maps GUI JSON keys onto these fields. The fields live in
sections/, one file per section with the checks that concern only its own keys; TrainConfig joins
them and holds the checks that span sections.
"""
from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, field_validator, model_validator

from .checks import block_problems
from .sections.data import DataKeys
from .sections.model import ModelKeys
from .sections.network import NetworkKeys
from .sections.optimizer import OptimizerKeys
from .sections.output import OutputKeys
from .sections.sample import SampleKeys
from .sections.training import TrainingKeys

# Sections only group keys for display and for optional TOML tables; a key is
# defined once whatever the table it is written in. A key's section is the file that declares it.
SECTION_KEYS = {"model": ModelKeys, "data": DataKeys, "network": NetworkKeys, "optimizer": OptimizerKeys,
                "training": TrainingKeys, "output": OutputKeys, "sample": SampleKeys}
SECTIONS = tuple(SECTION_KEYS)
_SECTION_OF = {key: section for section, keys in SECTION_KEYS.items() for key in keys.model_fields}


# pydantic orders inherited fields from the last base to the first: the bases are given in reverse so
# that the keys keep SECTIONS' order (config show, docs/config.md, exported configs).
class TrainConfig(*reversed(SECTION_KEYS.values())):  # type: ignore[misc]
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("save_every_n_epochs", "save_every_n_steps", "sample_every_n_epochs",
                     "sample_every_n_steps", "save_last_n_epochs", "save_last_n_steps",
                     "save_last_n_epochs_state", "save_last_n_steps_state", "validate_every_n_steps",
                     "max_validation_steps", mode="before")
    @classmethod
    def _zero_is_off(cls, v: Any) -> Any:
        return None if v in (0, "0", "") else v  # kohya: 0 means "never"

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
    return _SECTION_OF[name]
