"""Small facts the adapter modules share with modules that must not import them (the block tables,
which the config schema reads): the layer kinds and how kohya writes a number in network_args."""
from __future__ import annotations

# A layer kind decides which rank/alpha a target gets (kohya: 3x3 convs use conv_dim).
LINEAR, CONV1X1, CONV3X3 = "linear", "conv1x1", "conv3x3"


def fmt_num(v: float | int) -> str:
    """kohya network_args are strings: 8 -> '8', 4.0 -> '4', 0.5 -> '0.5'."""
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)
