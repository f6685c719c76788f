"""The sample keys of the training schema: sample images and the d*lr spike watch."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel

from ..fields import RESUME_NOTED, RESUME_SAFE, F


class SampleKeys(BaseModel):
    sample_prompts: Optional[str] = F(
        None, "Sample prompts, inline (one per line) or a .txt file; kohya options --n --w --h --d "
              "--s --l --ss.", resume=RESUME_NOTED)
    sample_every_n_epochs: Optional[int] = F(None, "Write sample images every N epochs.", ge=1,
                                             resume=RESUME_NOTED)
    sample_every_n_steps: Optional[int] = F(None, "Write sample images every N steps.", ge=1,
                                            resume=RESUME_NOTED)
    sample_at_first: bool = F(False, "Also sample before the first step.", resume=RESUME_NOTED)
    sample_sampler: str = F("euler_a", "Sampler: ddim, pndm, lms, euler, euler_a, heun, dpm_2, "
                                       "dpm_2_a, dpmsolver, dpmsolver++, dpmsingle, dpm++ 2m karras, "
                                       "unipc (k_ prefixes allowed).", resume=RESUME_NOTED)
    dlr_spike_factor: float = F(
        3.0, "Warn when d*lr (Prodigy/DAdaptation) grows by more than this factor within "
             "dlr_spike_window steps after it has levelled off; 0 = off.", ge=0, resume=RESUME_SAFE)
    dlr_spike_window: int = F(20, "Steps over which a d*lr spike is measured.", ge=1, resume=RESUME_SAFE)
    dlr_spike_action: Literal["warn", "save", "stop"] = F(
        "warn", "On a d*lr spike: warn; save the adapter as it was before the spike took effect; "
                "or stop there (adapter saved).", resume=RESUME_SAFE)
