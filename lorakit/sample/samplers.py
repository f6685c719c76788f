"""kohya's sampler names -> diffusers schedulers built from the model's scheduler config."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError, closest

# name -> (diffusers class name, extra config)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
    "dpm++ 2m karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                        "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def canonical(name: str) -> str:
    n = name.strip().lower()
    if n.startswith("k_"):
        n = n[2:]
    if n not in SAMPLERS:
        guess = closest(n, SAMPLERS)
        raise ConfigError(f"unknown sampler '{name}'", key="sample_sampler",
                          fix=(f"did you mean '{guess}'? " if guess else "") +
                              f"use one of {', '.join(SAMPLERS)} (k_ prefixes allowed)")
    return n


def make_scheduler(name: str, base_config):
    import diffusers

    cls_name, extra = SAMPLERS[canonical(name)]
    if cls_name == "LMSDiscreteScheduler":
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise ConfigError("the lms sampler needs scipy", key="sample_sampler",
                              fix="pip install scipy, or choose euler / euler_a / dpmsolver++") from None
    return getattr(diffusers, cls_name).from_config(base_config, **extra)
