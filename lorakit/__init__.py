"""lorakit: a trainer for Stable Diffusion adapters that runs kohya_ss configs."""

__version__ = "0.1.0"
