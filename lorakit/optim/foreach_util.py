"""What lorakit's foreach optimizers (fast_prodigy, fast_dadapt) share: device scalars, foreach
batches by device and dtype, and the step's prologue and bookkeeping.

Hand-written because neither prodigyopt nor dadaptation has a foreach step (both call
`.item()` per parameter; see fast_prodigy's module doc); torch's own foreach helpers are
used wherever they exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

CHUNK = 1 << 25  # elements per foreach batch: bounds the temporaries to a few times this


def acc_dtype(device: torch.device) -> torch.dtype:
    """dtype of the step-size scalars: float64 like the reference's Python floats (MPS has none)."""
    return torch.float32 if device.type == "mps" else torch.float64


def opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def scalar(x: Any, device: torch.device) -> torch.Tensor:
    """A group value (float, or a tensor from this class or a loaded state_dict) as a device scalar."""
    dt = acc_dtype(device)
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dt)
    return torch.full((), float(x), dtype=dt, device=device)


def batches(params: list[torch.Tensor]) -> list[list[int]]:
    """Indices into `params`, grouped by (device, dtype) and cut into chunks of <= CHUNK elements."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    out = []
    for idx in buckets.values():
        cur: list[int] = []
        n = 0
        for i in idx:
            if cur and n + params[i].numel() > CHUNK:
                out.append(cur)
                cur, n = [], 0
            cur.append(i)
            n += params[i].numel()
        out.append(cur)
    return out


class Cast:
    """A device scalar cast once per (device, opmath dtype) for the foreach ops of a batch."""

    def __init__(self, value: torch.Tensor):
        self.value = value
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def to(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, opmath(like.dtype))
        if key not in self._cache:
            self._cache[key] = self.value.to(device=key[0], dtype=key[1])
        return self._cache[key]


def total(ts: list[torch.Tensor], acc: torch.Tensor) -> torch.Tensor:
    """Sum of every element of `ts` (one device and dtype), as a scalar like `acc`."""
    flat = ts[0].reshape(-1) if len(ts) == 1 else torch.cat([t.reshape(-1) for t in ts])
    return flat.sum(dtype=opmath(flat.dtype)).to(device=acc.device, dtype=acc.dtype)


def abs_total(ts: list[torch.Tensor], acc: torch.Tensor) -> torch.Tensor:
    """Sum over `ts` of |t|.sum(), as a scalar like `acc`."""
    return abs_totals([ts], acc)[0]


def abs_totals(lists: list[list[torch.Tensor]], acc: torch.Tensor) -> list[torch.Tensor]:
    """abs_total of each list (all of one length), with one foreach norm and one sum for all of them."""
    norms = torch.stack(torch._foreach_norm([t for ts in lists for t in ts], 1))
    return list(norms.to(device=acc.device, dtype=acc.dtype).view(len(lists), -1).sum(dim=1).unbind())


def pymax(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Python's max(a, b) on device scalars: b only if b > a (NaN never wins)."""
    return torch.where(b > a, b, a)


def pymin(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Python's min(a, b): b only if b < a."""
    return torch.where(b < a, b, a)


def check_lrs(groups: list[dict[str, Any]], lr: float) -> None:
    for g in groups:
        if g["lr"] not in (lr, 0.0):
            raise RuntimeError("Setting different lr values in different parameter groups is only supported "
                               "for values of 0 (lorakit.optim.groupscale.scaled_class lifts this)")


def refuse_fsdp(groups: list[dict[str, Any]]) -> None:
    for g in groups:
        if g.get("fsdp_in_use") or any(hasattr(p, "_fsdp_flattened") for p in g["params"]):
            raise NotImplementedError("lorakit's foreach optimizers do not support FSDP sharded parameters; "
                                      "use optimizer_args implementation='reference'")


def nonzero_flags(ps: list[torch.Tensor]) -> list[bool]:
    """[p.any() for p in ps] with one host read per batch (not one per tensor)."""
    flags = [False] * len(ps)
    for idx in batches(ps):
        amax = torch.stack([n.float() for n in torch._foreach_norm([ps[i] for i in idx], float("inf"))])
        for i, f in zip(idx, (amax != 0).tolist()):  # NaN counts as nonzero, as in p.any()
            flags[i] = f
    return flags


class RefuseFsdp:
    """Mixin put before the reference class: its constructor, then the FSDP refusal."""

    def __init__(self, params: Any, lr: float = 1.0, *args: Any, **kwargs: Any):
        super().__init__(params, lr, *args, **kwargs)  # type: ignore[call-arg]
        refuse_fsdp(self.param_groups)  # type: ignore[attr-defined]


@dataclass
class StepStart:
    """What every foreach step reads first."""
    loss: Any
    groups: list[dict[str, Any]]
    lr: float                               # the largest group lr (groups differ only by 0)
    live_params: list[list[torch.Tensor]]   # per group, the parameters with a gradient
    everything: list[torch.Tensor]
    dev: torch.device

    @property
    def g0(self) -> dict[str, Any]:
        return self.groups[0]


def begin_step(opt: torch.optim.Optimizer, closure: Callable | None) -> StepStart:
    """The closure, the checks (FSDP, group lrs, complex parameters) and the live parameters."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    groups = opt.param_groups
    refuse_fsdp(groups)
    lr = max(g["lr"] for g in groups)
    check_lrs(groups, lr)
    live_params = [[p for p in g["params"] if p.grad is not None] for g in groups]
    everything = [p for ps in live_params for p in ps]
    if any(p.is_complex() for p in everything):
        raise NotImplementedError("complex parameters: use optimizer_args implementation='reference'")
    dev = everything[0].device if everything else torch.device("cpu")
    return StepStart(loss, groups, lr, live_params, everything, dev)


def coupled_decay(groups: list[dict[str, Any]], live_params: list[list[torch.Tensor]]) -> None:
    """Coupled weight decay: grad += weight_decay * p, in place, in every group (as the references)."""
    for g, ps in zip(groups, live_params):
        if g["weight_decay"] != 0 and not g["decouple"] and ps:
            for idx in batches(ps):
                torch._foreach_add_([ps[i].grad for i in idx], [ps[i] for i in idx], alpha=g["weight_decay"])


def store(groups: list[dict[str, Any]], new: dict[str, torch.Tensor], live: torch.Tensor,
          dev: torch.device) -> None:
    """group[key] = new value, or the old one where the reference would have returned early."""
    for g in groups:
        for key, value in new.items():
            old = g.get(key)
            g[key] = value if old is None else torch.where(live, value, scalar(old, dev))


@dataclass
class Batch:
    """One foreach batch: its parameters, their gradients and state tensors by key."""
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: list[dict[str, Any]]

    def __getitem__(self, key: str) -> list[torch.Tensor]:
        return [s[key] for s in self.states]


def state_batches(opt: torch.optim.Optimizer, ps: list[torch.Tensor]) -> Iterator[Batch]:
    for idx in batches(ps):
        bp = [ps[i] for i in idx]
        yield Batch(bp, [p.grad for p in bp], [opt.state[p] for p in bp])
