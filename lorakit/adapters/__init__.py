"""Adapters (LoRA, LoCon, ...): one module per algorithm, a registry, the network and the file format.

Public API:
- registry: register(name), get_algorithm(name), available(), and lookups answered from the types'
  declarations: classify(tensors), builders(format), by_metadata(metadata), by_lycoris_algo(algo),
  lycoris_algos(), by_gui_lora_type(lora_type), gui_lora_types(), network_modules()
- base: AdapterModule (subclass it for a new algorithm), TargetRules, RankSettings
- declare: what a type declares (FileFormat, Loads, GuiLoraType; docs/adapters.md "Adding an adapter type")
- network: create_network(cfg, unet, text_encoder) -> AdapterNetwork
- file: save_adapter_file(path, tensors, metadata, overwrite=...), read_adapter_file(path)
"""
from .base import AdapterModule, RankSettings, TargetRules
from .file import read_adapter_file, save_adapter_file, sshs_hashes
from .network import AdapterNetwork, create_network
from .registry import available, get_algorithm, register

__all__ = ["AdapterModule", "AdapterNetwork", "RankSettings", "TargetRules", "available", "create_network",
           "get_algorithm", "read_adapter_file", "register", "save_adapter_file", "sshs_hashes"]
