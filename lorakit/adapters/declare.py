"""What an adapter type declares about itself, beside its math (docs/adapters.md).

An AdapterModule subclass states, as class attributes:
- its names elsewhere: ``network_module`` (sd-scripts' --network_module, written as
  ss_network_module), ``lycoris_algos`` (the LyCORIS ``algo=`` names that select it, the first
  one written to ss_network_args), ``gui_lora_types`` (the kohya_ss GUI LoRA_type strings that
  select it, with what the GUI passes for each: :class:`GuiLoraType`);
- ``file_formats``: how its modules look in a file (:class:`FileFormat`: the tensor names that
  tell the format apart, where the rank is read, the options the tensors prove, and which
  loaders take it under which conditions).

The registry (registry.py) answers every lookup from these declarations: ``lorakit inspect``,
continuing from a file (weights.py) and the config importers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

Tensors = dict[str, Any]  # one module's tensors, names without the module prefix

LOADERS = ("A1111", "Forge", "ComfyUI", "diffusers", "LyCORIS")
# kohya's SDXL names: one prefix per text encoder; the UNet in its original (SGM) layout
SDXL_TE_PREFIXES = ("lora_te1_", "lora_te2_")
SGM_UNET_PREFIXES = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
SD1_SGM_ATTENTION = "lora_unet_input_blocks_1_1_"
YES, NO = "yes", "no"
LYCORIS_MODULE = "lycoris.kohya"
# the GUI keys the kohya_ss GUI turns into network args for its LyCORIS LoRA_types ("conv": conv_dim /
# conv_alpha); LoCon, LoHa and LoKr also get the linear-layer options
LYCORIS_GUI_ARGS = ("conv", "use_tucker", "rank_dropout", "module_dropout", "rank_dropout_scale", "train_norm")
LYCORIS_LINEAR_GUI_ARGS = (*LYCORIS_GUI_ARGS, "bypass_mode", "dora_wd", "use_scalar")
# block-wise dims / lr weights: the GUI passes them for sd-scripts' networks.lora only (Standard, Kohya LoCon)
GUI_BLOCK_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
                  "block_alphas", "conv_block_dims", "conv_block_alphas")


@dataclass(frozen=True)
class Loads:
    """One loader's answer for a file format: "yes", "no" or a condition ("at strength 1 only"),
    with the reason a user needs (printed by inspect)."""
    answer: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.answer} ({self.why})" if self.why else self.answer


LOADS = Loads(YES)


@dataclass(frozen=True)
class FileContext:
    """What a loader condition may look at: the file's modules of one format and its metadata."""
    modules: dict[str, Tensors]
    metadata: dict[str, str]

    def sd2(self) -> bool:
        """An SD2 file: from the metadata, else from the text encoder's width (OpenCLIP-H: 1024)."""
        md = self.metadata
        if md.get("ss_v2") == "True" or md.get("ss_base_model_version", "").startswith("sd_v2"):
            return True
        if md.get("ss_v2") == "False" or md.get("ss_base_model_version", "").startswith("sd_v1"):
            return False
        return any(name.startswith("lora_te_") and any(_width(t) == 1024 for t in ts.values())
                   for name, ts in self.modules.items())

    def family(self) -> tuple[str, str]:
        """(the model family the file was trained on: "SDXL", "SD2.x" or "SD1.x", how that is known).
        ss_base_model_version first (sd-scripts writes sd_v1 / sd_v2 / sdxl_base_v1-0); else kohya's SDXL
        names: lora_te1_ / lora_te2_, or UNet names in the original layout without SD1's attention at input
        block 1 (SDXL has none there; an SD1 file converted to that layout has)."""
        version = self.metadata.get("ss_base_model_version", "")
        if version.startswith("sdxl"):
            return "SDXL", f"ss_base_model_version {version}"
        if not version and any(n.startswith(SDXL_TE_PREFIXES) for n in self.modules):
            return "SDXL", "text-encoder modules named lora_te1_ / lora_te2_"
        unet = [n for n in self.modules if n.startswith(SGM_UNET_PREFIXES)]
        if not version and unet and not any(n.startswith(SD1_SGM_ATTENTION) for n in unet):
            return "SDXL", "UNet modules named in SDXL's original layout (lora_unet_input_blocks_..)"
        name = "SD2.x" if self.sd2() else "SD1.x"
        return name, f"ss_base_model_version {version}" if version else "no SDXL module names"


def _width(t: Any) -> int:
    return int(t.shape[0]) if getattr(t, "dim", lambda: 0)() >= 1 else 0


Support = Union[Loads, Callable[[FileContext], Loads]]


@dataclass(frozen=True)
class FileFormat:
    """How one module of an adapter type looks in a file.

    - ``name``: the label inspect prints ("locon-tucker").
    - ``match(tensors)``: True for this format's modules (formats do not overlap).
    - ``rank(tensors)``: the rank the loaders divide alpha by; None where there is none.
    - ``rank_hint(tensors)``: the rank a network must be built with to take the module
      (default: ``rank``); ``dim_fits(tensors, dim)``: would rank `dim` build this layout.
    - ``tucker_key``: the tensor only a Tucker-form 3x3 conv has (it proves use_tucker);
      ``kernel_key``: a tensor whose shape[2:] is the conv kernel, when the format has one.
    - ``options(tensors)``: other network_args the tensors prove (resuming needs them equal).
    - ``loaders``: loader name (declare.LOADERS) -> Loads, or a function of the file.
    - ``rankless``: what inspect says of a module without rank; ``notes``: lines inspect adds;
      ``experimental``: the loaders' support is new and thin.
    """
    name: str
    match: Callable[[Tensors], bool]
    loaders: dict[str, Support]
    rank: Callable[[Tensors], Optional[int]] = lambda ts: None
    rank_hint: Optional[Callable[[Tensors], Optional[int]]] = None
    dim_fits: Optional[Callable[[Tensors, int], bool]] = None
    tucker_key: Optional[str] = None
    kernel_key: Optional[str] = None
    options: Callable[[Tensors], dict[str, Any]] = lambda ts: {}
    rankless: Callable[[Tensors], str] = lambda ts: "no rank"
    notes: tuple[str, ...] = ()
    experimental: bool = False

    def hint(self, ts: Tensors) -> Optional[int]:
        return (self.rank_hint or self.rank)(ts)

    def fits(self, ts: Tensors, dim: int) -> bool:
        if self.dim_fits is not None:
            return self.dim_fits(ts, dim)
        hint = self.hint(ts)
        return hint is None or hint == dim

    def support(self, loader: str, ctx: FileContext) -> Loads:
        s = self.loaders.get(loader, Loads("unknown"))
        return s(ctx) if callable(s) else s


@dataclass(frozen=True)
class GuiLoraType:
    """What the kohya_ss GUI passes to sd-scripts for one LoRA_type: the network_module and the
    GUI keys it turns into network args ("conv": conv_dim / conv_alpha)."""
    network_module: str
    gui_args: tuple[str, ...] = field(default_factory=tuple)


def shape0(*keys: str) -> Callable[[Tensors], Optional[int]]:
    """Rank reader: shape[0] of the first of `keys` the module has."""
    def rank(ts: Tensors) -> Optional[int]:
        for k in keys:
            if k in ts:
                return int(ts[k].shape[0])
        return None
    return rank


def has_all(*keys: str) -> Callable[[Tensors], bool]:
    return lambda ts: all(k in ts for k in keys)
