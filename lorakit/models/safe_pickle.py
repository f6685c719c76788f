"""Load ``.ckpt`` files without running pickled code.

A pickle can name any importable callable (``os.system``, ``builtins.exec``...) and have it
called while loading. :class:`RestrictedUnpickler` resolves only an allow-list of harmless
names (tensor rebuild helpers, dtypes, containers, numpy scalars); every other name becomes
an inert stub class that records its arguments and does nothing. Tensors load as usual
because ``torch.load`` is used with this module as its ``pickle_module``.
"""
from __future__ import annotations

import builtins
import collections
import pickle
import types

import torch

_TORCH_UTILS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy"}
_BUILTINS = {"set", "frozenset", "slice", "complex", "dict", "list", "tuple", "int", "float", "bool", "str"}
_DTYPES = {n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}
_NUMPY = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "scalar"),
          ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
          ("numpy._core.multiarray", "_reconstruct")}


class InertStub:
    """Stands in for any class or function the allow-list does not know. Never runs anything."""

    _lorakit_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self):
        return f"<inert stub for {self._lorakit_name}>"


_stubs: dict[str, type] = {}


def _stub(module: str, name: str) -> type:
    full = f"{module}.{name}"
    if full not in _stubs:
        _stubs[full] = type(f"Stub_{name}", (InertStub,), {"_lorakit_name": full})
    return _stubs[full]


def _allowed(module: str, name: str):
    if module == "torch._utils" and name in _TORCH_UTILS:
        return getattr(torch._utils, name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return torch._tensor._rebuild_from_type_v2
    if module == "torch" and name in ("Size", "Tensor", "device"):
        return getattr(torch, name)
    if module == "torch" and name in _DTYPES:
        return getattr(torch, name)
    if module == "torch.nn.parameter" and name == "Parameter":
        return torch.nn.Parameter
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        return getattr(builtins, name)
    if (module, name) == ("_codecs", "encode"):  # protocol-2 bytes (numpy scalars); torch allows it too
        import _codecs

        return _codecs.encode
    if (module, name) in _NUMPY:
        import importlib

        return getattr(importlib.import_module(module), name)
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` returns allow-listed objects or inert stubs."""

    def find_class(self, module, name):
        found = _allowed(module, name)
        return found if found is not None else _stub(module, name)


def load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# what torch.load expects of a ``pickle_module``
PICKLE_MODULE = types.SimpleNamespace(Unpickler=RestrictedUnpickler, load=load,
                                      __name__="lorakit.models.safe_pickle")


def safe_torch_load(path, map_location="cpu"):
    """``torch.load`` that cannot execute pickled code; unknown objects come back as stubs."""
    return torch.load(path, map_location=map_location, pickle_module=PICKLE_MODULE, weights_only=False)
