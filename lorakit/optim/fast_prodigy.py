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
from typing import Any, Callable

import prodigyopt
import torch

from .foreach_util import (Cast, RefuseFsdp, abs_total, begin_step, coupled_decay, nonzero_flags, pymax, pymin,
                           scalar, state_batches, store, total)


class Prodigy(RefuseFsdp, prodigyopt.Prodigy):
    """prodigyopt.Prodigy's step with foreach ops and device scalars (module doc)."""

    @torch.no_grad()
    def step(self, closure: Callable | None = None):  # type: ignore[override]
        s0 = begin_step(self, closure)
        loss, groups, lr, live_params, everything, dev = (s0.loss, s0.groups, s0.lr, s0.live_params,
                                                          s0.everything, s0.dev)
        if not everything:
            return loss
        g0 = groups[0]
        beta1, beta2 = g0["betas"]
        beta3 = g0["beta3"] if g0["beta3"] is not None else math.sqrt(beta2)
        coupled_decay(groups, live_params)
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
            for b in state_batches(self, ps):
                bp, st, grads = b.params, b.states, b.grads
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
                    exp_avg = b["exp_avg"]
                    torch._foreach_mul_(exp_avg, beta1)
                    torch._foreach_add_(exp_avg, torch._foreach_mul(grads, ema1.to(grads[0])))
                exp_avg_sq = b["exp_avg_sq"]
                torch._foreach_mul_(exp_avg_sq, beta2)
                torch._foreach_addcmul_(exp_avg_sq, torch._foreach_mul(grads, ema2.to(grads[0])), grads)
                s_list = b["s"]
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
        store(groups, new, live, dev)
        for g in groups:
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
            for b in state_batches(self, ps):
                bp = b.params
                for s in b.states:
                    s["step"] += 1
                denom = torch._foreach_sqrt(b["exp_avg_sq"])
                torch._foreach_add_(denom, eps_d.to(bp[0]))
                if decay_coef is not None:
                    torch._foreach_add_(bp, torch._foreach_mul(bp, decay_coef.to(bp[0])))
                num = b["exp_avg"] if beta1 > 0 else b.grads
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
