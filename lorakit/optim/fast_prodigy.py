"""Prodigy (prodigyopt 1.1.2) without a host sync per parameter.

prodigyopt's step calls `.item()` twice per parameter, so a step over ~1000 adapter tensors
waits for the GPU ~2000 times. This class computes the same numbers with torch._foreach_*
ops over all parameters at once (bucketed by device and dtype) and keeps the step-size
estimate on the device: `d`, `d_max`, `d_numerator`, `d_denom`, `d_hat` and `k` are 0-dim
tensors in each `param_groups[i]` (float64; float32 on MPS). `float(group['d'])` reads d
(one sync, when the caller asks); `step()` itself issues none after the first step (the first
one reads, once for all parameters, which start at zero, as prodigyopt does per parameter).

It subclasses prodigyopt.Prodigy (same constructor, defaults, validation and per-parameter
state: step, s, p0, exp_avg, exp_avg_sq), so `isinstance`, groupscale.scaled_class and
state_dict()/load_state_dict() work as with the reference; a reference state_dict (floats in
the groups) loads too. Differences, all outside the numbers that train:
- sums run in a different order (float32 per bucket, not per tensor), so results equal the
  reference to rounding (~1e-7 relative), not bit for bit;
- the reference returns early when every gradient is exactly zero; here that decision stays
  on the device: d, the group keys and the parameters are left unchanged as there, but the
  per-parameter `state['step']` (read by nothing) still counts the call;
- fsdp_in_use=True is refused (sharded parameters would need an all-reduce).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import prodigyopt
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
    norms = torch._foreach_norm(ts, 1)
    return torch.stack(norms).to(device=acc.device, dtype=acc.dtype).sum()


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


class Prodigy(prodigyopt.Prodigy):
    """prodigyopt.Prodigy's step with foreach ops and device scalars (module doc)."""

    def __init__(self, params: Iterable, lr: float = 1.0, *args: Any, **kwargs: Any):
        super().__init__(params, lr, *args, **kwargs)
        refuse_fsdp(self.param_groups)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        refuse_fsdp(groups)
        g0 = groups[0]
        beta1, beta2 = g0["betas"]
        beta3 = g0["beta3"] if g0["beta3"] is not None else math.sqrt(beta2)
        lr = max(g["lr"] for g in groups)
        check_lrs(groups, lr)
        live_params = [[p for p in g["params"] if p.grad is not None] for g in groups]
        everything = [p for ps in live_params for p in ps]
        if not everything:
            return loss
        dev = everything[0].device

        # coupled weight decay changes the gradient in place, in every group (as the reference)
        for g, ps in zip(groups, live_params):
            if g["weight_decay"] != 0 and not g["decouple"] and ps:
                for idx in batches(ps):
                    torch._foreach_add_([ps[i].grad for i in idx], [ps[i] for i in idx], alpha=g["weight_decay"])
        self._init_state(everything, groups, live_params)

        d = scalar(g0["d"], dev)
        k = scalar(g0["k"], dev)
        if g0["use_bias_correction"]:
            bias_correction = torch.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))
            dlr = d * lr * bias_correction
        else:
            dlr = d * lr
        d_numerator = scalar(g0["d_numerator"], dev) * beta3
        delta_numerator = torch.zeros((), dtype=d.dtype, device=dev)
        d_denom = torch.zeros((), dtype=d.dtype, device=dev)
        ema1 = Cast(d * (1 - beta1))
        ema2 = Cast(d * d * (1 - beta2))
        any_live = False
        for g, ps in zip(groups, live_params):
            if not (g["lr"] > 0.0 and ps):
                continue
            any_live = True
            sp = g["slice_p"]
            ratio = d / g["d0"]
            s_coef = Cast(ratio * (d if g["safeguard_warmup"] else dlr))
            for idx in batches(ps):
                bp = [ps[i] for i in idx]
                st = [self.state[p] for p in bp]
                grads = [p.grad for p in bp]
                sliced = grads if sp == 1 else [gr.reshape(-1)[::sp] for gr in grads]
                # dot(grad, p0 - p): p0 is a flat copy, or a 0-dim zero for parameters that started at 0
                full = [j for j, s in enumerate(st) if s["p0"].dim() > 0]
                zero = [j for j, s in enumerate(st) if s["p0"].dim() == 0]
                flat_p = [p.reshape(-1) if sp == 1 else p.reshape(-1)[::sp] for p in bp]
                flat_g = [x.reshape(-1) for x in sliced]
                dot = torch.zeros((), dtype=d.dtype, device=dev)
                if full:
                    diff = torch._foreach_sub([st[j]["p0"] for j in full], [flat_p[j] for j in full])
                    dot = dot + total(torch._foreach_mul([flat_g[j] for j in full], diff), dot)
                if zero:
                    dot = dot - total(torch._foreach_mul([flat_g[j] for j in zero], [flat_p[j] for j in zero]), dot)
                delta_numerator = delta_numerator + ratio * dlr * dot
                if beta1 > 0:
                    exp_avg = [s["exp_avg"] for s in st]
                    torch._foreach_mul_(exp_avg, beta1)
                    torch._foreach_add_(exp_avg, torch._foreach_mul(grads, ema1.to(grads[0])))
                exp_avg_sq = [s["exp_avg_sq"] for s in st]
                torch._foreach_mul_(exp_avg_sq, beta2)
                torch._foreach_addcmul_(exp_avg_sq, torch._foreach_mul(grads, ema2.to(grads[0])), grads)
                s_list = [s["s"] for s in st]
                torch._foreach_mul_(s_list, beta3)
                torch._foreach_add_(s_list, torch._foreach_mul(flat_g, s_coef.to(grads[0])))
                d_denom = d_denom + abs_total(s_list, d_denom)
        if not any_live:
            return loss  # d_denom == 0 on the host too: the reference returns here

        live = d_denom != 0  # the reference's early return, decided on the device
        global_numerator = d_numerator + delta_numerator
        d_hat = g0["d_coef"] * global_numerator / d_denom
        d_max = scalar(g0["d_max"], dev)
        d_new = torch.where(d == groups[-1]["d0"], pymax(d, d_hat), d)
        d_max_new = pymax(d_max, d_hat)
        d_new = pymin(d_max_new, d_new * g0["growth_rate"])
        new = {"d_numerator": global_numerator, "d_denom": d_denom, "d": d_new, "d_max": d_max_new,
               "d_hat": d_hat}
        for g in groups:
            for key, value in new.items():
                old = g.get(key)
                g[key] = value if old is None else torch.where(live, value, scalar(old, dev))
            g["k"] = scalar(g["k"], dev) + live.to(d.dtype)
        d_new = new["d"] = groups[0]["d"]

        gate = live.to(d.dtype)
        step_coef = Cast(-dlr * gate if beta1 > 0 else -dlr * d_new * gate)
        for g, ps in zip(groups, live_params):
            if not ps:
                continue
            eps_d = Cast(d_new * g["eps"])
            decay = g["weight_decay"]
            decay_coef = Cast(-decay * dlr * gate) if decay != 0 and g["decouple"] else None
            for idx in batches(ps):
                bp = [ps[i] for i in idx]
                st = [self.state[p] for p in bp]
                for s in st:
                    s["step"] += 1
                denom = torch._foreach_sqrt([s["exp_avg_sq"] for s in st])
                torch._foreach_add_(denom, eps_d.to(bp[0]))
                if decay_coef is not None:
                    torch._foreach_add_(bp, torch._foreach_mul(bp, decay_coef.to(bp[0])))
                num = [s["exp_avg"] for s in st] if beta1 > 0 else [p.grad for p in bp]
                upd = torch._foreach_mul(num, step_coef.to(bp[0]))
                torch._foreach_div_(upd, denom)
                torch._foreach_add_(bp, upd)
        return loss

    def _init_state(self, everything: list[torch.Tensor], groups: list[dict[str, Any]],
                    live_params: list[list[torch.Tensor]]) -> None:
        fresh = [p for p in everything if "step" not in self.state[p]]
        if not fresh:
            return
        flags = dict(zip(map(id, fresh), nonzero_flags(fresh)))
        beta1 = groups[0]["betas"][0]
        for g, ps in zip(groups, live_params):
            sp = g["slice_p"]
            for p in ps:
                if id(p) not in flags:
                    continue
                state = self.state[p]
                state["step"] = 0
                flat = p.detach().reshape(-1)[::sp]
                state["s"] = torch.zeros_like(flat)
                state["p0"] = flat.clone() if flags[id(p)] else torch.tensor(0, device=p.device, dtype=p.dtype)
                if beta1 > 0:
                    state["exp_avg"] = torch.zeros_like(p.detach())
                state["exp_avg_sq"] = torch.zeros_like(p.detach())
