"""network_args merged_op = "auto": per layer and input shape, the faster of LoRA's two forms, measured.

A LoRA layer can run as the bypass (x -> down -> up, added to the frozen layer's output) or as one
op with W + delta W. Which is faster depends on the layer, the input shape and the GPU (on an H100
at batch 32 the merged op won on the 64x64 3x3 convs and the feed-forward and lost on the 16x16
convs), so "auto" measures it where the run trains:

- each module notes the input shapes of its training forwards that have no choice yet (the bypass
  runs for them meanwhile);
- after that optimizer step, `decide` times both forms once per distinct (layer signature, input
  shape, dtype, autocast dtype): forward and backward on random inputs of that shape, the module's
  own weights, no gradient left behind and no random draw consumed (the run's random streams are
  restored), and every module of that signature keeps the faster form. The merged op must win by
  MARGIN to replace the default bypass, so that timing noise does not flip layers back and forth.
- At most MAX_SIGNATURES are measured in a run; later shapes keep the bypass.
- While network or rank dropout act, or DoRA is on, the bypass runs whatever was measured (their
  per-sample masks have no merged form). Code that torch.compile traces notes nothing (a traced
  side effect would break the graph), so compiled blocks keep the bypass; layers that run eagerly
  between them are measured as without compiling.

The two forms give the same values to float rounding (tests/test_adapters_lora.py), so the choice
changes speed, never what is learned; it is not saved (a resumed run measures again).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional

import torch

MARGIN = 0.95          # merged wins only below 95 % of the bypass's time
MAX_SIGNATURES = 512   # measurements per run (SD1.5 LoRA with conv: about 40 per bucket shape)
Key = tuple            # (input shape, input dtype, autocast dtype or None)


def input_key(x: torch.Tensor) -> Key:
    dev = x.device.type
    cast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    return tuple(x.shape), x.dtype, cast


class FormBoard:
    """The modules with input shapes still to measure; one per network, shared by its modules."""

    def __init__(self) -> None:
        self.waiting: dict[int, Any] = {}   # id(module) -> module, in the order they asked
        self.measured = 0


class FormChoice:
    """One module's choice per input key: True = merged op, False = bypass."""

    def __init__(self, board: FormBoard) -> None:
        self.board = board
        self.chosen: dict[Key, bool] = {}
        self.pending: set[Key] = set()

    def merged(self, module: Any, x: torch.Tensor) -> bool:
        key = input_key(x)
        got = self.chosen.get(key)
        if got is None and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            self.pending.add(key)
            self.board.waiting[id(module)] = module
        return bool(got)


def signature(m: Any) -> tuple:
    """What makes two modules' timings interchangeable: the class, the weight, the op's settings, the rank."""
    org = m.org
    conv = (tuple(org.stride), tuple(org.padding), tuple(org.dilation), org.groups) if m.is_conv else ()
    return (type(m).__name__, tuple(org.weight.shape), org.weight.dtype, org.bias is not None, conv, m.dim,
            m.multiplier == 1)


Timer = Callable[[Callable[[], None], torch.device], float]


def median_time(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds per call of fn: the median of 7 timed calls after 2 warm-up calls."""
    sync = {"cuda": torch.cuda.synchronize, "mps": lambda d: torch.mps.synchronize()}.get(device.type, lambda d: None)
    for _ in range(2):
        fn()
    times = []
    for _ in range(7):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decide(board: FormBoard, timer: Optional[Timer] = None) -> tuple[int, int]:
    """Measure every waiting (signature, input key) and set the modules' choices.
    Returns (signatures measured now, of which the merged op won)."""
    timer = timer or median_time
    groups: dict[tuple, list[tuple[Any, Key]]] = {}
    for m in board.waiting.values():
        for key in m.forms.pending:
            groups.setdefault((signature(m), key), []).append((m, key))
        m.forms.pending.clear()
    board.waiting.clear()
    measured = won = 0
    for (_, key), members in groups.items():
        if board.measured >= MAX_SIGNATURES:
            merged = False
        else:
            t_bypass, t_merged = time_forms(members[0][0], key, timer)
            merged = t_merged < MARGIN * t_bypass
            board.measured += 1
            measured += 1
            won += merged
        for m, k in members:
            m.forms.chosen[k] = merged
    return measured, won


def time_forms(m: Any, key: Key, timer: Timer) -> tuple[float, float]:
    """(bypass, merged) seconds for one forward and backward of module m at input key."""
    shape, dtype, cast = key
    dev = m.org.weight.device
    params = [p for p in m.parameters() if p.requires_grad]
    modes = (m.training, m.org.training)
    # the run's random streams (the CPU's, and the device's: dropout masks) are left as they were
    accel = dev.type if dev.type in ("cuda", "mps") else None
    with torch.random.fork_rng(devices=[dev] if accel else [], device_type=accel):
        x = torch.randn(shape, device=dev).to(dtype).requires_grad_(True)
        m.train(False)  # no dropout draws: the forms are timed as they compute
        m.org.train(False)
        try:
            with torch.autocast(dev.type, dtype=cast, enabled=cast is not None):
                grad = torch.ones_like(m.bypass_forward(x))

                def run(form: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
                    def step() -> None:
                        with torch.autocast(dev.type, dtype=cast, enabled=cast is not None):
                            out = form(x)
                        torch.autograd.grad(out, [x, *params], grad, allow_unused=True)
                    return step

                return timer(run(m.bypass_forward), dev), timer(run(m.merged_form), dev)
        finally:
            m.train(modes[0])
            m.org.train(modes[1])
