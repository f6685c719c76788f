"""The output keys of the training schema: the saved files, resuming and logging."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel

from ..fields import RESUME_NOTED, RESUME_SAFE, F


class OutputKeys(BaseModel):
    output_dir: Optional[str] = F(None, "Folder for the adapter, metrics.jsonl and logs.", resume=RESUME_SAFE)
    output_name: str = F("last", "Adapter file name without extension.", ss="ss_output_name")
    save_model_as: Literal["safetensors"] = F("safetensors", "File format (safetensors only).",
                                              resume=RESUME_NOTED)
    save_precision: Literal["float", "fp16", "bf16"] = F("fp16", "dtype of the saved tensors.",
                                                         resume=RESUME_NOTED)
    save_every_n_epochs: Optional[int] = F(None, "Also save <name>-<epoch:06d> every N epochs.", ge=1,
                                           resume=RESUME_NOTED)
    save_every_n_steps: Optional[int] = F(None, "Also save <name>-step<step:08d> every N steps.",
                                          ge=1, resume=RESUME_NOTED)
    save_state: bool = F(False, "Also save the full training state (for --resume) at each save "
                                "and at the end, as <name>-...-state folders.", resume=RESUME_NOTED)
    save_state_on_train_end: bool = F(
        False, "Save the training state as <name>-state at the end only (save_state saves it at "
        "every save too).", resume=RESUME_NOTED)
    resume: Optional[str] = F(
        None, "Resume from this lorakit state folder (or 'auto': the newest in output_dir); the "
        "command line's --resume wins.", resume=RESUME_SAFE)
    save_last_n_epochs: Optional[int] = F(
        None, "Keep only the newest N per-epoch files (the final file is always kept).", ge=1,
        resume=RESUME_NOTED)
    save_last_n_steps: Optional[int] = F(
        None, "Keep only per-step files from the last N steps (kohya's rule).", ge=1, resume=RESUME_NOTED)
    save_last_n_epochs_state: Optional[int] = F(None, "As save_last_n_epochs, for state folders.",
                                                ge=1, resume=RESUME_NOTED)
    save_last_n_steps_state: Optional[int] = F(None, "As save_last_n_steps, for state folders.", ge=1,
                                               resume=RESUME_NOTED)
    logging_dir: Optional[str] = F(None, "TensorBoard folder (unset = <output_dir>/logs).",
                                   resume=RESUME_SAFE)
    log_with: Optional[Literal["tensorboard", "wandb", "all"]] = F(
        None, "Where step metrics go besides metrics.jsonl: tensorboard (also when unset), wandb (needs "
        "the wandb package; project log_tracker_name), or all (both).", resume=RESUME_SAFE)
    log_tracker_name: Optional[str] = F(None, "wandb project name (unset = 'network_train', as "
                                              "sd-scripts).", resume=RESUME_SAFE)
    wandb_run_name: Optional[str] = F(None, "wandb run name (unset = output_name, as the kohya GUI "
                                            "passes it).", resume=RESUME_SAFE)
    training_comment: Optional[str] = F(None, "Stored as ss_training_comment in the file.",
                                        resume=RESUME_SAFE, ss="ss_training_comment")
