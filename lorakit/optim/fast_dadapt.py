"""DAdaptAdam, DAdaptAdamPreprint (kohya's "DAdaptation") and DAdaptLion (dadaptation 3.2)
without a host sync per parameter.

Same approach and the same caveats as fast_prodigy (read its module doc): subclasses of the
reference classes (constructor, defaults, state keys unchanged), foreach ops over all
parameters, `d`, `k` (DAdaptAdam, whose bias correction reads it) and the running sums kept
as 0-dim device tensors in the groups, the reference's "every gradient is zero" early return
decided on the device. `log_every > 0` logs like the reference, which reads the scalars (a
sync) on the logged steps only. Complex parameters are refused.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import dadaptation
import dadaptation.experimental
import torch

from .foreach_util import (Cast, RefuseFsdp, StepStart, abs_total, abs_totals, begin_step, coupled_decay, pymax,
                           pymin, scalar, state_batches, store, total)


def _init_adam_state(opt: torch.optim.Optimizer, ps: list[torch.Tensor]) -> None:
    for p in ps:
        state = opt.state[p]
        if "step" not in state:
            state["step"] = 0
            state["s"] = torch.zeros_like(p.detach())
            state["exp_avg"] = torch.zeros_like(p.detach())
            state["exp_avg_sq"] = torch.zeros_like(p.detach())


def _adam_steps(opt: torch.optim.Optimizer, groups: list[dict[str, Any]], live_params: list[list[torch.Tensor]],
                gate: torch.Tensor, decay_coef: Callable[[dict[str, Any]], Cast | None]) -> None:
    """p -= exp_avg / (sqrt(exp_avg_sq) + eps), after the decoupled decay, times `gate` (0 or 1)."""
    neg_gate = Cast(-gate)
    for g, ps in zip(groups, live_params):
        if not ps:
            continue
        dc = decay_coef(g)
        for b in state_batches(opt, ps):
            bp = b.params
            for s in b.states:
                s["step"] += 1
            denom = torch._foreach_sqrt(b["exp_avg_sq"])
            torch._foreach_add_(denom, g["eps"])
            if dc is not None:
                torch._foreach_add_(bp, torch._foreach_mul(bp, dc.to(bp[0])))
            upd = torch._foreach_mul(b["exp_avg"], neg_gate.to(bp[0]))
            torch._foreach_addcdiv_(bp, upd, denom)


def _adam_start(opt: torch.optim.Optimizer, closure: Callable | None) -> tuple[StepStart, torch.Tensor]:
    """begin_step, coupled decay and fresh state for the Adam variants; returns (start, d)."""
    s0 = begin_step(opt, closure)
    coupled_decay(s0.groups, s0.live_params)
    _init_adam_state(opt, s0.everything)
    return s0, scalar(s0.g0["d"], s0.dev)


class DAdaptAdam(RefuseFsdp, dadaptation.DAdaptAdam):
    """dadaptation.DAdaptAdam's step with foreach ops and device scalars."""

    @torch.no_grad()
    def step(self, closure: Callable | None = None):  # type: ignore[override]
        s0, d = _adam_start(self, closure)
        loss, groups, lr, live_params, dev, g0 = s0.loss, s0.groups, s0.lr, s0.live_params, s0.dev, s0.g0
        beta1, beta2 = g0["betas"]
        k = scalar(g0["k"], dev)
        if g0["use_bias_correction"]:
            dlr = d * lr * (torch.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)))
        else:
            dlr = d * lr
        sqrt_beta2 = beta2 ** 0.5
        numerator_acum = torch.zeros((), dtype=d.dtype, device=dev)
        sk_l1 = torch.zeros((), dtype=d.dtype, device=dev)
        s_coef = Cast(dlr * (1 - sqrt_beta2))
        any_live = False
        for g, ps in zip(groups, live_params):
            if not (g["lr"] > 0.0 and ps):
                continue
            any_live = True
            r = g["layer_scale"]
            ema1 = Cast(r * dlr * (1 - beta1))
            for b in state_batches(self, ps):
                bp, grads, exp_avg, exp_avg_sq, s_list = b.params, b.grads, b["exp_avg"], b["exp_avg_sq"], b["s"]
                denom = torch._foreach_sqrt(exp_avg_sq)
                torch._foreach_add_(denom, g["eps"])
                dot = total(torch._foreach_mul(grads, torch._foreach_div(s_list, denom)), sk_l1)
                numerator_acum = numerator_acum + r * dlr * dot
                torch._foreach_mul_(exp_avg, beta1)
                torch._foreach_add_(exp_avg, torch._foreach_mul(grads, ema1.to(bp[0])))
                torch._foreach_mul_(exp_avg_sq, beta2)
                torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
                torch._foreach_mul_(s_list, sqrt_beta2)
                torch._foreach_add_(s_list, torch._foreach_mul(grads, s_coef.to(bp[0])))
                sk_l1 = sk_l1 + r * abs_total(s_list, sk_l1)
        if not any_live:
            return loss  # sk_l1 == 0 on the host too: the reference returns here
        numerator_weighted = sqrt_beta2 * scalar(g0["numerator_weighted"], dev) + (1 - sqrt_beta2) * numerator_acum
        live = sk_l1 != 0
        d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1)
        d_new = pymax(d, pymin(d_hat, d * g0["growth_rate"]))
        if g0["log_every"] > 0 and int(groups[-1]["k"]) % g0["log_every"] == 0 and bool(live):
            logging.info(f"lr: {lr} dlr: {float(dlr)} d_hat: {float(d_hat)}, d: {float(d_new)}. "
                         f"sk_l1={float(sk_l1):1.1e} numerator_weighted={float(numerator_weighted):1.1e}")
        store(groups, {"numerator_weighted": numerator_weighted, "d": d_new}, live, dev)
        gate = live.to(d.dtype)
        for g in groups:
            g["k"] = scalar(g["k"], dev) + gate

        def decay_coef(g: dict[str, Any]) -> Cast | None:
            return Cast(-g["weight_decay"] * dlr * gate) if g["weight_decay"] != 0 and g["decouple"] else None
        _adam_steps(self, groups, live_params, gate, decay_coef)
        return loss


class DAdaptAdamPreprint(RefuseFsdp, dadaptation.experimental.DAdaptAdamPreprint):
    """dadaptation.experimental.DAdaptAdamPreprint (kohya's "DAdaptation") with foreach ops."""

    @torch.no_grad()
    def step(self, closure: Callable | None = None):  # type: ignore[override]
        s0, d = _adam_start(self, closure)
        loss, groups, lr, live_params, dev, g0 = s0.loss, s0.groups, s0.lr, s0.live_params, s0.dev, s0.g0
        beta1, beta2 = g0["betas"]
        dlr = d * lr
        zero = torch.zeros((), dtype=d.dtype, device=dev)
        g_sq, sksq_weighted, sk_l1 = zero, zero, zero
        ema1 = Cast(dlr * (1 - beta1))
        s_coef = Cast(dlr * (1 - beta2))
        any_live = False
        for g, ps in zip(groups, live_params):
            if not (g["lr"] > 0 and ps):
                continue
            any_live = True
            for b in state_batches(self, ps):
                bp, grads, exp_avg, exp_avg_sq, s_list = b.params, b.grads, b["exp_avg"], b["exp_avg_sq"], b["s"]
                grad_grad = torch._foreach_mul(grads, grads)
                torch._foreach_mul_(exp_avg, beta1)
                torch._foreach_add_(exp_avg, torch._foreach_mul(grads, ema1.to(bp[0])))
                torch._foreach_mul_(exp_avg_sq, beta2)
                torch._foreach_add_(exp_avg_sq, grad_grad, alpha=1 - beta2)
                denom = torch._foreach_sqrt(exp_avg_sq)
                torch._foreach_add_(denom, g["eps"])
                torch._foreach_div_(grad_grad, denom)
                torch._foreach_mul_(s_list, beta2)
                torch._foreach_add_(s_list, torch._foreach_mul(grads, s_coef.to(bp[0])))
                ssq = torch._foreach_mul(s_list, s_list)
                torch._foreach_div_(ssq, denom)
                # the three sums in one reduction (grad_grad and ssq are non-negative: their L1 norm is the sum)
                sums = abs_totals([grad_grad, ssq, s_list], zero)
                g_sq, sksq_weighted, sk_l1 = g_sq + sums[0], sksq_weighted + sums[1], sk_l1 + sums[2]
        gsq_weighted = beta2 * scalar(g0["gsq_weighted"], dev) + g_sq * (dlr ** 2) * (1 - beta2)
        if not any_live:
            return loss
        live = sk_l1 != 0
        d_hat = (sksq_weighted / (1 - beta2) - gsq_weighted) / sk_l1
        d_new = pymax(d, pymin(d_hat, d * g0["growth_rate"]))
        if g0["log_every"] > 0 and int(groups[-1]["k"]) % g0["log_every"] == 0 and bool(live):
            logging.info(f"(k={groups[-1]['k']}) dlr: {float(dlr):1.1e} d_hat: {float(d_hat):1.1e}, "
                         f"d: {float(d_new):1.8}. sksq_weighted={float(sksq_weighted):1.1e} "
                         f"gsq_weighted={float(gsq_weighted):1.1e} sk_l1={float(sk_l1):1.1e}")
        store(groups, {"gsq_weighted": gsq_weighted, "d": d_new}, live, dev)
        gate = live.to(d.dtype)
        for g in groups:
            g["k"] = g["k"] + 1  # read by nothing but the log line

        def decay_coef(g: dict[str, Any]) -> Cast | None:
            if g["weight_decay"] != 0 and g["decouple"] and g["lr"] > 0:
                return Cast(-g["weight_decay"] * dlr * gate)
            return None
        _adam_steps(self, groups, live_params, gate, decay_coef)
        return loss


class DAdaptLion(RefuseFsdp, dadaptation.DAdaptLion):
    """dadaptation.DAdaptLion's step with foreach ops and device scalars."""

    @torch.no_grad()
    def step(self, closure: Callable | None = None):  # type: ignore[override]
        s0 = begin_step(self, closure)
        loss, groups, lr, live_params, dev, g0 = s0.loss, s0.groups, s0.lr, s0.live_params, s0.dev, s0.g0
        if not s0.everything:
            return loss  # sk_l1 == 0: the reference returns before touching anything
        d = scalar(g0["d"], dev)
        dlr = d * lr
        beta1, beta2 = g0["betas"]
        sqrt_beta2 = beta2 ** 0.5
        numerator_acum = torch.zeros((), dtype=d.dtype, device=dev)
        sk_l1 = torch.zeros((), dtype=d.dtype, device=dev)
        neg_dlr = Cast(-dlr)
        ema2 = Cast((1 - beta2) * dlr)
        s_coef = Cast((1 - sqrt_beta2) * dlr)
        for g, ps in zip(groups, live_params):
            if not ps:
                continue
            shrink = Cast(1 - dlr * g["weight_decay"])
            for b in state_batches(self, ps):
                bp, grads = b.params, b.grads
                for p, state in zip(bp, b.states):
                    if "exp_avg" not in state:
                        state["exp_avg"] = torch.zeros_like(p.detach())
                        state["s"] = torch.zeros_like(p.detach())
                exp_avg, s_list = b["exp_avg"], b["s"]
                torch._foreach_mul_(bp, shrink.to(bp[0]))
                update = torch._foreach_mul(exp_avg, beta1)
                torch._foreach_add_(update, grads, alpha=1 - beta1)
                torch._foreach_sign_(update)
                torch._foreach_add_(bp, torch._foreach_mul(update, neg_dlr.to(bp[0])))
                torch._foreach_mul_(exp_avg, beta2)
                torch._foreach_add_(exp_avg, torch._foreach_mul(grads, ema2.to(bp[0])))
                numerator_acum = numerator_acum + dlr * total(torch._foreach_mul(update, s_list), sk_l1)
                torch._foreach_mul_(s_list, sqrt_beta2)
                torch._foreach_add_(s_list, torch._foreach_mul(update, s_coef.to(bp[0])))
                sk_l1 = sk_l1 + abs_total(s_list, sk_l1)
        numerator_weighted = sqrt_beta2 * scalar(g0["numerator_weighted"], dev) + (1 - sqrt_beta2) * numerator_acum
        live = sk_l1 != 0
        d_new = d
        if lr > 0.0:
            d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1)
            d_new = pymax(d, d_hat)
        if g0["log_every"] > 0 and int(groups[-1]["k"]) % g0["log_every"] == 0 and bool(live):
            logging.info(f"lr: {lr} dlr: {float(dlr)} d: {float(d_new)}. sk_l1={float(sk_l1):1.1e} "
                         f"numerator_weighted={float(numerator_weighted):1.1e}")
        store(groups, {"numerator_weighted": numerator_weighted, "d": d_new}, live, dev)
        for g in groups:
            g["k"] = g["k"] + 1  # read by nothing but the log line
        return loss


__all__ = ["DAdaptAdam", "DAdaptAdamPreprint", "DAdaptLion"]
